"""Figures for the analysis results (matplotlib, Agg backend: files only, no display).

Figures are built with ``matplotlib.figure.Figure`` on an explicit ``FigureCanvasAgg`` rather
than through ``pyplot``, so plotting never opens a window, never needs a display and never
switches the global backend of a user's session.

Every function takes results -- a result dataclass, an :class:`AnalysisReport`, their
``to_dict()`` JSON form, or a plain list -- either alone or as ``{arm_name: result}`` for
side-by-side arms (e.g. baseline vs gated), writes a PNG to ``path`` and returns the path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

PathLike = str | Path

__all__ = [
    "figure",
    "plot_attention_maps",
    "plot_first_token_mass",
    "plot_gate_histograms",
    "plot_gate_mean_per_layer",
    "plot_loss_curves",
    "plot_max_activation",
    "save_figure",
]


def _get(obj: Any, key: str) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(key)
    return getattr(obj, key, None)


def _lookup(obj: Any, paths: Sequence[tuple[str, ...]]) -> Any:
    """The first value found along one of ``paths`` (attributes or dict keys), else None."""
    for path in paths:
        cur = obj
        for key in path:
            cur = _get(cur, key)
            if cur is None:
                break
        if cur is not None:
            return cur
    return None


def _is_number_list(obj: Any) -> bool:
    return isinstance(obj, list | tuple | np.ndarray | torch.Tensor) and all(
        isinstance(v, int | float | np.floating | np.integer) for v in np.asarray(obj).ravel()
    )


def _arms(results: Any) -> dict[str, Any]:
    """Normalise ``results`` to ``{arm_name: result}``."""
    if isinstance(results, Mapping) and results and all(isinstance(k, str) for k in results):
        # A dict form of a single result has known field names; arms are anything else.
        known = {"per_layer_mean", "max_abs_per_layer", "histogram", "first_token_mass", "summary"}
        if not known.intersection(results):
            return dict(results)
    return {"": results}


def _series(obj: Any, paths: Sequence[tuple[str, ...]], what: str) -> list[float]:
    if _is_number_list(obj):
        return [float(v) for v in np.asarray(obj).ravel()]
    found = _lookup(obj, paths)
    if found is None:
        raise ValueError(f"cannot find {what} in a {type(obj).__name__}")
    return [float("nan") if v is None else float(v) for v in found]


def figure(figsize: tuple[float, float]) -> Figure:
    """A figure on its own Agg canvas (no pyplot, no display)."""
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)  # attaches itself to fig: PNG rendering with Agg, no GUI
    return fig


def save_figure(fig: Figure, path: PathLike) -> Path:
    """Lay ``fig`` out tightly and write it as a 120-dpi PNG (parent folders created)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    return out


def _label(arm: str, default: str) -> str:
    return arm if arm else default


def plot_first_token_mass(
    results: Any,
    path: PathLike,
    *,
    floor: float | None = None,
    title: str = "Attention on the first token per layer",
) -> Path:
    """Per-layer first-token mass for each arm, with the causal floor as a dashed line.

    Accepts :class:`FirstTokenMassByLayer`, :class:`AnalysisReport`, their dict forms or a
    list of per-layer values; ``floor`` overrides the floor stored in the results.
    """
    arms = _arms(results)
    fig = figure((7, 4))
    ax = fig.subplots()
    paths = [("per_layer_mean",), ("first_token_mass", "per_layer_mean")]
    for arm, res in arms.items():
        y = _series(res, paths, "per-layer first-token mass")
        ax.plot(range(len(y)), y, marker="o", label=_label(arm, "first-token mass"))
        if floor is None:
            found = _lookup(res, [("floor",), ("first_token_mass", "floor")])
            floor = None if found is None else float(found)
    if floor is not None:
        ax.axhline(floor, linestyle="--", color="gray", label=f"causal floor H_T/T = {floor:.3f}")
    ax.set(xlabel="layer", ylabel="mean attention on token 0", title=title, ylim=(0, 1.02))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend()
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_max_activation(
    results: Any,
    path: PathLike,
    *,
    title: str = "Largest residual-stream activation per layer",
) -> Path:
    """Per-layer max ``|h|`` on a log scale, with Sun et al.'s threshold of 100 dotted.

    Accepts :class:`MassiveActivations`, :class:`AnalysisReport`, dict forms or lists.
    """
    arms = _arms(results)
    fig = figure((7, 4))
    ax = fig.subplots()
    paths = [("max_abs_per_layer",), ("massive", "max_abs_per_layer")]
    for arm, res in arms.items():
        y = _series(res, paths, "per-layer max |h|")
        m_act = sum(y) / len(y)
        ax.plot(range(len(y)), y, marker="o", label=f"{_label(arm, 'max |h|')} (M-Act {m_act:.3g})")
    ax.axhline(100.0, linestyle=":", color="gray", label="100 (massive threshold)")
    ax.set_yscale("log")
    ax.set(xlabel="layer", ylabel="max |h| (log scale)", title=title)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend()
    ax.grid(alpha=0.3, which="both")
    return save_figure(fig, path)


