"""Pre-norm decoder block: ``h + attn(norm(h))`` then ``h + ffn(norm(h))``; with
``sandwich_norm`` the sublayer outputs are normed too: ``h + norm(attn(norm(h)))``."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from gated_attention.config import ModelConfig
from gated_attention.nn.attention import GatedAttention
from gated_attention.nn.hooks import HookPoint, recompute_context
from gated_attention.nn.mlp import SwiGLU
from gated_attention.nn.moe import MoEFeedForward
from gated_attention.nn.norm import RMSNorm


class DecoderBlock(nn.Module):
    """One transformer block; returns ``(hidden (B, T, hidden), aux_loss or None)``."""

    def __init__(self, cfg: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        zero = cfg.norm_type == "zero_centered"
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, zero)
        self.self_attn = GatedAttention(cfg, layer_idx)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, zero)
        self.mlp = (
            MoEFeedForward(cfg.hidden_size, cfg.moe)
            if cfg.moe is not None
            else SwiGLU(cfg.hidden_size, cfg.intermediate_size)
        )
        # Sandwich norm (Ding et al. 2021; the paper's Table 2 stability baseline): RMSNorm on
        # each sublayer's output before the residual add bounds what a block can write into the
        # residual stream. Names follow Gemma/OLMo2's post-sublayer norms.
        self.post_self_attn_layernorm = (
            RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, zero) if cfg.sandwich_norm else None
        )
        self.post_feedforward_layernorm = (
            RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, zero) if cfg.sandwich_norm else None
        )
        self.hook_resid_pre = HookPoint()
        self.hook_attn_out = HookPoint()
        self.hook_mlp_out = HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(
        self,
        h: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None = None,
        cache: Any | None = None,
        checkpoint_attention: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``h`` ``(B, T, hidden)`` -> ``(h, aux_loss or None)``. ``checkpoint_attention``
        recomputes the attention sublayer in backward (selective activation checkpointing,
        ``gated_attention.model.CHECKPOINTING``; the stack passes it only while training
        without a cache)."""
        h = self.hook_resid_pre(h)
        if checkpoint_attention:
            attn = activation_checkpoint(self.attention_sublayer, h, cos, sin, mask, cache)
        else:
            attn = self.attention_sublayer(h, cos, sin, mask, cache)
        h = h + self.hook_attn_out(attn)
        ffn = self.mlp(self.post_attention_layernorm(h))
        aux = None
        if isinstance(ffn, tuple):
            ffn, aux = ffn
        if self.post_feedforward_layernorm is not None:
            ffn = self.post_feedforward_layernorm(ffn)
        h = h + self.hook_mlp_out(ffn)
        return self.hook_resid_post(h), aux

    def attention_sublayer(
        self,
        h: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        cache: Any | None,
    ) -> torch.Tensor:
        """What the attention sublayer adds to the residual stream, ``(B, T, hidden)``."""
        attn = self.self_attn(self.input_layernorm(h), cos, sin, mask, cache)
        if self.post_self_attn_layernorm is not None:
            attn = self.post_self_attn_layernorm(attn)
        return attn


def activation_checkpoint(fn: Any, *args: Any) -> Any:
    """``fn(*args)``, recomputed in backward instead of keeping its activations
    (``torch.utils.checkpoint``, non-reentrant). Eagerly, the recomputation runs under
    :func:`~gated_attention.nn.hooks.recompute_context`, so taps that fire again can tell."""
    if torch.compiler.is_compiling():
        return checkpoint(fn, *args, use_reentrant=False)
    return checkpoint(fn, *args, use_reentrant=False, context_fn=recompute_context)
