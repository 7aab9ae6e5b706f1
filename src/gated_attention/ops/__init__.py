"""Pure tensor functions (no parameters, no module state): gating, RoPE and attention."""

from gated_attention.ops.attention import (
    attention,
    attention_backends,
    attention_probabilities,
    causal_mask,
    register_attention_backend,
)
from gated_attention.ops.gating import apply_gate, gate_activation, rms_norm, silu_transform
from gated_attention.ops.rope import apply_rope, rope_cos_sin, rope_parameters

__all__ = [
    "apply_gate",
    "apply_rope",
    "attention",
    "attention_backends",
    "attention_probabilities",
    "causal_mask",
    "gate_activation",
    "register_attention_backend",
    "rms_norm",
    "rope_cos_sin",
    "rope_parameters",
    "silu_transform",
]
