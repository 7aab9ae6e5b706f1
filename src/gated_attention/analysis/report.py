"""A model-agnostic container for captured activations and the analysis run on it.

Any probe fills a :class:`Captured` -- :func:`~gated_attention.analysis.hf_probe.collect_hf`
from a ``transformers`` model's ``output_attentions`` / hidden states, or a probe of our own
model from its taps (``nn/hooks.py``: ``hook_q`` / ``hook_k`` post-RoPE, ``hook_gate``,
``hook_z`` / ``hook_z_gated`` and each block's ``hook_resid_post``) -- and
:func:`analyze_captured` turns it into an :class:`AnalysisReport` with the paper's Table 4
quantities (F-Attn, M-Act, gate mean) plus Gu et al.'s sink rate, and, for a model with another
attention normaliser than softmax, its null attention (``docs/normalizers.md``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from gated_attention.ops.normalizers import Normalizer

from ._common import JsonMixin, check_ndim, to_jsonable
from .activations import MassiveActivations, massive_activations
from .attention import key_and_row_mass_from_qk
from .gates import GateStats, OutputSparsity, gate_statistics, output_sparsity
from .sinks import (
    FirstTokenMassByLayer,
    NullAttention,
    NullAttentionByLayer,
    SinkRate,
    alpha_from_key_column,
    first_token_mass_by_layer,
    first_token_mass_from_key0,
    null_attention,
    null_attention_from_rows,
    sink_rate_by_layer,
    sink_rate_from_alpha,
    summarise_first_token_mass,
    summarise_null_attention,
)


@dataclass
class Captured:
    """Per-layer tensors captured from one forward pass (``B`` batch, ``T`` tokens).

    Every per-layer list, when present, has ``n_layers`` entries. Attention can be given as
    probabilities or as post-RoPE queries/keys (recomputed chunk by chunk, never as a full
    map); probabilities win when both are present.

    Attributes:
        n_layers: number of decoder blocks.
        seq_len: number of tokens ``T``.
        hidden: each block's raw residual-stream output, ``(B, T, d)`` (not final-normed).
        probs: softmax attention, ``(B, H, T, S)`` per layer.
        q: queries after QK-norm and RoPE, ``(B, T, H, D)`` per layer.
        k: keys after QK-norm and RoPE, ``(B, S, K, D)`` per layer.
        scale: softmax scale for ``q``/``k`` (``None`` = ``1 / sqrt(D)``).
        causal: whether attention is causal (bottom-right aligned when ``S > T``).
        gate_scores: gate scores after the activation, ``(B, T, H, D)`` or ``(B, T, H, 1)``.
        z_before: SDPA output before the gate, ``(B, T, H, D)`` per layer.
        z_after: SDPA output after the gate, ``(B, T, H, D)`` per layer.
        attention_mask: ``(B, T)`` padding mask the forward used (1 = real token).
        query_mask: optional ``(B, T)`` boolean that splits the gate statistics.
        input_ids: ``(B, T)`` token ids.
        meta: free-form provenance (model type, what was captured how).
        normalizers: each layer's attention normaliser (``None``: softmax): attention is then
            recomputed through it, and its null attention is reported.
    """

    n_layers: int
    seq_len: int
    hidden: list[torch.Tensor]
    probs: list[torch.Tensor] | None = None
    q: list[torch.Tensor] | None = None
    k: list[torch.Tensor] | None = None
    scale: float | None = None
    causal: bool = True
    gate_scores: list[torch.Tensor] | None = None
    z_before: list[torch.Tensor] | None = None
    z_after: list[torch.Tensor] | None = None
    attention_mask: torch.Tensor | None = None
    query_mask: torch.Tensor | None = None
    input_ids: torch.Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    normalizers: list[Normalizer] | None = None

    def __post_init__(self) -> None:
        names = ("hidden", "probs", "q", "k", "gate_scores", "z_before", "z_after", "normalizers")
        for name in names:
            value = getattr(self, name)
            if value is None:
                continue
            if len(value) != self.n_layers:
                raise ValueError(
                    f"Captured.{name}: {len(value)} entries for n_layers={self.n_layers}"
                )
        if (self.q is None) != (self.k is None):
            raise ValueError("Captured: give both q and k, or neither")
        for i, h in enumerate(self.hidden):
            check_ndim(h, 3, f"Captured.hidden[{i}]", "(batch, seq, d)")
            if h.shape[1] != self.seq_len:
                raise ValueError(
                    f"Captured.hidden[{i}]: seq axis {h.shape[1]} != seq_len {self.seq_len}"
                )

    @property
    def batch_size(self) -> int:
        """Number of sequences ``B``."""
        return int(self.hidden[0].shape[0]) if self.hidden else 0


@dataclass
class AnalysisReport(JsonMixin):
    """Everything :func:`analyze_captured` measured; absent parts are ``None``.

    Attributes:
        n_layers / seq_len / batch_size: what was analysed.
        first_token_mass: per-layer attention on token 0 and F-Attn (needs probs or q/k).
        sink: Gu et al.'s sink rate (needs probs or q/k).
        massive: massive activations and M-Act of the residual stream.
        gates: gate-score statistics (needs gate scores).
        sparsity: SDPA-output sparsity before/after the gate (needs z before and after).
        meta: the :class:`Captured` provenance.
        null_attention: for a non-softmax normaliser, the weight each layer leaves to no real
            token and its learned parameters (``first_token_mass`` and ``sink`` then read the
            real-token weights).
    """

    n_layers: int
    seq_len: int
    batch_size: int
    first_token_mass: FirstTokenMassByLayer | None
    sink: SinkRate | None
    massive: MassiveActivations | None
    gates: GateStats | None
    sparsity: OutputSparsity | None
    meta: dict[str, Any] = field(default_factory=dict)
    null_attention: NullAttentionByLayer | None = None

    def summary(self) -> dict[str, Any]:
        """Headline numbers, named like the paper's Table 4 columns where they match."""
        out: dict[str, Any] = {"n_layers": self.n_layers, "seq_len": self.seq_len}
        if self.first_token_mass is not None:
            f = self.first_token_mass
            out.update(
                f_attn=f.mean,
                causal_floor=f.floor,
                f_attn_ratio_to_floor=f.ratio_to_floor,
                f_attn_max_layer=f.max_layer,
                f_attn_max_value=f.max_value,
            )
        if self.sink is not None:
            out.update(sink_rate=self.sink.rate, sink_eps=self.sink.eps)
        if self.massive is not None:
            out.update(m_act=self.massive.m_act, any_massive=self.massive.any_massive)
        if self.gates is not None:
            g = self.gates
            out.update(
                gate_mean=g.mean,
                gate_share_below=g.share_below,
                gate_first_token_mean=g.first_token_mean,
                gate_other_tokens_mean=g.other_tokens_mean,
            )
        if self.sparsity is not None:
            out.update(
                mean_abs_z_before=self.sparsity.mean_abs_before,
                mean_abs_z_after=self.sparsity.mean_abs_after,
            )
        if self.null_attention is not None:
            n = self.null_attention
            out.update(
                normalizer=n.kind,
                null_mass=n.null_mass,
                row_mass=n.row_mass,
                first_token_share=n.first_token_share,
                **{f"{name}_mean": v for name, v in n.parameter_means.items()},
            )
        return to_jsonable(out)

    def to_dict(self) -> dict[str, Any]:
        """All fields plus ``summary`` as plain JSON values."""
        d = super().to_dict()
        d["summary"] = self.summary()
        return d


