"""Attention normalisers: how masked logits become attention weights, one class per kind.

Softmax is the default; the other kinds are published fixes for the attention sink
(``docs/paper.md`` section 8, ``docs/normalizers.md``). Each kind is a :class:`NormalizerKind`
subclass registered by name in :data:`KINDS` (and in ``config.NORMALIZER_KINDS``, which
``NormalizerConfig`` validates against). A kind has one of three forms:

- ``softmax``: plain softmax (only the default kind);
- ``columns``: softmax over the real keys plus ``E`` *virtual key columns* that every query
  sees, each with a key vector per KV head (or zero), a value vector per KV head (or zero) and a
  logit per query head added to its score (:class:`Columns`). The learnable sink logit, softmax
  + 1 and the key/value bias are of this form; fused SDPA kernels run them on keys and values
  with the columns prepended (``ops.attention.with_virtual_columns``);
- ``weights``: an elementwise or row formula of its own (:meth:`NormalizerKind.weights`),
  run only by explicit backends (``eager``, ``matmul``).

The op receives a :class:`Normalizer`: the kind, its resolved options and the per-head
parameters of one layer. Logit rows are ``(B, H, T, S)`` with masked entries ``-inf``; queries
``(B, T, H, D)``; query head ``h`` reads KV head ``h // (H // K)``.

Adding a kind: a subclass here (with ``register``), its float64 reference in
``ops/reference.py``, and a test; every backend, the layer, caches, analysis and the HF classes
pick it up from its form.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from gated_attention.config import NORMALIZER_KINDS, ModelConfig
from gated_attention.ops.gating import upcast

FORMS = ("softmax", "columns", "weights")


@dataclass(frozen=True)
class Columns:
    """``count`` virtual key columns seen by every query (``columns`` kinds).

    Attributes:
        count: number of columns ``E``.
        key: ``(E, K, D)`` key vectors per KV head, or ``None`` for zero keys.
        value: ``(E, K, D)`` value vectors per KV head, or ``None`` for zero values.
        logit: ``(E, H)`` logit added per query head, or ``None``.
    """

    count: int
    key: torch.Tensor | None = None
    value: torch.Tensor | None = None
    logit: torch.Tensor | None = None


@dataclass(frozen=True)
class Normalizer:
    """One layer's normaliser as the attention op receives it.

    Attributes:
        kind: the registered kind.
        options: its settings, resolved for the model (``NormalizerKind.resolve``).
        params: its learned per-head parameters by name (e.g. ``sinks`` ``(H,)``).
    """

    kind: NormalizerKind
    options: Mapping[str, Any] = field(default_factory=dict)
    params: Mapping[str, torch.Tensor] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.kind.name

    @property
    def form(self) -> str:
        return self.kind.form

    def columns(self) -> Columns:
        """The virtual key columns of a ``columns`` kind."""
        return self.kind.columns(self)

    def weights(self, scores: torch.Tensor) -> torch.Tensor:
        """Weights ``(B, H, T, S)`` of a ``weights`` kind from masked logits ``(B, H, T, S)``."""
        return self.kind.weights(scores, self)

    def detached(self) -> Normalizer:
        """A copy whose parameters are detached float32 CPU tensors (for analysis)."""
        params = {k: p.detach().float().cpu() for k, p in self.params.items()}
        return Normalizer(self.kind, dict(self.options), params)


class NormalizerKind:
    """A normaliser kind; subclasses set the class attributes and override what their form needs.

    Attributes:
        name: registry name (``NormalizerConfig.kind``).
        title: one line for docs and reports.
        form: ``softmax`` | ``columns`` | ``weights`` (module docstring).
        null_attention: rows never sum above 1, and ``1 - row mass`` is weight given to no real
            token (the sink, the "+1", the bias column, or what a rectified kind withholds).
        defaults: option name -> default value.
    """

    name: ClassVar[str]
    title: ClassVar[str]
    form: ClassVar[str]
    null_attention: ClassVar[bool] = True
    defaults: ClassVar[dict[str, Any]] = {}

    def check_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """``options`` validated, with defaults filled in (``ValueError`` naming the option)."""
        for key in options:
            if key not in self.defaults:
                allowed = ", ".join(self.defaults) or "none"
                raise ValueError(
                    f"normalizer.options.{key} is not an option of kind {self.name!r}; "
                    f"options: {allowed}."
                )
        merged = {**self.defaults, **options}
        self.validate(merged)
        return merged

    def validate(self, options: dict[str, Any]) -> None:
        """Raise ``ValueError`` naming ``normalizer.options.<name>`` for a bad value."""

    def resolve(self, options: Mapping[str, Any], cfg: ModelConfig) -> dict[str, Any]:
        """Options with model-dependent defaults filled in (default: unchanged)."""
        return dict(options)

    def parameter_shapes(self, cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
        """Learned parameters of one attention layer, by name (all start at zero)."""
        return {}

    def columns(self, norm: Normalizer) -> Columns:
        raise NotImplementedError(f"normalizer {self.name!r} has no virtual key columns")

    def weights(self, scores: torch.Tensor, norm: Normalizer) -> torch.Tensor:
        raise NotImplementedError(f"normalizer {self.name!r} is not an elementwise formula")


KINDS: dict[str, NormalizerKind] = {}
"""Registered kinds by name."""


def register(kind: type[NormalizerKind]) -> type[NormalizerKind]:
    """Class decorator: add a kind to :data:`KINDS` and to the config's registry."""
    if kind.form not in FORMS:
        raise ValueError(f"normalizer {kind.name!r}: form {kind.form!r} not in {FORMS}")
    KINDS[kind.name] = NORMALIZER_KINDS[kind.name] = kind()
    return kind


