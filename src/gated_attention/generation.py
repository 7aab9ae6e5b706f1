"""Generation: one loop, pre-allocated output and KV cache, one forward per token.

:func:`generate` is also :meth:`GatedLM.generate <gated_attention.model.GatedLM.generate>`. By
default the KV cache is a :class:`~gated_attention.nn.static_cache.StaticCache` (each step writes
one slot instead of concatenating the whole cache); a given cache is used instead, e.g. a
windowed :class:`~gated_attention.nn.cache.KVCache`, which needs the growing cache to drop keys
outside its window. The output ``(B, T + n)`` is allocated once and filled in place. The only
host synchronisation per step is the all-finished check, and only when ``eos_token_id`` is
given.

Logits with the static cache agree with the growing cache's up to float rounding, not always
bit for bit: the static cache hands attention views into larger buffers, and SDPA's sums can
round differently on those strides. Greedy tokens therefore match except at exact near-ties of
the top two logits (``tests/test_generation_fast.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from gated_attention.nn.static_cache import StaticCache

if TYPE_CHECKING:
    from gated_attention.model import GatedLM


def next_token(
    logits: torch.Tensor,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The next token ``(B,)`` from last-position logits ``(B, vocab)``: argmax, or a draw from
    ``softmax(logits / temperature)`` restricted to the ``top_k`` largest logits."""
    logits = logits.float()
    if not do_sample:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None:
        kth = logits.topk(min(top_k, logits.shape[-1]))[0][:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def decode_step(
    model: GatedLM,
    token: torch.Tensor,
    position: torch.Tensor,
    cos_table: torch.Tensor,
    sin_table: torch.Tensor,
    cache: StaticCache,
) -> torch.Tensor:
    """Next-token logits ``(B, vocab)`` for one new token per sequence, with static shapes.

    The model's embedding, :meth:`~gated_attention.model.DecoderStack.run_blocks` and head, as
    in ``GatedLM.forward``, but every shape independent of the step, so ``torch.compile`` traces
    it once: the RoPE tables ``(1, max_length, rotary_dim)`` are precomputed and indexed with
    ``position`` ``(1,)`` (int64), the cache is in static-shape mode (:meth:`StaticCache.seek`,
    writing at ``position``) and attention masks the slots after ``position``.

    Args:
        token: ``(B, 1)`` token ids at absolute position ``position``.
        cache: a :class:`StaticCache` holding the earlier tokens, in static-shape mode.
    """
    h = model.embed_tokens(token)
    cos, sin = cos_table.index_select(1, position), sin_table.index_select(1, position)
    slots = torch.arange(cache.max_length, device=token.device)
    mask = (slots <= position)[None, None, None, :]  # (1, 1, 1, max_length)
    h, _ = model.run_blocks(h, cos, sin, mask, cache)
    return model.lm_head(h)[:, -1]


_compiled_step: Any = None


def _compiled_decode_step() -> Any:
    """``decode_step`` compiled once per process (graphs are reused across calls and models
    of the same structure; dynamo guards decide)."""
    global _compiled_step
    if _compiled_step is None:
        _compiled_step = torch.compile(decode_step, dynamic=False)
    return _compiled_step


@torch.no_grad()
def generate(
    model: GatedLM,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    eos_token_id: int | None = None,
    generator: torch.Generator | None = None,
    cache: Any | None = None,
    compile: bool = False,
) -> torch.Tensor:
    """Continue ``input_ids`` ``(B, T)`` by up to ``max_new_tokens``; returns ``(B, T + n)``.

    The prompt runs once, then one token per step: greedy, or sampled by :func:`next_token`
    (``temperature``, ``top_k``, ``generator``). Sequences that emit ``eos_token_id`` are
    padded with it until all have finished, then generation stops. ``cache`` defaults to a
    :class:`StaticCache` sized ``T + max_new_tokens``; any cache with the ``update`` /
    ``get_seq_length`` interface may be passed instead (e.g. a windowed ``KVCache``).

    ``compile=True`` runs the steps after the prompt through a ``torch.compile``d
    :func:`decode_step` (compiled on first use: tens of seconds on CPU; worth it for long or
    repeated generation). Its logits match the eager loop's to float rounding, not bit for bit
    (fused kernels sum in another order). It needs the default cache and plain or
    non-dynamic RoPE scaling.
    """
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if do_sample and temperature <= 0:
        raise ValueError(f"temperature must be > 0 when sampling, got {temperature}")
    if compile and (cache is not None or model.rotary.dynamic):
        raise ValueError(
            "generate(compile=True) needs the default StaticCache (pass cache=None) and a model "
            "without dynamic-NTK RoPE scaling (its frequencies depend on the step)"
        )
    B, T = input_ids.shape
    if cache is None:
        cache = StaticCache(T + max_new_tokens)
    out = input_ids.new_empty((B, T + max_new_tokens))
    out[:, :T] = input_ids
    finished = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
    step_input = input_ids
    position = torch.zeros(1, dtype=torch.long, device=input_ids.device)
    step_fn = None
    steps = 0
    for steps in range(1, max_new_tokens + 1):
        if step_fn is None:
            logits = model(step_input, past_key_values=cache, use_cache=True, logits_to_keep=1)
            last = logits.logits[:, -1]
            if compile:  # the prompt is cached; every later step has the same shapes
                step_fn = _compiled_decode_step()
                slots = torch.arange(cache.max_length, device=input_ids.device)[None]
                cos_table, sin_table = model.rotary(slots, model.embed_tokens.weight.dtype)
                cache.seek(position)
        else:
            position.fill_(T + steps - 2)
            last = step_fn(model, step_input, position, cos_table, sin_table, cache)
        token = next_token(last, do_sample, temperature, top_k, generator)
        if eos_token_id is not None:
            token = torch.where(finished, eos_token_id, token)
            finished |= token == eos_token_id
        out[:, T + steps - 1] = token
        step_input = out[:, T + steps - 1 : T + steps]
        if eos_token_id is not None and bool(finished.all()):
            break
    if step_fn is not None:
        cache.seek(None, T + steps - 1)
    return out[:, : T + steps]
