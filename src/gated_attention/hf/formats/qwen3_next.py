"""``qwen3-next``: ``transformers`` ``Qwen3NextForCausalLM`` restricted to what our model expresses.

Every ``layer_types`` entry ``full_attention`` (no Gated DeltaNet layers) and a dense MLP in every
layer (``num_experts=0``, or every layer in ``mlp_only_layers`` / off the ``decoder_sparse_step``
grid). ``q_proj`` is per head ``[q_h | gate_h]`` (elementwise G1 gate), zero-centred RMSNorm
``x_hat * (1 + w)`` for QK-norm and block norms, partial NeoX RoPE.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedConfig, Qwen3NextConfig

from gated_attention.config import GateConfig, ModelConfig

from ..layouts import merge_qwen3_next_q_proj, split_qwen3_next_q_proj
from .base import gate_is_output_sigmoid, require
from .qwen3 import Qwen3Format


class Qwen3NextFormat(Qwen3Format):
    name = title = "qwen3-next"
    model_types = ("qwen3_next",)
    gate_note = "holds only an elementwise G1 sigmoid gate (sdpa-elementwise)"
    norm_type = "zero_centered"
    qk_norms = ("zero_centered",)
    partial_rope = True
    ignored_prefixes = ("mtp.",)  # multi-token-prediction head: transformers ignores it too
    config_class = Qwen3NextConfig
    architecture = "Qwen3NextForCausalLM"
    imported_gate = GateConfig(position="sdpa", granularity="elementwise", fp32=False)
    layer_types_note = " (Gated DeltaNet layers have no equivalent here)"

    def check_layers(self, c: PreTrainedConfig) -> None:
        for i in range(c.num_hidden_layers):
            on_grid = c.num_experts > 0 and (i + 1) % c.decoder_sparse_step == 0
            require(
                not on_grid or i in c.mlp_only_layers,
                f"qwen3-next config num_experts={c.num_experts} makes layer {i} a sparse MoE "
                "block (its sigmoid-gated shared expert differs from ours); only dense MLPs are "
                "supported: num_experts=0, or every layer in mlp_only_layers.",
            )

    def export_fields(self, cfg: ModelConfig) -> dict[str, Any]:
        partial = cfg.partial_rotary_factor
        return {
            "rope_parameters": {**self.rope_parameters(cfg), "partial_rotary_factor": partial},
            "partial_rotary_factor": partial,
            "layer_types": ["full_attention"] * cfg.num_hidden_layers,
            "num_experts": 0,  # dense SwiGLU MLP in every layer
            "mlp_only_layers": [],
        }

    def holds_gate(self, gate: GateConfig) -> bool:
        return gate_is_output_sigmoid(gate) and gate.granularity == "elementwise"

    def split_q(self, cfg: ModelConfig, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return split_qwen3_next_q_proj(w, cfg.num_attention_heads, cfg.head_dim)

    def merge_q(self, cfg: ModelConfig, q: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        return merge_qwen3_next_q_proj(q, gate, cfg.num_attention_heads, cfg.head_dim)