def plot_gate_histograms(
    results: Any,
    path: PathLike,
    *,
    title: str = "Gate-score distribution",
) -> Path:
    """One histogram of gate scores per arm (share of scores per bin), mean marked.

    Accepts :class:`GateStats`, :class:`AnalysisReport` (with gates) or their dict forms.
    """
    arms = _arms(results)
    n = len(arms)
    fig = figure((4.2 * n, 3.6))
    axes = fig.subplots(1, n, squeeze=False, sharey=True)
    for ax, (arm, res) in zip(axes[0], arms.items()):
        gates = _lookup(res, [("gates",)]) if _lookup(res, [("histogram",)]) is None else res
        if gates is None:
            raise ValueError(f"arm {arm!r} has no gate statistics")
        counts = np.asarray(_get(gates, "histogram"), dtype=float)
        edges = np.asarray(_get(gates, "bin_edges"), dtype=float)
        share = counts / max(counts.sum(), 1.0)
        ax.bar(edges[:-1], share, width=np.diff(edges), align="edge", edgecolor="black", lw=0.3)
        mean = float(_get(gates, "mean"))
        ax.axvline(mean, color="red", linestyle="--", label=f"mean {mean:.3f}")
        ax.set(xlabel="gate score", title=_label(arm, title))
        ax.legend()
    axes[0][0].set_ylabel("share of scores")
    if n > 1:
        fig.suptitle(title)
    return save_figure(fig, path)


def plot_gate_mean_per_layer(
    results: Any,
    path: PathLike,
    *,
    title: str = "Mean gate score per layer",
) -> Path:
    """Per-layer mean gate score for each arm.

    Accepts :class:`GateStats`, :class:`AnalysisReport`, dict forms or lists.
    """
    arms = _arms(results)
    fig = figure((7, 4))
    ax = fig.subplots()
    paths = [("per_layer_mean",), ("gates", "per_layer_mean")]
    for arm, res in arms.items():
        y = _series(res, paths, "per-layer mean gate score")
        ax.plot(range(len(y)), y, marker="o", label=_label(arm, "mean gate"))
    ax.set(xlabel="layer", ylabel="mean gate score", title=title, ylim=(0, 1.02))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend()
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def _as_map(x: Any) -> np.ndarray:
    """A 2-D ``(T, S)`` array from a map: ``(B, H, T, S)`` -> batch 0, mean over heads."""
    a = x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, float)
    if a.ndim == 4:
        a = a[0].mean(axis=0)
    elif a.ndim == 3:
        a = a[0]
    if a.ndim != 2:
        raise ValueError(
            f"attention map: expected (T, S), (B, T, S) or (B, H, T, S), got {a.shape}"
        )
    return a


