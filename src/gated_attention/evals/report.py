"""Tables, figures and the written verdict of a long-context study (from its ``results.json``).

Everything here reads the numbers of a finished study; nothing is hard-coded except the paper's
own Table 5 (PAPER.md), which is shown beside ours for comparison.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PAPER_TABLE5: dict[str, Any] = {
    "title": "Paper Table 5 (RULER accuracy, %): 32k models, then YaRN to 128k without training",
    "columns": ["4k", "8k", "16k", "32k", "64k", "128k"],
    "rows": {
        "baseline 32k": [88.89, 85.88, 83.15, 79.50, None, None],
        "gated 32k": [90.56, 87.11, 84.61, 79.77, None, None],
        "baseline + YaRN": [82.90, 71.52, 61.23, 37.94, 37.51, 31.65],
        "gated + YaRN": [88.13, 80.01, 76.74, 72.88, 66.60, 58.82],
    },
}
"""PAPER.md, Table 5. Columns 4k..32k lie within the 32k training length; 64k and 128k need
YaRN (factor 4)."""


def jsonable(obj: Any) -> Any:
    """Plain JSON values: string keys, lists for tuples, paths as strings, NaN as ``None``."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _fmt(x: float | None, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:.{digits}f}"


def _pct(x: float) -> str:
    return f"{x * 100:+.1f}%"


def reference_arm(arms: Sequence[str]) -> str:
    """The arm others are compared with: ``baseline`` if present, else the first."""
    return "baseline" if "baseline" in arms else arms[0]


