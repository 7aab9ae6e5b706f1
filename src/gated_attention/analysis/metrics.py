"""All analysis metrics in one namespace: pure functions on tensors, results as dataclasses.

The implementations live in small modules with one job each:

* :mod:`.sinks` -- first-token mass (F-Attn) and its causal floor, Gu et al.'s alpha_k and
  sink rate, null attention under non-softmax normalisers;
* :mod:`.activations` -- massive activations (Sun et al. 2024) and M-Act;
* :mod:`.gates` -- gate-score statistics and SDPA-output sparsity;
* :mod:`.attention` -- attention maps from post-RoPE q/k (dense, chunked or streamed) and the
  gate-weighted effective attention.
"""

from __future__ import annotations

from .activations import (
    LayerActivations,
    MassiveActivations,
    TopActivation,
    layer_activations,
    massive_activations,
)
from .attention import (
    alpha_from_qk,
    attention_probs_from_qk,
    effective_attention,
    first_token_mass_from_qk,
    head_averaged_map,
    key_and_row_mass_from_qk,
    key_mass_from_qk,
)
from .gates import (
    GateSplit,
    GateStats,
    LayerGateStats,
    LayerSparsity,
    OutputSparsity,
    gate_statistics,
    output_sparsity,
)
from .sinks import (
    FirstTokenMass,
    FirstTokenMassByLayer,
    NullAttention,
    NullAttentionByLayer,
    SinkRate,
    alpha_k,
    causal_floor,
    first_token_mass,
    first_token_mass_by_layer,
    null_attention,
    null_attention_from_rows,
    sink_rate,
    sink_rate_by_layer,
    sink_rate_from_alpha,
    summarise_null_attention,
)

__all__ = [
    "FirstTokenMass",
    "FirstTokenMassByLayer",
    "GateSplit",
    "GateStats",
    "LayerActivations",
    "LayerGateStats",
    "LayerSparsity",
    "MassiveActivations",
    "NullAttention",
    "NullAttentionByLayer",
    "OutputSparsity",
    "SinkRate",
    "TopActivation",
    "alpha_from_qk",
    "alpha_k",
    "attention_probs_from_qk",
    "causal_floor",
    "effective_attention",
    "first_token_mass",
    "first_token_mass_by_layer",
    "first_token_mass_from_qk",
    "gate_statistics",
    "head_averaged_map",
    "key_and_row_mass_from_qk",
    "key_mass_from_qk",
    "layer_activations",
    "massive_activations",
    "null_attention",
    "null_attention_from_rows",
    "output_sparsity",
    "sink_rate",
    "sink_rate_by_layer",
    "sink_rate_from_alpha",
    "summarise_null_attention",
]
