"""Typed, validated configuration: the gate, the optional MoE block and the whole model.

Every paper variant is a :class:`GateConfig`; one attention module reads it (no subclass per
variant). Named variants (``GateConfig.from_name``) follow the rows of Tables 1, 3 and 4 of Qiu
et al., "Gated Attention for Large Language Models" (arXiv 2505.06708). Model presets follow
Table 7 of the same paper plus small CPU-sized models.

All configs validate themselves in ``__post_init__`` and raise ``ValueError`` with a message that
names the field, the value given and what is allowed. ``to_dict``/``from_dict`` give a plain,
JSON-serialisable form; unknown keys are rejected with the closest valid key suggested.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, TypeVar

GATE_POSITIONS = ("none", "sdpa", "value", "key", "query", "dense")
"""Where the gate acts: G1 ``sdpa`` (SDPA output, per head, before ``o_proj``), G2 ``value``
(after the value projection), G3 ``key``, G4 ``query``, G5 ``dense`` (after ``o_proj``)."""

GATE_GRANULARITIES = ("elementwise", "headwise")
GATE_MODES = ("multiplicative", "additive")
GATE_ACTIVATIONS = ("sigmoid", "silu", "ns_sigmoid", "identity")
GATE_TRANSFORMS = ("gate", "rmsnorm", "silu")
"""``gate``: a (possibly input-dependent) gate score combined with the tensor. ``rmsnorm`` and
``silu`` are the paper's parameter-free / normalisation controls of Table 3, applied to the SDPA
output instead of a gate."""

QK_NORMS = ("none", "rms", "zero_centered")
NORM_TYPES = ("rms", "zero_centered")
EXPANSION_DIMS = ("kv_heads", "query_heads", "ffn")
"""What :meth:`ModelConfig.expanded` grows for a parameter-matched baseline (paper Table 1 rows
2-4): more KV heads, more query heads, or more FFN capacity (a wider SwiGLU in a dense model, more
experts in an MoE model)."""


def _suggest(name: str, valid: list[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(name, list(valid), n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def _check_choice(cls_name: str, field_name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(
            f"{cls_name}.{field_name}={value!r} is not valid; allowed: {', '.join(allowed)}."
            + (_suggest(str(value), allowed) if isinstance(value, str) else "")
        )


def _check_keys(cls: type, data: dict[str, Any]) -> None:
    valid = [f.name for f in fields(cls)]
    for key in data:
        if key not in valid:
            raise ValueError(
                f"{cls.__name__} has no field {key!r}.{_suggest(key, valid)} "
                f"Valid fields: {', '.join(valid)}."
            )


_C = TypeVar("_C", bound="_DictConfig")


class _DictConfig:
    """``to_dict`` / ``from_dict`` (unknown keys refused by name) of the config dataclasses."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: type[_C], data: dict[str, Any]) -> _C:
        _check_keys(cls, data)
        return cls(**data)


