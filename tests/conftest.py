"""Shared test fixtures: deterministic seeds and small configs."""

from __future__ import annotations

import pytest
import torch

from gated_attention import ModelConfig


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def small_cfg(**overrides) -> ModelConfig:
    """A small GQA config with odd-ish sizes (g = 2)."""
    base = dict(
        vocab_size=97,
        hidden_size=24,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=6,
        intermediate_size=40,
        max_position_embeddings=128,
    )
    base.update(overrides)
    return ModelConfig(**base)
