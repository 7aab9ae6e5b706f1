"""``GatedAttentionConfig``: our :class:`~gated_attention.config.ModelConfig` as a ``transformers``
config (``model_type = "gated_attention"``).

Its fields are the ``ModelConfig`` fields -- mirrored programmatically, same names and defaults,
so a field added to the core config appears here with no change to this file -- with the nested
gate and MoE configs stored as plain dicts (``config.json`` stays readable), plus the usual
``transformers`` extras (``use_cache``, special token ids). The RoPE fields (``rope_theta``,
``partial_rotary_factor``, ``rope_scaling``) are held the ``transformers`` way, as one
``rope_parameters`` dict (``{"rope_type": "yarn", "rope_theta": ..., "factor": ...}``, the form
Qwen3 and every 5.x model use); configs saved with the three separate keys still load.
Validation is delegated to ``ModelConfig``: a bad value raises its ``ValueError`` naming the
field, at construction.

Written against ``transformers`` 5.24, whose configs are dataclasses: ``PreTrainedConfig``'s
``__init_subclass__`` turns every subclass into a keyword-only dataclass whose fields are the class
annotations; extra keyword arguments land in ``__post_init__``.
"""

from __future__ import annotations

import copy
import dataclasses
import types
from typing import Any, ClassVar

from transformers import PreTrainedConfig

from gated_attention.config import GateConfig, ModelConfig, MoEConfig
from gated_attention.ops.rope import ROPE_TYPES

ROPE_FIELDS = ("rope_theta", "partial_rotary_factor", "rope_scaling")
"""The ``ModelConfig`` fields held together in ``rope_parameters``."""
MODEL_CONFIG_FIELDS: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(ModelConfig) if f.name not in ROPE_FIELDS
)
"""The ``ModelConfig`` fields mirrored one to one by :class:`GatedAttentionConfig`."""


def rope_parameters_from(cfg: ModelConfig, where: str = "ModelConfig") -> dict[str, Any]:
    """``transformers``' ``rope_parameters`` for ``cfg``'s RoPE fields: ``rope_type``,
    ``rope_theta``, ``partial_rotary_factor`` and the scaling keys.

    ``transformers``' dynamic NTK scales from ``max_position_embeddings`` and ignores
    ``original_max_position_embeddings``; a dynamic scaling whose trained length differs from
    ``max_position_embeddings`` cannot be written and raises ``ValueError``.
    """
    scaling = dict(cfg.rope_scaling or {})
    rope_type = scaling.pop("rope_type", scaling.pop("type", "default"))
    if rope_type == "dynamic":
        original = scaling.pop("original_max_position_embeddings", None)
        if original not in (None, cfg.max_position_embeddings):
            raise ValueError(
                f"{where}.rope_scaling: dynamic NTK with original_max_position_embeddings="
                f"{original} != max_position_embeddings={cfg.max_position_embeddings} has no "
                "transformers equivalent (its dynamic NTK scales from max_position_embeddings); "
                "set max_position_embeddings to the trained length."
            )
    return {
        "rope_type": rope_type,
        "rope_theta": cfg.rope_theta,
        "partial_rotary_factor": cfg.partial_rotary_factor,
        **scaling,
    }


def rope_fields(
    params: dict[str, Any] | None, where: str, types: tuple[str, ...] = ROPE_TYPES
) -> dict[str, Any]:
    """Our ``rope_theta``, ``partial_rotary_factor`` and ``rope_scaling`` for a ``transformers``
    ``rope_parameters`` dict (``types``: the scaling types the source may hold; ``ntk`` is ours
    only). Keys ``transformers`` ignores for a type are dropped (a plain RoPE's leftover
    ``factor``, dynamic NTK's ``original_max_position_embeddings``), so the result computes what
    ``transformers`` computes."""
    params = dict(params or {})
    theta = float(params.pop("rope_theta", 10000.0))
    partial = float(params.pop("partial_rotary_factor", 1.0))
    rope_type = params.pop("rope_type", params.pop("type", "default"))
    if rope_type != "default" and rope_type not in types:
        allowed = ", ".join(t for t in ("default", *types) if t in ROPE_TYPES)
        raise ValueError(f"{where}.rope_type={rope_type!r} is not supported; supported: {allowed}.")
    if rope_type == "dynamic":
        params.pop("original_max_position_embeddings", None)
    scaling = None if rope_type == "default" else {"rope_type": rope_type, **params}
    return {"rope_theta": theta, "partial_rotary_factor": partial, "rope_scaling": scaling}


