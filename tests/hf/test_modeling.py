"""The transformers wrappers: config, Auto classes, save/load, outputs, init, loss."""

import math
import subprocess
import sys
from dataclasses import fields

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from gated_attention import GatedLM, KVCache, ModelConfig, MoEConfig
from gated_attention.hf import (
    GatedAttentionConfig,
    GatedAttentionForCausalLM,
    GatedAttentionModel,
)
from gated_attention.hf.configuration import ROPE_FIELDS
from gated_attention.ops.attention import attention_probabilities
from tests.conftest import small_cfg
from tests.hf.helpers import VOCAB, gated_lm

VARIANTS = [
    "none",
    "sdpa-elementwise",
    "sdpa-headwise",
    "value-headwise",
    "dense-elementwise",
    "sdpa-input-independent",
    "sdpa-rmsnorm",
]


# ---------------------------------------------------------------------- config
def test_config_mirrors_model_config_fields_and_defaults():
    hf, ours = GatedAttentionConfig(), ModelConfig()
    assert hf.to_model_config() == ours
    ours_fields = {f.name for f in fields(GatedAttentionConfig)}
    for f in fields(ModelConfig):
        assert (f.name in ours_fields) is (f.name not in ROPE_FIELDS), f.name
    assert hf.rope_parameters == {
        "rope_type": "default",
        "rope_theta": ours.rope_theta,
        "partial_rotary_factor": ours.partial_rotary_factor,
    }


def test_rope_parameters_the_transformers_way_and_legacy_keys():
    yarn = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}
    cfg = small_cfg(rope_theta=5e5, partial_rotary_factor=0.5, head_dim=8, rope_scaling=yarn)
    hf = GatedAttentionConfig.from_model_config(cfg)
    assert hf.rope_parameters == {"rope_theta": 5e5, "partial_rotary_factor": 0.5, **yarn}
    assert hf.to_model_config() == cfg
    assert GatedAttentionConfig.from_dict(hf.to_dict()).to_model_config() == cfg
    # config.json files written with the three ModelConfig keys still load
    legacy = GatedAttentionConfig(rope_theta=5e5, partial_rotary_factor=0.5, rope_scaling=yarn)
    assert legacy.to_model_config().rope_scaling == yarn
    assert legacy.to_model_config().rope_theta == 5e5
    # Set the way transformers' own tests and users set it (Qwen3 style), after construction
    hf = GatedAttentionConfig(**{k: getattr(cfg, k) for k in ("vocab_size", "hidden_size")})
    hf.rope_parameters = {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}
    assert GatedAttentionModel(hf).cfg.rope_scaling == {"rope_type": "linear", "factor": 2.0}
    # transformers' dynamic NTK scales from max_position_embeddings, ignoring this key
    hf.rope_parameters = {
        "rope_type": "dynamic",
        "factor": 2.0,
        "original_max_position_embeddings": 9,
    }
    assert hf.to_model_config().rope_scaling == {"rope_type": "dynamic", "factor": 2.0}
    with pytest.raises(ValueError, match="original_max_position_embeddings=9"):
        GatedAttentionConfig.from_model_config(
            small_cfg(
                rope_scaling={
                    "rope_type": "dynamic",
                    "factor": 2.0,
                    "original_max_position_embeddings": 9,
                }
            )
        )
    with pytest.raises(ValueError, match="rope_type='llama3'"):
        GatedAttentionConfig(rope_parameters={"rope_type": "llama3", "factor": 8.0})


def test_config_round_trip_and_gate_forms():
    cfg = small_cfg(
        gate="sdpa-headwise",
        rope_scaling={"rope_type": "linear", "factor": 2.0},
        moe=MoEConfig(num_experts=4, top_k=2, expert_intermediate_size=8),
    )
    hf = GatedAttentionConfig.from_model_config(cfg, eos_token_id=3)
    assert hf.to_model_config() == cfg and hf.eos_token_id == 3
    assert isinstance(hf.gate, dict) and hf.gate["granularity"] == "headwise"
    again = GatedAttentionConfig.from_dict(hf.to_dict())
    assert again.to_model_config() == cfg
    by_name = GatedAttentionConfig(gate="sdpa-elementwise")
    assert by_name.to_model_config().gate.position == "sdpa"
    assert isinstance(AutoConfig.for_model("gated_attention"), GatedAttentionConfig)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"num_attention_heads": 3}, "num_attention_heads"),
        ({"qk_norm": "layer"}, "qk_norm"),
        ({"gate": {"position": "everywhere"}}, "position"),
        ({"gate": "sdpa-elemntwise"}, "sdpa-elementwise"),
        ({"moe": {"num_experts": 0}}, "num_experts"),
    ],
)
def test_config_rejects_bad_fields_with_their_name(kwargs, field):
    with pytest.raises(ValueError, match=field):
        GatedAttentionConfig(**kwargs)


