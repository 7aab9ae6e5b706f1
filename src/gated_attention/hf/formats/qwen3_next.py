"""``qwen3-next``: ``transformers`` ``Qwen3NextForCausalLM`` restricted to what our model expresses.

Every ``layer_types`` entry ``full_attention`` (no Gated DeltaNet layers), and the same FFN in
every layer: a dense MLP (``num_experts=0``, or every layer in ``mlp_only_layers`` / off the
``decoder_sparse_step`` grid) or a sparse MoE block in every layer. Its sparse block is ours with
a shared expert whose output is scaled per token by ``sigmoid(x w)`` (``shared_expert_gate``):
``MoEConfig(shared_expert_intermediate_size=..., shared_expert_gate=True)``; softmax top-k
routing with ``norm_topk_prob``. ``q_proj`` is per head ``[q_h | gate_h]`` (elementwise G1
gate), zero-centred RMSNorm ``x_hat * (1 + w)`` for QK-norm and block norms, partial NeoX RoPE.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedConfig, Qwen3NextConfig

from gated_attention.config import GateConfig, ModelConfig, MoEConfig

from ..layouts import merge_qwen3_next_q_proj, split_qwen3_next_q_proj
from .base import gate_is_output_sigmoid, require
from .qwen3 import Qwen3Format, moe_export_fields, routed_moe


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

    def sparse_moe(self, c: PreTrainedConfig) -> MoEConfig:
        require(
            c.shared_expert_intermediate_size > 0,
            "qwen3-next config shared_expert_intermediate_size=0: a zero-width gated shared "
            "expert has no equivalent here; its sparse blocks need a shared expert.",
        )
        return routed_moe(
            c,
            shared_expert_intermediate_size=c.shared_expert_intermediate_size,
            shared_expert_gate=True,
        )

    def check_moe(self, cfg: ModelConfig) -> None:
        moe = cfg.moe
        require(
            moe is None or moe.shared_expert_gate,
            f"moe={moe} cannot be exported to qwen3-next, whose sparse blocks always have a "
            "sigmoid-gated shared expert: set shared_expert_intermediate_size > 0 and "
            "shared_expert_gate=True (or export to qwen3-moe).",
        )

    def export_fields(self, cfg: ModelConfig) -> dict[str, Any]:
        partial = cfg.partial_rotary_factor
        moe = cfg.moe
        ffn: dict[str, Any] = {"num_experts": 0, "mlp_only_layers": []}  # dense MLP everywhere
        if moe is not None:
            ffn = {
                **moe_export_fields(moe),
                "shared_expert_intermediate_size": moe.shared_expert_intermediate_size,
            }
        return {
            "rope_parameters": {**self.rope_parameters(cfg), "partial_rotary_factor": partial},
            "partial_rotary_factor": partial,
            "layer_types": ["full_attention"] * cfg.num_hidden_layers,
            **ffn,
        }

    def holds_gate(self, gate: GateConfig) -> bool:
        return gate_is_output_sigmoid(gate) and gate.granularity == "elementwise"

    def split_q(self, cfg: ModelConfig, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return split_qwen3_next_q_proj(w, cfg.num_attention_heads, cfg.head_dim)

    def merge_q(self, cfg: ModelConfig, q: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        return merge_qwen3_next_q_proj(q, gate, cfg.num_attention_heads, cfg.head_dim)
