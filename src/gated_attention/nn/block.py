"""Pre-norm decoder block: ``h + attn(norm(h))`` then ``h + ffn(norm(h))``."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from gated_attention.config import ModelConfig
from gated_attention.nn.attention import GatedAttention
from gated_attention.nn.hooks import HookPoint
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
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = self.hook_resid_pre(h)
        h = h + self.hook_attn_out(self.self_attn(self.input_layernorm(h), cos, sin, mask, cache))
        ffn = self.mlp(self.post_attention_layernorm(h))
        aux = None
        if isinstance(ffn, tuple):
            ffn, aux = ffn
        h = h + self.hook_mlp_out(ffn)
        return self.hook_resid_post(h), aux
