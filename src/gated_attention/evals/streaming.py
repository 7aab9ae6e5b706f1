"""The StreamingLLM test (Xiao et al. 2024): perplexity with a KV cache cut to a recent window.

A model whose attention parks on the first tokens (an attention sink) collapses when those tokens
leave the cache; keeping the first few tokens ("sink tokens") restores it. A gated model (paper
section 4.3) has no sink, so a plain window should already work. :func:`streaming_perplexity`
feeds long sequences chunk by chunk through a windowed :class:`~gated_attention.nn.KVCache`
(each query sees exactly its own window, see ``nn/cache.py``); keys keep their original RoPE
phase.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from gated_attention.evals.streams import TokenStream, common_token_budget, windows
from gated_attention.model import GatedLM
from gated_attention.nn.cache import KVCache


@torch.no_grad()
def windowed_token_losses(
    model: GatedLM,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    window: int | None,
    sink_tokens: int = 0,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Per-token loss ``(B, T)`` of ``input_ids`` ``(B, T)`` fed through a windowed cache.

    Args:
        window: cache window (``None``: full cache, i.e. ordinary causal attention).
        sink_tokens: first tokens kept besides the window.
        chunk_size: tokens fed per forward (default: ``window``, or ``T`` without a window).
    """
    T = input_ids.shape[1]
    chunk = chunk_size or window or T
    cache = KVCache(window=window, sink_tokens=sink_tokens)
    losses = []
    for t0 in range(0, T, chunk):
        logits = model(input_ids[:, t0 : t0 + chunk], past_key_values=cache, use_cache=True).logits
        target = labels[:, t0 : t0 + chunk]
        losses.append(
            F.cross_entropy(
                logits.float().reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="none"
            ).view(target.shape)
        )
    return torch.cat(losses, dim=1)


@torch.no_grad()
def streaming_perplexity(
    model: GatedLM,
    stream: TokenStream,
    length: int,
    window: int,
    sink_tokens: Sequence[int] = (0, 4),
    *,
    max_tokens: int | None = None,
    chunk_size: int | None = None,
    tokens_per_batch: int = 4096,
    include_full: bool = True,
) -> dict[str, Any]:
    """Perplexity on windows of ``length`` tokens with a cache of ``window`` recent tokens.

    Returns ``{"length", "window_size", "windows", "full"?: {...}, "window": {...},
    "window+<s>sink": {...}}`` (``window`` is the plain window, no sink tokens) where each
    entry holds ``loss``, ``ppl`` and ``tail_loss`` (the mean over positions >= ``window``,
    the positions where the cache actually drops tokens). ``full`` is the same sequence with
    the whole cache (ordinary attention, no window).
    """
    if isinstance(window, bool) or int(window) != window or window < 1:
        raise ValueError(f"window must be an integer >= 1, got {window!r}")
    budget = common_token_budget(stream, [length], max_tokens)
    inputs, labels = windows(stream, length, budget)
    rows = max(1, tokens_per_batch // length)
    device = model.embed_tokens.weight.device
    was_training = model.training
    model.eval()
    settings: list[tuple[str, int | None, int]] = []
    if include_full:
        settings.append(("full", None, 0))
    for s in sink_tokens:
        settings.append((f"window+{int(s)}sink" if s else "window", window, int(s)))
    out: dict[str, Any] = {
        "length": int(length),
        "window_size": int(window),
        "windows": len(inputs),
    }
    try:
        for name, win, sinks in settings:
            total = torch.zeros(length, dtype=torch.float64)
            for b in range(0, inputs.shape[0], rows):
                losses = windowed_token_losses(
                    model,
                    inputs[b : b + rows].to(device),
                    labels[b : b + rows].to(device),
                    win,
                    sinks,
                    chunk_size,
                )
                total += losses.double().sum(0).cpu()
            per_pos = total / inputs.shape[0]
            loss = float(per_pos.mean())
            tail = per_pos[window:] if length > window else per_pos
            out[name] = {
                "loss": loss,
                "ppl": math.exp(min(loss, 50.0)),
                "tail_loss": float(tail.mean()),
                "tail_ppl": math.exp(min(float(tail.mean()), 50.0)),
                "sink_tokens": sinks,
            }
    finally:
        model.train(was_training)
    return out