def plot_attention_maps(
    maps: Mapping[str, Any],
    path: PathLike,
    *,
    title: str = "Attention maps",
    column_titles: tuple[str, str] = ("softmax attention", "gate-weighted (effective)"),
) -> Path:
    """A grid with one row per arm or layer: softmax probabilities and effective attention.

    Args:
        maps: ``{row_label: (probs, effective)}`` or ``{row_label: {"probs": ...,
            "effective": ...}}``; ``effective`` may be None (the panel is left blank). Maps are
            ``(T, S)``, ``(B, T, S)`` (batch 0 is shown) or ``(B, H, T, S)`` (batch 0, mean
            over heads).
        path: output PNG.
    """
    if not maps:
        raise ValueError("plot_attention_maps: no maps given")
    rows = list(maps.items())
    fig = figure((9, 3.8 * len(rows)))
    axes = fig.subplots(len(rows), 2, squeeze=False)
    titled = [False, False]
    for r, (label, entry) in enumerate(rows):
        if isinstance(entry, Mapping):
            pair = (entry.get("probs"), entry.get("effective"))
        elif isinstance(entry, tuple | list) and len(entry) == 2:
            pair = (entry[0], entry[1])
        else:
            pair = (entry, None)
        arrays = [None if m is None else _as_map(m) for m in pair]
        # One colour scale per row, so the gate's shrinking of the map is visible as dimming.
        vmax = max(float(a.max()) for a in arrays if a is not None) or 1.0
        for c, a in enumerate(arrays):
            ax = axes[r][c]
            if a is None:
                ax.axis("off")
                continue
            im = ax.imshow(
                a, cmap="viridis", vmin=0.0, vmax=vmax, aspect="auto", interpolation="nearest"
            )
            fig.colorbar(im, ax=ax, fraction=0.046)
            ax.set_xlabel("key position")
            ax.set_ylabel(f"{label}\nquery position" if label else "query position")
            if not titled[c]:  # column title on the first drawn panel of each column
                ax.set_title(column_titles[c])
                titled[c] = True
    fig.suptitle(title)
    return save_figure(fig, path)


def _smooth(y: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or len(y) < window:
        return y
    kernel = np.ones(window) / window
    return np.convolve(y, kernel, mode="valid")


def plot_loss_curves(
    curves: Mapping[str, Sequence[tuple[float, float]]],
    path: PathLike,
    *,
    title: str = "Training loss",
    smooth: int = 1,
    log_y: bool = False,
    xlabel: str = "step",
    ylabel: str = "loss",
    hline: tuple[float, str] | None = None,
) -> Path:
    """Loss against step for each arm (or any curve: ``xlabel``/``ylabel``, e.g. a sink metric
    against tokens seen); ``smooth`` > 1 overlays a moving average.

    Args:
        curves: ``{arm: [(x, y), ...]}``.
        path: output PNG.
        smooth: moving-average window (the raw curve is drawn faintly beneath it).
        log_y: log-scale the y axis.
        hline: ``(y, label)`` of a dashed reference line (e.g. the causal floor).
    """
    if not curves:
        raise ValueError("plot_loss_curves: no curves given")
    many = len(curves) > 6  # a legend beside the axes, not over the curves
    fig = figure((9, 4) if many else (7, 4))
    ax = fig.subplots()
    # More arms than the default 10-colour cycle: 20 colours, then dashed lines, so no two
    # curves look alike.
    tab20 = matplotlib.colormaps["tab20"].colors  # dark shades first, then the light ones
    palette = [*tab20[::2], *tab20[1::2]] if len(curves) > 10 else None
    for i, (arm, pts) in enumerate(curves.items()):
        arr = np.asarray(list(pts), dtype=float).reshape(-1, 2)
        steps, loss = arr[:, 0], arr[:, 1]
        style = {} if palette is None else {"color": palette[i % 20], "ls": "-:"[i // 20 % 2]}
        if smooth > 1 and len(loss) >= smooth:
            (line,) = ax.plot(steps, loss, alpha=0.25, lw=0.8, **style)
            ax.plot(steps[smooth - 1 :], _smooth(loss, smooth), color=line.get_color(), label=arm)
        else:
            ax.plot(steps, loss, label=arm, **style)
    if hline is not None:
        ax.axhline(hline[0], linestyle="--", color="gray", label=hline[1])
    if log_y:
        ax.set_yscale("log")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    if many:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    else:
        ax.legend()
    ax.grid(alpha=0.3)
    return save_figure(fig, path)