def _sink_metrics_from_qk(
    q: Sequence[torch.Tensor],
    k: Sequence[torch.Tensor],
    scale: float | None,
    causal: bool,
    eps: float,
    include_first_query: bool,
    query_chunk: int,
    normalizers: Sequence[Normalizer | None],
) -> tuple[FirstTokenMassByLayer, SinkRate, list[NullAttention]]:
    """First-token mass, alpha_1 and null attention from one streamed pass over each layer's
    q/k (through the layer's normaliser)."""
    ftm, alphas, nulls = [], [], []
    for ql, kl, norm in zip(q, k, normalizers):
        p0, rows = key_and_row_mass_from_qk(
            ql, kl, 0, scale, causal, None, query_chunk, normalizer=norm
        )  # (B, H, T) each
        S = kl.shape[1]
        ftm.append(first_token_mass_from_key0(p0, S, include_first_query=include_first_query))
        alphas.append(alpha_from_key_column(p0, 0, S))  # alpha_1 is the key-0 column's mean
        if norm is not None:
            nulls.append(null_attention_from_rows(p0, rows, null_defined=norm.kind.null_attention))
    seq_len = q[0].shape[1]
    sink = sink_rate_from_alpha(alphas, eps=eps, k=1, seq_len=seq_len)
    return summarise_first_token_mass(ftm), sink, nulls


