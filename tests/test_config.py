import json

import pytest

from gated_attention import GateConfig, GatedLM, ModelConfig, MoEConfig, count_parameters

REQUIRED_NAMES = [
    "none",
    "sdpa-elementwise",
    "sdpa-headwise",
    "sdpa-head-shared",
    "sdpa-additive-silu",
    "sdpa-elementwise-silu",
    "sdpa-input-independent",
    "sdpa-ns-sigmoid",
    "value-elementwise",
    "value-headwise",
    "value-head-shared",
    "key-elementwise",
    "query-elementwise",
    "dense-elementwise",
    "sdpa-rmsnorm",
    "sdpa-silu",
    "sdpa-additive-identity",
]


def test_every_paper_variant_is_named():
    assert set(REQUIRED_NAMES) <= set(GateConfig.names())
    for name in GateConfig.names():
        cfg = GateConfig.from_name(name)
        assert cfg.name == name
        assert GateConfig.from_dict(cfg.to_dict()) == cfg


def test_unknown_variant_lists_valid_names():
    with pytest.raises(ValueError, match="sdpa-elementwise") as info:
        GateConfig.from_name("sdpa-elementwsie")
    assert "Did you mean 'sdpa-elementwise'" in str(info.value)
    assert "value-headwise" in str(info.value)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"position": "G7"}, "position"),
        ({"position": "sdpa", "granularity": "per-token"}, "granularity"),
        ({"position": "sdpa", "mode": "mul"}, "mode"),
        ({"position": "sdpa", "activation": "tanh"}, "activation"),
        ({"position": "dense", "granularity": "headwise"}, "headwise"),
        ({"position": "dense", "head_shared": True}, "head_shared"),
        ({"position": "value", "transform": "rmsnorm"}, "transform"),
        ({"position": "sdpa", "head_shared": True, "input_dependent": False}, "head_shared"),
    ],
)
def test_invalid_gate_configs_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        GateConfig(**kwargs)


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"num_attention_heads": 6, "num_key_value_heads": 4}, "divisible"),
        ({"head_dim": 7}, "head_dim"),
        ({"hidden_size": 0}, "hidden_size"),
        ({"qk_norm": "layer"}, "qk_norm"),
        ({"partial_rotary_factor": 1.5}, "partial_rotary_factor"),
        ({"gate": "sdpa-everywhere"}, "Unknown gate variant"),
        ({"rms_norm_eps": -1.0}, "rms_norm_eps"),
    ],
)
def test_invalid_model_configs(overrides, field):
    with pytest.raises(ValueError, match=field):
        ModelConfig.from_preset("tiny", **overrides)


def test_moe_config_validation():
    with pytest.raises(ValueError, match="top_k"):
        MoEConfig(num_experts=4, top_k=5)
    with pytest.raises(ValueError, match="num_experts"):
        MoEConfig(num_experts=0, top_k=1)


def test_unknown_key_suggests_closest():
    with pytest.raises(ValueError, match="Did you mean 'num_hidden_layers'"):
        ModelConfig.from_dict({"num_hiden_layers": 3})
    with pytest.raises(ValueError, match="Unknown model preset"):
        ModelConfig.from_preset("huge")


def test_presets_round_trip_json():
    for name in ModelConfig.preset_names():
        cfg = ModelConfig.from_preset(name, gate="sdpa-headwise")
        assert cfg.gate == GateConfig.from_name("sdpa-headwise")
        again = ModelConfig.from_json(cfg.to_json())
        assert again == cfg
        assert json.loads(cfg.to_json())["gate"]["granularity"] == "headwise"


def test_gate_accepts_config_dict_and_name():
    a = ModelConfig.from_preset("tiny", gate="value-headwise")
    b = ModelConfig.from_preset("tiny", gate=GateConfig(position="value", granularity="headwise"))
    c = ModelConfig.from_preset("tiny", gate={"position": "value", "granularity": "headwise"})
    assert a == b == c


# docs/paper.md section 2: parameters each gate adds to the 15A2B MoE model.
PAPER_ADDED_PARAMS = {
    "sdpa-elementwise": 201_326_592,
    "query-elementwise": 201_326_592,
    "value-elementwise": 25_165_824,
    "key-elementwise": 25_165_824,
    "dense-elementwise": 100_663_296,
    "sdpa-headwise": 1_572_864,
    "value-headwise": 196_608,
}


@pytest.mark.slow
def test_added_parameters_match_the_paper_table():
    def total(gate: str) -> int:
        cfg = ModelConfig.from_preset("paper-15a2b-moe", gate=gate)
        return count_parameters(GatedLM(cfg, device="meta")).total

    base = total("none")
    assert base > 15e9  # the model really is the 15B MoE
    for gate, added in PAPER_ADDED_PARAMS.items():
        assert total(gate) - base == added, gate
    counts = count_parameters(
        GatedLM(ModelConfig.from_preset("paper-15a2b-moe", gate="sdpa-elementwise"), device="meta")
    )
    assert counts.gate == PAPER_ADDED_PARAMS["sdpa-elementwise"]
    assert 0 < counts.gate_share < 0.02
