"""Tiny configs and models for the Hugging Face tests (CPU, fp32, random weights)."""

from __future__ import annotations

import torch
from torch import nn

from gated_attention import GatedLM
from tests.conftest import small_cfg

VOCAB = 97


def perturb(model: nn.Module, scale: float = 0.1) -> nn.Module:
    """Move every parameter away from its init (norms off 1/0, biases off 0) and go to eval."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)
    return model.eval()


def gated_lm(**overrides) -> GatedLM:
    """A perturbed ``GatedLM`` of ``small_cfg`` (GQA, g = 2)."""
    return perturb(GatedLM(small_cfg(**overrides)), 0.05)


def qwen3_config(**overrides):
    from transformers import Qwen3Config

    base = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=128,
    )
    base.update(overrides)
    return Qwen3Config(**base)


def qwen3_next_config(**overrides):
    from transformers import Qwen3NextConfig

    base = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=128,
        layer_types=["full_attention", "full_attention"],
        num_experts=0,
        partial_rotary_factor=0.5,
    )
    base.update(overrides)
    return Qwen3NextConfig(**base)
