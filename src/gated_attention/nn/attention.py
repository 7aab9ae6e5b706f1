"""One attention layer for every gate variant of the paper: GQA, QK-norm, RoPE, KV cache.

Fused projection layout (ours). ``qkv_proj`` maps the normed block input ``X (B, T, hidden)`` to
one vector per token, packed as contiguous blocks::

    [ Q : H*D | K : K*D | V : K*D | G : gate_size ]

with ``Q`` head-major (row ``h*D + d`` is head ``h``, feature ``d``), ``K``/``V`` likewise over KV
heads, and ``G`` the gate logits: ``H*D`` (G1/G4 elementwise), ``H`` (G1/G4 headwise), ``K*D`` or
``K`` (G2/G3), ``hidden`` (G5), or nothing. One matmul serves q, k, v and the gate; the converters
in ``gated_attention.hf`` map this layout to the paper's release (gate grouped per KV head inside
``q_proj``), Qwen3-Next (per-head ``[q_h | g_h]``) and Megatron (``[Q|G|K|V]`` per group).

Where each gate acts (paper section 3): G1 on the SDPA output per head, before ``o_proj``; G2 on
the values and G3 on the keys (both before caching, so the cache holds gated tensors); G4 on the
queries; G3/G4 act after QK-norm (a norm would otherwise undo a headwise scale) and before RoPE;
G5 on the ``o_proj`` output.

The attention normaliser (``cfg.normalizer``, ``ops/normalizers.py``) is independent of the
gate: its per-head parameters (e.g. the learnable sink logits ``sinks`` ``(H,)``) are
parameters of this module, named by the kind, zero at init, and every call (full forward,
cached or windowed decoding, the static cache) hands them to the attention op. A value-bias
column is not gated by G2 (it is a parameter, not computed from the input).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from gated_attention.config import ModelConfig
from gated_attention.nn.hooks import HookPoint
from gated_attention.nn.norm import RMSNorm
from gated_attention.ops.attention import attention
from gated_attention.ops.gating import apply_gate, silu_transform
from gated_attention.ops.normalizers import Normalizer, build_normalizer
from gated_attention.ops.rope import apply_rope


class GatedAttention(nn.Module):
    """Multi-head grouped-query attention with the gate or control that ``cfg.gate`` names."""

    def __init__(self, cfg: ModelConfig, layer_idx: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        self.gate_cfg = cfg.gate
        self.layer_idx = layer_idx
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        self.scaling = 1.0 / math.sqrt(cfg.head_dim)
        self.attn_backend = "auto"
        self.split_sizes = [cfg.q_size, cfg.kv_size, cfg.kv_size, cfg.gate_size]
        self.qkv_proj = nn.Linear(cfg.hidden_size, sum(self.split_sizes), bias=cfg.attention_bias)
        self.o_proj = nn.Linear(cfg.q_size, cfg.hidden_size, bias=cfg.attention_out_bias)
        if cfg.qk_norm != "none":
            zero = cfg.qk_norm == "zero_centered"
            self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps, zero)
            self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps, zero)
        else:
            self.q_norm = self.k_norm = None
        gate = cfg.gate
        # Input-independent gate (Table 4): a learned logit per (head, feature), zero-initialised
        # so its sigmoid starts at 0.5.
        self.gate_logits = (
            nn.Parameter(torch.zeros(cfg.gate_shape))
            if gate.enabled and gate.transform == "gate" and not gate.input_dependent
            else None
        )
        # Per-head RMSNorm on the SDPA output (Table 3 control).
        self.out_norm = (
            RMSNorm(cfg.head_dim, cfg.rms_norm_eps, cfg.norm_type == "zero_centered")
            if gate.transform == "rmsnorm"
            else None
        )
        # Normaliser parameters (none for softmax), zero-initialised like the gate logits.
        self.normalizer_params = tuple(cfg.normalizer.parameter_shapes(cfg))
        for name, shape in cfg.normalizer.parameter_shapes(cfg).items():
            setattr(self, name, nn.Parameter(torch.zeros(shape)))
        for name in (
            "hook_q",
            "hook_k",
            "hook_v",
            "hook_gate_logits",
            "hook_gate",
            "hook_z",
            "hook_z_gated",
            "hook_attn_out",
        ):
            setattr(self, name, HookPoint())

    def normalizer(self) -> Normalizer | None:
        """The attention normaliser with this layer's parameters (``None`` for softmax)."""
        return build_normalizer(self.cfg, {n: getattr(self, n) for n in self.normalizer_params})

    def zero_init_parameters(self) -> list[nn.Parameter]:
        """Own parameters that start at zero: input-independent gate logits, normaliser
        parameters (``model.init_module``)."""
        params = [getattr(self, n) for n in self.normalizer_params]
        return params if self.gate_logits is None else [self.gate_logits, *params]

    def _gate_logits(self, g: torch.Tensor, batch: int, seq: int) -> torch.Tensor:
        """Gate logits shaped to broadcast against the gated tensor."""
        if self.gate_logits is not None:
            return self.gate_logits
        if self.gate_cfg.position == "dense":
            return g
        return g.view(batch, seq, *self.cfg.gate_shape)

    def _gate(self, y: torch.Tensor, g: torch.Tensor, position: str) -> torch.Tensor:
        """Apply the gate to ``y`` when the configured position is ``position``."""
        if self.gate_cfg.position != position:
            return y
        if self.gate_cfg.transform == "rmsnorm":
            return self.out_norm(y)
        if self.gate_cfg.transform == "silu":
            return silu_transform(y)
        logits = self.hook_gate_logits(self._gate_logits(g, y.shape[0], y.shape[1]))
        gated, scores = apply_gate(y, logits, self.gate_cfg)
        self.hook_gate(scores)
        return gated

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None = None,
        cache: Any | None = None,
    ) -> torch.Tensor:
        """Attend over ``x`` ``(B, T, hidden)`` (plus any cached tokens); returns ``(B, T, hidden)``.

        Args:
            x: the normed block input (the gate is computed from it too).
            cos, sin: RoPE tables ``(B, T, rotary_dim)`` for the new tokens' positions.
            mask: boolean ``(B | 1, 1, T, S)`` (see ``ops.attention.causal_mask``) or ``None``.
            cache: a :class:`~gated_attention.nn.cache.KVCache` or ``transformers`` cache.
        """
        B, T, _ = x.shape
        q, k, v, g = self.qkv_proj(x).split(self.split_sizes, dim=-1)
        q = q.view(B, T, self.num_heads, self.head_dim)
        k = k.view(B, T, self.num_kv_heads, self.head_dim)
        v = self._gate(v.view(B, T, self.num_kv_heads, self.head_dim), g, "value")
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q = apply_rope(self._gate(q, g, "query"), cos, sin)
        k = apply_rope(self._gate(k, g, "key"), cos, sin)
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)
        if cache is not None:
            # Cache layout (B, K, S, D), as transformers' caches use.
            k_all, v_all = cache.update(k.transpose(1, 2), v.transpose(1, 2), self.layer_idx)
            k, v = k_all.transpose(1, 2), v_all.transpose(1, 2)
        z = attention(q, k, v, mask, True, self.scaling, self.attn_backend, self.normalizer())
        z = self.hook_z(z)
        z = self.hook_z_gated(self._gate(z, g, "sdpa"))
        out = self.o_proj(z.reshape(B, T, self.num_heads * self.head_dim))
        return self.hook_attn_out(self._gate(out, g, "dense"))