# ---------------------------------------------------------------------- Auto classes, save/load
@pytest.mark.parametrize("gate", VARIANTS)
def test_auto_model_loads_our_class_with_gated_lm_logits(tmp_path, gate):
    lm = gated_lm(gate=gate, attention_bias=True, attention_out_bias=gate == "none")
    GatedAttentionForCausalLM.from_gated_lm(lm).save_pretrained(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(model) is GatedAttentionForCausalLM
    ids = torch.randint(0, VOCAB, (2, 9))
    assert torch.equal(model(ids).logits, lm(ids).logits)
    back = model.to_gated_lm()
    assert torch.equal(back(ids).logits, lm(ids).logits)


def test_moe_model_round_trips_with_aux_loss(tmp_path):
    lm = gated_lm(
        gate="sdpa-elementwise", moe=MoEConfig(num_experts=4, top_k=2, expert_intermediate_size=8)
    )
    GatedAttentionForCausalLM.from_gated_lm(lm).save_pretrained(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, VOCAB, (2, 9))
    out, ref = model(ids, labels=ids), lm(ids, labels=ids)
    assert torch.equal(out.logits, ref.logits)
    torch.testing.assert_close(out.aux_loss, ref.aux_loss)
    torch.testing.assert_close(out.loss, ref.loss)


def test_save_load_save_is_byte_identical(tmp_path):
    for tie in (True, False):
        lm = gated_lm(gate="sdpa-elementwise", tie_word_embeddings=tie)
        first, second = tmp_path / f"a{tie}", tmp_path / f"b{tie}"
        GatedAttentionForCausalLM.from_gated_lm(lm, eos_token_id=5).save_pretrained(first)
        AutoModelForCausalLM.from_pretrained(first).save_pretrained(second)
        for name in ("model.safetensors", "config.json"):
            assert (first / name).read_bytes() == (second / name).read_bytes(), name
        from safetensors import safe_open

        with safe_open(first / "model.safetensors", "pt") as f:
            assert ("lm_head.weight" in set(f.keys())) is not tie


def test_tied_embeddings_stay_tied_after_loading(tmp_path):
    GatedAttentionForCausalLM.from_gated_lm(gated_lm()).save_pretrained(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_auto_model_returns_the_decoder_stack(tmp_path):
    lm = gated_lm(gate="sdpa-elementwise")
    causal = GatedAttentionForCausalLM.from_gated_lm(lm)
    causal.save_pretrained(tmp_path)
    base = AutoModel.from_pretrained(tmp_path).eval()
    assert type(base) is GatedAttentionModel
    ids = torch.randint(0, VOCAB, (2, 7))
    hidden = base(ids).last_hidden_state
    torch.testing.assert_close(causal.lm_head(hidden), lm(ids).logits, rtol=0, atol=0)


# ---------------------------------------------------------------------- forward options
def _hf(**overrides) -> GatedAttentionForCausalLM:
    return GatedAttentionForCausalLM.from_gated_lm(gated_lm(**overrides)).eval()


def test_output_hidden_states_follow_transformers_convention():
    model = _hf(gate="sdpa-elementwise")
    ids = torch.randint(0, VOCAB, (2, 6))
    blocks = []
    handles = [
        layer.register_forward_hook(lambda m, a, o: blocks.append(o[0]))
        for layer in model.model.layers
    ]
    out = model(ids, output_hidden_states=True)
    for h in handles:
        h.remove()
    hs = out.hidden_states
    assert len(hs) == model.config.num_hidden_layers + 1
    assert torch.equal(hs[0], model.model.embed_tokens(ids))
    assert torch.equal(hs[1], blocks[0])
    assert torch.equal(hs[-1], model.model.norm(blocks[-1]))  # tie_last_hidden_states
    model.config.tie_last_hidden_states = False
    assert torch.equal(model(ids, output_hidden_states=True).hidden_states[-1], blocks[-1])


def test_output_attentions_are_eager_probabilities_of_the_hooked_queries_and_keys():
    model = _hf(gate="sdpa-headwise")
    ids = torch.randint(0, VOCAB, (2, 7))
    seen = {}
    attn0 = model.model.layers[0].self_attn
    hooks = [
        attn0.hook_q.register_forward_hook(lambda m, a, o: seen.__setitem__("q", o)),
        attn0.hook_k.register_forward_hook(lambda m, a, o: seen.__setitem__("k", o)),
    ]
    plain = model(ids).logits
    out = model(ids, output_attentions=True)
    for h in hooks:
        h.remove()
    assert len(out.attentions) == 2 and out.attentions[0].shape == (2, 4, 7, 7)
    torch.testing.assert_close(out.logits, plain, rtol=1e-5, atol=1e-6)
    expected = attention_probabilities(seen["q"], seen["k"], None, True, attn0.scaling)
    torch.testing.assert_close(out.attentions[0], expected, rtol=0, atol=0)
    torch.testing.assert_close(out.attentions[1].sum(-1), torch.ones(2, 4, 7))
    assert attn0.attn_backend == "auto"  # restored after the call


def test_output_attentions_with_a_cache_and_padding_cover_all_keys():
    model = _hf(gate="sdpa-elementwise")
    ids = torch.randint(1, VOCAB, (2, 8))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    prefix = model(ids[:, :5], attention_mask=mask[:, :5], use_cache=True)
    step = model(ids[:, 5:], attention_mask=mask, cache=prefix.cache, output_attentions=True)
    full = model(ids, attention_mask=mask, output_attentions=True)
    assert step.attentions[0].shape == (2, 4, 3, 8)
    torch.testing.assert_close(
        step.attentions[0], full.attentions[0][:, :, 5:], rtol=1e-5, atol=1e-6
    )
    assert (full.attentions[0][1, :, 2:, :2] == 0).all()  # padded keys get no weight


def test_eager_and_sdpa_implementations_agree_and_return_tuple(tmp_path):
    GatedAttentionForCausalLM.from_gated_lm(gated_lm(gate="sdpa-elementwise")).save_pretrained(
        tmp_path
    )
    sdpa = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    eager = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert eager.config._attn_implementation == "eager"
    ids = torch.randint(0, VOCAB, (2, 9))
    torch.testing.assert_close(eager(ids).logits, sdpa(ids).logits, rtol=1e-5, atol=1e-6)
    as_tuple = sdpa(ids, return_dict=False, use_cache=False)
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], sdpa(ids).logits)


