"""Analysis tools: attention sinks, massive activations and gate statistics (Qiu et al. 2025).

* Metrics (pure functions on tensors, results as dataclasses with ``to_dict()``): see
  :mod:`.metrics`.
* Probes: :func:`collect_hf` captures any ``transformers`` causal LM into a :class:`Captured`;
  our own model's probe fills the same container from its taps. :func:`analyze_captured`
  turns either into an :class:`AnalysisReport`.
* Figures: :mod:`.plots`.
"""

from __future__ import annotations

from ._common import to_jsonable
from .hf_probe import collect_hf, find_decoder_layers
from .metrics import (
    FirstTokenMass,
    FirstTokenMassByLayer,
    GateSplit,
    GateStats,
    LayerActivations,
    LayerGateStats,
    LayerSparsity,
    MassiveActivations,
    NullAttention,
    NullAttentionByLayer,
    OutputSparsity,
    SinkRate,
    TopActivation,
    alpha_from_qk,
    alpha_k,
    attention_probs_from_qk,
    causal_floor,
    effective_attention,
    first_token_mass,
    first_token_mass_by_layer,
    first_token_mass_from_qk,
    gate_statistics,
    head_averaged_map,
    key_and_row_mass_from_qk,
    key_mass_from_qk,
    layer_activations,
    massive_activations,
    null_attention,
    output_sparsity,
    sink_rate,
    sink_rate_by_layer,
    sink_rate_from_alpha,
)
from .plots import (
    plot_attention_maps,
    plot_first_token_mass,
    plot_gate_histograms,
    plot_gate_mean_per_layer,
    plot_loss_curves,
    plot_max_activation,
)
from .report import AnalysisReport, Captured, analyze_captured

__all__ = [
    "AnalysisReport",
    "Captured",
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
    "analyze_captured",
    "attention_probs_from_qk",
    "causal_floor",
    "collect_hf",
    "effective_attention",
    "find_decoder_layers",
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
    "output_sparsity",
    "plot_attention_maps",
    "plot_first_token_mass",
    "plot_gate_histograms",
    "plot_gate_mean_per_layer",
    "plot_loss_curves",
    "plot_max_activation",
    "sink_rate",
    "sink_rate_by_layer",
    "sink_rate_from_alpha",
    "to_jsonable",
]
