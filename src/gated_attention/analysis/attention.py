"""Attention maps recomputed from post-RoPE queries and keys, dense or streamed by query chunk.

Our model's fast path uses fused SDPA and never materialises attention probabilities, so the
probe recomputes them from the ``hook_q`` / ``hook_k`` taps (``nn/hooks.py``). Queries are
``(batch, T, H, D)`` and keys ``(batch, S, K, D)`` with ``H`` divisible by ``K`` (GQA): query
head ``h`` reads KV head ``h // (H // K)``, the same consecutive grouping as ``repeat_kv`` in
``transformers``. With ``S > T`` (a cached prefix) the causal mask is bottom-right aligned, as
in ``torch.nn.functional.scaled_dot_product_attention`` with a KV cache: query ``t`` sees keys
``0 .. t + (S - T)``.

A model with another attention normaliser than softmax (``ops/normalizers.py``) passes its
layer's :class:`~gated_attention.ops.normalizers.Normalizer`: the maps are then the weights on
the real tokens, computed by the op's own normaliser (rows need not sum to 1; what a learnable
sink, the "+1" or a key/value bias column takes is left out and reported as null attention).
"""

from __future__ import annotations

import math

import torch

from gated_attention.ops.normalizers import Normalizer, as_normalizer, normalize

from ._common import check_ndim, check_probs
from .gates import GATE_LAYOUT
from .sinks import FirstTokenMass, alpha_from_key_column, first_token_mass_from_key0


def _check_qk(
    q: torch.Tensor, k: torch.Tensor, causal: bool, attention_mask: torch.Tensor | None
) -> tuple[int, int, int, int, int]:
    """Validate shapes; return ``(B, T, H, S, K)``."""
    check_ndim(q, 4, "q", "(batch, T, H, D)")
    check_ndim(k, 4, "k", "(batch, S, K, D)")
    B, T, H, D = q.shape
    Bk, S, K, Dk = k.shape
    if Bk != B or Dk != D:
        raise ValueError(
            f"q {tuple(q.shape)} and k {tuple(k.shape)} must share batch and head dim D"
        )
    if K == 0 or H % K != 0:
        raise ValueError(f"query heads H={H} must be a multiple of KV heads K={K} (GQA)")
    if T == 0 or S == 0:
        raise ValueError(f"empty query or key axis: q {tuple(q.shape)}, k {tuple(k.shape)}")
    if causal and S < T:
        raise ValueError(f"causal attention needs S >= T (bottom-right aligned), got T={T}, S={S}")
    if attention_mask is not None and tuple(attention_mask.shape) != (B, S):
        raise ValueError(
            f"attention_mask: expected (batch, S) = {(B, S)}, got {tuple(attention_mask.shape)}"
        )
    return B, T, H, S, K


def _probs_chunk(
    q: torch.Tensor,
    k: torch.Tensor,
    t0: int,
    t1: int,
    scale: float,
    causal: bool,
    key_keep: torch.Tensor | None,
    normalizer: Normalizer | None = None,
) -> torch.Tensor:
    """Softmax probabilities (or ``normalizer``'s weights on the real keys) of queries
    ``t0:t1``: ``(B, H, t1 - t0, S)`` in ``q``'s dtype.

    ``q`` and ``k`` are already in the compute dtype. Rows with every key masked are set to 0
    rather than NaN (this happens for padded queries under left padding).
    """
    B, T, H, D = q.shape
    S, K = k.shape[1], k.shape[2]
    G = H // K
    qg = q[:, t0:t1].reshape(B, t1 - t0, K, G, D)
    # Grouping (K, G) flattened to H = K * G gives query head h -> KV head h // G.
    scores = torch.einsum("btkgd,bskd->bkgts", qg, k).reshape(B, H, t1 - t0, S) * scale
    allowed = None
    if causal:
        q_pos = torch.arange(t0, t1, device=q.device) + (S - T)
        allowed = (torch.arange(S, device=q.device)[None, :] <= q_pos[:, None])[None, None]
    if key_keep is not None:
        keep = key_keep[:, None, None, :]
        allowed = keep if allowed is None else allowed & keep
    if normalizer is not None:
        if allowed is not None:
            scores = scores.masked_fill(~allowed, float("-inf"))
        weights = normalize(scores, q[:, t0:t1], scale, normalizer)[0]
        if allowed is None:
            return weights
        return torch.where(allowed.any(dim=-1, keepdim=True), weights, torch.zeros_like(weights))
    if allowed is None:
        return torch.softmax(scores, dim=-1)
    probs = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
    return torch.where(allowed.any(dim=-1, keepdim=True), probs, torch.zeros_like(probs))


