"""Parameter budgets: the config-only parameter count, equal-parameter gated models (the paper's
dense protocol), parameter-matched baselines (Table 1 rows 2-4) and the sandwich-norm option."""

from __future__ import annotations

import pytest
import torch

from gated_attention import GateConfig, GatedLM, ModelConfig, MoEConfig, count_parameters
from gated_attention.nn.block import DecoderBlock
from tests.conftest import small_cfg

MOE = MoEConfig(num_experts=4, top_k=2, expert_intermediate_size=20)
OPTIONS = [
    {},
    {
        "attention_bias": True,
        "attention_out_bias": True,
        "qk_norm": "none",
        "sandwich_norm": True,
        "tie_word_embeddings": False,
        "norm_type": "zero_centered",
    },
]


def built_count(cfg: ModelConfig) -> int:
    with torch.device("meta"):
        return count_parameters(GatedLM(cfg)).total


@pytest.mark.parametrize("moe", [None, MOE], ids=["dense", "moe"])
@pytest.mark.parametrize("options", OPTIONS, ids=["default", "biases-untied-sandwich"])
def test_config_count_matches_the_built_model(moe, options):
    for name in GateConfig.names():
        cfg = small_cfg(gate=name, moe=moe, **options)
        assert cfg.num_parameters() == built_count(cfg), name


@pytest.mark.parametrize("moe", [None, MOE], ids=["dense", "moe"])
@pytest.mark.parametrize(
    "gate",
    [
        "sdpa-elementwise",
        "sdpa-headwise",
        "value-elementwise",
        "query-elementwise",
        "dense-elementwise",
        "sdpa-head-shared",
        "sdpa-additive-silu",
    ],
)
def test_equal_params_is_within_one_percent_of_the_baseline(moe, gate):
    cfg = ModelConfig.from_preset("small", gate=gate, moe=moe)
    baseline = cfg.replace(gate=GateConfig()).num_parameters()
    matched = cfg.with_equal_params()
    assert abs(built_count(matched) - baseline) / baseline < 0.01
    assert abs(matched.num_parameters() - baseline) <= abs(cfg.num_parameters() - baseline)
    # only the FFN width changes, and it shrinks
    if moe is None:
        assert matched.intermediate_size < cfg.intermediate_size
        assert matched.replace(intermediate_size=cfg.intermediate_size) == cfg
    else:
        assert matched.moe.expert_intermediate_size <= cfg.moe.expert_intermediate_size
        assert matched.intermediate_size == cfg.intermediate_size
    # a plain, serialisable config
    assert ModelConfig.from_dict(matched.to_dict()) == matched
    assert ModelConfig.from_json(matched.to_json()) == matched


def test_equal_params_exact_sizes_and_no_op_cases():
    # G1 elementwise on `small`: 4 layers x 128 x (4 x 32) gate weights; 3 x 128 per unit of
    # FFN width per layer -> 42.7 units: intermediate 384 -> 341.
    g1 = ModelConfig.from_preset("small", gate="sdpa-elementwise")
    assert g1.gate_parameters() == 4 * 128 * 128
    assert g1.with_equal_params().intermediate_size == 341
    base = ModelConfig.from_preset("small")
    assert base.with_equal_params() is base  # no gate: unchanged
    silu = ModelConfig.from_preset("small", gate="sdpa-silu")  # parameter-free control
    assert silu.gate_parameters() == 0 and silu.with_equal_params() is silu


def test_equal_params_refuses_a_too_narrow_ffn():
    cfg = small_cfg(gate="sdpa-elementwise", intermediate_size=2)
    with pytest.raises(ValueError, match="intermediate_size"):
        cfg.with_equal_params()


