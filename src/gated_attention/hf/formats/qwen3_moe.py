"""``qwen3-moe``: ``transformers`` ``Qwen3MoeForCausalLM``.

Qwen3's attention (no gate) with a sparse MoE block in every layer: softmax top-k routing
(``num_experts_per_tok``), ``norm_topk_prob``, SwiGLU experts of ``moe_intermediate_size``, no
shared expert -- ``MoEConfig`` with the same names (``mlp.gate`` is the router,
``mlp.experts.{i}.{gate,up,down}_proj``), so the weights keep their names.

The router auxiliary loss maps by its coefficient: ``router_aux_loss_coef`` <->
``MoEConfig.load_balancing_coef``. Both are the Switch Transformer balance loss, ours per layer
and summed, ``transformers``' pooled over layers (and only added when
``output_router_logits=True``); Qwen3-MoE has no router z-loss, so an import sets
``z_loss_coef=0`` and an export drops it (logged). Neither changes the logits.
"""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedConfig, Qwen3MoeConfig

from gated_attention.config import ModelConfig, MoEConfig

from .base import require
from .qwen3 import Qwen3Format, moe_export_fields, routed_moe


class Qwen3MoeFormat(Qwen3Format):
    name = title = "qwen3-moe"
    model_types = ("qwen3_moe",)
    config_class = Qwen3MoeConfig
    architecture = "Qwen3MoeForCausalLM"

    def sparse_moe(self, c: PreTrainedConfig) -> MoEConfig:
        return routed_moe(c)

    def check_moe(self, cfg: ModelConfig) -> None:
        moe = cfg.moe
        require(
            moe is not None,
            "a dense model (moe=None) cannot be exported to qwen3-moe, whose every layer is a "
            "sparse MoE block; export it to qwen3.",
        )
        require(
            not moe.shared_expert_intermediate_size,
            f"shared_expert_intermediate_size={moe.shared_expert_intermediate_size} cannot be "
            "exported to qwen3-moe, which has no shared expert (qwen3-next has a gated one).",
        )

    def export_fields(self, cfg: ModelConfig) -> dict[str, Any]:
        assert cfg.moe is not None  # check_moe ran
        return {**super().export_fields(cfg), **moe_export_fields(cfg.moe)}