def _prepare(
    q: torch.Tensor,
    k: torch.Tensor,
    scale: float | None,
    attention_mask: torch.Tensor | None,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, float, torch.Tensor | None]:
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating type, got {dtype}")
    s = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    keep = None if attention_mask is None else attention_mask.to(device=q.device, dtype=torch.bool)
    return q.detach().to(dtype), k.detach().to(device=q.device, dtype=dtype), s, keep


def _chunk_bounds(T: int, query_chunk: int | None) -> list[tuple[int, int]]:
    if query_chunk is None:
        return [(0, T)]
    if query_chunk < 1:
        raise ValueError(f"query_chunk must be a positive integer or None, got {query_chunk}")
    return [(t0, min(t0 + query_chunk, T)) for t0 in range(0, T, query_chunk)]


@torch.no_grad()
def attention_probs_from_qk(
    q: torch.Tensor,
    k: torch.Tensor,
    scale: float | None = None,
    causal: bool = True,
    attention_mask: torch.Tensor | None = None,
    query_chunk: int | None = None,
    dtype: torch.dtype = torch.float32,
    normalizer: Normalizer | str | None = None,
) -> torch.Tensor:
    """Softmax attention probabilities from post-RoPE queries and keys.

    Args:
        q: ``(batch, T, H, D)`` queries after QK-norm and RoPE (the ``hook_q`` tap).
        k: ``(batch, S, K, D)`` keys after QK-norm and RoPE, ``H % K == 0``.
        scale: logit scale; ``None`` means ``1 / sqrt(D)``.
        causal: apply the bottom-right aligned causal mask (needs ``S >= T``).
        attention_mask: optional ``(batch, S)`` boolean/0-1 padding mask, True = real key.
        query_chunk: compute this many queries at a time so the ``(H, chunk, S)`` logits are
            the only temporary (``None`` = all at once).
        dtype: compute and output dtype (float32 by default; float64 for references).
        normalizer: the layer's attention normaliser (``None``: softmax); the result is then
            its weights on the real keys.

    Returns:
        ``(batch, H, T, S)`` probabilities; rows with every key masked are all zero.
    """
    B, T, H, S, _ = _check_qk(q, k, causal, attention_mask)
    qc, kc, s, keep = _prepare(q, k, scale, attention_mask, dtype)
    norm = as_normalizer(normalizer)
    out = torch.empty(B, H, T, S, dtype=dtype, device=q.device)
    for t0, t1 in _chunk_bounds(T, query_chunk):
        out[:, :, t0:t1] = _probs_chunk(qc, kc, t0, t1, s, causal, keep, norm)
    return out


@torch.no_grad()
def key_mass_from_qk(
    q: torch.Tensor,
    k: torch.Tensor,
    key_index: int = 0,
    scale: float | None = None,
    causal: bool = True,
    attention_mask: torch.Tensor | None = None,
    query_chunk: int = 256,
    dtype: torch.dtype = torch.float32,
    normalizer: Normalizer | str | None = None,
) -> torch.Tensor:
    """Probability every query puts on one key, streamed over query chunks.

    Only a ``(batch, H, query_chunk, S)`` block is alive at a time, so long contexts never
    hold the full ``(T, S)`` map. Arguments as in :func:`attention_probs_from_qk`.

    Returns:
        ``(batch, H, T)`` probabilities on key ``key_index`` (0-based), in ``dtype``.
    """
    return key_and_row_mass_from_qk(
        q, k, key_index, scale, causal, attention_mask, query_chunk, dtype, normalizer
    )[0]


