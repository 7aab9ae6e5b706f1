"""Packing layouts of the attention input projection, as named, documented index maps.

Every checkpoint format stores the same four things per attention layer -- query rows, key rows,
value rows and (optionally) output-gate rows of a ``hidden -> rows`` linear map -- but packs them
differently. ``H`` query heads, ``K`` KV heads, ``g = H // K`` query heads per KV head, ``D``
head_dim, ``Dg`` rows per gate head (``D`` elementwise, ``1`` headwise). Query head ``h`` belongs
to KV group ``j = h // g`` at slot ``i = h % g``. Row indices (docs/paper.md section 5;
``docs/layouts.md`` spells them out with examples):

``ours`` (``GatedAttention.qkv_proj``, contiguous blocks ``[Q | K | V | G]``):
    q(h, d) = h*D + d;  k(j, d) = H*D + j*D + d;  v(j, d) = H*D + K*D + j*D + d;
    gate(h, e) = H*D + 2*K*D + h*Dg + e

``paper`` (the paper's release: gate folded into ``q_proj``, grouped per KV head), with
``P = g*D + g*Dg`` rows per group:
    q(h, d) = j*P + i*D + d;  gate(h, e) = j*P + g*D + i*Dg + e

``qwen3-next`` (``Qwen3NextAttention.q_proj``, per head ``[q_h | gate_h]``, elementwise only):
    q(h, d) = h*2D + d;  gate(h, d) = h*2D + D + d

``megatron`` (Megatron-Core ``linear_qkv`` with ``attention_output_gate``, per group
``[Q (g*D) | Gate (g*D) | K (D) | V (D)]``, elementwise), with ``P = 2*g*D + 2*D``:
    q(h, d) = j*P + i*D + d;  gate(h, d) = j*P + g*D + i*D + d;
    k(j, d) = j*P + 2*g*D + d;  v(j, d) = j*P + 2*g*D + D + d

The functions below move whole row blocks (``view``/``cat``, no arithmetic), so every conversion
is bit-exact and works for weights ``(rows, hidden)`` and biases ``(rows,)`` alike.
"""

from __future__ import annotations

import torch

__all__ = [
    "LAYOUTS",
    "gate_row",
    "merge_megatron_qkv",
    "merge_paper_q_proj",
    "merge_qwen3_next_q_proj",
    "query_row",
    "split_megatron_qkv",
    "split_paper_q_proj",
    "split_qwen3_next_q_proj",
]

LAYOUTS = ("ours", "paper", "qwen3-next", "megatron")


def _check_rows(t: torch.Tensor, expected: int, name: str) -> None:
    if t.shape[0] != expected:
        raise ValueError(
            f"{name} has {t.shape[0]} rows (shape {tuple(t.shape)}); this layout needs {expected}."
        )


