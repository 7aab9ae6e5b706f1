"""MoE interop: transformers' Qwen3-MoE and Qwen3-Next sparse layers, both directions."""

import json
import re

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import (
    AutoModelForCausalLM,
    Qwen3MoeConfig,
    Qwen3MoeForCausalLM,
    Qwen3NextForCausalLM,
)

from gated_attention import GatedLM, ModelConfig, MoEConfig
from gated_attention.hf import GatedAttentionForCausalLM
from gated_attention.hf.convert import ConversionError, export_checkpoint, import_checkpoint
from tests.hf.helpers import VOCAB, perturb, qwen3_next_config

TOL = 1e-5
EXPERTS = dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=16)


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def qwen3_moe_config(**overrides) -> Qwen3MoeConfig:
    base = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=128,
        **EXPERTS,
    )
    base.update(overrides)
    return Qwen3MoeConfig(**base)


def _round_trip(tmp_path, fmt: str, ref: torch.nn.Module) -> GatedAttentionForCausalLM:
    """Import ``ref`` (saved by transformers), check logits, export back, check again."""
    ref.save_pretrained(tmp_path / "theirs")
    import_checkpoint(fmt, tmp_path / "theirs", tmp_path / "ours")
    ours = AutoModelForCausalLM.from_pretrained(tmp_path / "ours").eval()
    assert type(ours) is GatedAttentionForCausalLM and ours.config.moe is not None
    ids = torch.randint(0, VOCAB, (3, 13))
    with torch.no_grad():
        want = ref(ids).logits
        assert _max_abs(ours(ids).logits, want) <= TOL
    export_checkpoint(fmt, tmp_path / "ours", tmp_path / "back")
    back = type(ref).from_pretrained(tmp_path / "back").eval()
    with torch.no_grad():
        assert _max_abs(back(ids).logits, want) <= TOL
    src = load_file(tmp_path / "theirs" / "model.safetensors")
    out = load_file(tmp_path / "back" / "model.safetensors")
    assert src.keys() == out.keys() and all(torch.equal(src[k], out[k]) for k in src)
    return ours


@pytest.mark.parametrize("norm_topk_prob", [False, True])
def test_qwen3_moe_import_matches_transformers_and_exports_back(tmp_path, norm_topk_prob):
    ref = perturb(Qwen3MoeForCausalLM(qwen3_moe_config(norm_topk_prob=norm_topk_prob)))
    ours = _round_trip(tmp_path, "qwen3-moe", ref)
    moe = ours.model.cfg.moe
    assert (moe.num_experts, moe.top_k, moe.expert_intermediate_size) == (8, 2, 16)
    assert moe.norm_topk_prob is norm_topk_prob and moe.shared_expert_intermediate_size == 0
    assert moe.load_balancing_coef == ref.config.router_aux_loss_coef and moe.z_loss_coef == 0
    assert not ours.model.cfg.gate.enabled


def test_qwen3_next_sparse_import_matches_transformers_and_exports_back(tmp_path):
    config = qwen3_next_config(**EXPERTS, shared_expert_intermediate_size=24)
    ref = perturb(Qwen3NextForCausalLM(config))
    ours = _round_trip(tmp_path, "qwen3-next", ref)
    moe = ours.model.cfg.moe
    assert moe.shared_expert_intermediate_size == 24 and moe.shared_expert_gate
    assert ours.model.cfg.gate.position == "sdpa"  # Qwen3-Next's elementwise output gate


def _paper_moe(**overrides) -> GatedLM:
    """The paper's 15A2B MoE shape (Table 7), shrunk: 2 layers, hidden 32, 8 heads over 1 KV
    head, 16 experts of 8, top-4."""
    moe = dict(num_experts=16, top_k=4, expert_intermediate_size=8)
    moe.update(overrides.pop("moe", {}))
    cfg = ModelConfig.from_preset(
        "paper-15a2b-moe",
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=1,
        head_dim=8,
        intermediate_size=24,
        max_position_embeddings=128,
        moe=moe,
        **overrides,
    )
    return perturb(GatedLM(cfg), 0.05)


