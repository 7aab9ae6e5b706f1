"""Gate-score statistics and the sparsity of the SDPA output before and after the gate.

Qiu et al. (2025) report the mean gate score (0.116 for the G1 elementwise gate, 0.172
headwise; Table 4), note that scores concentrate near 0, that the first token's gate is
especially low, and that the G1 gate shrinks the mean ``|SDPA output|`` from 0.71 to 0.05
(docs/paper.md sections 4 and 6).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ._common import JsonMixin, TensorOrLayers, as_layer_list, check_ndim

GATE_LAYOUT = "(batch, seq, heads, D) or (batch, seq, heads, 1)"


@dataclass
class GateSplit(JsonMixin):
    """Statistics of the gate scores of a subset of queries (e.g. those a mask selects)."""

    mean: float
    share_below: float
    share_above: float
    n_values: int


@dataclass
class LayerGateStats(JsonMixin):
    """Gate-score statistics of one layer.

    Attributes:
        layer: layer index.
        headwise: whether the gate has one score per head (trailing axis of size 1).
        mean: mean score.
        share_below: share of scores below ``low`` (default 0.1).
        share_above: share of scores above ``high`` (default 0.9).
        first_token_mean: mean score of query 0.
        other_tokens_mean: mean score of queries ``1 .. T-1`` (NaN when ``T == 1``).
        per_head_mean: ``(heads,)`` mean score per head.
        per_head_share_below: ``(heads,)`` share below ``low`` per head.
        histogram: counts over the fixed bins of :attr:`GateStats.bin_edges`.
        n_out_of_range: scores outside the histogram range (not counted in any bin).
        in_mask: statistics of the queries where ``query_mask`` is True (None without a mask).
        out_of_mask: statistics of the queries where it is False.
    """

    layer: int
    headwise: bool
    mean: float
    share_below: float
    share_above: float
    first_token_mean: float
    other_tokens_mean: float
    per_head_mean: list[float]
    per_head_share_below: list[float]
    histogram: list[int]
    n_out_of_range: int
    in_mask: GateSplit | None
    out_of_mask: GateSplit | None


@dataclass
class GateStats(JsonMixin):
    """Gate-score statistics over layers; overall values weight every score equally.

    Attributes:
        layers: one :class:`LayerGateStats` per layer.
        mean: mean score over all layers (the paper's "gate score" column).
        share_below / share_above: shares below ``low`` / above ``high``.
        first_token_mean / other_tokens_mean: query 0 vs the other queries, all layers.
        per_layer_mean: ``(layers,)`` for plotting.
        per_layer_share_below: ``(layers,)``.
        bin_edges: ``bins + 1`` histogram edges.
        histogram: counts summed over layers.
        n_out_of_range: scores outside ``[bin_edges[0], bin_edges[-1]]``.
        low / high: the thresholds used.
        in_mask / out_of_mask: masked split over all layers (None without a mask).
    """

    layers: list[LayerGateStats]
    mean: float
    share_below: float
    share_above: float
    first_token_mean: float
    other_tokens_mean: float
    per_layer_mean: list[float]
    per_layer_share_below: list[float]
    bin_edges: list[float]
    histogram: list[int]
    n_out_of_range: int
    low: float
    high: float
    in_mask: GateSplit | None
    out_of_mask: GateSplit | None


class _Acc:
    """Running sums for an element-weighted mean and threshold shares."""

    def __init__(self) -> None:
        self.total = 0.0
        self.below = 0.0
        self.above = 0.0
        self.n = 0

    def add(self, x: torch.Tensor, low: float, high: float) -> None:
        self.total += float(x.sum())
        self.below += float((x < low).sum())
        self.above += float((x > high).sum())
        self.n += x.numel()

    def mean(self) -> float:
        return self.total / self.n if self.n else float("nan")

    def split(self) -> GateSplit:
        n = self.n
        nan = float("nan")
        return GateSplit(
            mean=self.mean(),
            share_below=self.below / n if n else nan,
            share_above=self.above / n if n else nan,
            n_values=n,
        )


def _check_query_mask(mask: torch.Tensor, gate: torch.Tensor, i: int) -> torch.Tensor:
    check_ndim(mask, 2, "query_mask", "(batch, seq)")
    if tuple(mask.shape) != tuple(gate.shape[:2]):
        raise ValueError(
            f"query_mask: shape {tuple(mask.shape)} does not match gate_scores[{i}] "
            f"(batch, seq) = {tuple(gate.shape[:2])}"
        )
    return mask.to(device=gate.device, dtype=torch.bool)


def gate_statistics(
    gate_scores: TensorOrLayers,
    query_mask: torch.Tensor | None = None,
    *,
    low: float = 0.1,
    high: float = 0.9,
    bins: int = 20,
    value_range: tuple[float, float] = (0.0, 1.0),
) -> GateStats:
    """Mean, shares near 0 and 1, first token vs others, per head, and a histogram.

    Args:
        gate_scores: per-layer gate scores after the activation (the ``hook_gate`` tap),
            each ``(batch, seq, heads, D)`` (elementwise) or ``(batch, seq, heads, 1)``
            (headwise); a single tensor counts as one layer.
        query_mask: optional boolean ``(batch, seq)``; adds statistics for the selected
            queries (``in_mask``) and the rest (``out_of_mask``), e.g. trigger vs other tokens.
        low / high: thresholds for the "near 0" and "near 1" shares.
        bins / value_range: fixed histogram bins; sigmoid gates live in ``[0, 1]``. Scores
            outside the range (e.g. SiLU gates) are counted in ``n_out_of_range`` instead.
    """
    layers = as_layer_list(gate_scores, "gate_scores")
    lo, hi = value_range
    if not (bins >= 1 and hi > lo):
        raise ValueError(
            f"gate_statistics: need bins >= 1 and a non-empty range, got {bins}, {value_range}"
        )
    total, first, others = _Acc(), _Acc(), _Acc()
    inside, outside = _Acc(), _Acc()
    hist_total = torch.zeros(bins, dtype=torch.float64)
    out_total = 0
    stats: list[LayerGateStats] = []
    for i, g in enumerate(layers):
        check_ndim(g, 4, f"gate_scores[{i}]", GATE_LAYOUT)
        x = g.detach().double()
        layer_acc, first_acc, other_acc = _Acc(), _Acc(), _Acc()
        layer_acc.add(x, low, high)
        first_acc.add(x[:, 0], low, high)
        other_acc.add(x[:, 1:], low, high)
        total.add(x, low, high)
        first.add(x[:, 0], low, high)
        others.add(x[:, 1:], low, high)
        # torch.histc drops values outside [min, max]; count them separately.
        hist = torch.histc(x.flatten().cpu(), bins=bins, min=lo, max=hi)
        n_out = x.numel() - int(hist.sum())
        hist_total += hist
        out_total += n_out
        layer_split = layer_acc.split()
        in_split = out_split = None
        if query_mask is not None:
            m = _check_query_mask(query_mask, x, i)
            a, b = _Acc(), _Acc()
            a.add(x[m], low, high)
            b.add(x[~m], low, high)
            inside.add(x[m], low, high)
            outside.add(x[~m], low, high)
            in_split, out_split = a.split(), b.split()
        stats.append(
            LayerGateStats(
                layer=i,
                headwise=x.shape[-1] == 1,
                mean=layer_split.mean,
                share_below=layer_split.share_below,
                share_above=layer_split.share_above,
                first_token_mean=first_acc.mean(),
                other_tokens_mean=other_acc.mean(),
                per_head_mean=x.mean(dim=(0, 1, 3)).tolist(),
                per_head_share_below=(x < low).double().mean(dim=(0, 1, 3)).tolist(),
                histogram=[int(c) for c in hist.tolist()],
                n_out_of_range=n_out,
                in_mask=in_split,
                out_of_mask=out_split,
            )
        )
    overall = total.split()
    edges = torch.linspace(lo, hi, bins + 1, dtype=torch.float64).tolist()
    return GateStats(
        layers=stats,
        mean=overall.mean,
        share_below=overall.share_below,
        share_above=overall.share_above,
        first_token_mean=first.mean(),
        other_tokens_mean=others.mean(),
        per_layer_mean=[s.mean for s in stats],
        per_layer_share_below=[s.share_below for s in stats],
        bin_edges=edges,
        histogram=[int(c) for c in hist_total.tolist()],
        n_out_of_range=out_total,
        low=low,
        high=high,
        in_mask=inside.split() if query_mask is not None else None,
        out_of_mask=outside.split() if query_mask is not None else None,
    )


@dataclass
class LayerSparsity(JsonMixin):
    """Magnitude and sparsity of one layer's SDPA output before and after the gate.

    ``share_below_before[i]`` is the share of ``|values|`` below ``thresholds[i]``.
    """

    layer: int
    mean_abs_before: float
    mean_abs_after: float
    share_below_before: list[float]
    share_below_after: list[float]


@dataclass
class OutputSparsity(JsonMixin):
    """SDPA-output sparsity over layers (element-weighted overall values).

    Attributes:
        thresholds: the magnitude thresholds.
        per_layer: one :class:`LayerSparsity` per layer.
        mean_abs_before / mean_abs_after: mean ``|value|`` (the paper: 0.71 -> 0.05).
        share_below_before / share_below_after: share below each threshold.
        ratio: ``mean_abs_after / mean_abs_before``.
    """

    thresholds: list[float]
    per_layer: list[LayerSparsity]
    mean_abs_before: float
    mean_abs_after: float
    share_below_before: list[float]
    share_below_after: list[float]
    ratio: float


def output_sparsity(
    before: TensorOrLayers,
    after: TensorOrLayers,
    thresholds: Sequence[float] = (1e-2, 1e-3),
) -> OutputSparsity:
    """Share of ``|values|`` below each threshold, and mean ``|value|``, before/after the gate.

    Args:
        before: SDPA output before the gate (the ``hook_z`` tap), ``(batch, seq, heads, D)``
            or any shape; one tensor or a per-layer list.
        after: the gated output (``hook_z_gated``), same shapes as ``before``.
        thresholds: magnitude thresholds.
    """
    b_layers = as_layer_list(before, "before")
    a_layers = as_layer_list(after, "after")
    if len(b_layers) != len(a_layers):
        raise ValueError(
            f"output_sparsity: {len(b_layers)} 'before' layers vs {len(a_layers)} 'after'"
        )
    thr = [float(t) for t in thresholds]
    n_total = 0
    sums = [0.0, 0.0]
    below = [[0.0] * len(thr), [0.0] * len(thr)]
    per_layer = []
    for i, (b, a) in enumerate(zip(b_layers, a_layers)):
        if b.shape != a.shape:
            raise ValueError(
                f"output_sparsity: layer {i} shapes differ, before {tuple(b.shape)} "
                f"vs after {tuple(a.shape)}"
            )
        n = b.numel()
        if n == 0:
            raise ValueError(f"output_sparsity: layer {i} is empty")
        layer_vals = []
        for side, x in enumerate((b, a)):
            ax = x.detach().double().abs()
            s = float(ax.sum())
            counts = [float((ax < t).sum()) for t in thr]
            sums[side] += s
            below[side] = [u + c for u, c in zip(below[side], counts)]
            layer_vals.append((s / n, [c / n for c in counts]))
        n_total += n
        per_layer.append(
            LayerSparsity(
                layer=i,
                mean_abs_before=layer_vals[0][0],
                mean_abs_after=layer_vals[1][0],
                share_below_before=layer_vals[0][1],
                share_below_after=layer_vals[1][1],
            )
        )
    mb, ma = sums[0] / n_total, sums[1] / n_total
    return OutputSparsity(
        thresholds=thr,
        per_layer=per_layer,
        mean_abs_before=mb,
        mean_abs_after=ma,
        share_below_before=[c / n_total for c in below[0]],
        share_below_after=[c / n_total for c in below[1]],
        ratio=ma / mb if mb > 0 else float("nan"),
    )