def split_paper_q_proj(
    w: torch.Tensor, num_heads: int, num_kv_heads: int, head_dim: int, gate_dim: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split the paper's ``q_proj`` into queries ``(H*D, ...)`` and gate ``(H*Dg, ...)``.

    Args:
        w: ``q_proj`` weight ``(K*(g*D + g*Dg), hidden)`` or bias ``(K*(g*D + g*Dg),)``.
        gate_dim: ``Dg``: ``head_dim`` for the elementwise gate, 1 for headwise, 0 for none.

    The paper's code views the projection as ``(..., K, -1)`` and splits each group into
    ``[g*D | g*Dg]`` (docs/paper.md section 5); both outputs come back head-major.
    """
    g = num_heads // num_kv_heads
    per_group = g * head_dim + g * gate_dim
    _check_rows(w, num_kv_heads * per_group, "paper q_proj")
    grouped = w.reshape(num_kv_heads, per_group, *w.shape[1:])
    q = grouped[:, : g * head_dim].reshape(num_heads * head_dim, *w.shape[1:])
    gate = grouped[:, g * head_dim :].reshape(num_heads * gate_dim, *w.shape[1:])
    return q.contiguous(), gate.contiguous()


def merge_paper_q_proj(
    q: torch.Tensor, gate: torch.Tensor, num_heads: int, num_kv_heads: int, head_dim: int
) -> torch.Tensor:
    """Inverse of :func:`split_paper_q_proj`: head-major ``q`` ``(H*D, ...)`` and ``gate``
    ``(H*Dg, ...)`` packed per KV group as ``[q of g heads | gates of g heads]``."""
    g = num_heads // num_kv_heads
    _check_rows(q, num_heads * head_dim, "query block")
    if gate.shape[0] % num_heads:
        raise ValueError(
            f"gate block has {gate.shape[0]} rows, not a multiple of num_heads={num_heads}."
        )
    tail = q.shape[1:]
    qg = q.reshape(num_kv_heads, g * head_dim, *tail)
    gg = gate.reshape(num_kv_heads, g * (gate.shape[0] // num_heads), *tail)
    return torch.cat((qg, gg), dim=1).reshape(-1, *tail).contiguous()


def split_qwen3_next_q_proj(
    w: torch.Tensor, num_heads: int, head_dim: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split Qwen3-Next's ``q_proj`` ``(H*2D, ...)`` into queries and elementwise gate, each
    ``(H*D, ...)`` head-major (``transformers`` ``Qwen3NextAttention``: view ``(..., H, 2D)``,
    ``torch.chunk(2, dim=-1)``)."""
    _check_rows(w, num_heads * 2 * head_dim, "qwen3-next q_proj")
    per_head = w.reshape(num_heads, 2 * head_dim, *w.shape[1:])
    q = per_head[:, :head_dim].reshape(num_heads * head_dim, *w.shape[1:])
    gate = per_head[:, head_dim:].reshape(num_heads * head_dim, *w.shape[1:])
    return q.contiguous(), gate.contiguous()


def merge_qwen3_next_q_proj(
    q: torch.Tensor, gate: torch.Tensor, num_heads: int, head_dim: int
) -> torch.Tensor:
    """Inverse of :func:`split_qwen3_next_q_proj`: interleave ``[q_h | gate_h]`` per head."""
    _check_rows(q, num_heads * head_dim, "query block")
    _check_rows(gate, num_heads * head_dim, "gate block (qwen3-next is elementwise only)")
    tail = q.shape[1:]
    both = torch.cat(
        (q.reshape(num_heads, head_dim, *tail), gate.reshape(num_heads, head_dim, *tail)), dim=1
    )
    return both.reshape(-1, *tail).contiguous()


def split_megatron_qkv(
    w: torch.Tensor, num_heads: int, num_kv_heads: int, head_dim: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split Megatron-Core's gated ``linear_qkv`` into head-major ``q``, ``k``, ``v``, ``gate``.

    Per query group: ``[Q (g*D) | Gate (g*D) | K (D) | V (D)]`` (docs/paper.md section 5).
    """
    g = num_heads // num_kv_heads
    per_group = 2 * g * head_dim + 2 * head_dim
    _check_rows(w, num_kv_heads * per_group, "megatron linear_qkv")
    tail = w.shape[1:]
    grouped = w.reshape(num_kv_heads, per_group, *tail)
    q, gate, k, v = grouped.split([g * head_dim, g * head_dim, head_dim, head_dim], dim=1)
    return (
        q.reshape(num_heads * head_dim, *tail).contiguous(),
        k.reshape(num_kv_heads * head_dim, *tail).contiguous(),
        v.reshape(num_kv_heads * head_dim, *tail).contiguous(),
        gate.reshape(num_heads * head_dim, *tail).contiguous(),
    )


def merge_megatron_qkv(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    gate: torch.Tensor,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
) -> torch.Tensor:
    """Inverse of :func:`split_megatron_qkv`."""
    g = num_heads // num_kv_heads
    _check_rows(q, num_heads * head_dim, "query block")
    _check_rows(gate, num_heads * head_dim, "gate block (megatron is elementwise only)")
    _check_rows(k, num_kv_heads * head_dim, "key block")
    _check_rows(v, num_kv_heads * head_dim, "value block")
    tail = q.shape[1:]
    parts = (
        q.reshape(num_kv_heads, g * head_dim, *tail),
        gate.reshape(num_kv_heads, g * head_dim, *tail),
        k.reshape(num_kv_heads, head_dim, *tail),
        v.reshape(num_kv_heads, head_dim, *tail),
    )
    return torch.cat(parts, dim=1).reshape(-1, *tail).contiguous()


def query_row(
    layout: str, h: int, d: int, num_heads: int, num_kv_heads: int, head_dim: int, gate_dim: int
) -> int:
    """Row of query head ``h``, feature ``d`` in ``layout`` (the formulas of the module doc)."""
    g = num_heads // num_kv_heads
    j, i = divmod(h, g)
    if layout == "ours":
        return h * head_dim + d
    if layout == "paper":
        return j * (g * head_dim + g * gate_dim) + i * head_dim + d
    if layout == "qwen3-next":
        return h * 2 * head_dim + d
    if layout == "megatron":
        return j * (2 * g * head_dim + 2 * head_dim) + i * head_dim + d
    raise ValueError(f"unknown layout {layout!r}; known: {', '.join(LAYOUTS)}")


def gate_row(
    layout: str, h: int, e: int, num_heads: int, num_kv_heads: int, head_dim: int, gate_dim: int
) -> int:
    """Row of the output gate of head ``h``, feature ``e`` (``e = 0`` when headwise)."""
    g = num_heads // num_kv_heads
    j, i = divmod(h, g)
    if layout == "ours":
        return num_heads * head_dim + 2 * num_kv_heads * head_dim + h * gate_dim + e
    if layout == "paper":
        return j * (g * head_dim + g * gate_dim) + g * head_dim + i * gate_dim + e
    if layout == "qwen3-next":
        return h * 2 * head_dim + head_dim + e
    if layout == "megatron":
        return j * (2 * g * head_dim + 2 * head_dim) + g * head_dim + i * head_dim + e
    raise ValueError(f"unknown layout {layout!r}; known: {', '.join(LAYOUTS)}")