def test_cache_argument_names_inputs_embeds_and_our_kv_cache():
    model = _hf(gate="sdpa-elementwise")
    ids = torch.randint(0, VOCAB, (1, 8))
    full = model(ids).logits
    prefix = model(ids[:, :5], use_cache=True)
    with pytest.warns(FutureWarning, match="past_key_values"):  # deprecated name still works
        rest = model(ids[:, 5:], past_key_values=prefix.cache).logits
    torch.testing.assert_close(torch.cat((prefix.logits, rest), 1), full, rtol=1e-5, atol=1e-5)
    ours = KVCache()
    a = model(ids[:, :5], cache=ours).logits
    b = model(ids[:, 5:], cache=ours).logits
    torch.testing.assert_close(torch.cat((a, b), 1), full, rtol=1e-5, atol=1e-5)
    embeds = model.model.embed_tokens(ids)
    assert torch.equal(model(inputs_embeds=embeds).logits, full)
    with pytest.raises(ValueError, match="exactly one"):
        model(ids, inputs_embeds=embeds)
    with pytest.raises(ValueError, match="2-D"):
        model(ids, attention_mask=torch.ones(1, 8, 8))


def test_labels_give_the_gated_lm_loss_and_gradients():
    lm = gated_lm(gate="sdpa-headwise")
    model = GatedAttentionForCausalLM.from_gated_lm(lm)
    ids = torch.randint(0, VOCAB, (2, 9))
    labels = ids.clone()
    labels[0, :3] = -100
    out = model(ids, labels=labels)
    torch.testing.assert_close(out.loss, lm(ids, labels=labels).loss)
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    assert model(ids, logits_to_keep=1).logits.shape == (2, 1, VOCAB)