@dataclass(frozen=True)
class GateConfig(_DictConfig):
    """How (and whether) attention is gated: ``Y' = combine(Y, act(X W_g))`` (paper Eq. 5).

    ``X`` is always the normed block input, the same tensor that feeds q/k/v.
    """

    position: str = "none"
    """``none`` | ``sdpa`` (G1) | ``value`` (G2) | ``key`` (G3) | ``query`` (G4) | ``dense`` (G5)."""
    granularity: str = "elementwise"
    """``elementwise``: one score per element of the gated tensor; ``headwise``: one per head."""
    head_shared: bool = False
    """Compute the per-head score, then average it over the head axis (paper's head-shared runs,
    (n, q, d_k) -> (n, d_k)); parameter count equals the head-specific gate."""
    mode: str = "multiplicative"
    """``multiplicative``: ``Y * act(s)``; ``additive``: ``Y + act(s)``."""
    activation: str = "sigmoid"
    """``sigmoid`` | ``silu`` | ``ns_sigmoid`` (``0.5 + 0.5 * sigmoid``) | ``identity``."""
    input_dependent: bool = True
    """``False``: the score is a learned (heads, head_dim) parameter, zero-initialised
    (sigmoid 0.5 at start), the same for every token (paper Table 4 control)."""
    transform: str = "gate"
    """``gate`` (a score as above) or a parameter-free control on the SDPA output:
    ``rmsnorm`` (per-head RMSNorm, with a learned weight) or ``silu`` (``SiLU(Y)``)."""
    fp32: bool = True
    """Compute the activation in float32 (Megatron) rather than the model dtype (paper code)."""

    # registry of the paper's named variants; filled below the class
    _NAMED: ClassVar[dict[str, dict[str, Any]]] = {}

    def __post_init__(self) -> None:
        name = type(self).__name__
        _check_choice(name, "position", self.position, GATE_POSITIONS)
        _check_choice(name, "granularity", self.granularity, GATE_GRANULARITIES)
        _check_choice(name, "mode", self.mode, GATE_MODES)
        _check_choice(name, "activation", self.activation, GATE_ACTIVATIONS)
        _check_choice(name, "transform", self.transform, GATE_TRANSFORMS)
        if self.position == "none":
            return
        if self.transform != "gate" and self.position != "sdpa":
            raise ValueError(
                f"GateConfig.transform={self.transform!r} is a control applied to the SDPA output; "
                f"it needs position='sdpa', got position={self.position!r}."
            )
        if self.position == "dense":
            if self.granularity == "headwise":
                raise ValueError(
                    "GateConfig.granularity='headwise' makes no sense at position='dense' (G5): "
                    "the o_proj output has no heads. Use granularity='elementwise'."
                )
            if self.head_shared:
                raise ValueError(
                    "GateConfig.head_shared=True makes no sense at position='dense' (G5): the "
                    "o_proj output has no heads. Use head_shared=False."
                )
        if self.head_shared and not self.input_dependent:
            raise ValueError(
                "GateConfig.head_shared=True needs input_dependent=True: an input-independent "
                "gate is a single parameter and sharing it is the same as a smaller parameter."
            )

    @property
    def enabled(self) -> bool:
        """True when the attention layer has a gate or output control."""
        return self.position != "none"

    @property
    def has_projection(self) -> bool:
        """True when the gate score is computed as ``X W_g`` (fused into ``qkv_proj``)."""
        return self.enabled and self.transform == "gate" and self.input_dependent

    @classmethod
    def names(cls) -> list[str]:
        """The paper's named variants, usable in ``from_name`` and ``ModelConfig(gate=...)``."""
        return list(cls._NAMED)

    @classmethod
    def from_name(cls, name: str) -> GateConfig:
        """The config of a named variant (``GateConfig.names()`` lists them)."""
        if name not in cls._NAMED:
            raise ValueError(
                f"Unknown gate variant {name!r}.{_suggest(name, cls.names())} "
                f"Valid names: {', '.join(cls.names())}."
            )
        return cls(**cls._NAMED[name])

    @property
    def name(self) -> str | None:
        """The registry name of this config, or ``None`` for a custom combination."""
        for key, kwargs in self._NAMED.items():
            if GateConfig(**kwargs) == self:
                return key
        return None

    @classmethod
    def coerce(cls, value: GateConfig | str | dict[str, Any] | None) -> GateConfig:
        """Accept a config, a variant name, a dict or ``None`` (no gate)."""
        if value is None:
            return cls()
        if isinstance(value, GateConfig):
            return value
        if isinstance(value, str):
            return cls.from_name(value)
        if isinstance(value, dict):
            return cls.from_dict(value)
        raise ValueError(
            f"gate must be a GateConfig, a variant name or a dict, got {type(value).__name__}."
        )


# One entry per row of the paper's Tables 1, 3 and 4 (and the non-gate controls of Table 3).
GateConfig._NAMED.update(
    {
        "none": {},
        # Table 1 rows 5-15
        "sdpa-elementwise": {"position": "sdpa"},
        "value-elementwise": {"position": "value"},
        "key-elementwise": {"position": "key"},
        "query-elementwise": {"position": "query"},
        "dense-elementwise": {"position": "dense"},
        "sdpa-headwise": {"position": "sdpa", "granularity": "headwise"},
        "value-headwise": {"position": "value", "granularity": "headwise"},
        "sdpa-head-shared": {"position": "sdpa", "head_shared": True},
        "value-head-shared": {"position": "value", "head_shared": True},
        "sdpa-additive-silu": {"position": "sdpa", "mode": "additive", "activation": "silu"},
        "sdpa-elementwise-silu": {"position": "sdpa", "activation": "silu"},
        # Table 4 controls
        "sdpa-input-independent": {"position": "sdpa", "input_dependent": False},
        "sdpa-ns-sigmoid": {"position": "sdpa", "activation": "ns_sigmoid"},
        # Table 3 non-gate controls
        "sdpa-rmsnorm": {"position": "sdpa", "transform": "rmsnorm"},
        "sdpa-silu": {"position": "sdpa", "transform": "silu"},
        "sdpa-additive-identity": {
            "position": "sdpa",
            "mode": "additive",
            "activation": "identity",
        },
    }
)


