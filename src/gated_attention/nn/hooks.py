"""Named identity "taps" that analysis tools can hook without touching the fast path.

A :class:`HookPoint` is an ``nn.Identity`` with a name. With no hook attached, calling it costs
one module call and returns its input unchanged, so the training forward stays as fast as it
would be without it (the same idea as TransformerLens' ``HookPoint``). Analysis code attaches
ordinary PyTorch forward hooks to the tap modules by their qualified names.

Taps that every attention layer exposes (shapes with ``B`` batch, ``T`` query length, ``H``
query heads, ``K`` KV heads, ``D`` head dim, ``d`` model width):

===================  ==================================================================
``hook_q``           queries after QK-norm and RoPE, ``(B, T, H, D)``
``hook_k``           keys after QK-norm and RoPE (current tokens only), ``(B, T, K, D)``
``hook_v``           values (current tokens only), ``(B, T, K, D)``
``hook_gate_logits`` gate pre-activations, shaped like the gated tensor or with a trailing
                     size-1 axis for headwise gates; only called when the layer has a gate
``hook_gate``        gate scores after the activation, same shape as ``hook_gate_logits``
``hook_z``           SDPA output before the gate, ``(B, T, H, D)``
``hook_z_gated``     SDPA output after a G1 gate / output transform, ``(B, T, H, D)``
``hook_attn_out``    attention output after ``o_proj`` (and a G5 gate), ``(B, T, d)``
===================  ==================================================================

Every decoder block exposes ``hook_resid_pre``, ``hook_attn_out``, ``hook_mlp_out`` and
``hook_resid_post`` (all ``(B, T, d)``).

Under activation checkpointing (``gated_attention.model.CHECKPOINTING``) the taps inside a
recomputed region fire a second time during backward, with the same values; a hook that counts
or accumulates skips those calls with ``if in_recompute(): return``.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch
from torch import nn

_state = threading.local()


def in_recompute() -> bool:
    """True while activation checkpointing recomputes a forward region during backward."""
    return getattr(_state, "recompute", False)


@contextlib.contextmanager
def _recomputing() -> Iterator[None]:
    before = in_recompute()
    _state.recompute = True
    try:
        yield
    finally:
        _state.recompute = before


def recompute_context() -> tuple[
    contextlib.AbstractContextManager, contextlib.AbstractContextManager
]:
    """``context_fn`` for ``torch.utils.checkpoint``: nothing around the original forward,
    :func:`in_recompute` set around the recomputation."""
    return contextlib.nullcontext(), _recomputing()


class HookPoint(nn.Identity):
    """An identity module that marks a named place in the forward pass for analysis hooks."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x
