"""``paper``: the paper's released models (Qwen3 architecture, ``model_type`` ``qwen3`` or
``qwen2``).

The G1 output gate is folded into ``q_proj`` grouped per KV head; config flags
``headwise_attn_output_gate`` / ``elementwise_attn_output_gate`` (at most one true), ``qkv_bias``
(bias on q/k/v including the gate rows, none on ``o_proj``), ``use_qk_norm`` (plain RMSNorm),
sigmoid in the model dtype (``GateConfig.fp32=False``).
"""

from __future__ import annotations

from typing import Any

import torch

from gated_attention.config import GateConfig, ModelConfig

from ..layouts import merge_paper_q_proj, split_paper_q_proj
from .base import (
    SHARED_FIELDS,
    TOKEN_FIELDS,
    CheckpointFormat,
    common_fields,
    gate_is_output_sigmoid,
    require,
    rope_from_hf,
)

_DEFAULTS = {
    "num_key_value_heads": None,
    "head_dim": None,
    "rms_norm_eps": 1e-6,
    "max_position_embeddings": 4096,
    "tie_word_embeddings": False,
    "initializer_range": 0.02,
}
"""Shared fields a paper config may omit (``None``: derived from the heads); others are required."""


class PaperFormat(CheckpointFormat):
    name = "paper"
    model_types = ("qwen3", "qwen2")
    gate_note = "holds only the G1 sigmoid gate (sdpa-elementwise or sdpa-headwise)"
    qk_norms = ("rms", "none")
    title = "the paper's format"

    def config_to_ours(
        self, raw: dict[str, Any], state: dict[str, torch.Tensor] | None = None
    ) -> ModelConfig:
        """``use_qk_norm`` absent: QK-norm when the weights hold ``q_norm`` (or not yet read)."""
        headwise = bool(raw.get("headwise_attn_output_gate", False))
        elementwise = bool(raw.get("elementwise_attn_output_gate", False))
        require(
            not (headwise and elementwise),
            "paper config has both headwise_attn_output_gate and elementwise_attn_output_gate "
            "true; at most one may be (the paper's code would silently pick headwise).",
        )
        for key in SHARED_FIELDS:
            require(key in raw or key in _DEFAULTS, f"paper config.json lacks {key!r}.")
        gate = GateConfig()
        if headwise or elementwise:
            granularity = "headwise" if headwise else "elementwise"
            gate = GateConfig(position="sdpa", granularity=granularity, fp32=False)
        params = raw.get("rope_parameters")
        if params is None:  # released configs use the 4.x keys
            scaling = raw.get("rope_scaling")
            params = {**(scaling or {}), "rope_theta": raw.get("rope_theta", 10000.0)}
        rope = rope_from_hf(params, "paper config rope_scaling")
        has_qk_norm = state is None or any(k.endswith("self_attn.q_norm.weight") for k in state)
        fields = {k: raw[k] if k in raw else _DEFAULTS[k] for k in SHARED_FIELDS}
        heads = raw["num_attention_heads"]
        fields.update(
            num_key_value_heads=raw.get("num_key_value_heads") or heads,
            head_dim=raw.get("head_dim") or raw["hidden_size"] // heads,
            tie_word_embeddings=bool(fields["tie_word_embeddings"]),
        )
        return ModelConfig(
            **fields,
            **rope,
            qk_norm="rms" if raw.get("use_qk_norm", has_qk_norm) else "none",
            norm_type="rms",
            attention_bias=bool(raw.get("qkv_bias", False)),
            attention_out_bias=False,
            gate=gate,
        )

    def config_from_ours(self, cfg: ModelConfig, extras: dict[str, Any]) -> dict[str, Any]:
        """``transformers`` 4.x-style keys, as released."""
        gate = cfg.gate
        data: dict[str, Any] = {
            "architectures": ["Qwen3ForCausalLM"],
            "model_type": "qwen3",
            **common_fields(cfg),
            "rope_theta": cfg.rope_theta,
            "rope_scaling": dict(cfg.rope_scaling) if cfg.rope_scaling else None,
            "attention_bias": False,
            "qkv_bias": cfg.attention_bias,
            "use_qk_norm": cfg.qk_norm == "rms",
            "headwise_attn_output_gate": gate.enabled and gate.granularity == "headwise",
            "elementwise_attn_output_gate": gate.enabled and gate.granularity == "elementwise",
            "use_sliding_window": False,
            "attention_dropout": 0.0,
            "use_cache": True,
        }
        data.update({k: extras[k] for k in TOKEN_FIELDS if extras.get(k) is not None})
        if extras.get("dtype") is not None:
            data["torch_dtype"] = extras["dtype"]
        return data

    def holds_gate(self, gate: GateConfig) -> bool:
        return not gate.enabled or gate_is_output_sigmoid(gate)

    def check_bias(self, cfg: ModelConfig) -> None:
        require(
            not cfg.attention_out_bias,
            "attention_out_bias=True cannot be exported to the paper's format (no o_proj bias).",
        )

    def split_q(self, cfg: ModelConfig, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows_per_head = cfg.gate_shape[-1] if cfg.gate.has_projection else 0
        H, K, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        return split_paper_q_proj(w, H, K, D, rows_per_head)

    def merge_q(self, cfg: ModelConfig, q: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        return merge_paper_q_proj(
            q, gate, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        )
