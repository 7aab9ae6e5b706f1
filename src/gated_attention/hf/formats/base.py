"""What a checkpoint format provides: its ``config.json`` <-> our :class:`ModelConfig`, the
refusal of what it cannot express (naming the field) and its packing of our query and gate rows
into ``q_proj`` (``gated_attention.hf.layouts``); and the helpers the formats share."""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from transformers import PreTrainedConfig

from gated_attention.config import GateConfig, ModelConfig

from ..configuration import rope_fields

TOKEN_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id")
SHARED_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "num_key_value_heads",
    "head_dim",
    "max_position_embeddings",
    "initializer_range",
    "rms_norm_eps",
    "tie_word_embeddings",
)
"""``ModelConfig`` fields every format's ``config.json`` holds under the same name."""


class ConversionError(ValueError):
    """A checkpoint that cannot be read or converted; the message names the file or field."""


def require(condition: bool, message: str) -> None:
    if not condition:
        raise ConversionError(message)


def rope_from_hf(params: dict[str, Any] | None, where: str) -> dict[str, Any]:
    """Our ``rope_theta``, ``partial_rotary_factor`` and ``rope_scaling`` from a ``transformers``
    5.x ``rope_parameters`` dict (:func:`~gated_attention.hf.configuration.rope_fields`
    without our ``ntk`` type, which ``transformers`` lacks)."""
    try:
        return rope_fields(params, where, types=("linear", "dynamic", "yarn"))
    except ValueError as err:
        raise ConversionError(str(err)) from None


def common_fields(cfg: ModelConfig) -> dict[str, Any]:
    """The ``config.json`` keys every format writes the same way."""
    return {**{k: getattr(cfg, k) for k in SHARED_FIELDS}, "hidden_act": "silu"}


def gate_is_output_sigmoid(gate: GateConfig) -> bool:
    """True for a plain G1 gate ``Y * sigmoid(X W_g)`` (head-specific, input-dependent)."""
    return (
        gate.position == "sdpa"
        and gate.transform == "gate"
        and gate.mode == "multiplicative"
        and gate.activation == "sigmoid"
        and gate.input_dependent
        and not gate.head_shared
    )


def describe_gate(gate: GateConfig) -> str:
    """The variant name (``'sdpa-headwise'``, with ``fp32`` noted when off), else the dict."""
    name = dataclasses.replace(gate, fp32=True).name
    if name is None:
        return str(gate.to_dict())
    return repr(name) if gate.fp32 or not gate.enabled else f"{name!r} (fp32=False)"


class CheckpointFormat(ABC):
    """One foreign checkpoint format, registered by :attr:`name` in ``hf.convert.REGISTRY``.

    The defaults describe a plain ``transformers`` attention: ``q_proj`` holds only the queries,
    no gate, one ``attention_bias`` on q, k, v and ``o_proj``, full RoPE, RMSNorm.
    """

    name: ClassVar[str]
    title: ClassVar[str]
    """The format as refusal messages name it."""
    model_types: ClassVar[tuple[str, ...]]
    """``model_type`` values its importer accepts in ``config.json``."""
    gate_note: ClassVar[str]
    """Which gates it holds, for the refusal of any other."""
    norm_type: ClassVar[str] = "rms"
    qk_norms: ClassVar[tuple[str, ...]] = ("rms",)
    partial_rope: ClassVar[bool] = False
    """Whether it holds ``partial_rotary_factor < 1`` (else ``partial_hint`` ends the refusal)."""
    partial_hint: ClassVar[str] = ""
    ignored_prefixes: ClassVar[tuple[str, ...]] = ()
    """Tensors the importer drops (heads our model has no place for)."""

    @abstractmethod
    def config_to_ours(
        self, raw: dict[str, Any], state: dict[str, torch.Tensor] | None = None
    ) -> ModelConfig:
        """Our config for its raw ``config.json`` (``state``: its weights, once read)."""

    @abstractmethod
    def config_from_ours(
        self, cfg: ModelConfig, extras: dict[str, Any]
    ) -> dict[str, Any] | PreTrainedConfig:
        """Its ``config.json`` (a dict, or a ``transformers`` config that saves itself) for an
        exportable ``cfg``; ``extras``: token ids and ``dtype``."""

    def holds_gate(self, gate: GateConfig) -> bool:
        return not gate.enabled

    def check_bias(self, cfg: ModelConfig) -> None:
        """Raise unless it holds ``cfg``'s ``attention_bias`` / ``attention_out_bias``."""
        require(
            cfg.attention_bias == cfg.attention_out_bias,
            f"attention_bias={cfg.attention_bias} with attention_out_bias="
            f"{cfg.attention_out_bias} cannot be exported to {self.name}, whose single "
            "attention_bias covers q, k, v and o_proj.",
        )

    def check_exportable(self, cfg: ModelConfig) -> None:
        """Raise for the first field of ``cfg`` (beyond the generic field check) it cannot hold."""
        require(
            self.holds_gate(cfg.gate),
            f"gate={describe_gate(cfg.gate)} cannot be exported to {self.title}, which "
            f"{self.gate_note}.",
        )
        require(
            cfg.norm_type == self.norm_type,
            f"norm_type={cfg.norm_type!r} cannot be exported to {self.name}, which uses "
            f"{self.norm_type!r} norms.",
        )
        require(
            cfg.qk_norm in self.qk_norms,
            f"qk_norm={cfg.qk_norm!r} cannot be exported to {self.name}; allowed: "
            f"{', '.join(self.qk_norms)}.",
        )
        self.check_bias(cfg)
        self.check_moe(cfg)
        require(
            self.partial_rope or cfg.partial_rotary_factor == 1.0,
            f"partial_rotary_factor={cfg.partial_rotary_factor} cannot be exported to "
            f"{self.title} (full RoPE only){self.partial_hint}.",
        )

    def check_moe(self, cfg: ModelConfig) -> None:
        """Raise unless it holds ``cfg``'s FFN (default: dense models only)."""
        require(
            cfg.moe is None, f"moe={cfg.moe} cannot be exported to {self.name}: only dense models."
        )

    def split_q(self, cfg: ModelConfig, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Its ``q_proj`` weight or bias -> our query rows ``(q_size, ...)`` and gate rows
        ``(gate_size, ...)``; ``ValueError`` when the row count does not fit ``cfg``."""
        return w, w.new_empty((0, *w.shape[1:]))

    def merge_q(self, cfg: ModelConfig, q: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`split_q`."""
        return q
