"""The windowed KV cache (StreamingLLM): what it keeps and what each query sees."""

from __future__ import annotations

import pytest
import torch

import gated_attention.nn.attention as attn_module
from gated_attention import KVCache
from tests.evals.conftest import tiny_model


def _feed_positions(cache: KVCache, chunks: list[int]) -> None:
    """Feed dummy keys in chunks; every value equals its absolute position."""
    pos = 0
    for n in chunks:
        x = torch.arange(pos, pos + n, dtype=torch.float32).view(1, 1, n, 1)
        cache.update(x, x.clone(), 0)
        pos += n


@pytest.mark.parametrize("chunks", [[1] * 20, [3, 5, 1, 7, 4], [20], [9, 11]])
@pytest.mark.parametrize(("window", "sinks"), [(4, 0), (4, 2), (1, 1), (6, 3), (30, 2)])
def test_keeps_exactly_sinks_and_last_window(chunks, window, sinks):
    cache = KVCache(window=window, sink_tokens=sinks)
    _feed_positions(cache, chunks)
    seen = sum(chunks)
    expected = sorted(set(range(min(sinks, seen))) | set(range(max(0, seen - window), seen)))
    assert cache.positions[0].tolist() == expected
    # keys keep their original content (no re-rotation, no reordering)
    assert cache.keys[0].flatten().long().tolist() == expected
    assert cache.values[0].flatten().long().tolist() == expected
    assert cache.get_seq_length(0) == len(expected)
    assert cache.get_position(0) == seen


def test_update_returns_every_key_the_chunk_needs():
    cache = KVCache(window=4, sink_tokens=1)
    _feed_positions(cache, [10])  # keeps 0 and 6..9
    x = torch.arange(10, 13, dtype=torch.float32).view(1, 1, 3, 1)
    mask = cache.attention_mask(3)
    keys, _ = cache.update(x, x, 0)
    assert keys.flatten().long().tolist() == [0, 6, 7, 8, 9, 10, 11, 12]
    # query 10 sees 0 (sink) and 7..10; query 12 sees 0 and 9..12
    allowed = [[int(k) for k, ok in zip(keys.flatten().tolist(), row) if ok] for row in mask[0, 0]]
    assert allowed == [[0, 7, 8, 9, 10], [0, 8, 9, 10, 11], [0, 9, 10, 11, 12]]


def test_window_covering_the_sequence_equals_full_attention():
    model = tiny_model("sdpa-elementwise")
    ids = torch.randint(0, model.cfg.vocab_size, (2, 40))
    with torch.no_grad():
        full = model(ids).logits
        for chunk in (40, 7, 1):
            cache = KVCache(window=40, sink_tokens=2)
            out = [
                model(ids[:, t : t + chunk], past_key_values=cache, use_cache=True).logits
                for t in range(0, 40, chunk)
            ]
            torch.testing.assert_close(torch.cat(out, 1), full, rtol=1e-5, atol=1e-5)
        # one chunk of the whole sequence is bit-identical (same kernel, no mask)
        cache = KVCache(window=64)
        assert torch.equal(model(ids, past_key_values=cache, use_cache=True).logits, full)


def _sliding_reference(model, ids, window, sinks):
    """Full-sequence forward with an explicit sliding-window + sink mask in every layer."""
    original = attn_module.attention
    T = ids.shape[1]
    q = torch.arange(T)[:, None]
    k = torch.arange(T)[None, :]
    mask = ((k <= q) & ((q - k < window) | (k < sinks)))[None, None]

    def masked(q_, k_, v_, m, causal, scale, backend, normalizer=None):
        return original(q_, k_, v_, mask, causal, scale, "eager", normalizer)

    attn_module.attention = masked
    try:
        return model(ids).logits
    finally:
        attn_module.attention = original


@pytest.mark.parametrize("gate", ["none", "sdpa-headwise"])
@pytest.mark.parametrize(("window", "sinks"), [(5, 0), (8, 3)])
def test_chunked_and_token_by_token_equal_the_sliding_window_reference(gate, window, sinks):
    model = tiny_model(gate)
    ids = torch.randint(0, model.cfg.vocab_size, (2, 29))
    with torch.no_grad():
        ref = _sliding_reference(model, ids, window, sinks)
        for chunk in (1, 4, window, 29):
            cache = KVCache(window=window, sink_tokens=sinks)
            out = [
                model(ids[:, t : t + chunk], past_key_values=cache, use_cache=True).logits
                for t in range(0, 29, chunk)
            ]
            torch.testing.assert_close(torch.cat(out, 1), ref, rtol=1e-5, atol=1e-5)
            assert cache.get_seq_length(0) == min(29, window + sinks)


def test_windowed_generate_and_errors():
    model = tiny_model()
    ids = torch.randint(0, model.cfg.vocab_size, (1, 12))
    out = model.generate(ids, max_new_tokens=6, cache=KVCache(window=4, sink_tokens=1))
    assert out.shape == (1, 18)
    with pytest.raises(ValueError, match="attention_mask"):
        model(
            ids,
            past_key_values=KVCache(window=4),
            attention_mask=torch.ones(1, 12, dtype=torch.long),
        )
    with pytest.raises(ValueError, match="window"):
        KVCache(window=0)
    with pytest.raises(ValueError, match="sink_tokens"):
        KVCache(window=4, sink_tokens=-1)
