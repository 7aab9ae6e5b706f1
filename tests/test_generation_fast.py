"""The lean generation loop and the static KV cache against ``GatedLM.generate`` / ``KVCache``."""

import pytest
import torch

from gated_attention import GatedLM, KVCache
from gated_attention.generation import generate
from gated_attention.nn.static_cache import StaticCache
from tests.conftest import small_cfg


def model(gate="sdpa-elementwise", **overrides):
    torch.manual_seed(0)
    m = GatedLM(small_cfg(gate=gate, **overrides)).eval()
    with torch.no_grad():  # away from init so the logits are not near-uniform
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return m


def reference(m, ids, n, **kwargs):
    """``GatedLM.generate``'s own loop (an explicit growing cache keeps it on that loop even if
    the model delegates its default path to the fast one)."""
    kwargs.setdefault("cache", KVCache())
    return m.generate(ids, n, **kwargs)


def prompt(batch=3, length=7, vocab=97, seed=1):
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "gate", ["none", "sdpa-elementwise", "value-headwise", "dense-elementwise"]
)
@pytest.mark.parametrize("batch", [1, 3])
def test_greedy_tokens_equal_gatedlm_generate(gate, batch):
    m, ids = model(gate), prompt(batch)
    assert torch.equal(generate(m, ids, 12), reference(m, ids, 12))


def test_sampling_with_generator_and_top_k_equals_gatedlm_generate():
    m, ids = model(), prompt()
    for top_k in (None, 5):
        kwargs = dict(do_sample=True, temperature=0.8, top_k=top_k)
        ours = generate(m, ids, 10, generator=torch.Generator().manual_seed(3), **kwargs)
        ref = reference(m, ids, 10, generator=torch.Generator().manual_seed(3), **kwargs)
        assert torch.equal(ours, ref)


def test_eos_padding_and_early_stop_equal_gatedlm_generate():
    m, ids = model(), prompt()
    ref = reference(m, ids, 12)
    eos = int(ref[0, ids.shape[1] + 2])  # a token the greedy run emits early
    ours, want = generate(m, ids, 12, eos_token_id=eos), reference(m, ids, 12, eos_token_id=eos)
    assert torch.equal(ours, want)
    assert (ours[0, ids.shape[1] + 2 :] == eos).all()


def test_zero_new_tokens_and_argument_errors():
    m, ids = model(), prompt()
    assert torch.equal(generate(m, ids, 0), ids)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(m, ids, -1)
    with pytest.raises(ValueError, match="temperature"):
        generate(m, ids, 3, do_sample=True, temperature=0.0)


def test_given_windowed_cache_is_used():
    m, ids = model(), prompt()
    ours = generate(m, ids, 12, cache=KVCache(window=6, sink_tokens=2))
    ref = reference(m, ids, 12, cache=KVCache(window=6, sink_tokens=2))
    assert torch.equal(ours, ref)


def test_bf16_autocast_tokens_equal():
    # Under autocast keys arrive in float32 and values in bf16; the static cache keeps each.
    m, ids = model(), prompt()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours, ref = generate(m, ids, 12), reference(m, ids, 12)
    assert torch.equal(ours, ref)


def test_static_cache_forward_equals_kv_cache_forward():
    """Same logits up to float rounding: the cache returns views into larger buffers, whose
    strides can change the last bit of SDPA's sums (tokens above are compared exactly)."""
    m, ids = model(), prompt(length=9)
    static, growing = StaticCache(16), KVCache()
    with torch.no_grad():
        a = m(ids[:, :6], past_key_values=static, use_cache=True).logits
        b = m(ids[:, :6], past_key_values=growing, use_cache=True).logits
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # the prompt: same tensors
        for t in range(6, 9):  # one token at a time
            a = m(ids[:, t : t + 1], past_key_values=static).logits
            b = m(ids[:, t : t + 1], past_key_values=growing).logits
            torch.testing.assert_close(a, b)
    assert static.get_seq_length(0) == growing.get_seq_length(0) == 9
    for layer in range(len(growing)):
        n = static.get_seq_length(layer)
        torch.testing.assert_close(static.keys[layer][:, :, :n], growing.keys[layer])
        torch.testing.assert_close(static.values[layer][:, :, :n], growing.values[layer])


def test_static_cache_update_interface():
    cache = StaticCache(5)
    assert cache.get_seq_length() == 0 and len(cache) == 0 and cache.get_max_length() == 5
    k = torch.randn(2, 3, 4, 6)
    v = torch.randn(2, 3, 4, 6, dtype=torch.bfloat16)
    keys, values = cache.update(k, v, 0)
    assert keys.dtype == torch.float32 and values.dtype == torch.bfloat16  # dtypes kept
    torch.testing.assert_close(keys, k)
    k2 = torch.randn(2, 3, 1, 6)
    keys, values = cache.update(k2, v[:, :, :1], 0, {"cache_position": None})
    assert keys.shape == (2, 3, 5, 6) and cache.get_seq_length(0) == 5
    torch.testing.assert_close(keys, torch.cat((k, k2), dim=2))
    with pytest.raises(ValueError, match="max_length"):
        cache.update(k2, v[:, :, :1], 0)
    with pytest.raises(ValueError, match="in order"):
        cache.update(k, v, 2)
    cache.update(k, v, 1)
    with pytest.raises(ValueError, match="batch"):
        cache.update(k2[:1], v[:1, :, :1], 1)
    cache.reset()
    assert cache.get_seq_length(0) == 0
    cache.update(k, v, 0)
    cache.reorder(torch.tensor([1, 0]))
    torch.testing.assert_close(cache.keys[0][0, :, :4], k[1])
    with pytest.raises(ValueError, match="max_length"):
        StaticCache(0)


def test_static_shape_decode_path_equals_gatedlm_generate(monkeypatch):
    """``compile=True`` minus the compiler: the static-shape step (whole-buffer cache, masked
    slots, precomputed RoPE tables) run eagerly gives the same tokens."""
    import gated_attention.generation as generation

    monkeypatch.setattr(generation, "_compiled_decode_step", lambda: generation.decode_step)
    m, ids = model(), prompt()
    assert torch.equal(generate(m, ids, 12, compile=True), reference(m, ids, 12))
    eos = int(reference(m, ids, 4)[0, -1])
    want = reference(m, ids, 12, eos_token_id=eos)
    assert torch.equal(generate(m, ids, 12, eos_token_id=eos, compile=True), want)
    with pytest.raises(ValueError, match="compile"):
        generate(m, ids, 3, cache=StaticCache(10), compile=True)


def test_static_shape_mode_of_the_cache():
    cache = StaticCache(6)
    k, v = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4)
    cache.update(k, v, 0)
    cache.seek(torch.tensor([3]))
    keys, values = cache.update(k[:, :, :1], v[:, :, :1], 0)
    assert keys.shape == values.shape == (1, 2, 6, 4)  # whole buffers
    torch.testing.assert_close(keys[:, :, 3], k[:, :, 0])
    assert (keys[:, :, 4:] == 0).all()  # unfilled slots are zeros, never garbage
    cache.seek(None, 4)
    assert cache.get_seq_length(0) == 4
    keys, _ = cache.update(k[:, :, :2], v[:, :, :2], 0)
    assert keys.shape == (1, 2, 6, 4)


@pytest.mark.slow
def test_compiled_generation_matches_eager():
    m, ids = model(), prompt()
    compiled = generate(m, ids, 10, compile=True)
    assert torch.equal(compiled, reference(m, ids, 10))
