"""Typed per-run metrics: what tables, verdicts and aggregates read from a study's run records.

Tables name their columns by :class:`RunMetrics` field (:class:`Column`), and aggregates are
read by field name through :func:`check_metric`, so a misspelt metric fails at import time or
on first use instead of printing a silent "-".
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gated_attention.experiments.study import RunRecord

BACKCOPY_METRICS = (
    "bos_other",
    "bos_trigger",
    "gate_other",
    "gate_trigger",
    "effective_bos_other",
    "null_other",
    "null_trigger",
    "row_mass_other",
)
"""Metrics of the backcopy split, measured only on backcopy tasks (and the gate ones only for
gated arms): left out of aggregates where a run did not measure them."""

LENGTH_MULTIPLIERS = (1, 2, 4, 8)
"""Evaluation lengths, as multiples of the training length, that have a ``ppl_<m>x`` field."""

EVAL_METRICS = (
    "loss_fp",
    "w8a8_delta",
    "linear_input_peak",
    *(f"ppl_{m}x" for m in LENGTH_MULTIPLIERS),
)
"""Report-time evaluations a study's scale asks for (``analysis = { w8a8 = true,
length_multipliers = [2, 4, 8] }``): left out of aggregates where a run did not measure them."""


@dataclass(frozen=True)
class RunMetrics:
    """The flat metrics of one run (``None``: not measured)."""

    val_loss: float | None = None
    val_ppl: float | None = None
    f_attn: float | None = None
    causal_floor: float | None = None
    f_attn_ratio_to_floor: float | None = None
    sink_rate: float | None = None
    m_act: float | None = None
    max_abs: float | None = None
    """Largest residual-stream activation over layers."""
    gate_mean: float | None = None
    gate_share_below: float | None = None
    z_before: float | None = None
    z_after: float | None = None
    max_attention_logit: float | None = None
    spike_score: float | None = None
    params: int | None = None
    gate_params: int | None = None
    seconds: float | None = None
    bos_other: float | None = None
    """Backcopy split: the largest layer mean of BOS attention on non-trigger queries."""
    bos_trigger: float | None = None
    gate_other: float | None = None
    """Backcopy split: the lowest layer mean gate on non-trigger queries."""
    gate_trigger: float | None = None
    effective_bos_other: float | None = None
    null_other: float | None = None
    """Backcopy split (normalisers with null attention): the largest layer mean of ``1 - row
    mass`` on non-trigger queries, the weight the sink column takes where the head is dormant."""
    null_trigger: float | None = None
    row_mass_other: float | None = None
    """Backcopy split (non-softmax normalisers): the smallest layer mean of the weight on the real
    tokens on non-trigger queries."""
    null_mass: float | None = None
    """Non-softmax normalisers: mean ``1 - row mass`` over queries, heads and layers (``None``
    for sigmoid attention, whose rows may exceed 1; ``docs/normalizers.md``)."""
    row_mass: float | None = None
    """Non-softmax normalisers: mean total weight on the real tokens."""
    first_token_share: float | None = None
    """Non-softmax normalisers: mean ``w_0 / row mass``, the F-Attn with the null column removed."""
    sinks_mean: float | None = None
    """``sink`` normaliser: the mean learned sink logit ``s_h``."""
    tokens: int | None = None
    """Training tokens seen at the last training-time probe (``analysis.training``)."""
    probe_ratio: float | None = None
    """Last probe: first-token mass over the causal floor, on the held-out probe batch."""
    ratio_max_layer: float | None = None
    """Last probe: the largest per-layer first-token mass over the floor."""
    sink_rate_short: float | None = None
    """Last probe: the sink rate on the first 64 tokens (Gu et al.'s T = 64)."""
    alpha_max: float | None = None
    """Last probe: the largest per-head alpha_1 (mean attention on token 0)."""
    m_act_blocks: float | None = None
    """Last probe: mean over layers of the largest |h_l - h_embed| (what the blocks wrote)."""
    embed_max: float | None = None
    """Last probe: the largest |h| of the token embeddings."""
    f_attn_gated: float | None = None
    """Last probe (G1 gates): first-token mass weighted by the head's gate score."""
    ratio_slope: float | None = None
    """Slope of the probe ratio against tokens over the second half of the run, per 1M tokens."""
    tokens_to_2x: float | None = None
    """Tokens at which the probe ratio reached 2 (or a linear extrapolation to it)."""

    loss_fp: float | None = None
    """Mean next-token loss on the evaluation stream at the training length, in float (the
    reference of ``w8a8_delta``)."""
    w8a8_delta: float | None = None
    """Loss increase (nats) under int8 per-tensor fake quantisation of every Linear's weight and
    input (W8A8, ``analysis.quantization``)."""
    linear_input_peak: float | None = None
    """The largest ``max|x| / mean|x|`` over the inputs of the model's Linear layers
    (``analysis.quantization.linear_input_peaks``): above 127, per-tensor int8 rounds a typical
    input value to zero or one step."""
    ppl_1x: float | None = None
    """Perplexity at the training length on the evaluation stream (the length study's path,
    ``evals.perplexity_at_lengths``; RoPE unscaled)."""
    ppl_2x: float | None = None
    ppl_4x: float | None = None
    ppl_8x: float | None = None

    @classmethod
    def from_record(cls, rec: RunRecord) -> RunMetrics:
        """The metrics of a run from its training result and its analysis."""
        a = rec.analysis or {}
        s = a.get("summary", {})
        params = rec.result.get("parameters") or {}
        massive = a.get("report", {}).get("massive", {}).get("max_abs_per_layer")
        split: dict[str, float] = {}
        bc = a.get("backcopy")
        if bc:
            layers = bc["per_layer"]
            split["bos_other"] = max(x["bos_attention_other"] or 0 for x in layers)
            split["bos_trigger"] = max(x["bos_attention_trigger"] or 0 for x in layers)
            if layers and "gate_other" in layers[0]:
                split["gate_other"] = min(x["gate_other"] for x in layers)
                split["gate_trigger"] = max(x["gate_trigger"] for x in layers)
                split["effective_bos_other"] = max(x["effective_bos_other"] for x in layers)
            if layers and layers[0].get("row_mass_other") is not None:
                split["row_mass_other"] = min(x["row_mass_other"] for x in layers)
            if layers and layers[0].get("null_other") is not None:
                split["null_other"] = max(x["null_other"] for x in layers)
                split["null_trigger"] = max(x["null_trigger"] or 0 for x in layers)
        e = a.get("emergence") or {}
        quant = a.get("quantization") or {}
        ppl = (a.get("lengths") or {}).get("ppl") or {}
        evals = {f"ppl_{m}x": ppl.get(str(m)) for m in LENGTH_MULTIPLIERS}
        return cls(
            loss_fp=quant.get("loss"),
            w8a8_delta=quant.get("delta"),
            linear_input_peak=quant.get("linear_input_peak"),
            **evals,
            tokens=e.get("tokens"),
            probe_ratio=e.get("f_attn_ratio"),
            ratio_max_layer=e.get("ratio_max_layer"),
            sink_rate_short=e.get("sink_rate_short"),
            alpha_max=e.get("alpha_max"),
            m_act_blocks=e.get("m_act_blocks"),
            embed_max=e.get("embed_max"),
            ratio_slope=e.get("slope"),
            f_attn_gated=e.get("f_attn_gated"),
            tokens_to_2x=e.get("tokens_to_target") if e.get("target") == 2.0 else None,
            val_loss=a.get("val_loss"),
            val_ppl=a.get("val_ppl"),
            f_attn=s.get("f_attn"),
            causal_floor=s.get("causal_floor"),
            f_attn_ratio_to_floor=s.get("f_attn_ratio_to_floor"),
            sink_rate=s.get("sink_rate"),
            m_act=s.get("m_act"),
            max_abs=max(massive or [0]) if a else None,
            gate_mean=s.get("gate_mean"),
            null_mass=s.get("null_mass"),
            row_mass=s.get("row_mass"),
            first_token_share=s.get("first_token_share"),
            sinks_mean=s.get("sinks_mean"),
            gate_share_below=s.get("gate_share_below"),
            z_before=s.get("mean_abs_z_before"),
            z_after=s.get("mean_abs_z_after"),
            max_attention_logit=a.get("max_attention_logit"),
            spike_score=rec.result.get("spike_score"),
            params=params.get("total"),
            gate_params=params.get("gate"),
            seconds=rec.seconds,
            **split,
        )

    def measured(self) -> dict[str, float | None]:
        """Every field by name, without the backcopy-split and report-time evaluation ones
        this run did not measure."""
        return {
            k: v
            for k, v in dataclasses.asdict(self).items()
            if v is not None or k not in BACKCOPY_METRICS + EVAL_METRICS
        }


METRICS = tuple(f.name for f in dataclasses.fields(RunMetrics))


def check_metric(name: str) -> str:
    """``name`` when it is a :class:`RunMetrics` field, else a ``ValueError`` naming the fix."""
    if name not in METRICS:
        close = difflib.get_close_matches(name, METRICS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown metric {name!r}.{hint} Valid: {', '.join(METRICS)}.")
    return name


@dataclass(frozen=True)
class Column:
    """A table column: a :class:`RunMetrics` field and its header (checked when built)."""

    metric: str
    header: str

    def __post_init__(self) -> None:
        check_metric(self.metric)