def _plain(value: Any) -> Any:
    """Nested configs as JSON-friendly dicts (``GateConfig`` -> ``GateConfig.to_dict()``)."""
    return value.to_dict() if hasattr(value, "to_dict") else value


def _mirror_model_config(namespace: dict[str, Any]) -> None:
    """Class body with one dataclass field per ``ModelConfig`` field (same name and default)."""
    annotations: dict[str, Any] = {}
    for f in dataclasses.fields(ModelConfig):
        if f.name in ROPE_FIELDS:
            continue
        annotations[f.name] = Any
        if f.default_factory is not dataclasses.MISSING:
            default = _plain(f.default_factory())
        else:
            default = _plain(f.default)
        if isinstance(default, (dict, list)):
            namespace[f.name] = dataclasses.field(
                default_factory=lambda value=default: copy.deepcopy(value)
            )
        else:
            namespace[f.name] = default
    namespace["__annotations__"] = annotations
    namespace["__module__"] = __name__
    namespace["__doc__"] = "The ``ModelConfig`` fields as ``transformers`` config fields."


_ModelConfigFields = types.new_class(
    "_ModelConfigFields", (PreTrainedConfig,), exec_body=_mirror_model_config
)


class GatedAttentionConfig(_ModelConfigFields):
    """A Qwen3-style decoder with gated attention (Qiu et al., arXiv 2505.06708).

    Every field documented on :class:`~gated_attention.config.ModelConfig` is a field here with the
    same default; ``gate`` holds the ``GateConfig.to_dict()`` form (a variant name such as
    ``"sdpa-elementwise"`` or a ``GateConfig`` is accepted and expanded) and ``moe`` the
    ``MoEConfig.to_dict()`` form or ``None``. ``to_model_config()`` / ``from_model_config()``
    convert both ways.
    """

    model_type = "gated_attention"
    keys_to_ignore_at_inference: ClassVar[list[str]] = ["cache"]

    use_cache: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None

    rope_parameters: dict[str, Any] | None = None
    """``rope_type``, ``rope_theta``, ``partial_rotary_factor`` and any scaling keys
    (``factor``, ``original_max_position_embeddings``, ``beta_fast``, ...), ``transformers``'
    names; ``None``: plain RoPE with ``ModelConfig``'s defaults."""

    def __post_init__(self, **kwargs: Any) -> None:
        # transformers completes these dicts in place; the caller's stay untouched
        self.rope_parameters = copy.deepcopy(self.rope_parameters)
        if "rope_scaling" in kwargs:
            kwargs["rope_scaling"] = copy.deepcopy(kwargs["rope_scaling"])
        if self.rope_parameters is None and not any(k in kwargs for k in ROPE_FIELDS):
            self.rope_parameters = rope_parameters_from(ModelConfig())
        gate = self.gate
        self.gate = GateConfig.coerce(_plain(gate)).to_dict()
        if isinstance(self.moe, (dict, MoEConfig)):
            self.moe = MoEConfig.from_dict(_plain(self.moe)).to_dict()
        elif self.moe is not None:
            raise ValueError(
                "GatedAttentionConfig.moe must be a dict, a MoEConfig or None, "
                f"got {type(self.moe).__name__}."
            )
        super().__post_init__(**kwargs)
        self.to_model_config()  # validate every field now, with ModelConfig's messages

    def to_model_config(self) -> ModelConfig:
        """The equivalent :class:`~gated_attention.config.ModelConfig` (validated)."""
        data = {name: copy.deepcopy(getattr(self, name)) for name in MODEL_CONFIG_FIELDS}
        rope = rope_fields(self.rope_parameters, "GatedAttentionConfig.rope_parameters")
        scaling = rope["rope_scaling"]
        if (
            scaling
            and scaling.get("original_max_position_embeddings") == self.max_position_embeddings
        ):
            del scaling["original_max_position_embeddings"]  # transformers fills in that default
        data.update(rope)
        return ModelConfig.from_dict(data)

    @classmethod
    def from_model_config(cls, cfg: ModelConfig, **kwargs: Any) -> GatedAttentionConfig:
        """A config carrying every field of ``cfg``; ``kwargs`` set ``transformers`` extras
        (``eos_token_id=...``) or override fields."""
        if not isinstance(cfg, ModelConfig):
            raise ValueError(f"from_model_config needs a ModelConfig, got {type(cfg).__name__}.")
        data = {
            name: _plain(value) for name, value in cfg.to_dict().items() if name not in ROPE_FIELDS
        }
        data["rope_parameters"] = rope_parameters_from(cfg)
        data.update(kwargs)
        return cls(**data)
