"""Attention normalisers in the Hugging Face classes: gpt-oss interop for learnable sinks,
``output_attentions`` through the normaliser, save/load, and export refusal."""

import pytest
import torch
from transformers import AutoModelForCausalLM
from transformers.cache_utils import DynamicCache
from transformers.models.gpt_oss.configuration_gpt_oss import GptOssConfig
from transformers.models.gpt_oss.modeling_gpt_oss import GptOssAttention, GptOssRotaryEmbedding

from gated_attention import GatedLM, KVCache, ModelConfig
from gated_attention.hf import GatedAttentionForCausalLM
from gated_attention.hf.convert import REGISTRY, ConversionError, export_checkpoint, export_state
from gated_attention.nn import GatedAttention
from gated_attention.ops.attention import attention_probabilities
from gated_attention.ops.normalizers import KINDS
from gated_attention.ops.rope import rope_cos_sin, rope_parameters
from tests.conftest import small_cfg
from tests.hf.helpers import VOCAB, perturb

NON_SOFTMAX = [k for k in KINDS if k != "softmax"]
NORMALIZERS = [{"kind": k, "length": 16} if k == "sigmoid" else k for k in NON_SOFTMAX]


# ---------------------------------------------------------------------- gpt-oss interop
def _gpt_oss_pair(dtype):
    """transformers' ``GptOssAttention`` and our layer (learnable sinks, no gate) with the same
    random weights, where the configs overlap: biased q/k/v/o, no QK-norm, plain RoPE, full
    attention, GQA 2:1, odd head_dim."""
    heads, kv, head_dim, hidden = 4, 2, 10, 24
    theirs_cfg = GptOssConfig(
        hidden_size=hidden,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        head_dim=head_dim,
        num_hidden_layers=1,
        layer_types=["full_attention"],
        attention_bias=True,
        max_position_embeddings=64,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )
    theirs_cfg._attn_implementation = "eager"
    theirs = GptOssAttention(theirs_cfg, layer_idx=0).to(dtype).eval()
    with torch.no_grad():
        for p in theirs.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
        theirs.sinks.copy_(torch.randn(heads, dtype=dtype) * 2)
    ours_cfg = ModelConfig(
        hidden_size=hidden,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        head_dim=head_dim,
        qk_norm="none",
        attention_bias=True,
        attention_out_bias=True,
        max_position_embeddings=64,
        normalizer="sink",
    )
    ours = GatedAttention(ours_cfg).to(dtype).eval()
    with torch.no_grad():
        for kind in ("weight", "bias"):
            parts = [getattr(getattr(theirs, n), kind) for n in ("q_proj", "k_proj", "v_proj")]
            getattr(ours.qkv_proj, kind).copy_(torch.cat(parts))
            getattr(ours.o_proj, kind).copy_(getattr(theirs.o_proj, kind))
        ours.sinks.copy_(theirs.sinks)
    return theirs, theirs_cfg, ours, ours_cfg


def _ours_rope(cfg, positions, dtype):
    inv_freq, factor = rope_parameters(cfg.rotary_dim, cfg.rope_theta)
    return rope_cos_sin(positions, inv_freq, factor, dtype)


def _half(cos, sin):
    """Our RoPE tables ``(B, T, D)`` (both halves equal) as gpt-oss takes them, ``(B, T, D/2)``."""
    half = cos.shape[-1] // 2
    torch.testing.assert_close(cos[..., :half], cos[..., half:], rtol=0, atol=0)
    return cos[..., :half], sin[..., :half]


def _additive_causal(T, S, dtype):
    allowed = torch.ones(T, S, dtype=torch.bool).tril(S - T)
    return torch.zeros(T, S, dtype=dtype).masked_fill(~allowed, float("-inf"))[None, None]


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_learnable_sinks_match_transformers_gpt_oss_attention(dtype, tol):
    theirs, theirs_cfg, ours, ours_cfg = _gpt_oss_pair(dtype)
    B, T = 2, 11
    x = torch.randn(B, T, ours_cfg.hidden_size, dtype=dtype)
    positions = torch.arange(T)[None].expand(B, T)
    cos, sin = _ours_rope(ours_cfg, positions, dtype)
    if dtype == torch.float32:  # their own tables (computed in float32)
        tables = GptOssRotaryEmbedding(theirs_cfg)(x, positions)
    else:  # the same tables, so float64 compares the attention math alone
        tables = _half(cos, sin)
    want, want_weights = theirs(x, tables, _additive_causal(T, T, dtype))
    seen = {}
    hooks = [
        ours.hook_q.register_forward_hook(lambda m, a, o: seen.__setitem__("q", o)),
        ours.hook_k.register_forward_hook(lambda m, a, o: seen.__setitem__("k", o)),
    ]
    for backend in ("auto", "eager", "matmul"):
        ours.attn_backend = backend
        torch.testing.assert_close(ours(x, cos, sin), want, rtol=tol, atol=tol)
    for h in hooks:
        h.remove()
    # the weights (sink column dropped, as gpt-oss returns them) are our real-key weights
    weights = attention_probabilities(
        seen["q"], seen["k"], None, True, ours.scaling, ours.normalizer()
    )
    torch.testing.assert_close(weights, want_weights, rtol=tol, atol=tol)
    assert bool((weights.sum(-1) < 1).all())


