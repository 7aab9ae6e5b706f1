"""Rotary position embedding (NeoX half-rotation, as Qwen3), full or partial, with scaling.

``rope_parameters`` turns a rotary size, base and optional scaling into inverse frequencies and an
attention factor; ``rope_cos_sin`` evaluates them at positions; ``apply_rope`` rotates the first
``rotary_dim`` features of each head and leaves the rest unchanged (partial rotary).

Scaling types (docs/paper.md section 7). The ``scaling`` dict uses ``transformers``' key names
(``rope_type``, ``factor``, ``original_max_position_embeddings``, ``beta_fast``, ...); the base and
the rotary fraction stay ``ModelConfig.rope_theta`` / ``partial_rotary_factor``.

=========== ==================================================================================
``default`` plain RoPE, ``theta_i = base^(-2i/d)``.
``linear``  position interpolation (Chen et al. 2023): positions / s, i.e. ``theta_i / s``.
``ntk``     static NTK-aware scaling (bloc97): the base becomes ``base * s^(d/(d-2))``.
``dynamic`` dynamic NTK (emozilla): NTK with the base grown from the current length ``n``,
            ``base * (s n / L - (s - 1))^(d/(d-2))`` for ``n > L``, plain RoPE for ``n <= L``.
``yarn``    YaRN (Peng et al. 2023): per-frequency ramp between interpolation and
            extrapolation over the wavelength range set by ``beta_fast``/``beta_slow``
            (defaults 32/1), cos/sin scaled by ``0.1 ln(s) + 1``.
=========== ==================================================================================

``linear``, ``dynamic`` and ``yarn`` follow ``transformers.modeling_rope_utils``
(``_compute_linear_scaling_rope_parameters``, ``_compute_dynamic_ntk_parameters``,
``_compute_yarn_parameters``) and give the same frequencies and attention factor; ``ntk`` is not
in ``transformers`` and equals ``dynamic`` with factor 1 evaluated at length ``s L``.
Frequencies are computed in float64 (``transformers`` uses float32; the two agree to float32
precision).
"""

from __future__ import annotations

import math
from typing import Any

import torch

ROPE_TYPES = ("default", "linear", "ntk", "dynamic", "yarn")

# Keys a scaling dict may carry (transformers' names); ``type`` is the legacy spelling of
# ``rope_type``.
ROPE_SCALING_KEYS = (
    "rope_type",
    "type",
    "factor",
    "original_max_position_embeddings",
    "beta_fast",
    "beta_slow",
    "attention_factor",
    "mscale",
    "mscale_all_dim",
    "truncate",
)


def _number(key: str, value: Any, *, minimum: float | None = None, strict: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"rope_scaling[{key!r}] must be a finite number, got {value!r}.")
    if minimum is not None and (value < minimum or (strict and value == minimum)):
        bound = f"> {minimum}" if strict else f">= {minimum}"
        raise ValueError(f"rope_scaling[{key!r}] must be {bound}, got {value!r}.")
    return float(value)


def rope_type_of(scaling: dict[str, Any] | None) -> str:
    """The scaling type a dict names (``default`` for ``None`` or an empty dict)."""
    if not scaling:
        return "default"
    return str(scaling.get("rope_type", scaling.get("type", "default")))


def check_rope_scaling(scaling: dict[str, Any] | None) -> dict[str, Any] | None:
    """Validate a scaling dict and return it normalised (``rope_type`` set, no legacy ``type``).

    Raises ``ValueError`` naming the bad key: an unknown key or type, a missing or invalid
    ``factor`` (every scaling type needs one, >= 1), a non-positive
    ``original_max_position_embeddings``, or non-numeric YaRN parameters.
    """
    if scaling is None:
        return None
    if not isinstance(scaling, dict):
        raise ValueError(f"rope_scaling must be a dict or None, got {scaling!r}.")
    for key in scaling:
        if key not in ROPE_SCALING_KEYS:
            own = {"rope_theta": "rope_theta", "partial_rotary_factor": "partial_rotary_factor"}
            hint = f" Set ModelConfig.{own[key]} instead." if key in own else ""
            raise ValueError(
                f"rope_scaling has unknown key {key!r}; allowed: {', '.join(ROPE_SCALING_KEYS)}."
                + hint
            )
    rope_type = rope_type_of(scaling)
    if rope_type not in ROPE_TYPES:
        raise ValueError(
            f"rope_scaling['rope_type']={rope_type!r} is not valid; allowed: {', '.join(ROPE_TYPES)}."
        )
    out = {k: v for k, v in scaling.items() if k != "type"}
    out["rope_type"] = rope_type
    if rope_type == "default":
        return out
    if "factor" not in scaling or scaling["factor"] is None:
        raise ValueError(f"rope_scaling of type {rope_type!r} needs a 'factor' (>= 1).")
    _number("factor", scaling["factor"], minimum=1.0)
    original = scaling.get("original_max_position_embeddings")
    if original is not None and (
        isinstance(original, bool) or not isinstance(original, int) or original < 1
    ):
        raise ValueError(
            "rope_scaling['original_max_position_embeddings'] must be a positive integer, "
            f"got {original!r}."
        )
    for key in ("beta_fast", "beta_slow", "mscale", "mscale_all_dim", "attention_factor"):
        if scaling.get(key) is not None:
            _number(key, scaling[key], minimum=0.0, strict=True)
    if "truncate" in scaling and not isinstance(scaling["truncate"], bool):
        raise ValueError(
            f"rope_scaling['truncate'] must be true or false, got {scaling['truncate']!r}."
        )
    return out


def _default_inv_freq(rotary_dim: int, base: float) -> torch.Tensor:
    exponents = torch.arange(0, rotary_dim, 2, dtype=torch.int64).double() / rotary_dim
    return 1.0 / (base**exponents)


