"""Capture our own model's internals through its named hook points.

The model's fast path is untouched: forward hooks are attached to the identity taps
(``gated_attention.nn.hooks``) for the duration of one ``no_grad`` forward and always removed.
Attention probabilities are not captured; they are recomputed from the post-RoPE q/k with the
same scale and causal mask (``attention_probs_from_qk`` / the streaming helpers), so they are
never materialised in training.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from gated_attention.analysis.report import Captured
from gated_attention.nn.hooks import HookPoint


@contextlib.contextmanager
def capture_hooks(model: nn.Module, names: list[str]) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Record the outputs of every :class:`HookPoint` whose qualified name ends with one of
    ``names`` (e.g. ``"self_attn.hook_gate"``), keyed by that suffix, in module order."""
    store: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    handles = []
    for qualified, module in model.named_modules():
        if not isinstance(module, HookPoint):
            continue
        for suffix in names:
            if qualified.endswith(suffix):

                def hook(_m: nn.Module, _i: Any, out: torch.Tensor, key: str = suffix) -> None:
                    store[key].append(out.detach())

                handles.append(module.register_forward_hook(hook))
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


def _gate_as_4d(g: torch.Tensor, batch: int, seq: int) -> torch.Tensor:
    """Gate scores as ``(B, T, heads, features)``: G5 scores ``(B, T, d)`` become one "head";
    input-independent scores (a parameter, ``(heads, D)`` or ``(d,)``) repeat for every token."""
    if g.dim() == 3:
        return g.unsqueeze(-2)
    if g.dim() == 4:
        return g
    g = g.reshape(1, 1, *(g.shape if g.dim() == 2 else (1, g.shape[0])))
    return g.expand(batch, seq, -1, -1)


@torch.no_grad()
def capture_model(
    model: nn.Module,
    input_ids: torch.Tensor,
    query_mask: torch.Tensor | None = None,
    to_cpu: bool = True,
) -> Captured:
    """One forward of ``model`` (a :class:`~gated_attention.GatedLM`) on ``input_ids`` ``(B, T)``
    recording post-RoPE q/k, gate scores, SDPA output before/after the gate and each block's
    residual output, in the container that :func:`analyze_captured` reads; with a non-softmax
    attention normaliser also each layer's normaliser and parameters (``Captured.normalizers``).

    G5 (dense) gate scores ``(B, T, d)`` are reshaped to ``(B, T, 1, d)`` so that the gate
    statistics treat them as one "head".
    """
    names = [
        "self_attn.hook_q",
        "self_attn.hook_k",
        "self_attn.hook_gate",
        "self_attn.hook_z",
        "self_attn.hook_z_gated",
        "hook_resid_post",
    ]
    was_training = model.training
    model.eval()
    try:
        with capture_hooks(model, names) as store:
            model(input_ids)
    finally:
        model.train(was_training)

    def prep(xs: list[torch.Tensor]) -> list[torch.Tensor]:
        return [x.float().cpu() if to_cpu else x.float() for x in xs]

    B, T = input_ids.shape
    gates = [_gate_as_4d(g, B, T) for g in prep(store["self_attn.hook_gate"])] or None
    layers = len(store["hook_resid_post"])
    attn = model.layers[0].self_attn
    z_after = prep(store["self_attn.hook_z_gated"])
    has_gate = model.cfg.gate.enabled and model.cfg.gate.position == "sdpa"
    meta: dict[str, Any] = {"source": "gated_attention", "gate": model.cfg.gate.to_dict()}
    normalizers = None
    if not model.cfg.normalizer.is_softmax:
        meta["normalizer"] = model.cfg.normalizer.to_dict()
        normalizers = [layer.self_attn.normalizer().detached() for layer in model.layers]
    return Captured(
        n_layers=layers,
        seq_len=input_ids.shape[1],
        hidden=prep(store["hook_resid_post"]),
        q=prep(store["self_attn.hook_q"]),
        k=prep(store["self_attn.hook_k"]),
        scale=attn.scaling,
        causal=True,
        gate_scores=gates,
        z_before=prep(store["self_attn.hook_z"]) if has_gate else None,
        z_after=z_after if has_gate else None,
        query_mask=query_mask,
        input_ids=input_ids.cpu(),
        meta=meta,
        normalizers=normalizers,
    )