@pytest.mark.parametrize(
    ("dim", "field", "value"),
    [("kv_heads", "num_key_value_heads", 4), ("query_heads", "num_attention_heads", 6)],
)
def test_expanded_heads_match_the_g1_budget_exactly(dim, field, value):
    # small: 4 query heads of 32 over 2 KV heads; G1 adds 128 x 128 per layer. Two more KV
    # heads (k and v, 2 x 32 each) or two more query heads (q and o, 2 x 32 each) add the same.
    base = ModelConfig.from_preset("small")
    budget = base.replace(gate="sdpa-elementwise").gate_parameters()
    grown = base.expanded(dim, budget)
    assert getattr(grown, field) == value
    assert grown.num_parameters() - base.num_parameters() == budget
    assert built_count(grown) == base.replace(gate="sdpa-elementwise").num_parameters()


@pytest.mark.parametrize("moe", [None, MoEConfig(8, 2, 42)], ids=["wider-ffn", "more-experts"])
def test_expanded_ffn_matches_the_g1_arm_within_one_percent(moe):
    base = ModelConfig.from_preset("small", moe=moe)
    g1 = base.replace(gate="sdpa-elementwise")
    grown = base.expanded("ffn", g1.gate_parameters())
    assert abs(built_count(grown) - g1.num_parameters()) / g1.num_parameters() < 0.01
    if moe is None:
        assert grown.intermediate_size == 384 + 43
    else:  # one expert of 3 x 42 x 128 + 128 router weights per layer ~ G1's 128 x 128
        assert grown.moe.num_experts == 9 and grown.moe.expert_intermediate_size == 42


def test_expanded_rejects_bad_requests():
    cfg = ModelConfig.from_preset("small")
    with pytest.raises(ValueError, match="dim"):
        cfg.expanded("layers", 1000)
    with pytest.raises(ValueError, match="params"):
        cfg.expanded("ffn", 0)
    with pytest.raises(ValueError, match="num_key_value_heads"):
        cfg.replace(num_key_value_heads=4).expanded("kv_heads", 1000)


# ----------------------------------------------------------------------------- sandwich norm
def test_sandwich_norm_off_changes_nothing():
    cfg = small_cfg()
    assert cfg.sandwich_norm is False
    names = {n for n, _ in DecoderBlock(cfg, 0).named_parameters()}
    assert not any("post_self_attn" in n or "post_feedforward" in n for n in names)
    assert "sandwich_norm" in cfg.to_dict()
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


def test_sandwich_norm_normalises_each_sublayer_output():
    # a wide init keeps the sublayer outputs far above the norm's eps (1e-6 on the mean square)
    cfg = small_cfg(sandwich_norm=True, gate="sdpa-elementwise", initializer_range=0.5)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    model = GatedLM(cfg).eval()
    block = model.layers[0]
    assert block.post_self_attn_layernorm is not None
    assert block.post_feedforward_layernorm is not None
    assert cfg.num_parameters() == count_parameters(model).total
    seen = {}
    handles = [
        block.hook_attn_out.register_forward_hook(lambda m, i, o: seen.__setitem__("attn", o)),
        block.hook_mlp_out.register_forward_hook(lambda m, i, o: seen.__setitem__("mlp", o)),
    ]
    ids = torch.randint(0, cfg.vocab_size, (2, 63))
    try:
        out = model(ids, labels=ids)
    finally:
        for h in handles:
            h.remove()
    # what each sublayer adds to the residual stream has unit RMS (norm weights start at 1)
    for key in ("attn", "mlp"):
        rms = seen[key].pow(2).mean(-1).sqrt()
        torch.testing.assert_close(rms, torch.ones_like(rms), atol=1e-3, rtol=1e-3)
    out.loss.backward()
    assert block.post_feedforward_layernorm.weight.grad is not None
    # the same weights without the output norms give a different function
    plain = GatedLM(cfg.replace(sandwich_norm=False)).eval()
    plain.load_state_dict(model.state_dict(), strict=False)
    assert not torch.allclose(plain(ids).logits, model(ids).logits)


def test_sandwich_norm_must_be_a_bool():
    with pytest.raises(ValueError, match="sandwich_norm"):
        small_cfg(sandwich_norm="yes")