def _yarn_get_mscale(scale: float, mscale: float = 1.0) -> float:
    if scale <= 1.0:
        return 1.0
    return 0.1 * mscale * math.log(scale) + 1.0


def rope_parameters(
    rotary_dim: int,
    base: float,
    scaling: dict[str, Any] | None = None,
    seq_len: int | None = None,
    max_position_embeddings: int | None = None,
) -> tuple[torch.Tensor, float]:
    """Inverse frequencies ``(rotary_dim // 2,)`` (float64) and the attention factor.

    Args:
        rotary_dim: number of rotated features per head (even, >= 2).
        base: RoPE base theta.
        scaling: ``None`` or ``{"rope_type": ..., "factor": s, ...}`` (see the module docstring
            and :func:`check_rope_scaling`).
        seq_len: current sequence length (only used by ``dynamic``; ``None`` means the trained
            length, where dynamic NTK is plain RoPE).
        max_position_embeddings: the trained length ``L``, used when ``scaling`` does not name
            ``original_max_position_embeddings`` (``dynamic`` and ``yarn`` need one of them).
    """
    if rotary_dim < 2 or rotary_dim % 2:
        raise ValueError(f"rotary_dim must be an even integer >= 2, got {rotary_dim}.")
    scaling = check_rope_scaling(scaling)
    rope_type = rope_type_of(scaling)
    if rope_type == "default":
        return _default_inv_freq(rotary_dim, base), 1.0
    assert scaling is not None
    factor = float(scaling["factor"])
    original = int(scaling.get("original_max_position_embeddings") or max_position_embeddings or 0)
    # The NTK exponent d/(d-2) is undefined for d = 2; such a tiny rotary size cannot be scaled.
    if rope_type in ("ntk", "dynamic") and rotary_dim < 4:
        raise ValueError(f"{rope_type} RoPE scaling needs rotary_dim >= 4, got {rotary_dim}.")
    if rope_type == "linear":
        return _default_inv_freq(rotary_dim, base) / factor, 1.0
    if rope_type == "ntk":
        return _default_inv_freq(rotary_dim, base * factor ** (rotary_dim / (rotary_dim - 2))), 1.0
    if not original:
        raise ValueError(
            f"{rope_type} RoPE scaling needs the trained length: set "
            "rope_scaling['original_max_position_embeddings'] or pass max_position_embeddings."
        )
    if rope_type == "dynamic":
        length = max(seq_len or original, original)
        new_base = base * ((factor * length / original) - (factor - 1)) ** (
            rotary_dim / (rotary_dim - 2)
        )
        return _default_inv_freq(rotary_dim, new_base), 1.0
    return _yarn_parameters(rotary_dim, base, factor, original, scaling)


def _yarn_parameters(
    rotary_dim: int, base: float, factor: float, original: int, scaling: dict[str, Any]
) -> tuple[torch.Tensor, float]:
    """YaRN (Peng et al. 2023, section 3.2-3.4), as ``transformers``' ``_compute_yarn_parameters``."""
    beta_fast = float(scaling.get("beta_fast") or 32.0)
    beta_slow = float(scaling.get("beta_slow") or 1.0)
    attention_factor = scaling.get("attention_factor")
    if attention_factor is None:
        mscale, mscale_all_dim = scaling.get("mscale"), scaling.get("mscale_all_dim")
        if mscale and mscale_all_dim:
            attention_factor = _yarn_get_mscale(factor, mscale) / _yarn_get_mscale(
                factor, mscale_all_dim
            )
        else:
            attention_factor = _yarn_get_mscale(factor)

    def correction_dim(num_rotations: float) -> float:
        # The dimension whose wavelength fits ``num_rotations`` times into the trained length.
        return (rotary_dim * math.log(original / (num_rotations * 2 * math.pi))) / (
            2 * math.log(base)
        )

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if scaling.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, rotary_dim - 1)
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    ramp = (torch.arange(rotary_dim // 2, dtype=torch.float64) - low) / (high - low)
    extrapolation_weight = 1 - ramp.clamp(0, 1)
    pos_freqs = base ** (torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim)
    inv_extrapolation = 1.0 / pos_freqs
    inv_interpolation = 1.0 / (factor * pos_freqs)
    inv_freq = (
        inv_interpolation * (1 - extrapolation_weight) + inv_extrapolation * extrapolation_weight
    )
    return inv_freq, float(attention_factor)


def rope_cos_sin(
    positions: torch.Tensor,
    inv_freq: torch.Tensor,
    attention_factor: float = 1.0,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables ``(batch, seq, rotary_dim)`` for integer positions ``(batch, seq)``.

    Computed in float32 (float64 when ``inv_freq`` is float64) and cast to ``dtype``.
    """
    work = torch.float64 if inv_freq.dtype == torch.float64 else torch.float32
    freqs = positions.to(work)[..., None] * inv_freq.to(device=positions.device, dtype=work)
    emb = torch.cat((freqs, freqs), dim=-1)
    return (emb.cos() * attention_factor).to(dtype), (emb.sin() * attention_factor).to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first ``cos.shape[-1]`` features of every head.

    Args:
        x: ``(batch, seq, heads, head_dim)``.
        cos, sin: ``(batch, seq, rotary_dim)`` from :func:`rope_cos_sin`.
    """
    rotary_dim = cos.shape[-1]
    cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)
    if rotary_dim == x.shape[-1]:
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat((-x2, x1), dim=-1) * sin
    rot, rest = x[..., :rotary_dim], x[..., rotary_dim:]
    r1, r2 = rot.chunk(2, dim=-1)
    rot = rot * cos + torch.cat((-r2, r1), dim=-1) * sin
    return torch.cat((rot, rest), dim=-1)
