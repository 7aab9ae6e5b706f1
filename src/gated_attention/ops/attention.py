"""Scaled dot-product attention with grouped-query heads, behind a small backend registry.

All functions take ``(batch, seq, heads, head_dim)`` tensors: queries ``(B, T, H, D)``, keys and
values ``(B, S, K, D)`` with ``H`` a multiple of ``K`` (query head ``h`` reads KV head
``h // (H // K)``). Backends:

- ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention`` (fused kernels);
- ``sdpa_fp32``: SDPA computed in float32 for reduced-precision inputs, output in the compute
  dtype. On CPU the bf16 flash kernel (mostly its backward) is about 2x slower than the float32
  one at short lengths (``benchmarks/run.py``, section "attention backends");
- ``matmul``: explicit batched matmuls in the compute dtype with a float32-internal softmax
  (``transformers``' eager numerics): the fastest CPU bf16 path at short lengths, but logits
  rounded to bf16, so not chosen automatically;
- ``eager``: the readable path (matmul + normaliser), which can also return the weights.

Normalisers (``ops/normalizers.py``): softmax by default, or a :class:`Normalizer` passed to
:func:`attention`. Each backend declares the normaliser forms it runs natively (``softmax``,
``columns``, ``weights``); a ``columns`` kind (softmax over the keys plus virtual key columns)
also runs on any softmax backend, which then attends over keys and values with the columns
prepended (:func:`with_virtual_columns`). ``auto`` resolves per call with
:func:`select_backend` (device, compute dtype, lengths, normaliser). The gate is not applied
here: it runs on the output, whichever backend produced it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from gated_attention.ops.normalizers import (
    Columns,
    Normalizer,
    as_normalizer,
    normalize,
    null_values,
)


def causal_mask(
    query_len: int,
    key_len: int,
    padding_mask: torch.Tensor | None = None,
    device: torch.device | str | None = None,
    offset: int | torch.Tensor | None = None,
) -> torch.Tensor | None:
    """A boolean mask ``(batch | 1, 1, T, S)`` (True = may attend), or ``None`` when plain
    causal attention with ``is_causal`` suffices.

    Query ``t`` sits at absolute position ``offset + t`` and key ``s`` at position ``s``. The
    default ``offset`` is ``S - T`` (bottom-right aligned: a cache of ``S - T`` earlier tokens);
    a pre-allocated cache whose keys include unfilled slots passes its fill level instead (an
    int, or a 0-d tensor so the mask's shape never depends on it under ``torch.compile``).
    ``padding_mask`` ``(batch, S')`` marks real tokens with 1/True over the first ``S' <= S``
    keys (``S' == S`` unless ``offset`` is given; later slots count as padding). Rows left with
    no allowed key (a padded query) attend to every key so the output stays finite; such rows
    are padding and never used.
    """
    aligned = offset is None
    if offset is None:
        if padding_mask is None and query_len == key_len:
            return None
        if padding_mask is None and query_len == 1:
            return None  # a single new query may attend to every cached key
        offset = key_len - query_len
    if device is None and padding_mask is not None:
        device = padding_mask.device
    rows = torch.arange(query_len, device=device)[:, None] + offset
    cols = torch.arange(key_len, device=device)[None, :]
    mask = (cols <= rows)[None, None]
    if padding_mask is not None:
        covered = padding_mask.shape[-1]
        if covered > key_len or (covered < key_len and aligned):
            raise ValueError(
                f"attention_mask covers {covered} positions but keys have "
                f"{key_len} (cached + new tokens); pass a mask over all of them"
            )
        padding = padding_mask.bool()
        if covered < key_len:
            padding = F.pad(padding, (0, key_len - covered), value=False)
        mask = mask & padding[:, None, None, :]
        empty = ~mask.any(dim=-1, keepdim=True)
        mask = mask | empty
    return mask


def packed_document_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """The document index ``(B, T)`` (0, 1, ...) of every token of packed rows ``(B, T)`` of
    positions: a document starts wherever the position does not continue the previous token's
    (``position_ids`` restarting at 0, as ``transformers``' ``DataCollatorWithFlattening`` and
    padding-free training produce them)."""
    starts = torch.ones_like(position_ids, dtype=torch.bool)
    starts[..., 1:] = position_ids[..., 1:] != position_ids[..., :-1] + 1
    return starts.long().cumsum(-1) - 1


def separated_document_ids(input_ids: torch.Tensor, separator_id: int) -> torch.Tensor:
    """The document index ``(B, T)`` of every token of packed rows ``(B, T)`` whose documents
    each end with ``separator_id`` (an end-of-document token, which belongs to the document it
    ends): the next token starts a new document."""
    ends = (input_ids == separator_id).long()
    return ends.cumsum(-1) - ends


def document_positions(document_ids: torch.Tensor) -> torch.Tensor:
    """Positions ``(B, T)`` that restart at 0 at the first token of every document of
    ``document_ids`` ``(B, T)`` (tokens of a document are contiguous)."""
    index = torch.arange(document_ids.shape[-1], device=document_ids.device)
    index = index.expand_as(document_ids)
    starts = torch.ones_like(document_ids, dtype=torch.bool)
    starts[..., 1:] = document_ids[..., 1:] != document_ids[..., :-1]
    first = torch.where(starts, index, torch.zeros_like(index)).cummax(dim=-1).values
    return index - first


def document_causal_mask(
    document_ids: torch.Tensor, padding_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """The block-diagonal causal mask ``(B, 1, T, T)`` (True = may attend) of packed rows:
    query ``t`` sees key ``s <= t`` only when both belong to the same document of
    ``document_ids`` ``(B, T)``. Attention then equals running every document alone.
    ``padding_mask`` ``(B, T)`` (1 = real token) also hides padding keys; a padded query keeps
    its own document's keys so its row stays finite (such rows are never used)."""
    T = document_ids.shape[-1]
    causal = torch.ones(T, T, dtype=torch.bool, device=document_ids.device).tril()
    mask = (document_ids[:, :, None] == document_ids[:, None, :]) & causal
    if padding_mask is not None:
        keep = mask & padding_mask.bool()[:, None, :]
        mask = torch.where(keep.any(dim=-1, keepdim=True), keep, mask)
    return mask[:, None]


def boolean_mask(mask: torch.Tensor) -> torch.Tensor:
    """A ready 4-D attention mask ``(B | 1, 1 | H, T, S)`` as booleans (True = may attend):
    boolean masks as they are, integer masks with 1 = attend, floating masks in the additive
    form ``transformers`` builds (0 = attend, a large negative number or ``-inf`` = masked).
    Rows with no allowed key attend to every key so the output stays finite."""
    if mask.dim() != 4:
        raise ValueError(
            f"a ready attention mask must be 4-D (batch, 1, query, key), got shape "
            f"{tuple(mask.shape)}; 2-D (batch, key) padding masks use 1 for real tokens"
        )
    if mask.dtype != torch.bool:
        mask = mask == 0 if mask.is_floating_point() else mask != 0
    return mask | ~mask.any(dim=-1, keepdim=True)


def _check_shapes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError("attention expects (batch, seq, heads, head_dim) tensors")
    if k.shape != v.shape:
        raise ValueError(f"keys {tuple(k.shape)} and values {tuple(v.shape)} differ in shape")
    if q.shape[2] % k.shape[2]:
        raise ValueError(f"{q.shape[2]} query heads are not a multiple of {k.shape[2]} KV heads")


def _sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    causal: bool,
    scale: float,
    normalizer: Normalizer | None = None,
) -> torch.Tensor:
    is_causal = causal and mask is None and q.shape[1] == k.shape[1] and q.shape[1] > 1
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2),
        k.transpose(1, 2),
        v.transpose(1, 2),
        attn_mask=mask,
        is_causal=is_causal,
        scale=scale,
        enable_gqa=q.shape[2] != k.shape[2],
    )
    return out.transpose(1, 2)


