"""Perplexity versus context length, per-position loss and long-context attention statistics.

Every length is evaluated on the same label tokens (:func:`gated_attention.evals.streams.windows`),
through the model's normal forward (the SDPA backend: no ``(T, T)`` attention map is ever
materialised). The first-token attention mass at long lengths is computed from the ``hook_q`` /
``hook_k`` taps chunk by chunk (``analysis.first_token_mass_from_qk``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F

from gated_attention.evals.streams import TokenStream, common_token_budget, windows
from gated_attention.model import GatedLM


def _batch_rows(length: int, tokens_per_batch: int) -> int:
    return max(1, tokens_per_batch // length)


def token_losses(model: GatedLM, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token cross entropy ``(B, T)`` (float32) of ``labels`` given ``input_ids``."""
    logits = model(input_ids).logits
    return F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="none"
    ).view(labels.shape)


@contextmanager
def _capture_qk(model: GatedLM):
    """Record each layer's post-RoPE queries and keys ``(B, T, H|K, D)`` during a forward."""
    store: dict[int, dict[str, torch.Tensor]] = {}
    handles = []
    for i, layer in enumerate(model.layers):
        attn = layer.self_attn
        for name in ("q", "k"):

            def hook(_m, _inp, out, i=i, name=name):
                store.setdefault(i, {})[name] = out.detach()

            handles.append(getattr(attn, f"hook_{name}").register_forward_hook(hook))
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def first_token_mass_long(
    model: GatedLM, input_ids: torch.Tensor, query_chunk: int = 256
) -> dict[str, Any]:
    """F-Attn (docs/paper.md section 6) of ``input_ids`` ``(B, T)`` at any ``T``, streamed.

    Returns ``{"mean", "per_layer", "floor"}``: the attention probability on token 0 averaged
    over batch, heads and queries (query 0 excluded, it can only see token 0), per layer and
    over layers, with the uniform causal head's value as ``floor``.
    """
    from gated_attention.analysis import first_token_mass_from_qk

    with _capture_qk(model) as store:
        model(input_ids)
    per_layer = []
    floor = float("nan")
    for i in range(len(model.layers)):
        q, k = store[i]["q"], store[i]["k"]
        mass = first_token_mass_from_qk(
            q,
            k,
            scale=1.0 / math.sqrt(q.shape[-1]),
            query_chunk=query_chunk,
            include_first_query=False,
        )
        per_layer.append(float(mass.mean))
        floor = float(mass.floor)
    return {"mean": sum(per_layer) / len(per_layer), "per_layer": per_layer, "floor": floor}


@torch.no_grad()
def perplexity_at_lengths(
    model: GatedLM,
    stream: TokenStream,
    lengths: Sequence[int],
    *,
    max_tokens: int | None = None,
    tokens_per_batch: int = 4096,
    per_position: bool = True,
    first_token_mass: bool = False,
    mass_windows: int = 2,
) -> dict[int, dict[str, Any]]:
    """Perplexity of ``model`` at every length on the same label tokens.

    Args:
        model: the model (switched to eval mode for the call).
        stream: the evaluation stream.
        lengths: context lengths ``T`` (each >= 2).
        max_tokens: cap on label tokens (rounded down to a multiple of every length).
        tokens_per_batch: tokens per forward (rows = tokens_per_batch // T, at least 1).
        per_position: also return the mean loss at every position ``(T,)`` (over windows).
        first_token_mass: also return F-Attn on the first ``mass_windows`` windows.

    Returns:
        ``{T: {"loss", "ppl", "windows", "tokens", "per_position_loss"?, "first_token_mass"?}}``.
    """
    lengths = [int(x) for x in lengths]
    budget = common_token_budget(stream, lengths, max_tokens)
    was_training = model.training
    model.eval()
    device = model.embed_tokens.weight.device
    out: dict[int, dict[str, Any]] = {}
    try:
        for length in lengths:
            inputs, labels = windows(stream, length, budget)
            rows = _batch_rows(length, tokens_per_batch)
            pos_sum = torch.zeros(length, dtype=torch.float64)
            for b in range(0, inputs.shape[0], rows):
                losses = token_losses(
                    model, inputs[b : b + rows].to(device), labels[b : b + rows].to(device)
                )
                pos_sum += losses.double().sum(0).cpu()
            n = inputs.shape[0]
            mean = float(pos_sum.sum() / (n * length))
            result: dict[str, Any] = {
                "loss": mean,
                "ppl": math.exp(min(mean, 50.0)),
                "windows": n,
                "tokens": n * length,
            }
            if per_position:
                result["per_position_loss"] = (pos_sum / n).tolist()
            if first_token_mass:
                result["first_token_mass"] = first_token_mass_long(
                    model, inputs[:mass_windows].to(device)
                )
            out[length] = result
    finally:
        model.train(was_training)
    return out


def bin_curve(values: Sequence[float], bins: int = 64) -> list[float]:
    """Average a per-position curve into at most ``bins`` equal bins (for compact reports)."""
    values = list(values)
    if len(values) <= bins:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    edges = torch.linspace(0, len(values), bins + 1).round().long().tolist()
    return [float(t[a:b].mean()) for a, b in itertools.pairwise(edges) if b > a]