def _softmax(scores: torch.Tensor) -> torch.Tensor:
    return torch.softmax(upcast(scores), dim=-1).to(scores.dtype)


# ---------------------------------------------------------------------- the kinds
@register
class Softmax(NormalizerKind):
    """``softmax(x)``: weights on the real tokens sum to one."""

    name = "softmax"
    title = "softmax (the default)"
    form = "softmax"
    null_attention = False


@register
class Sink(NormalizerKind):
    """Learnable sink logit per query head (gpt-oss): softmax over ``[x, s_h]``, the sink
    column dropped. Parameter ``sinks`` ``(H,)``, zero at init (softmax + 1)."""

    name = "sink"
    title = "learnable sink logit per head (gpt-oss)"
    form = "columns"

    def parameter_shapes(self, cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
        return {"sinks": (cfg.num_attention_heads,)}

    def columns(self, norm: Normalizer) -> Columns:
        return Columns(1, logit=norm.params["sinks"][None, :])


@register
class SoftmaxPlusOne(NormalizerKind):
    """Softmax + 1 ("off-by-one", Miller 2023): ``exp(x_i) / (1 + sum_j exp(x_j))``, a zero
    key with a zero value."""

    name = "softmax1"
    title = "softmax + 1 (off-by-one)"
    form = "columns"

    def columns(self, norm: Normalizer) -> Columns:
        return Columns(1)


@register
class KeyValueBias(NormalizerKind):
    """Explicit attention bias (Sun et al. 2024, "Massive activations"): a learned key and value
    per KV head, seen by every query without position. Parameters ``bias_key`` and
    ``bias_value`` ``(K, D)``, zero at init (softmax + 1)."""

    name = "kv-bias"
    title = "learned key/value bias per head"
    form = "columns"

    def parameter_shapes(self, cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
        shape = (cfg.num_key_value_heads, cfg.head_dim)
        return {"bias_key": shape, "bias_value": shape}

    def columns(self, norm: Normalizer) -> Columns:
        return Columns(1, key=norm.params["bias_key"][None], value=norm.params["bias_value"][None])


@register
class Sigmoid(NormalizerKind):
    """Sigmoid attention (Ramapuram et al. 2024): ``sigmoid(x + b)``, ``b = -log n``, no
    normalisation over the row.

    ``n`` is option ``length`` (default: the model's ``max_position_embeddings``), a constant,
    not the call's key count: the same query and key then get the same weight whether attended
    in a full forward, a cached decoding step or a window, and the weights of a row do not
    shrink as the context grows past the trained length. Set ``length`` to the training
    sequence length, as Ramapuram et al. do.
    """

    name = "sigmoid"
    title = "sigmoid attention, bias -log n"
    form = "weights"
    null_attention = False
    defaults: ClassVar[dict[str, Any]] = {"length": None}

    def validate(self, options: dict[str, Any]) -> None:
        n = options["length"]
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ValueError(
                f"normalizer.options.length must be a positive integer or None, got {n!r}."
            )

    def resolve(self, options: Mapping[str, Any], cfg: ModelConfig) -> dict[str, Any]:
        n = options.get("length") or cfg.max_position_embeddings
        return {**options, "length": n}

    def weights(self, scores: torch.Tensor, norm: Normalizer) -> torch.Tensor:
        bias = -math.log(norm.options["length"])
        return torch.sigmoid(upcast(scores) + bias).to(scores.dtype)


@register
class Softpick(NormalizerKind):
    """Softpick (Zuhri et al. 2025): ``relu(e^x_i - 1) / (sum_j |e^x_j - 1| + eps e^m)``, with
    ``m = max(0, max_j x_j)`` over the visible keys; computed shifted by ``m``, where ``eps``
    is added as in the authors' released code. Rows sum to at most 1; a row of negative logits
    attends to nothing."""

    name = "softpick"
    title = "softpick (rectified softmax)"
    form = "weights"
    defaults: ClassVar[dict[str, Any]] = {"eps": 1e-8}

    def validate(self, options: dict[str, Any]) -> None:
        eps = options["eps"]
        if isinstance(eps, bool) or not isinstance(eps, int | float) or not eps > 0:
            raise ValueError(f"normalizer.options.eps must be a number > 0, got {eps!r}.")

    def weights(self, scores: torch.Tensor, norm: Normalizer) -> torch.Tensor:
        x = upcast(scores)
        m = x.amax(dim=-1, keepdim=True).clamp(min=0.0)
        e = torch.exp(x - m) - torch.exp(-m)
        visible = torch.isfinite(x)
        den = torch.where(visible, e.abs(), 0.0).sum(dim=-1, keepdim=True) + norm.options["eps"]
        return (torch.relu(e) / den).to(scores.dtype)


# ---------------------------------------------------------------------- the shared maths
def normalizer_kinds() -> list[str]:
    """The registered kind names, ``softmax`` first."""
    return list(KINDS)


def build_normalizer(cfg: ModelConfig, params: Mapping[str, torch.Tensor]) -> Normalizer | None:
    """The normaliser of a layer of ``cfg`` with its ``params``; ``None`` for softmax (the op's
    untouched default path)."""
    if cfg.normalizer.is_softmax:
        return None
    kind = KINDS[cfg.normalizer.kind]
    return Normalizer(kind, kind.resolve(cfg.normalizer.options, cfg), dict(params))


def as_normalizer(value: Normalizer | str | None) -> Normalizer | None:
    """A :class:`Normalizer` from a kind name (parameter-free kinds, default options), or the
    given one; ``None`` (and softmax) stays ``None``."""
    if value is None or isinstance(value, Normalizer):
        return None if value is not None and value.form == "softmax" else value
    if value not in KINDS:
        raise ValueError(f"unknown normalizer {value!r}; registered: {', '.join(KINDS)}")
    kind = KINDS[value]
    if kind.form == "softmax":
        return None
    options = kind.check_options({})
    if any(v is None for v in options.values()):
        missing = [k for k, v in options.items() if v is None]
        raise ValueError(f"normalizer {value!r} needs options {missing}; pass a Normalizer")
    return Normalizer(kind, options)


def extra_logits(q: torch.Tensor, scale: float, cols: Columns, dtype: torch.dtype) -> torch.Tensor:
    """Logits ``(B, H, T, E)`` of the virtual columns for queries ``q`` ``(B, T, H, D)``:
    ``scale * q . key`` plus the per-head logit."""
    B, T, H, D = q.shape
    out = q.new_zeros((1, 1, 1, cols.count), dtype=dtype)
    if cols.key is not None:
        K = cols.key.shape[1]
        qg = q.reshape(B, T, K, H // K, D).to(dtype)
        logits = torch.einsum("btkgd,ekd->bkgte", qg, cols.key.to(dtype)) * scale
        out = out + logits.reshape(B, H, T, cols.count)
    if cols.logit is not None:
        out = out + cols.logit.to(dtype).T[None, :, None, :]
    return out.expand(B, H, T, cols.count)


def null_values(null: torch.Tensor, cols: Columns) -> torch.Tensor | None:
    """What the virtual columns add to the output: weights ``(B, H, T, E)`` times their values,
    ``(B, T, H, D)``; ``None`` when the values are zero."""
    if cols.value is None:
        return None
    B, H, T, E = null.shape
    K = cols.value.shape[1]
    out = torch.einsum("bkgte,ekd->bkgtd", null.reshape(B, K, H // K, T, E), cols.value.to(null))
    return out.reshape(B, H, T, -1).transpose(1, 2)


def normalize(
    scores: torch.Tensor, q: torch.Tensor, scale: float, norm: Normalizer | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Weights on the real keys ``(B, H, T, S)`` from masked logits ``(B, H, T, S)``, and the
    weights of the virtual columns ``(B, H, T, E)`` (``None`` for other forms).

    Softmax (``norm`` ``None``) is exactly ``softmax`` computed in at least float32, in the
    logits' dtype; ``columns`` kinds are that softmax over ``[columns, keys]``.
    """
    if norm is None or norm.form == "softmax":
        return _softmax(scores), None
    if norm.form == "weights":
        return norm.weights(scores), None
    cols = norm.columns()
    extra = extra_logits(q, scale, cols, upcast(scores).dtype)
    probs = _softmax(torch.cat((extra, upcast(scores)), dim=-1)).to(scores.dtype)
    return probs[..., cols.count :], probs[..., : cols.count]