NORMALIZER_KINDS: dict[str, Any] = {}
"""Attention normaliser kinds by name, registered by ``gated_attention.ops.normalizers`` (the
maths lives beside the attention op, which this module sits below; importing the package
registers them). Each kind has ``check_options(options) -> options`` (validated, defaults
filled) and ``parameter_shapes(cfg) -> {name: shape}`` (its learned per-layer parameters)."""


@dataclass(frozen=True)
class NormalizerConfig(_DictConfig):
    """How attention turns logits into weights: ``softmax`` (the default) or another fix for the
    attention sink (``docs/normalizers.md``; ``NormalizerConfig.kinds()`` lists them).

    A config accepts a kind name (``"sink"``), a dict ``{"kind": ..., "options": {...}}`` or
    the flat form ``{"kind": "sigmoid", "length": 128}`` (a study arm's TOML setting).
    """

    kind: str = "softmax"
    options: dict[str, Any] = field(default_factory=dict)
    """The kind's settings (e.g. ``sigmoid``'s ``length``); defaults are filled in."""

    def __post_init__(self) -> None:
        if not isinstance(self.options, dict):
            raise ValueError(
                f"NormalizerConfig.options must be a dict, got {type(self.options).__name__}."
            )
        if self.kind == "softmax" and not self.options:
            return
        kinds = self.kinds()
        if self.kind not in NORMALIZER_KINDS:
            raise ValueError(
                f"NormalizerConfig.kind={self.kind!r} is not valid; allowed: {', '.join(kinds)}."
                + (_suggest(str(self.kind), kinds) if isinstance(self.kind, str) else "")
            )
        checked = NORMALIZER_KINDS[self.kind].check_options(dict(self.options))
        object.__setattr__(self, "options", checked)

    @staticmethod
    def kinds() -> list[str]:
        """The registered kinds, ``softmax`` first."""
        return ["softmax", *(k for k in NORMALIZER_KINDS if k != "softmax")]

    @property
    def is_softmax(self) -> bool:
        """True for plain softmax attention (no virtual columns, no parameters)."""
        return self.kind == "softmax"

    def parameter_shapes(self, cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
        """The learned parameters one attention layer of ``cfg`` holds for this kind."""
        if self.is_softmax:
            return {}
        return dict(NORMALIZER_KINDS[self.kind].parameter_shapes(cfg))

    @classmethod
    def coerce(cls, value: NormalizerConfig | str | dict[str, Any] | None) -> NormalizerConfig:
        """Accept a config, a kind name, a dict (nested or flat) or ``None`` (softmax)."""
        if value is None:
            return cls()
        if isinstance(value, NormalizerConfig):
            return value
        if isinstance(value, str):
            return cls(kind=value)
        if isinstance(value, dict):
            if set(value) <= {"kind", "options"}:
                return cls.from_dict(value)
            flat = dict(value)
            return cls(kind=flat.pop("kind", "softmax"), options=flat)
        raise ValueError(
            "normalizer must be a NormalizerConfig, a kind name or a dict, got "
            f"{type(value).__name__}."
        )


@dataclass(frozen=True)
class MoEConfig(_DictConfig):
    """A fine-grained mixture-of-experts FFN (softmax top-k routing, Qwen3-MoE style)."""

    num_experts: int = 8
    top_k: int = 2
    expert_intermediate_size: int = 64
    shared_expert_intermediate_size: int = 0
    """Width of an always-on shared expert; 0 disables it."""
    shared_expert_gate: bool = False
    """Scale the shared expert's output per token by ``sigmoid(x w)`` (a learned ``hidden -> 1``
    projection), as Qwen3-Next's sparse MoE blocks do; needs a shared expert."""
    norm_topk_prob: bool = True
    """Renormalise the top-k routing weights to sum to one."""
    load_balancing_coef: float = 0.01
    """Weight of the Switch-style load-balancing loss ``E * sum_i f_i P_i``."""
    z_loss_coef: float = 0.001
    """Weight of the router z-loss ``mean(logsumexp(logits)^2)`` (ST-MoE)."""

    def __post_init__(self) -> None:
        if self.num_experts < 1:
            raise ValueError(f"MoEConfig.num_experts must be >= 1, got {self.num_experts}.")
        if not 1 <= self.top_k <= self.num_experts:
            raise ValueError(
                f"MoEConfig.top_k must be between 1 and num_experts={self.num_experts}, "
                f"got {self.top_k}."
            )
        if self.expert_intermediate_size < 1:
            raise ValueError(
                "MoEConfig.expert_intermediate_size must be >= 1, "
                f"got {self.expert_intermediate_size}."
            )
        if self.shared_expert_intermediate_size < 0:
            raise ValueError(
                "MoEConfig.shared_expert_intermediate_size must be >= 0 (0 = no shared expert), "
                f"got {self.shared_expert_intermediate_size}."
            )
        if self.shared_expert_gate and not self.shared_expert_intermediate_size:
            raise ValueError(
                "MoEConfig.shared_expert_gate=True needs a shared expert: set "
                "shared_expert_intermediate_size > 0."
            )
        for name in ("load_balancing_coef", "z_loss_coef"):
            if getattr(self, name) < 0:
                raise ValueError(f"MoEConfig.{name} must be >= 0, got {getattr(self, name)}.")


@dataclass(frozen=True)
class ModelConfig(_DictConfig):
    """A Qwen3-style decoder-only LM with gated attention. Names follow Hugging Face."""

    vocab_size: int = 8192
    hidden_size: int = 256
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 64
    intermediate_size: int = 768
    """SwiGLU FFN width (ignored by MoE layers)."""
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    partial_rotary_factor: float = 1.0
    """Share of ``head_dim`` that is rotated (Qwen3-Next uses 0.25)."""
    rope_scaling: dict[str, Any] | None = None
    """Optional RoPE scaling (``{"rope_type": "linear" | "ntk" | "dynamic" | "yarn", ...}``)."""
    max_position_embeddings: int = 4096
    qk_norm: str = "rms"
    """``none`` | ``rms`` (Qwen3) | ``zero_centered`` (``x_hat * (1 + w)``, Qwen3-Next)."""
    norm_type: str = "rms"
    """Block norms: ``rms`` (``x_hat * w``) or ``zero_centered`` (``x_hat * (1 + w)``)."""
    attention_bias: bool = False
    """Bias on the fused q/k/v/gate projection (Qwen2's ``qkv_bias``)."""
    attention_out_bias: bool = False
    """Bias on ``o_proj``."""
    tie_word_embeddings: bool = True
    initializer_range: float = 0.02
    gate: GateConfig = field(default_factory=GateConfig)
    """A :class:`GateConfig`, a variant name (``"sdpa-elementwise"``) or a dict."""
    moe: MoEConfig | None = None
    """``None`` for a dense SwiGLU FFN in every layer."""
    sandwich_norm: bool = False
    """Sandwich norm (Ding et al. 2021, the paper's Table 2 stability baseline): an extra RMSNorm
    on the attention and FFN outputs before each residual add. Off: the plain pre-norm block."""
    normalizer: NormalizerConfig = field(default_factory=NormalizerConfig)
    """The attention normaliser (:class:`NormalizerConfig`, a kind name such as ``"sink"`` or a
    dict): softmax, or another fix for the attention sink; combines with any gate."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}

    def __post_init__(self) -> None:
        # Accept names/dicts for the nested configs (frozen dataclass: set via object.__setattr__).
        object.__setattr__(self, "gate", GateConfig.coerce(self.gate))
        object.__setattr__(self, "normalizer", NormalizerConfig.coerce(self.normalizer))
        if isinstance(self.moe, dict):
            object.__setattr__(self, "moe", MoEConfig.from_dict(self.moe))
        if self.rope_scaling is not None and not isinstance(self.rope_scaling, dict):
            raise ValueError(
                f"ModelConfig.rope_scaling must be a dict or None, got {self.rope_scaling!r}."
            )
        positive = (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "head_dim",
            "intermediate_size",
            "max_position_embeddings",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ModelConfig.{name} must be a positive integer, got {value!r}.")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"ModelConfig.num_attention_heads={self.num_attention_heads} must be divisible by "
                f"num_key_value_heads={self.num_key_value_heads} (grouped-query attention)."
            )
        if self.head_dim % 2:
            raise ValueError(f"ModelConfig.head_dim must be even for RoPE, got {self.head_dim}.")
        if not 0.0 < self.partial_rotary_factor <= 1.0:
            raise ValueError(
                "ModelConfig.partial_rotary_factor must be in (0, 1], "
                f"got {self.partial_rotary_factor}."
            )
        if self.rotary_dim % 2:
            raise ValueError(
                f"ModelConfig.partial_rotary_factor={self.partial_rotary_factor} gives an odd "
                f"rotary dimension {self.rotary_dim} of head_dim={self.head_dim}; it must be even."
            )
        if self.rms_norm_eps <= 0:
            raise ValueError(f"ModelConfig.rms_norm_eps must be > 0, got {self.rms_norm_eps}.")
        if self.rope_theta <= 0:
            raise ValueError(f"ModelConfig.rope_theta must be > 0, got {self.rope_theta}.")
        if self.initializer_range <= 0:
            raise ValueError(
                f"ModelConfig.initializer_range must be > 0, got {self.initializer_range}."
            )
        _check_choice("ModelConfig", "qk_norm", self.qk_norm, QK_NORMS)
        _check_choice("ModelConfig", "norm_type", self.norm_type, NORM_TYPES)
        if not isinstance(self.sandwich_norm, bool):
            raise ValueError(
                f"ModelConfig.sandwich_norm must be true or false, got {self.sandwich_norm!r}."
            )

    # ----------------------------------------------------------------- derived sizes
    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def q_size(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_key_value_heads * self.head_dim

    @property
    def gate_shape(self) -> tuple[int, ...]:
        """One token's gate logits (the input-independent gate's parameter): ``(hidden,)`` at
        ``dense`` (G5), else ``(heads, 1 | head_dim)`` (headwise | elementwise), ``heads`` the KV
        heads at ``value``/``key`` (G2/G3), the query heads otherwise; ``()`` without a gate."""
        gate = self.gate
        if not gate.enabled:
            return ()
        if gate.position == "dense":
            return (self.hidden_size,)
        kv = gate.position in ("value", "key")
        heads = self.num_key_value_heads if kv else self.num_attention_heads
        return (heads, 1 if gate.granularity == "headwise" else self.head_dim)

    @property
    def gate_size(self) -> int:
        """Width of the gate slice of ``qkv_proj`` (0 when the gate has no projection)."""
        return math.prod(self.gate_shape) if self.gate.has_projection else 0

    # ----------------------------------------------------------------- parameter budgets
    def num_parameters(self) -> int:
        """Total parameters of the model this config builds (tied embeddings counted once).

        Computed from the config alone (no model is built), so parameter matching is cheap;
        ``tests/test_equal_params.py`` checks it against ``count_parameters`` of built models.
        """
        h, d, layers = self.hidden_size, self.head_dim, self.num_hidden_layers
        gate = self.gate
        qkv_out = self.q_size + 2 * self.kv_size + self.gate_size
        attn = h * qkv_out + self.q_size * h
        attn += qkv_out * int(self.attention_bias) + h * int(self.attention_out_bias)
        attn += 2 * d if self.qk_norm != "none" else 0
        if gate.enabled and gate.transform == "gate" and not gate.input_dependent:
            attn += math.prod(self.gate_shape)
        attn += d if gate.enabled and gate.transform == "rmsnorm" else 0
        attn += sum(math.prod(s) for s in self.normalizer.parameter_shapes(self).values())
        if self.moe is None:
            ffn = 3 * h * self.intermediate_size
        else:
            m = self.moe
            ffn = h * m.num_experts + m.num_experts * 3 * h * m.expert_intermediate_size
            ffn += 3 * h * m.shared_expert_intermediate_size + h * int(m.shared_expert_gate)
        norms = h * (4 if self.sandwich_norm else 2)
        embed = self.vocab_size * h * (1 if self.tie_word_embeddings else 2)
        return embed + h + layers * (attn + ffn + norms)

    def gate_parameters(self) -> int:
        """Parameters the gate (or output control) adds over the same config without it."""
        return self.num_parameters() - self.replace(gate=GateConfig()).num_parameters()

    def _ffn_width(self) -> tuple[str, int]:
        """The FFN width that parameter matching resizes: ``intermediate_size`` (dense) or
        ``expert_intermediate_size`` (MoE), as ``(field name, value)``."""
        if self.moe is None:
            return "intermediate_size", self.intermediate_size
        return "expert_intermediate_size", self.moe.expert_intermediate_size

    def _with_ffn_width(self, width: int) -> ModelConfig:
        if self.moe is None:
            return self.replace(intermediate_size=width)
        return self.replace(moe=dataclasses.replace(self.moe, expert_intermediate_size=width))

    def with_equal_params(self) -> ModelConfig:
        """A copy whose FFN is narrowed so it has as many parameters as the same config without
        the gate (nearest integer width): the paper's dense 1.7B runs shrink the FFN so gated and
        baseline models have equal parameter counts.

        Dense models narrow ``intermediate_size``; MoE models narrow every expert's
        ``expert_intermediate_size``. A config whose gate adds no parameters (or fewer than one
        unit of FFN width) is returned unchanged; the result is a plain config (nothing to undo).
        """
        added = self.gate_parameters()
        name, width = self._ffn_width()
        per_unit = self.num_parameters() - self._with_ffn_width(max(width - 1, 1)).num_parameters()
        shrink = round(added / per_unit) if per_unit > 0 and width > 1 else 0
        if shrink <= 0:
            return self
        if shrink >= width:
            raise ValueError(
                f"ModelConfig.{name}={width} is too narrow to absorb the gate's {added:,} "
                f"parameters ({per_unit:,} per unit of width); widen it or disable equal params."
            )
        return self._with_ffn_width(width - shrink)

    def expanded(self, dim: str, params: int) -> ModelConfig:
        """A copy with ``dim`` grown so the model has about ``params`` more parameters: the
        parameter-matched baselines of the paper's Table 1 (k=8 KV heads, q=48 query heads,
        +4 experts), sized here to a given budget (usually the G1 gate's parameters).

        ``dim``: ``kv_heads`` (more KV heads; the count must divide ``num_attention_heads``),
        ``query_heads`` (more query heads, a multiple of ``num_key_value_heads``; ``head_dim``
        is kept, so q_proj and o_proj grow) or ``ffn`` (dense: a wider SwiGLU; MoE: more
        experts of the same width, top-k unchanged). The achievable size nearest to the budget
        is chosen; at least one step is always added.
        """
        _check_choice("ModelConfig.expanded", "dim", dim, EXPANSION_DIMS)
        if params <= 0:
            raise ValueError(f"ModelConfig.expanded: params must be > 0, got {params}.")
        target = self.num_parameters() + params
        heads, kv = self.num_attention_heads, self.num_key_value_heads
        if dim == "kv_heads":
            candidates = [
                self.replace(num_key_value_heads=k)
                for k in range(kv + 1, heads + 1)
                if not heads % k
            ]
            if not candidates:
                raise ValueError(
                    f"ModelConfig.num_key_value_heads={kv} cannot grow: it already equals "
                    f"num_attention_heads={heads}. Use dim='query_heads' or 'ffn'."
                )
        elif dim == "query_heads":
            per_head = self.replace(num_attention_heads=heads + kv).num_parameters()
            steps = max(1, round(params / max(per_head - self.num_parameters(), 1)))
            candidates = [
                self.replace(num_attention_heads=heads + kv * n) for n in range(1, steps + 2)
            ]
        elif self.moe is None:
            per_unit = self.replace(intermediate_size=self.intermediate_size + 1).num_parameters()
            steps = max(1, round(params / (per_unit - self.num_parameters())))
            return self.replace(intermediate_size=self.intermediate_size + steps)
        else:
            m = self.moe
            one = self.replace(moe=dataclasses.replace(m, num_experts=m.num_experts + 1))
            steps = max(1, round(params / (one.num_parameters() - self.num_parameters())))
            return self.replace(moe=dataclasses.replace(m, num_experts=m.num_experts + steps))
        return min(candidates, key=lambda c: abs(c.num_parameters() - target))

    # ----------------------------------------------------------------- (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["gate"] = self.gate.to_dict()
        data["normalizer"] = self.normalizer.to_dict()
        data["moe"] = self.moe.to_dict() if self.moe is not None else None
        data["rope_scaling"] = dict(self.rope_scaling) if self.rope_scaling else None
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        return cls.from_dict(json.loads(text))

    def replace(self, **overrides: Any) -> ModelConfig:
        """A copy with some fields changed (validated like a new config)."""
        _check_keys(type(self), overrides)
        return dataclasses.replace(self, **overrides)

    # ----------------------------------------------------------------- presets
    @classmethod
    def preset_names(cls) -> list[str]:
        return list(cls.PRESETS)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> ModelConfig:
        """A named preset (``ModelConfig.preset_names()``) with optional field overrides."""
        if name not in cls.PRESETS:
            raise ValueError(
                f"Unknown model preset {name!r}.{_suggest(name, cls.preset_names())} "
                f"Valid presets: {', '.join(cls.preset_names())}."
            )
        data = dict(cls.PRESETS[name])
        _check_keys(cls, overrides)
        data.update(overrides)
        return cls(**data)


ModelConfig.PRESETS.update(
    {
        # Paper Table 7. Tied embeddings and QK-norm as printed; vocab of Qwen3 (151,936).
        "paper-1.7b-28l": {
            "vocab_size": 151936,
            "hidden_size": 2048,
            "num_hidden_layers": 28,
            "num_attention_heads": 16,
            "num_key_value_heads": 8,
            "head_dim": 128,
            "intermediate_size": 6144,
            "tie_word_embeddings": True,
            "max_position_embeddings": 4096,
        },
        "paper-1.7b-48l": {
            "vocab_size": 151936,
            "hidden_size": 1536,
            "num_hidden_layers": 48,
            "num_attention_heads": 16,
            "num_key_value_heads": 8,
            "head_dim": 128,
            "intermediate_size": 4608,
            "tie_word_embeddings": True,
            "max_position_embeddings": 4096,
        },
        "paper-15a2b-moe": {
            "vocab_size": 151936,
            "hidden_size": 2048,
            "num_hidden_layers": 24,
            "num_attention_heads": 32,
            "num_key_value_heads": 4,
            "head_dim": 128,
            "intermediate_size": 768,
            "tie_word_embeddings": False,
            "max_position_embeddings": 4096,
            "moe": {"num_experts": 128, "top_k": 8, "expert_intermediate_size": 768},
        },
        # For tests: builds and runs in milliseconds.
        "tiny": {
            "vocab_size": 128,
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 8,
            "intermediate_size": 64,
            "max_position_embeddings": 256,
        },
        # CPU experiments: ~1-2M non-embedding parameters.
        "small": {
            "vocab_size": 8192,
            "hidden_size": 128,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 32,
            "intermediate_size": 384,
            "max_position_embeddings": 2048,
        },
        # A small fine-grained MoE for CPU studies.
        "small-moe": {
            "vocab_size": 8192,
            "hidden_size": 128,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 32,
            "intermediate_size": 384,
            "max_position_embeddings": 2048,
            "moe": {
                "num_experts": 8,
                "top_k": 2,
                "expert_intermediate_size": 96,
            },
        },
    }
)


ROPE_FIELDS = ("rope_theta", "rope_scaling", "max_position_embeddings", "partial_rotary_factor")
"""ModelConfig fields that change only how positions are encoded, never a weight shape."""


def rope_only_difference(a: ModelConfig, b: ModelConfig) -> list[str]:
    """Fields in which two configs differ; raises ``ValueError`` if any is not a RoPE field."""
    da, db = a.to_dict(), b.to_dict()
    diff = [k for k in da if da[k] != db[k]]
    bad = [k for k in diff if k not in ROPE_FIELDS]
    if bad:
        details = "; ".join(f"{k}: {da[k]!r} vs {db[k]!r}" for k in bad)
        raise ValueError(
            f"the configs differ in non-RoPE fields ({details}); only {', '.join(ROPE_FIELDS)} "
            "may change when weights are carried over"
        )
    return diff
