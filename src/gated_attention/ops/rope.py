"""Rotary position embedding (NeoX half-rotation, as Qwen3), full or partial.

``rope_parameters`` turns a head size, base and optional scaling into inverse frequencies and an
attention factor; ``rope_cos_sin`` evaluates them at positions; ``apply_rope`` rotates the first
``rotary_dim`` features of each head and leaves the rest unchanged (partial rotary).
"""

from __future__ import annotations

import math
from typing import Any

import torch

ROPE_TYPES = ("default", "linear", "ntk", "dynamic", "yarn")


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
        rotary_dim: number of rotated features per head (even).
        base: RoPE base theta.
        scaling: ``None`` or ``{"rope_type": ..., "factor": s, ...}``:
            ``linear`` (position interpolation: frequencies / s), ``ntk`` (NTK-aware:
            base * s^(d/(d-2))), ``dynamic`` (NTK base grown from ``seq_len`` beyond the original
            length), ``yarn`` (per-frequency ramp between interpolation and extrapolation with
            ``beta_fast``/``beta_slow``, attention factor 0.1 ln(s) + 1). The keys follow
            ``transformers``' rope parameters (``original_max_position_embeddings`` etc.).
        seq_len: current sequence length (only used by ``dynamic``).
        max_position_embeddings: the trained length, used when ``scaling`` does not name
            ``original_max_position_embeddings``.
    """
    if not scaling or scaling.get("rope_type", scaling.get("type", "default")) == "default":
        return _default_inv_freq(rotary_dim, base), 1.0
    rope_type = scaling.get("rope_type", scaling.get("type"))
    if rope_type not in ROPE_TYPES:
        raise ValueError(f"unknown rope_type {rope_type!r}; allowed: {', '.join(ROPE_TYPES)}")
    factor = float(scaling.get("factor", 1.0))
    if factor < 1.0:
        raise ValueError(f"rope scaling factor must be >= 1, got {factor}")
    original = int(
        scaling.get("original_max_position_embeddings") or max_position_embeddings or 0
    )
    if rope_type == "linear":
        return _default_inv_freq(rotary_dim, base) / factor, 1.0
    if rope_type == "ntk":
        return _default_inv_freq(rotary_dim, base * factor ** (rotary_dim / (rotary_dim - 2))), 1.0
    if rope_type == "dynamic":
        if not original:
            raise ValueError("dynamic RoPE needs original_max_position_embeddings")
        length = max(seq_len or original, original)
        new_base = base * ((factor * length / original) - (factor - 1)) ** (
            rotary_dim / (rotary_dim - 2)
        )
        return _default_inv_freq(rotary_dim, new_base), 1.0
    # YaRN (Peng et al. 2023), following transformers' _compute_yarn_parameters.
    if not original:
        raise ValueError("YaRN needs original_max_position_embeddings")
    beta_fast = float(scaling.get("beta_fast", 32.0))
    beta_slow = float(scaling.get("beta_slow", 1.0))
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