@pytest.mark.parametrize(
    ("fmt", "overrides", "cls"),
    [
        ("qwen3-moe", {}, Qwen3MoeForCausalLM),
        (
            "qwen3-next",
            {
                "gate": "sdpa-elementwise",
                "qk_norm": "zero_centered",
                "norm_type": "zero_centered",
                "partial_rotary_factor": 0.25,
                "moe": {"shared_expert_intermediate_size": 16, "shared_expert_gate": True},
            },
            Qwen3NextForCausalLM,
        ),
    ],
)
def test_paper_moe_shape_exports_to_transformers(tmp_path, fmt, overrides, cls):
    lm = _paper_moe(**overrides)
    assert lm.cfg.moe.num_experts == 16 and not lm.cfg.tie_word_embeddings
    GatedAttentionForCausalLM.from_gated_lm(lm).save_pretrained(tmp_path / "ours")
    export_checkpoint(fmt, tmp_path / "ours", tmp_path / fmt)
    theirs = cls.from_pretrained(tmp_path / fmt).eval()
    assert json.loads((tmp_path / fmt / "config.json").read_text())["num_experts_per_tok"] == 4
    ids = torch.randint(0, VOCAB, (2, 11))
    with torch.no_grad():
        assert _max_abs(theirs(ids).logits, lm(ids).logits) <= TOL
    import_checkpoint(fmt, tmp_path / fmt, tmp_path / "again")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "again").eval()
    with torch.no_grad():
        assert _max_abs(again(ids).logits, lm(ids).logits) <= TOL


def test_fused_in_memory_expert_tensors_import(tmp_path):
    # transformers holds experts fused in memory (gate_up_proj, down_proj); a state dict
    # written from it directly imports like the per-expert checkpoint save_pretrained writes.
    ref = perturb(Qwen3MoeForCausalLM(qwen3_moe_config()))
    ref.save_pretrained(tmp_path / "theirs")
    state = {k: v.contiguous() for k, v in ref.state_dict().items()}
    assert any(k.endswith("experts.gate_up_proj") for k in state)
    save_file(state, tmp_path / "theirs" / "model.safetensors", metadata={"format": "pt"})
    import_checkpoint("qwen3-moe", tmp_path / "theirs", tmp_path / "ours")
    ours = AutoModelForCausalLM.from_pretrained(tmp_path / "ours").eval()
    ids = torch.randint(0, VOCAB, (2, 9))
    with torch.no_grad():
        assert _max_abs(ours(ids).logits, ref(ids).logits) <= TOL


@pytest.mark.parametrize(
    ("fmt", "overrides", "message"),
    [
        ("qwen3-moe", {"moe": None}, "a dense model (moe=None) cannot be exported to qwen3-moe"),
        (
            "qwen3-moe",
            {"moe": {"shared_expert_intermediate_size": 8}},
            "shared_expert_intermediate_size=8 cannot be exported to qwen3-moe",
        ),
        ("qwen3-moe", {"gate": "sdpa-elementwise"}, "gate='sdpa-elementwise'"),
        (
            "qwen3-next",
            {"gate": "sdpa-elementwise", "qk_norm": "zero_centered", "norm_type": "zero_centered"},
            "sigmoid-gated shared expert",
        ),
        ("qwen3", {}, "only dense models"),
        ("paper", {}, "only dense models"),
    ],
)
def test_export_refuses_ffns_the_target_cannot_hold(tmp_path, fmt, overrides, message):
    moe = overrides.pop("moe", {})
    if moe is None:
        lm = perturb(GatedLM(_paper_moe().cfg.replace(moe=None, **overrides)))
    else:
        lm = _paper_moe(moe=moe, **overrides)
    GatedAttentionForCausalLM.from_gated_lm(lm).save_pretrained(tmp_path / "ours")
    with pytest.raises(ConversionError, match=re.escape(message)):
        export_checkpoint(fmt, tmp_path / "ours", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_mixed_sparse_and_dense_layers_are_refused_in_one_line(tmp_path):
    perturb(Qwen3MoeForCausalLM(qwen3_moe_config(decoder_sparse_step=2))).save_pretrained(
        tmp_path / "theirs"
    )
    with pytest.raises(ConversionError, match=r"makes layers \[0\] dense") as err:
        import_checkpoint("qwen3-moe", tmp_path / "theirs", tmp_path / "ours")
    assert "\n" not in str(err.value) and "decoder_sparse_step=2" in str(err.value)


def test_moe_config_round_trips_the_shared_expert_gate():
    moe = MoEConfig(num_experts=4, shared_expert_intermediate_size=8, shared_expert_gate=True)
    assert MoEConfig.from_dict(moe.to_dict()) == moe
    with pytest.raises(ValueError, match="shared_expert_gate=True needs a shared expert"):
        MoEConfig(shared_expert_gate=True)
