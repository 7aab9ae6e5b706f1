"""Modules built from the ops: norms, FFNs, gated attention, the decoder block, the KV cache."""

from gated_attention.nn.attention import GatedAttention
from gated_attention.nn.block import DecoderBlock
from gated_attention.nn.cache import KVCache
from gated_attention.nn.hooks import HookPoint
from gated_attention.nn.mlp import SwiGLU
from gated_attention.nn.moe import MoEFeedForward, Routing
from gated_attention.nn.norm import RMSNorm

__all__ = [
    "DecoderBlock",
    "GatedAttention",
    "HookPoint",
    "KVCache",
    "MoEFeedForward",
    "RMSNorm",
    "Routing",
    "SwiGLU",
]