def test_learnable_sinks_match_gpt_oss_in_cached_decoding():
    theirs, _, ours, ours_cfg = _gpt_oss_pair(torch.float64)
    B, T, P = 2, 9, 5
    x = torch.randn(B, T, ours_cfg.hidden_size, dtype=torch.float64)
    their_cache, our_cache = DynamicCache(), KVCache()
    for start, stop in ((0, P), *((t, t + 1) for t in range(P, T))):
        chunk = x[:, start:stop]
        positions = torch.arange(start, stop)[None].expand(B, -1)
        mask = _additive_causal(stop - start, stop, torch.float64)
        cos, sin = _ours_rope(ours_cfg, positions, torch.float64)
        want, _ = theirs(chunk, _half(cos, sin), mask, cache=their_cache)
        got = ours(chunk, cos, sin, None, our_cache)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------- our HF classes
def _hf(normalizer, gate="sdpa-headwise"):
    lm = perturb(GatedLM(small_cfg(gate=gate, normalizer=normalizer)), 0.05)
    with torch.no_grad():
        for layer in lm.layers:
            for name in layer.self_attn.normalizer_params:
                getattr(layer.self_attn, name).normal_(0, 0.7)
    return lm, GatedAttentionForCausalLM.from_gated_lm(lm).eval()


@pytest.mark.parametrize("normalizer", NORMALIZERS, ids=NON_SOFTMAX)
def test_output_attentions_go_through_the_normalizer(normalizer):
    lm, model = _hf(normalizer)
    ids = torch.randint(0, VOCAB, (2, 7))
    seen = {}
    attn0 = model.model.layers[0].self_attn
    hook = attn0.hook_q.register_forward_hook(lambda m, a, o: seen.__setitem__("q", o))
    hook_k = attn0.hook_k.register_forward_hook(lambda m, a, o: seen.__setitem__("k", o))
    out = model(ids, output_attentions=True)
    hook.remove()
    hook_k.remove()
    torch.testing.assert_close(out.logits, lm(ids).logits, rtol=1e-5, atol=1e-6)
    want = attention_probabilities(
        seen["q"], seen["k"], None, True, attn0.scaling, attn0.normalizer()
    )
    torch.testing.assert_close(out.attentions[0], want, rtol=0, atol=0)
    kind = KINDS[model.config.to_model_config().normalizer.kind]
    sums = out.attentions[0].sum(-1)
    if kind.form == "columns":  # the virtual column always takes some weight
        assert bool((sums < 1).all())
    elif kind.null_attention:  # rectified kinds: at most 1, a row may attend to nothing
        assert bool((sums <= 1 + 1e-6).all()) and bool((sums < 1).any())


@pytest.mark.parametrize("normalizer", NORMALIZERS, ids=NON_SOFTMAX)
def test_save_load_and_cached_generation(normalizer, tmp_path):
    lm, model = _hf(normalizer)
    model.save_pretrained(tmp_path)
    for impl in ("sdpa", "eager"):
        loaded = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation=impl).eval()
        assert loaded.config.to_model_config().normalizer == lm.cfg.normalizer
        ids = torch.randint(0, VOCAB, (2, 6))
        torch.testing.assert_close(loaded(ids).logits, lm(ids).logits, rtol=1e-5, atol=1e-5)
        out = loaded.generate(ids, max_new_tokens=5, do_sample=False)
        assert torch.equal(out, lm.generate(ids, max_new_tokens=5))


# ---------------------------------------------------------------------- export refusal
@pytest.mark.parametrize("fmt", list(REGISTRY))
@pytest.mark.parametrize("normalizer", NORMALIZERS, ids=NON_SOFTMAX)
def test_export_refuses_a_normalizer_no_format_expresses(normalizer, fmt):
    cfg = small_cfg(normalizer=normalizer, qk_norm="rms")
    state = GatedAttentionForCausalLM.from_gated_lm(GatedLM(cfg)).state_dict()
    with pytest.raises(ConversionError, match=rf"^normalizer=.*cannot be exported to {fmt}") as err:
        export_state(fmt, cfg, state)
    assert "\n" not in str(err.value)


def test_export_checkpoint_refuses_before_writing(tmp_path):
    _, model = _hf("sink", gate="none")
    model.save_pretrained(tmp_path / "ours")
    with pytest.raises(ConversionError, match=r"normalizer=.*'sink'.*cannot be exported to qwen3"):
        export_checkpoint("qwen3", tmp_path / "ours", tmp_path / "out")
    assert not (tmp_path / "out").exists()