def key_and_row_mass_from_qk(
    q: torch.Tensor,
    k: torch.Tensor,
    key_index: int = 0,
    scale: float | None = None,
    causal: bool = True,
    attention_mask: torch.Tensor | None = None,
    query_chunk: int = 256,
    dtype: torch.dtype = torch.float32,
    normalizer: Normalizer | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One streamed pass: the weight every query puts on key ``key_index`` and its row's total
    weight on the real keys (1 under softmax; less where a sink or "+1" takes some), both
    ``(batch, H, T)`` in ``dtype``. Arguments as in :func:`attention_probs_from_qk`."""
    B, T, H, S, _ = _check_qk(q, k, causal, attention_mask)
    if not 0 <= key_index < S:
        raise ValueError(f"key_index must be in [0, {S}), got {key_index}")
    qc, kc, s, keep = _prepare(q, k, scale, attention_mask, dtype)
    norm = as_normalizer(normalizer)
    col = torch.empty(B, H, T, dtype=dtype, device=q.device)
    row = torch.empty(B, H, T, dtype=dtype, device=q.device)
    for t0, t1 in _chunk_bounds(T, query_chunk):
        probs = _probs_chunk(qc, kc, t0, t1, s, causal, keep, norm)
        col[:, :, t0:t1] = probs[..., key_index]
        row[:, :, t0:t1] = probs.sum(dim=-1)
    return col, row


def first_token_mass_from_qk(
    q: torch.Tensor,
    k: torch.Tensor,
    scale: float | None = None,
    causal: bool = True,
    attention_mask: torch.Tensor | None = None,
    query_chunk: int = 256,
    include_first_query: bool = True,
    dtype: torch.dtype = torch.float32,
    normalizer: Normalizer | str | None = None,
) -> FirstTokenMass:
    """:func:`~gated_attention.analysis.sinks.first_token_mass` without the full map.

    Same result as ``first_token_mass(attention_probs_from_qk(q, k, ...))``; ``q`` is
    ``(batch, T, H, D)`` and ``k`` is ``(batch, S, K, D)``.
    """
    p0 = key_mass_from_qk(q, k, 0, scale, causal, attention_mask, query_chunk, dtype, normalizer)
    return first_token_mass_from_key0(p0, k.shape[1], include_first_query=include_first_query)


def alpha_from_qk(
    q: torch.Tensor,
    k: torch.Tensor,
    position: int = 1,
    scale: float | None = None,
    causal: bool = True,
    attention_mask: torch.Tensor | None = None,
    query_chunk: int = 256,
    dtype: torch.dtype = torch.float32,
    normalizer: Normalizer | str | None = None,
) -> torch.Tensor:
    """Gu et al.'s ``alpha_k`` for 1-based key ``position``, streamed: ``(batch, H)`` float64.

    Same result as ``alpha_k(attention_probs_from_qk(q, k, ...), position)``.
    """
    _, _, _, S, _ = _check_qk(q, k, causal, attention_mask)
    if not 1 <= position <= S:
        raise ValueError(f"position must be in [1, {S}] (1-based), got {position}")
    col = key_mass_from_qk(
        q, k, position - 1, scale, causal, attention_mask, query_chunk, dtype, normalizer
    )
    return alpha_from_key_column(col, position - 1, S)


def effective_attention(probs: torch.Tensor, gate_scores: torch.Tensor) -> torch.Tensor:
    """Gate-weighted attention: each query's probabilities times its head's mean gate score.

    With a G1 gate the head's output for query ``t`` is ``gate_t * sum_s A[t, s] v_s``; for a
    headwise gate ``gate_t * A[t, :]`` is exactly the weight each value receives. For an
    elementwise gate the per-dimension scores are averaged, so the map is an approximation
    that shows how much of the attention actually reaches the output. Rows of another
    normaliser (weights on the real tokens, not summing to 1) are scaled the same way; the
    null attention (a sink's or "+1"'s share) reaches the output only as a bias column's value.

    Args:
        probs: ``(batch, H, T, S)`` softmax attention or a normaliser's real-token weights.
        gate_scores: ``(batch, T, H, D)`` or ``(batch, T, H, 1)`` gate scores.

    Returns:
        ``(batch, H, T, S)`` in ``probs``' dtype.
    """
    check_probs(probs)
    check_ndim(gate_scores, 4, "gate_scores", GATE_LAYOUT)
    B, H, T, _ = probs.shape
    if tuple(gate_scores.shape[:3]) != (B, T, H):
        raise ValueError(
            f"gate_scores (batch, T, H) = {tuple(gate_scores.shape[:3])} does not match "
            f"probs (batch, T, H) = {(B, T, H)}"
        )
    g = gate_scores.to(probs.dtype).mean(dim=-1).permute(0, 2, 1).unsqueeze(-1)  # (B, H, T, 1)
    return probs * g


def head_averaged_map(probs: torch.Tensor) -> torch.Tensor:
    """Mean over heads of a ``(batch, H, T, S)`` map: ``(batch, T, S)``."""
    check_probs(probs)
    return probs.mean(dim=1)
