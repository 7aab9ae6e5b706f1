"""``GatedAttentionConfig``: our :class:`~gated_attention.config.ModelConfig` as a ``transformers``
config (``model_type = "gated_attention"``).

Its fields are the ``ModelConfig`` fields -- mirrored programmatically, same names and defaults,
so a field added to the core config appears here with no change to this file -- with the nested
gate and MoE configs stored as plain dicts (``config.json`` stays readable), plus the usual
``transformers`` extras (``use_cache``, special token ids). Validation is delegated to
``ModelConfig``: a bad value raises its ``ValueError`` naming the field, at construction.

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

MODEL_CONFIG_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(ModelConfig))
"""The ``ModelConfig`` fields mirrored by :class:`GatedAttentionConfig`."""


def _plain(value: Any) -> Any:
    """Nested configs as JSON-friendly dicts (``GateConfig`` -> ``GateConfig.to_dict()``)."""
    return value.to_dict() if hasattr(value, "to_dict") else value


def _mirror_model_config(namespace: dict[str, Any]) -> None:
    """Class body with one dataclass field per ``ModelConfig`` field (same name and default)."""
    annotations: dict[str, Any] = {}
    for f in dataclasses.fields(ModelConfig):
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

    def __post_init__(self, **kwargs: Any) -> None:
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
        return ModelConfig.from_dict(data)

    @classmethod
    def from_model_config(cls, cfg: ModelConfig, **kwargs: Any) -> GatedAttentionConfig:
        """A config carrying every field of ``cfg``; ``kwargs`` set ``transformers`` extras
        (``eos_token_id=...``) or override fields."""
        if not isinstance(cfg, ModelConfig):
            raise ValueError(f"from_model_config needs a ModelConfig, got {type(cfg).__name__}.")
        data = {name: _plain(value) for name, value in cfg.to_dict().items()}
        data.update(kwargs)
        return cls(**data)
