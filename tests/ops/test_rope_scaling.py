"""RoPE scaling against transformers' own rope functions (docs/paper.md section 7)."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import PretrainedConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from gated_attention import GatedLM, ModelConfig
from gated_attention.model import RotaryEmbedding
from gated_attention.ops.rope import check_rope_scaling, rope_parameters


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# (base, head_dim, partial_rotary_factor, factor, original length)
SETTINGS = [
    (10000.0, 64, 1.0, 4.0, 1024),
    (10000.0, 128, 1.0, 8.0, 4096),
    (1_000_000.0, 128, 0.25, 4.0, 32768),
    (500000.0, 32, 0.5, 2.0, 128),
    (10000.0, 8, 1.0, 8.0, 32),
    (10000.0, 96, 0.5, 3.0, 2048),
]


def _hf_config(base, head_dim, prf, original, **rope) -> PretrainedConfig:
    return PretrainedConfig(
        head_dim=head_dim,
        hidden_size=head_dim * 4,
        num_attention_heads=4,
        max_position_embeddings=original,
        rope_parameters={"rope_theta": base, "partial_rotary_factor": prf, **rope},
    )


def _assert_freqs(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    # transformers computes in float32, we in float64: equal to float32 precision.
    torch.testing.assert_close(ours.float(), theirs.float(), rtol=2e-6, atol=0.0)


@pytest.mark.parametrize(("base", "head_dim", "prf", "factor", "original"), SETTINGS)
def test_linear_matches_transformers(base, head_dim, prf, factor, original):
    dim = int(head_dim * prf)
    ours, af = rope_parameters(dim, base, {"rope_type": "linear", "factor": factor})
    hf = _hf_config(base, head_dim, prf, original, rope_type="linear", factor=factor)
    theirs, hf_af = ROPE_INIT_FUNCTIONS["linear"](hf, None)
    _assert_freqs(ours, theirs)
    assert af == hf_af == 1.0


@pytest.mark.parametrize(("base", "head_dim", "prf", "factor", "original"), SETTINGS)
def test_dynamic_ntk_matches_transformers(base, head_dim, prf, factor, original):
    dim = int(head_dim * prf)
    hf = _hf_config(base, head_dim, prf, original, rope_type="dynamic", factor=factor)
    scaling = {
        "rope_type": "dynamic",
        "factor": factor,
        "original_max_position_embeddings": original,
    }
    for seq_len in (None, original // 2, original, original + 1, 2 * original, 7 * original // 2):
        ours, af = rope_parameters(dim, base, scaling, seq_len)
        theirs, hf_af = ROPE_INIT_FUNCTIONS["dynamic"](hf, None, seq_len=seq_len)
        _assert_freqs(ours, theirs)
        assert af == hf_af == 1.0


@pytest.mark.parametrize(("base", "head_dim", "prf", "factor", "original"), SETTINGS)
@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"truncate": False},
        {"beta_fast": 16.0, "beta_slow": 2.0},
        {"mscale": 0.707, "mscale_all_dim": 1.0},
        {"attention_factor": 1.25},
    ],
)
def test_yarn_matches_transformers(base, head_dim, prf, factor, original, extra):
    dim = int(head_dim * prf)
    scaling = {
        "rope_type": "yarn",
        "factor": factor,
        "original_max_position_embeddings": original,
        **extra,
    }
    ours, af = rope_parameters(dim, base, scaling)
    hf = _hf_config(base, head_dim, prf, 4 * original, **scaling)
    theirs, hf_af = ROPE_INIT_FUNCTIONS["yarn"](hf, None)
    _assert_freqs(ours, theirs)
    assert af == pytest.approx(hf_af, rel=1e-12)
    if not extra:  # the paper's attention factor 0.1 ln(s) + 1
        assert af == pytest.approx(0.1 * math.log(factor) + 1.0)


@pytest.mark.parametrize(("base", "head_dim", "prf", "factor", "original"), SETTINGS)
def test_static_ntk_formula_and_dynamic_boundary(base, head_dim, prf, factor, original):
    dim = int(head_dim * prf)
    ours, af = rope_parameters(dim, base, {"rope_type": "ntk", "factor": factor})
    new_base = base * factor ** (dim / (dim - 2))
    expected = 1.0 / new_base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=0.0)
    assert af == 1.0
    # Dynamic NTK with factor 1 at length s*L grows the base by exactly s^(d/(d-2)).
    length = int(factor * original)
    hf = _hf_config(base, head_dim, prf, original, rope_type="dynamic", factor=1.0)
    theirs, _ = ROPE_INIT_FUNCTIONS["dynamic"](hf, None, seq_len=length)
    _assert_freqs(ours, theirs)
    # ... and dynamic NTK at the trained length is plain RoPE.
    plain, _ = rope_parameters(dim, base)
    dyn, _ = rope_parameters(
        dim, base, {"rope_type": "dynamic", "factor": factor}, original, original
    )
    assert torch.equal(dyn, plain)


@pytest.mark.parametrize("head_dim", [8, 64, 128])
def test_default_matches_transformers(head_dim):
    from transformers.models.qwen3.modeling_qwen3 import Qwen3RotaryEmbedding

    hf = _hf_config(10000.0, head_dim, 1.0, 64, rope_type="default")
    theirs, hf_af = Qwen3RotaryEmbedding.compute_default_rope_parameters(hf)
    ours, af = rope_parameters(head_dim, 10000.0)
    _assert_freqs(ours, theirs)
    assert af == hf_af == 1.0


@pytest.mark.parametrize(
    "scaling",
    [
        {"rope_type": "linear", "factor": 4.0},
        {"rope_type": "dynamic", "factor": 2.0},
        {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64},
    ],
)
def test_rotary_module_cos_sin_match_transformers(scaling):
    """Our model's RotaryEmbedding equals Qwen3RotaryEmbedding at positions up to 4x."""
    from transformers import Qwen3Config
    from transformers.models.qwen3.modeling_qwen3 import Qwen3RotaryEmbedding

    cfg = ModelConfig.from_preset(
        "tiny", head_dim=32, max_position_embeddings=64, rope_scaling=scaling
    )
    ours = RotaryEmbedding(cfg)
    hf_cfg = Qwen3Config(
        head_dim=32,
        hidden_size=128,
        num_attention_heads=4,
        max_position_embeddings=64,
        rope_parameters={"rope_theta": cfg.rope_theta, **scaling},
    )
    theirs = Qwen3RotaryEmbedding(hf_cfg)
    positions = torch.arange(256)[None]
    cos, sin = ours(positions, torch.float32)
    hcos, hsin = theirs(torch.zeros(1, dtype=torch.float32), positions)
    torch.testing.assert_close(cos, hcos, rtol=1e-4, atol=2e-5)
    torch.testing.assert_close(sin, hsin, rtol=1e-4, atol=2e-5)