def analyze_captured(
    captured: Captured,
    *,
    eps: float = 0.3,
    top_k: int = 5,
    include_first_query: bool = True,
    query_chunk: int = 256,
    sparsity_thresholds: Sequence[float] = (1e-2, 1e-3),
    gate_low: float = 0.1,
    gate_high: float = 0.9,
    gate_bins: int = 20,
) -> AnalysisReport:
    """Compute first-token mass, sink rate, massive activations and gate statistics.

    Args:
        captured: what a probe collected.
        eps: Gu et al.'s sink threshold (0.3).
        top_k: largest activations to locate per layer.
        include_first_query: count query 0 in the first-token mass (see ``first_token_mass``).
        query_chunk: queries per chunk when attention is recomputed from q/k.
        sparsity_thresholds: magnitude thresholds for the SDPA-output sparsity.
        gate_low / gate_high / gate_bins: gate statistics settings.

    Raises:
        ValueError: if the batch has padding; the sink metrics read key 0 as every row's first
            token, so batch equal-length sequences (Gu et al. crop every sample to T = 64).
    """
    c = captured
    if c.attention_mask is not None and not bool((c.attention_mask != 0).all()):
        raise ValueError(
            "analyze_captured: attention_mask contains padding; the sink metrics assume "
            "unpadded equal-length sequences (crop or pack every sample to the same length)"
        )
    ftm: FirstTokenMassByLayer | None = None
    sink: SinkRate | None = None
    norms = c.normalizers if c.normalizers is not None else [None] * c.n_layers
    nulls: list[NullAttention] = []
    if c.probs is not None:
        ftm = first_token_mass_by_layer(c.probs, include_first_query=include_first_query)
        sink = sink_rate_by_layer(c.probs, eps=eps, k=1)
        nulls = [
            null_attention(p, null_defined=n.kind.null_attention)
            for p, n in zip(c.probs, norms)
            if n is not None
        ]
    elif c.q is not None and c.k is not None:
        ftm, sink, nulls = _sink_metrics_from_qk(
            c.q, c.k, c.scale, c.causal, eps, include_first_query, query_chunk, norms
        )
    null_summary = None
    if nulls:
        kinds = [n for n in norms if n is not None]
        null_summary = summarise_null_attention(
            kinds[0].name, nulls, [dict(n.params) for n in kinds]
        )
    massive = massive_activations(c.hidden, top_k=top_k) if c.hidden else None
    gates = None
    if c.gate_scores is not None:
        gates = gate_statistics(
            c.gate_scores, c.query_mask, low=gate_low, high=gate_high, bins=gate_bins
        )
    sparsity = None
    if c.z_before is not None and c.z_after is not None:
        sparsity = output_sparsity(c.z_before, c.z_after, sparsity_thresholds)
    return AnalysisReport(
        n_layers=c.n_layers,
        seq_len=c.seq_len,
        batch_size=c.batch_size,
        first_token_mass=ftm,
        sink=sink,
        massive=massive,
        gates=gates,
        sparsity=sparsity,
        meta=dict(c.meta),
        null_attention=null_summary,
    )
