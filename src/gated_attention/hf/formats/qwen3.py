"""``qwen3``: ``transformers`` ``Qwen3ForCausalLM``.

No gate; its ``attention_bias`` puts a bias on q, k, v *and* ``o_proj`` (our ``attention_bias`` +
``attention_out_bias``). :class:`Qwen3Format` also holds what Qwen3-MoE and Qwen3-Next share
with it, including their sparse-MoE layer pattern (:meth:`Qwen3Format.moe_to_ours`).
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import torch
from transformers import PreTrainedConfig, Qwen3Config

from gated_attention.config import GateConfig, ModelConfig, MoEConfig
from gated_attention.ops.rope import rope_type_of

from ..configuration import rope_parameters_from
from .base import (
    SHARED_FIELDS,
    TOKEN_FIELDS,
    CheckpointFormat,
    ConversionError,
    common_fields,
    require,
    rope_from_hf,
)

log = logging.getLogger(__name__)


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
        layer_types = getattr(c, "layer_types", None) or (
            ["sliding_attention" if getattr(c, "use_sliding_window", False) else "full_attention"]
            * c.num_hidden_layers
        )
        for i, layer_type in enumerate(layer_types):
            require(
                layer_type == "full_attention",
                f"{self.name} config layer_types[{i}]={layer_type!r}: only full_attention layers "
                f"are supported{self.layer_types_note}.",
            )
        return ModelConfig(
            **{k: getattr(c, k) for k in SHARED_FIELDS},
            **rope_from_hf(c.rope_parameters, f"{self.name} config rope_parameters"),
            qk_norm=self.norm_type,
            norm_type=self.norm_type,
            attention_bias=c.attention_bias,
            attention_out_bias=c.attention_bias,
            gate=self.imported_gate,
            moe=self.moe_to_ours(c),
        )

    def moe_to_ours(self, c: PreTrainedConfig) -> MoEConfig | None:
        """Our MoE config for its sparse layers (``None``: a dense MLP in every layer).

        Qwen3-MoE and Qwen3-Next make layer ``i`` sparse when ``num_experts > 0``, ``i`` is not
        in ``mlp_only_layers`` and ``(i + 1) % decoder_sparse_step == 0``; our model has the same
        FFN in every layer, so the layers must be all sparse or all dense.
        """
        num_experts = getattr(c, "num_experts", 0) or 0
        step = getattr(c, "decoder_sparse_step", 1) or 1
        only_mlp = set(getattr(c, "mlp_only_layers", None) or ())
        sparse = [
            num_experts > 0 and i not in only_mlp and (i + 1) % step == 0
            for i in range(c.num_hidden_layers)
        ]
        if not any(sparse):
            return None
        dense = [i for i, s in enumerate(sparse) if not s]
        require(
            not dense,
            f"{self.name} config makes layers {dense} dense (mlp_only_layers="
            f"{sorted(only_mlp)}, decoder_sparse_step={step}) and the others sparse MoE; our "
            "model has the same FFN in every layer: all sparse or all dense.",
        )
        return self.sparse_moe(c)

    def sparse_moe(self, c: PreTrainedConfig) -> MoEConfig:
        """Our :class:`MoEConfig` for the sparse blocks of config ``c``."""
        raise ConversionError(
            f"{self.name} config has num_experts={c.num_experts}: sparse MoE layers are not part "
            "of this format."
        )

    def check_moe(self, cfg: ModelConfig) -> None:
        require(
            cfg.moe is None,
            f"moe={cfg.moe} cannot be exported to {self.name}: only dense models (use "
            "qwen3-moe, or qwen3-next with a gated shared expert).",
        )

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
        """Its ``rope_parameters`` (full RoPE: without ``partial_rotary_factor``)."""
        require(
            rope_type_of(cfg.rope_scaling) != "ntk",
            f"rope_scaling.rope_type='ntk' has no {self.name} equivalent; use linear, dynamic or "
            "yarn.",
        )
        try:
            params = rope_parameters_from(cfg)
        except ValueError as err:
            raise ConversionError(str(err)) from None
        params.pop("partial_rotary_factor")
        return params


def routed_moe(c: PreTrainedConfig, **shared: Any) -> MoEConfig:
    """Our :class:`MoEConfig` for the routed experts of a Qwen3-MoE / Qwen3-Next config ``c``
    (``shared``: the shared-expert fields)."""
    return MoEConfig(
        num_experts=c.num_experts,
        top_k=c.num_experts_per_tok,
        expert_intermediate_size=c.moe_intermediate_size,
        norm_topk_prob=bool(c.norm_topk_prob),
        load_balancing_coef=float(c.router_aux_loss_coef),
        z_loss_coef=0.0,  # no router z-loss in transformers' Qwen3 MoE models
        **shared,
    )


def moe_export_fields(moe: MoEConfig) -> dict[str, Any]:
    """The routed-expert fields of a Qwen3-MoE / Qwen3-Next config for ``moe`` (every layer
    sparse)."""
    if moe.z_loss_coef:
        log.info(
            "z_loss_coef=%s: transformers' Qwen3 MoE models have no router z-loss; dropped "
            "(training only, the logits are unaffected).",
            moe.z_loss_coef,
        )
    return {
        "num_experts": moe.num_experts,
        "num_experts_per_tok": moe.top_k,
        "moe_intermediate_size": moe.expert_intermediate_size,
        "norm_topk_prob": moe.norm_topk_prob,
        "router_aux_loss_coef": moe.load_balancing_coef,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
    }