def _sdpa_fp32(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    causal: bool,
    scale: float,
    normalizer: Normalizer | None = None,
) -> torch.Tensor:
    """SDPA computed in float32 for reduced-precision inputs, output in the compute dtype.

    On CPU the float32 flash kernel is faster than the bf16 one (mostly in the backward) and
    at least as accurate. Under autocast q and k usually arrive in float32 already (the QK-norm
    computes in float32), so only ``v`` is upcast.
    """
    low = compute_dtype(q)
    work = torch.float64 if q.dtype == torch.float64 else torch.float32
    with torch.autocast(q.device.type, enabled=False):
        out = _sdpa(q.to(work), k.to(work), v.to(work), mask, causal, scale)
    return out.to(low)


def attention_scores(
    q: torch.Tensor,
    k: torch.Tensor,
    mask: torch.Tensor | None = None,
    causal: bool = True,
    scale: float | None = None,
) -> torch.Tensor:
    """Masked logits ``(B, H, T, S)`` (``-inf`` where a query may not attend) for queries
    ``(B, T, H, D)`` and keys ``(B, S, K, D)``, with the masking rules of :func:`attention`
    (bottom-right aligned causal mask)."""
    B, T, H, D = q.shape
    S, K = k.shape[1], k.shape[2]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    # Group query heads by KV head without copying K: (B, K, g, T, D) @ (B, K, 1, D, S).
    qg = q.transpose(1, 2).reshape(B, K, H // K, T, D)
    kg = k.transpose(1, 2).unsqueeze(2)
    scores = (qg @ kg.transpose(-1, -2)).reshape(B, H, T, S) * scale
    if mask is None and causal and T > 1:
        mask = causal_mask(T, S, device=q.device)
        if mask is None:  # T == S
            mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril()[None, None]
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores


def attention_probabilities(
    q: torch.Tensor,
    k: torch.Tensor,
    mask: torch.Tensor | None = None,
    causal: bool = True,
    scale: float | None = None,
    normalizer: Normalizer | str | None = None,
) -> torch.Tensor:
    """Attention weights ``(B, H, T, S)`` on the real keys for queries ``(B, T, H, D)`` and keys
    ``(B, S, K, D)``: softmax probabilities, or the normaliser's weights (rows then need not
    sum to 1; the virtual columns' weights are left out). Masking as :func:`attention`."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = attention_scores(q, k, mask, causal, scale)
    return normalize(scores, q, scale, as_normalizer(normalizer))[0]


def weighted_values(probs: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Apply attention weights ``(B, H, T, S)`` to values ``(B, S, K, D)``; returns
    ``(B, T, H, D)``. Query heads are grouped by KV head, so K/V are never repeated."""
    B, H, T, _ = probs.shape
    K, D = v.shape[2], v.shape[3]
    vg = v.transpose(1, 2).unsqueeze(2)  # (B, K, 1, S, D)
    out = probs.reshape(B, K, H // K, T, -1) @ vg  # (B, K, g, T, D)
    return out.reshape(B, H, T, D).transpose(1, 2)


def eager_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    causal: bool = True,
    scale: float | None = None,
    normalizer: Normalizer | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The readable path: ``(weights (B, H, T, S), output (B, T, H, D))``, the weights being
    those on the real keys (:func:`attention_probabilities`); any normaliser."""
    norm = as_normalizer(normalizer)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    probs, null = normalize(attention_scores(q, k, mask, causal, scale), q, scale, norm)
    out = weighted_values(probs, v)
    if null is not None:
        extra = null_values(null, norm.columns())
        out = out if extra is None else out + extra.to(out.dtype)
    return probs, out


def _eager(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    causal: bool,
    scale: float,
    normalizer: Normalizer | None = None,
) -> torch.Tensor:
    return eager_attention(q, k, v, mask, causal, scale, normalizer)[1]


def _additive_bias(
    mask: torch.Tensor | None,
    causal: bool,
    T: int,
    S: int,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor | None:
    """Logit bias (0 where attending, ``-inf`` elsewhere) ``(B | 1, 1, T, S)``, or ``None``
    when every query sees every key."""
    if mask is not None:
        bias = torch.zeros(mask.shape, device=device, dtype=dtype)
        return bias.masked_fill_(~mask, float("-inf"))
    if causal and T > 1:
        # Bottom-right aligned: query t sits at absolute position S - T + t.
        bias = torch.full((T, S), float("-inf"), device=device, dtype=dtype)
        return bias.triu_(S - T + 1)[None, None]
    return None


def _matmul(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    causal: bool,
    scale: float,
    normalizer: Normalizer | None = None,
) -> torch.Tensor:
    """Explicit attention with every matmul in the compute dtype (bf16 under bf16 autocast) and
    the softmax computed in float32 internally, as ``transformers``' eager attention does.

    Precision: logits are rounded to the compute dtype once (bf16: relative 2^-9), so the
    error grows with the logit magnitude; with QK-norm logits stay within a few units and the
    error is of the order of SDPA's (``tests/ops/test_backends.py`` bounds both against a
    float64 reference). GQA without copying K/V per query head: the ``g = H // K`` query heads
    of a KV head are stacked along the query axis, so each KV head is one ``(g*T, D) @ (D, S)``
    product, with the scale and the mask fused into it (``baddbmm``). A ``weights`` normaliser
    replaces the softmax, computed in float32 as well.
    """
    B, T, H, D = q.shape
    S, K = k.shape[1], k.shape[2]
    g = H // K
    low = compute_dtype(q)
    bias = _additive_bias(mask, causal, T, S, q.device, low)
    # The dtypes are explicit here; autocast would only add casts of the same tensors.
    with torch.autocast(q.device.type, enabled=False):
        qg = q.transpose(1, 2).reshape(B * K, g * T, D).to(low)
        kt = k.transpose(1, 2).reshape(B * K, S, D).to(low).transpose(1, 2)
        if bias is None:
            scores = torch.bmm(qg, kt).mul_(scale)
        else:
            if bias.shape[0] == 1:
                # One (T, S) bias for every batch row and head: repeat it per stacked head.
                bias = bias[0, 0].repeat(g, 1)
            else:
                bias = bias[:, :, None].expand(B, K, g, T, S).reshape(B * K, g * T, S)
            scores = torch.baddbmm(bias, qg, kt, alpha=scale)
        if normalizer is None:
            probs = torch.softmax(scores, dim=-1)
        else:
            probs = normalizer.weights(scores)  # computed in float32 at least
        out = torch.bmm(probs, v.transpose(1, 2).reshape(B * K, S, D).to(low))
    return out.view(B, H, T, D).transpose(1, 2)


Backend = Callable[
    [
        torch.Tensor,
        torch.Tensor,
        torch.Tensor,
        "torch.Tensor | None",
        bool,
        float,
        "Normalizer | None",
    ],
    torch.Tensor,
]
_BACKENDS: dict[str, tuple[Backend, frozenset[str]]] = {
    "sdpa": (_sdpa, frozenset({"softmax"})),
    "sdpa_fp32": (_sdpa_fp32, frozenset({"softmax"})),
    "matmul": (_matmul, frozenset({"softmax", "weights"})),
    "eager": (_eager, frozenset({"softmax", "columns", "weights"})),
}


def register_attention_backend(
    name: str, fn: Backend, forms: tuple[str, ...] = ("softmax",)
) -> None:
    """Add a backend ``fn(q, k, v, mask, causal, scale, normalizer) -> out`` (all
    ``(B, T, H, D)``) that runs the normaliser ``forms`` natively (``ops.normalizers.FORMS``).

    ``normalizer`` is ``None`` for softmax. A softmax backend also serves ``columns`` kinds: it
    then receives keys and values with the virtual columns prepended and ``None``.
    """
    _BACKENDS[name] = (fn, frozenset(forms))


def attention_backends() -> list[str]:
    return ["auto", *_BACKENDS]


def _form(normalizer: Normalizer | None) -> str:
    return "softmax" if normalizer is None else normalizer.form


def backend_supports(backend: str, normalizer: Normalizer | str | None) -> bool:
    """Whether ``backend`` runs ``normalizer`` (natively, or a ``columns`` kind on a softmax
    backend through :func:`with_virtual_columns`)."""
    forms = _BACKENDS[backend][1]
    form = _form(as_normalizer(normalizer))
    return form in forms or (form == "columns" and "softmax" in forms)


def with_virtual_columns(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    causal: bool,
    scale: float,
    cols: Columns,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Queries, keys, values and mask under which plain softmax attention equals a ``columns``
    normaliser: the ``E`` virtual columns are prepended to the keys and values (key/value ``0``
    where the kind has none) and to the mask (always visible; bottom-right alignment makes the
    plain causal mask of ``S + E`` keys do it). A per-head logit ``l_h`` rides on ``E`` extra
    feature dimensions: query head ``h`` gets ``l_h / scale``, virtual column ``e`` a one-hot
    ``e`` and real keys zeros, so real logits are unchanged and column ``e`` gains ``l_h``.
    Values get the same zero dimensions (kernels want equal head dims): slice the output's
    first ``D``.
    """
    B, T, H, D = q.shape
    S, K = k.shape[1], k.shape[2]
    E = cols.count
    key = cols.key if cols.key is not None else k.new_zeros((E, K, D))
    value = cols.value if cols.value is not None else v.new_zeros((E, K, D))
    k = torch.cat((key.to(k.dtype)[None].expand(B, E, K, D), k), dim=1)
    v = torch.cat((value.to(v.dtype)[None].expand(B, E, K, D), v), dim=1)
    if cols.logit is not None:
        extra_q = (cols.logit.T.to(q.dtype) / scale)[None, None].expand(B, T, H, E)
        q = torch.cat((q, extra_q), dim=-1)
        onehot = torch.eye(E, dtype=k.dtype, device=k.device)[:, None].expand(E, K, E)
        extra_k = torch.cat((onehot[None].expand(B, E, K, E), k.new_zeros((B, S, K, E))), dim=1)
        k = torch.cat((k, extra_k), dim=-1)
        v = torch.cat((v, v.new_zeros((B, S + E, K, E))), dim=-1)
    if mask is not None:
        mask = torch.cat((mask.new_ones((*mask.shape[:-1], E)), mask), dim=-1)
    elif causal and T > 1:
        mask = causal_mask(T, S + E, device=q.device)
    return q, k, v, mask


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype matmuls on ``x`` run in: the autocast dtype when autocast is on for its device
    (inputs may still be float32, e.g. after a float32 norm), else ``x.dtype``."""
    device = x.device.type
    if x.is_floating_point() and x.dtype != torch.float64 and torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return x.dtype


SDPA_FP32_MAX_KEYS_CPU = 512
"""Longest key length at which ``auto`` runs reduced-precision CPU attention as float32 SDPA.

Measured (``benchmarks/run.py``, "attention backends"; fwd+bwd, head_dim 32, GQA 2, bf16
autocast): the float32 flash kernel is about 2x faster than the bf16 one up to 256 keys and
level at 512; from about 1024 keys on the bf16 kernel is as fast or faster and moves half the
bytes."""


def select_backend(
    q: torch.Tensor,
    k: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    normalizer: Normalizer | str | None = None,
) -> str:
    """The backend ``auto`` resolves to for queries ``q`` ``(B, T, H, D)`` and keys ``k``
    ``(B, S, K, D)`` (``mask`` is accepted for backends that would depend on it) under
    ``normalizer`` (softmax when ``None``).

    A normaliser the chosen backend does not run (a ``weights`` kind on SDPA) goes to
    ``eager``.

    ``sdpa`` everywhere except reduced-precision (bf16/fp16, or autocast to them) CPU
    attention over at most :data:`SDPA_FP32_MAX_KEYS_CPU` keys, which runs ``sdpa_fp32``:
    faster there and at least as accurate. A single query (cached decoding) stays on ``sdpa``.
    The faster-still ``matmul`` path is not chosen automatically: it rounds logits to bf16,
    several times SDPA's error at logits of a few units.
    """
    name = _select_softmax_backend(q, k)
    return name if backend_supports(name, normalizer) else "eager"


def _select_softmax_backend(q: torch.Tensor, k: torch.Tensor | None) -> str:
    if q.device.type != "cpu" or q.shape[1] == 1:
        return "sdpa"
    if compute_dtype(q) not in (torch.bfloat16, torch.float16):
        return "sdpa"
    keys = k.shape[1] if k is not None else q.shape[1]
    return "sdpa_fp32" if keys <= SDPA_FP32_MAX_KEYS_CPU else "sdpa"


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    causal: bool = True,
    scale: float | None = None,
    backend: str = "auto",
    normalizer: Normalizer | str | None = None,
) -> torch.Tensor:
    """Multi-head (grouped-query) attention; returns ``(B, T, H, D)``.

    Args:
        q: queries ``(B, T, H, D)``; k, v: ``(B, S, K, D)``, ``H % K == 0``.
        mask: boolean ``(B | 1, 1, T, S)``, True = may attend (see :func:`causal_mask`); when
            given it must already contain the causal structure.
        causal: without a mask, apply a bottom-right aligned causal mask.
        scale: logit scale, default ``1 / sqrt(D)``.
        backend: ``auto`` or a registered name (``attention_backends()``).
        normalizer: ``None`` (softmax), a :class:`Normalizer` (a layer's kind, options and
            per-head parameters) or the name of a parameter-free kind.
    """
    _check_shapes(q, k, v)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    norm = as_normalizer(normalizer)
    if mask is None and causal and q.shape[1] != k.shape[1] and q.shape[1] > 1:
        mask = causal_mask(q.shape[1], k.shape[1], device=q.device)
    if backend == "auto":
        backend = select_backend(q, k, mask, norm)
    if backend not in _BACKENDS:
        raise ValueError(
            f"unknown attention backend {backend!r}; available: {', '.join(attention_backends())}"
        )
    fn, forms = _BACKENDS[backend]
    if _form(norm) in forms:
        return fn(q, k, v, mask, causal, scale, norm)
    if not backend_supports(backend, norm):
        able = [name for name in _BACKENDS if backend_supports(name, norm)]
        raise ValueError(
            f"attention backend {backend!r} cannot run the {norm.name!r} normalizer; use one of: "
            f"auto, {', '.join(able)}"
        )
    D = v.shape[-1]
    q, k, v, mask = with_virtual_columns(q, k, v, mask, causal, scale, norm.columns())
    return fn(q, k, v, mask, causal, scale, None)[..., :D]
