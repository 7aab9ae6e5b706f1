"""``qwen3``: ``transformers`` ``Qwen3ForCausalLM``.

No gate; its ``attention_bias`` puts a bias on q, k, v *and* ``o_proj`` (our ``attention_bias`` +
``attention_out_bias``). :class:`Qwen3Format` also holds what Qwen3-Next shares with it.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from transformers import PreTrainedConfig, Qwen3Config

from gated_attention.config import GateConfig, ModelConfig

from .base import (
    SHARED_FIELDS,
    TOKEN_FIELDS,
    CheckpointFormat,
    common_fields,
    require,
    rope_from_hf,
)


class Qwen3Format(CheckpointFormat):
    name = title = "qwen3"
    model_types = ("qwen3",)
    gate_note = (
        "has no attention gate; the paper format holds G1 sigmoid gates, qwen3-next the "
        "elementwise one"
    )
    partial_hint = "; use qwen3-next"
    config_class: ClassVar[type[PreTrainedConfig]] = Qwen3Config
    architecture: ClassVar[str] = "Qwen3ForCausalLM"
    imported_gate: ClassVar[GateConfig] = GateConfig()
    layer_types_note: ClassVar[str] = ""
    """Ends the refusal of a layer that is not ``full_attention``."""

    def config_to_ours(
        self, raw: dict[str, Any], state: dict[str, torch.Tensor] | None = None
    ) -> ModelConfig:
        c = self.config_class.from_dict(raw)
        for i, layer_type in enumerate(c.layer_types):
            require(
                layer_type == "full_attention",
                f"{self.name} config layer_types[{i}]={layer_type!r}: only full_attention layers "
                f"are supported{self.layer_types_note}.",
            )
        self.check_layers(c)
        return ModelConfig(
            **{k: getattr(c, k) for k in SHARED_FIELDS},
            **rope_from_hf(c.rope_parameters, f"{self.name} config rope_parameters"),
            qk_norm=self.norm_type,
            norm_type=self.norm_type,
            attention_bias=c.attention_bias,
            attention_out_bias=c.attention_bias,
            gate=self.imported_gate,
        )

    def check_layers(self, c: PreTrainedConfig) -> None:
        """Raise for a layer our model cannot express (beyond ``layer_types``)."""

    def config_from_ours(self, cfg: ModelConfig, extras: dict[str, Any]) -> PreTrainedConfig:
        kwargs: dict[str, Any] = {
            **common_fields(cfg),
            "attention_bias": cfg.attention_bias,
            **{k: extras.get(k) for k in TOKEN_FIELDS},
            **self.export_fields(cfg),
            "architectures": [self.architecture],
        }
        if extras.get("dtype") is not None:
            kwargs["dtype"] = extras["dtype"]
        return self.config_class(**kwargs)

    def export_fields(self, cfg: ModelConfig) -> dict[str, Any]:
        """The ``config_class`` arguments particular to this format."""
        return {"rope_parameters": self.rope_parameters(cfg), "use_sliding_window": False}

    def rope_parameters(self, cfg: ModelConfig) -> dict[str, Any]:
        scaling = dict(cfg.rope_scaling or {})
        rope_type = scaling.pop("rope_type", scaling.pop("type", "default"))
        require(
            rope_type != "ntk",
            f"rope_scaling.rope_type='ntk' has no {self.name} equivalent; use linear, dynamic or "
            "yarn.",
        )
        return {"rope_type": rope_type, "rope_theta": cfg.rope_theta, **scaling}
