"""Evaluation-time RoPE scaling on a trained model, loading into RoPE-changed configs."""

from __future__ import annotations

import pytest
import torch

from gated_attention.evals import (
    load_model_with,
    scaling_config,
    with_rope_config,
    with_rope_scaling,
)
from gated_attention.train import save_model
from tests.evals.conftest import tiny_model


def test_with_rope_scaling_shares_weights_and_leaves_the_original():
    model = tiny_model("sdpa-elementwise", max_position_embeddings=32)
    ids = torch.randint(0, 128, (1, 64))
    with torch.no_grad():
        before = model(ids).logits
    scaled = with_rope_scaling(model, scaling_config("yarn", 2, 32))
    assert scaled.cfg.rope_scaling["rope_type"] == "yarn"
    assert model.cfg.rope_scaling is None
    assert scaled.embed_tokens.weight is model.embed_tokens.weight
    assert scaled.layers[0].self_attn.qkv_proj.weight is model.layers[0].self_attn.qkv_proj.weight
    assert scaled.rotary.attention_factor > 1
    with torch.no_grad():
        assert torch.equal(model(ids).logits, before)
        assert not torch.allclose(scaled(ids).logits, before)
        # linear scaling with factor 1 is plain RoPE
        same = with_rope_scaling(model, scaling_config("linear", 1, 32))
        assert torch.equal(same(ids).logits, before)
    assert with_rope_scaling(model, scaling_config("none", 4, 32)).cfg.rope_scaling is None


def test_load_model_with_rope_overrides(tmp_path):
    model = tiny_model(max_position_embeddings=32)
    save_model(model, tmp_path / "m")
    loaded = load_model_with(tmp_path / "m", rope_theta=1e6, max_position_embeddings=256)
    assert loaded.cfg.rope_theta == 1e6 and loaded.cfg.max_position_embeddings == 256
    torch.testing.assert_close(loaded.embed_tokens.weight, model.embed_tokens.weight)
    with pytest.raises(ValueError, match="'hidden_size' is not a RoPE field"):
        load_model_with(tmp_path / "m", hidden_size=64)
    with pytest.raises(ValueError, match="not a RoPE field"):
        with_rope_config(model, num_hidden_layers=1)
    with pytest.raises(ValueError, match="scaling mode"):
        scaling_config("pi", 2, 32)


def test_continue_training_at_a_longer_length_with_a_larger_base(tmp_path):
    from gated_attention.train import RunConfig, load_model, train

    common = dict(
        data={"kind": "backcopy", "seq_len": 16, "vocab_size": 32},
        train={"steps": 2, "batch_size": 4, "eval_batches": 1, "progress": False},
    )
    first = RunConfig(out_dir=str(tmp_path / "a"), model={"preset": "tiny"}, **common)
    train(first)
    second = RunConfig(
        out_dir=str(tmp_path / "b"),
        model={"preset": "tiny", "rope_theta": 1e6, "max_position_embeddings": 512},
        data={"kind": "backcopy", "seq_len": 64, "vocab_size": 32},
        train=common["train"],
    )
    result = train(second, init_from=tmp_path / "a")
    assert result.steps == 2
    assert load_model(tmp_path / "b").cfg.rope_theta == 1e6
    bad = RunConfig(
        out_dir=str(tmp_path / "c"),
        model={"preset": "tiny", "hidden_size": 48},
        **common,
    )
    with pytest.raises(ValueError, match="non-RoPE"):
        train(bad, init_from=tmp_path / "a")