def test_dynamic_model_equals_plain_within_trained_length():
    from gated_attention.evals import with_rope_scaling

    cfg = ModelConfig.from_preset("tiny", max_position_embeddings=48, gate="sdpa-elementwise")
    plain = GatedLM(cfg).eval()
    dynamic = with_rope_scaling(plain, {"rope_type": "dynamic", "factor": 4.0})
    ids = torch.randint(0, cfg.vocab_size, (2, 96))
    with torch.no_grad():
        for T in (1, 17, 48):
            assert torch.equal(dynamic(ids[:, :T]).logits, plain(ids[:, :T]).logits)
        assert not torch.allclose(dynamic(ids).logits, plain(ids).logits)


def test_partial_rotary_leaves_the_rest_untouched():
    cfg = ModelConfig.from_preset(
        "tiny",
        head_dim=16,
        partial_rotary_factor=0.5,
        rope_scaling={"rope_type": "yarn", "factor": 4.0},
    )
    rot = RotaryEmbedding(cfg)
    assert rot.inv_freq.shape == (4,)
    assert rot.attention_factor == pytest.approx(0.1 * math.log(4.0) + 1)


@pytest.mark.parametrize(
    ("scaling", "match"),
    [
        ({"rope_type": "yarn"}, "needs a 'factor'"),
        ({"rope_type": "linear", "factor": 0.5}, r"\['factor'\] must be >= 1"),
        ({"rope_type": "linear", "factor": "2"}, "finite number"),
        ({"rope_type": "sideways", "factor": 2.0}, "rope_type"),
        ({"rope_type": "linear", "factor": 2.0, "fctor": 1}, "unknown key 'fctor'"),
        ({"rope_type": "linear", "factor": 2.0, "rope_theta": 1e6}, "ModelConfig.rope_theta"),
        (
            {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 0},
            "original_max_position_embeddings",
        ),
        ({"rope_type": "yarn", "factor": 2.0, "beta_fast": -1}, "beta_fast"),
    ],
)
def test_bad_scaling_names_the_field(scaling, match):
    with pytest.raises(ValueError, match=match):
        check_rope_scaling(scaling)
    with pytest.raises(ValueError, match=match):
        GatedLM(ModelConfig.from_preset("tiny", rope_scaling=scaling))


def test_legacy_type_key_and_missing_trained_length():
    assert check_rope_scaling({"type": "linear", "factor": 2.0}) == {
        "rope_type": "linear",
        "factor": 2.0,
    }
    with pytest.raises(ValueError, match="trained length"):
        rope_parameters(16, 10000.0, {"rope_type": "yarn", "factor": 2.0})