def ppl_table(results: dict[str, Any]) -> str:
    """Markdown: perplexity at every length and its rise over the in-length (1x) value."""
    lengths = results["config"]["lengths"]
    mult = results["config"]["multipliers"]
    head = "| arm | scaling | " + " | ".join(f"{m}x ({n})" for m, n in zip(mult, lengths)) + " |"
    lines = [
        "Perplexity on the same validation tokens (lower is better); in brackets the change "
        "from the 1x value.",
        "",
        head,
        "|" + "---|" * (len(lengths) + 2),
    ]
    for arm, res in results["arms"].items():
        for mode, entry in res["scalings"].items():
            base = entry["ppl"].get(str(lengths[0]))
            cells = []
            for n in lengths:
                ppl = entry["ppl"].get(str(n))
                if ppl is None:
                    cells.append("-")
                elif n == lengths[0] or not base:
                    cells.append(_fmt(ppl))
                else:
                    cells.append(f"{_fmt(ppl)} ({_pct(ppl / base - 1)})")
            lines.append(f"| {arm} | {mode} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def retrieval_table(results: dict[str, Any]) -> str | None:
    """Markdown in Table 5's shape: retrieval accuracy (%) per length and its drop from 1x."""
    lengths = results["config"]["lengths"]
    mult = results["config"]["multipliers"]
    rows = []
    task = None
    for arm, res in results["arms"].items():
        for mode, entry in res["scalings"].items():
            ret = entry.get("retrieval")
            if not ret:
                continue
            task = ret["task"]
            acc = ret["accuracy"]
            base = acc.get(str(lengths[0]), {}).get("mean")
            cells = []
            for n in lengths:
                a = acc.get(str(n), {}).get("mean")
                if a is None:
                    cells.append("-")
                elif n == lengths[0] or base is None:
                    cells.append(f"{a * 100:.1f}")
                else:
                    cells.append(f"{a * 100:.1f} ({(a - base) * 100:+.1f})")
            rows.append(f"| {arm} | {mode} | " + " | ".join(cells) + " |")
    if not rows:
        return None
    head = "| arm | scaling | " + " | ".join(f"{m}x ({n})" for m, n in zip(mult, lengths)) + " |"
    return "\n".join(
        [
            f"Retrieval ({task}) exact-match accuracy, % (Table 5 shape); in brackets the change "
            "in points from 1x.",
            "",
            head,
            "|" + "---|" * (len(lengths) + 2),
            *rows,
        ]
    )


def paper_table() -> str:
    """Markdown of the paper's Table 5 with each row's drop from its first column."""
    cols = PAPER_TABLE5["columns"]
    lines = [
        PAPER_TABLE5["title"] + "; in brackets the change in points from 4k.",
        "",
        "| | " + " | ".join(cols) + " |",
        "|" + "---|" * (len(cols) + 1),
    ]
    for name, vals in PAPER_TABLE5["rows"].items():
        first = vals[0]
        cells = [
            _fmt(v) if i == 0 or v is None else f"{_fmt(v)} ({v - first:+.1f})"
            for i, v in enumerate(vals)
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def first_token_table(results: dict[str, Any]) -> str | None:
    """Markdown: F-Attn (attention on token 0, mean over layers) per length, plain RoPE."""
    lengths = results["config"]["lengths"]
    rows = []
    floor = None
    for arm, res in results["arms"].items():
        entry = res["scalings"].get("none") or next(iter(res["scalings"].values()))
        mass = entry.get("first_token_mass")
        if not mass:
            continue
        floor = entry.get("first_token_floor", floor)
        rows.append(f"| {arm} | " + " | ".join(_fmt(mass.get(str(n)), 3) for n in lengths) + " |")
    if not rows:
        return None
    lines = [
        "First-token attention (F-Attn, PAPER.md section 6: mean over layers, heads and "
        "queries), plain RoPE, streamed chunk by chunk.",
        "",
        "| arm | " + " | ".join(str(n) for n in lengths) + " |",
        "|" + "---|" * (len(lengths) + 1),
        *rows,
    ]
    if floor:
        lines.append(
            "| uniform causal floor | "
            + " | ".join(_fmt(floor.get(str(n)), 3) for n in lengths)
            + " |"
        )
    return "\n".join(lines)


def streaming_table(results: dict[str, Any]) -> str | None:
    """Markdown of the StreamingLLM test: perplexity after the window fills (tail)."""
    rows = []
    settings: list[str] = []
    info = None
    for arm, res in results["arms"].items():
        st = res.get("streaming")
        if not st:
            continue
        info = st
        names = [k for k, v in st.items() if isinstance(v, dict)]
        settings = settings or names
        cells = [_fmt(st[n]["tail_ppl"]) if n in st else "-" for n in settings]
        rows.append(f"| {arm} | " + " | ".join(cells) + " |")
    if not rows or info is None:
        return None
    return "\n".join(
        [
            f"StreamingLLM test: perplexity of positions >= {info['window_size']} in "
            f"{info['length']}-token windows with a KV cache of the last {info['window_size']} tokens "
            "(plus N sink tokens); `full` keeps the whole cache.",
            "",
            "| arm | " + " | ".join(settings) + " |",
            "|" + "---|" * (len(settings) + 1),
            *rows,
        ]
    )


def _paper_sentence() -> str:
    rows = PAPER_TABLE5["rows"]
    cols = PAPER_TABLE5["columns"]
    g, b = rows["gated + YaRN"], rows["baseline + YaRN"]
    return (
        f"Paper (Table 5): with YaRN, gated drops {g[0] - g[-1]:.1f} points from {cols[0]} to "
        f"{cols[-1]} vs {b[0] - b[-1]:.1f} for the baseline."
    )


def verdict(results: dict[str, Any]) -> list[str]:
    """Sentences drawn from the numbers: which arm degrades less, per scaling mode."""
    arms = list(results["arms"])
    lengths = [str(n) for n in results["config"]["lengths"]]
    first, last = lengths[0], lengths[-1]
    mult = results["config"]["multipliers"][-1]
    ref = reference_arm(arms)
    lines: list[str] = []
    if len(lengths) < 2:
        return ["Only one length was evaluated; no extrapolation verdict."]
    modes = list(results["arms"][ref]["scalings"])
    for other in (a for a in arms if a != ref):
        wins = ties = total = 0
        for mode in modes:
            try:
                r = results["arms"][ref]["scalings"][mode]["ppl"]
                o = results["arms"][other]["scalings"][mode]["ppl"]
                rise_ref, rise_other = r[last] / r[first], o[last] / o[first]
            except (KeyError, TypeError, ZeroDivisionError):
                continue
            total += 1
            # Rises within 1% of each other count as a tie (noise at small scale).
            if abs(rise_other - rise_ref) <= 0.01 * rise_ref:
                how, ties = "about as much as", ties + 1
            elif rise_other < rise_ref:
                how, wins = "less than", wins + 1
            else:
                how = "more than"
            lines.append(
                f"{mode}: at {mult}x the training length the {other} perplexity is "
                f"{rise_other:.2f}x its in-length value vs {rise_ref:.2f}x for {ref} "
                f"({other} degrades {how} {ref}); ppl {o[last]:.2f} vs {r[last]:.2f}."
            )
        if total:
            losses = total - wins - ties
            lines.append(
                f"Overall: {other} extrapolates better than {ref} under {wins} of {total} "
                f"scaling modes, worse under {losses}, a tie (within 1%) under {ties}"
                f"{'; the paper direction' if wins > losses else ''}. " + _paper_sentence()
            )
    for arm in arms:
        best = None
        for mode, entry in results["arms"][arm]["scalings"].items():
            ppl = entry["ppl"].get(last)
            if ppl is not None and (best is None or ppl < best[1]):
                best = (mode, ppl)
        if best:
            lines.append(f"{arm}: the best scaling at {mult}x is {best[0]} (ppl {best[1]:.2f}).")
    for arm in arms:
        st = results["arms"][arm].get("streaming")
        if not st or "window" not in st:
            continue
        with_sink = [k for k in st if k.startswith("window+")]
        if not with_sink:
            continue
        w, s = st["window"]["tail_ppl"], st[with_sink[0]]["tail_ppl"]
        leans = (
            "the model leans on an attention sink" if w > 1.1 * s else "little reliance on a sink"
        )
        lines.append(
            f"{arm}: with a {st['window_size']}-token cache, evicting the first tokens gives "
            f"perplexity {w:.2f} vs {s:.2f} keeping {st[with_sink[0]]['sink_tokens']} sink tokens "
            f"({_pct(w / s - 1)}; {leans})."
        )
    for arm in arms:
        parts, task = [], None
        for mode, entry in results["arms"][arm]["scalings"].items():
            ret = entry.get("retrieval")
            if not ret:
                continue
            task = ret["task"]
            acc = ret["accuracy"]
            a0, a1 = acc.get(first, {}).get("mean"), acc.get(last, {}).get("mean")
            if a0 is not None and a1 is not None:
                t0 = acc.get(first, {}).get("token_accuracy")
                t1 = acc.get(last, {}).get("token_accuracy")
                digits = (
                    f" (answer tokens {t0 * 100:.0f}% -> {t1 * 100:.0f}%)"
                    if t0 is not None and t1 is not None
                    else ""
                )
                parts.append(f"{mode} {a0 * 100:.0f}% -> {a1 * 100:.0f}%{digits}")
        if parts:
            lines.append(
                f"{arm}: {task} exact-match accuracy at 1x -> {mult}x: " + ", ".join(parts) + "."
            )
    return lines


def write_markdown(results: dict[str, Any], path: Path, figures: Sequence[str] = ()) -> Path:
    """The study report: our tables, the paper's Table 5, figures and the verdict."""
    cfg = results["config"]
    parts = [
        "# Long-context study",
        "",
        f"Trained length {cfg['train_len']} tokens; lengths {cfg['lengths']}; scalings "
        f"{', '.join(cfg['scalings'])} (static factor {cfg['factor']}, dynamic NTK factor "
        f"{cfg['dynamic_factor']}); the same {cfg['tokens_per_length']} validation label tokens "
        "at every length.",
        "",
        "## Perplexity vs length",
        "",
        ppl_table(results),
        "",
    ]
    table = retrieval_table(results)
    if table:
        parts += ["## Retrieval", "", table, ""]
    table = first_token_table(results)
    if table:
        parts += ["## First-token attention", "", table, ""]
    table = streaming_table(results)
    if table:
        parts += ["## Streaming (attention sinks)", "", table, ""]
    parts += ["## Paper", "", paper_table(), ""]
    if figures:
        parts += ["## Figures", ""] + [f"![{Path(f).stem}]({Path(f).name})" for f in figures] + [""]
    parts += ["## Verdict", ""] + [f"- {line}" for line in results.get("verdict", [])] + [""]
    path.write_text("\n".join(parts))
    return path


def plot_study(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """PNG figures: perplexity vs length per scaling mode (one line per arm), per-position loss
    at the longest length, and retrieval accuracy vs length when measured."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda v, _: f"{v:.3g}")
    out: list[Path] = []
    arms = results["arms"]
    lengths = results["config"]["lengths"]
    modes = results["config"]["scalings"]

    fig = Figure(figsize=(3.2 * len(modes), 3.2), constrained_layout=True)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(modes), squeeze=False)[0]
    for ax, mode in zip(axes, modes):
        for arm, res in arms.items():
            entry = res["scalings"].get(mode)
            if not entry:
                continue
            ys = [entry["ppl"].get(str(n), float("nan")) for n in lengths]
            ax.plot(lengths, ys, marker="o", label=arm)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
        ax.axvline(results["config"]["train_len"], color="grey", ls=":", lw=1)
        ax.set_title(mode)
        ax.set_xlabel("context length")
    axes[0].set_ylabel("perplexity")
    axes[0].legend()
    path = out_dir / "ppl_vs_length.png"
    fig.savefig(path, dpi=110)
    out.append(path)

    fig = Figure(figsize=(6.4, 3.6), constrained_layout=True)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for arm, res in arms.items():
        for mode in modes:
            entry = res["scalings"].get(mode)
            if not entry or not entry.get("per_position_loss"):
                continue
            curve = entry["per_position_loss"]
            xs = [(i + 0.5) * lengths[-1] / len(curve) for i in range(len(curve))]
            ax.plot(xs, curve, lw=1, label=f"{arm} / {mode}")
    ax.axvline(results["config"]["train_len"], color="grey", ls=":", lw=1)
    ax.set_xlabel(f"position in a {lengths[-1]}-token window")
    ax.set_ylabel("mean loss (nats)")
    ax.legend(fontsize=6, ncol=2)
    path = out_dir / "per_position_loss.png"
    fig.savefig(path, dpi=110)
    out.append(path)

    if any(e.get("retrieval") for r in arms.values() for e in r["scalings"].values()):
        fig = Figure(figsize=(6.4, 3.6), constrained_layout=True)
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        for arm, res in arms.items():
            for mode, entry in res["scalings"].items():
                ret = entry.get("retrieval")
                if not ret:
                    continue
                ys = [ret["accuracy"].get(str(n), {}).get("mean", float("nan")) for n in lengths]
                ax.plot(lengths, [y * 100 for y in ys], marker="o", label=f"{arm} / {mode}")
        ax.set_xscale("log", base=2)
        ax.axvline(results["config"]["train_len"], color="grey", ls=":", lw=1)
        ax.set_xlabel("context length")
        ax.set_ylabel("exact match (%)")
        ax.legend(fontsize=6, ncol=2)
        path = out_dir / "retrieval_vs_length.png"
        fig.savefig(path, dpi=110)
        out.append(path)
    return out