# ---------------------------------------------------------------------- init
def test_init_weights_covers_every_parameter_like_gated_lm():
    cfg = small_cfg(gate="sdpa-elementwise", tie_word_embeddings=False, attention_bias=True)
    model = GatedAttentionForCausalLM(GatedAttentionConfig.from_model_config(cfg))
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(math.nan)
    for m in model.modules():
        m.__dict__.pop("_is_hf_initialized", None)
    for p in model.parameters():
        p.__dict__.pop("_is_hf_initialized", None)
    torch.manual_seed(1)
    model.initialize_weights()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    # same draws, in the same module order, as GatedLM.init_weights
    lm = GatedLM(cfg)
    torch.manual_seed(1)
    lm.apply(lm.init_weights)
    for name, p in lm.state_dict().items():
        key = name if name.startswith("lm_head") else f"model.{name}"
        assert torch.equal(model.state_dict()[key], p), name
    qkv = model.model.layers[0].self_attn.qkv_proj.weight
    assert abs(qkv[-cfg.gate_size :].std().item() - cfg.initializer_range) < 0.005  # gate rows


def test_init_weights_zero_centred_norms_and_gate_logits():
    cfg = small_cfg(
        gate="sdpa-input-independent", norm_type="zero_centered", qk_norm="zero_centered"
    )
    model = GatedAttentionForCausalLM(GatedAttentionConfig.from_model_config(cfg))
    attn = model.model.layers[0].self_attn
    assert torch.equal(attn.gate_logits, torch.zeros_like(attn.gate_logits))
    assert torch.equal(attn.q_norm.weight, torch.zeros(cfg.head_dim))
    assert torch.equal(model.model.norm.weight, torch.zeros(cfg.hidden_size))


def test_rope_buffer_is_rebuilt_when_loading(tmp_path):
    lm = gated_lm(partial_rotary_factor=0.5, head_dim=8, rope_theta=500.0)
    GatedAttentionForCausalLM.from_gated_lm(lm).save_pretrained(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert torch.equal(model.model.rotary.inv_freq, lm.rotary.inv_freq)


@pytest.mark.slow
def test_importing_the_core_package_does_not_import_transformers():
    code = "import sys, gated_attention; sys.exit('transformers' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_windowed_kv_cache_decodes_like_gated_lm():
    lm = gated_lm(gate="sdpa-elementwise")
    model = GatedAttentionForCausalLM.from_gated_lm(lm).eval()
    ids = torch.randint(0, VOCAB, (1, 12))
    ours, ref = KVCache(window=4, sink_tokens=1), KVCache(window=4, sink_tokens=1)
    got = [model(ids[:, :5], cache=ours).logits]
    want = [lm(ids[:, :5], past_key_values=ref, use_cache=True).logits]
    for t in range(5, 12):
        got.append(model(ids[:, t : t + 1], cache=ours).logits)
        want.append(lm(ids[:, t : t + 1], past_key_values=ref, use_cache=True).logits)
    assert torch.equal(torch.cat(got, 1), torch.cat(want, 1))


def test_config_follows_fields_added_to_the_core(tmp_path):
    # A core field the wrapper never names (sandwich norm, paper Table 2) still round-trips.
    if "sandwich_norm" not in {f.name for f in fields(ModelConfig)}:
        pytest.skip("this core has no sandwich_norm field")
    lm = gated_lm(gate="sdpa-elementwise", sandwich_norm=True)
    GatedAttentionForCausalLM.from_gated_lm(lm).save_pretrained(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert model.config.sandwich_norm is True
    ids = torch.randint(0, VOCAB, (2, 7))
    assert torch.equal(model(ids).logits, lm(ids).logits)
