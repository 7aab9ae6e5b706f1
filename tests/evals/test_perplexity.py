"""Perplexity at several lengths on one re-chunked stream; streaming perplexity."""

from __future__ import annotations

import math

import pytest
import torch

from gated_attention.evals import (
    TokenStream,
    first_token_mass_long,
    perplexity_at_lengths,
    streaming_perplexity,
    windows,
)
from gated_attention.evals.streams import common_token_budget
from gated_attention.model import lm_loss
from tests.evals.conftest import tiny_model


def _stream(bos: int | None, n: int = 1100) -> TokenStream:
    tokens = torch.randint(3, 128, (n,), generator=torch.Generator().manual_seed(0))
    return TokenStream(tokens, bos, 128, "random")


@pytest.mark.parametrize("bos", [None, 0])
def test_windows_rechunk_the_same_label_tokens(bos):
    stream = _stream(bos)
    budget = common_token_budget(stream, [16, 32, 64, 128], None)
    assert budget == 1024
    labels = {n: windows(stream, n, budget)[1].reshape(-1) for n in (16, 32, 64, 128)}
    for n in (32, 64, 128):
        assert torch.equal(labels[n], labels[16])
    inputs, lab = windows(stream, 32, budget)
    assert inputs.shape == lab.shape == (32, 32)
    if bos is None:
        assert torch.equal(inputs[:, 1:], lab[:, :-1]) and inputs[0, 0] == stream.tokens[0]
    else:
        assert (inputs[:, 0] == 0).all() and torch.equal(inputs[:, 1:], lab[:, :-1])
    with pytest.raises(ValueError, match="needs"):
        common_token_budget(_stream(None, 50), [64], None)


def test_perplexity_at_lengths_matches_direct_loss():
    model = tiny_model("sdpa-elementwise")
    stream = _stream(0)
    res = perplexity_at_lengths(
        model, stream, [32, 64, 128], tokens_per_batch=256, first_token_mass=True
    )
    assert sorted(res) == [32, 64, 128]
    for n, r in res.items():
        assert r["tokens"] == 1024 and r["windows"] == 1024 // n
        assert len(r["per_position_loss"]) == n
        inputs, labels = windows(stream, n, 1024)
        with torch.no_grad():
            direct = float(lm_loss(model(inputs).logits, labels))
        assert r["loss"] == pytest.approx(direct, rel=1e-5)
        assert r["ppl"] == pytest.approx(math.exp(direct), rel=1e-5)
        mass = r["first_token_mass"]
        assert len(mass["per_layer"]) == 2 and 0 <= mass["mean"] <= 1


def test_streamed_first_token_mass_equals_the_full_map():
    from gated_attention.analysis import attention_probs_from_qk

    model = tiny_model()
    ids = torch.randint(0, 128, (2, 40))
    mass = first_token_mass_long(model, ids, query_chunk=7)
    from gated_attention.evals.perplexity import _capture_qk

    with _capture_qk(model) as store, torch.no_grad():
        model(ids)
    for i, value in enumerate(mass["per_layer"]):
        probs = attention_probs_from_qk(store[i]["q"], store[i]["k"])
        assert value == pytest.approx(float(probs[:, :, 1:, 0].mean()), rel=1e-5)


def test_streaming_perplexity_window_covering_equals_full():
    model = tiny_model("sdpa-headwise")
    stream = _stream(0)
    res = streaming_perplexity(model, stream, 64, window=64, sink_tokens=(0, 2), max_tokens=512)
    assert res["full"]["loss"] == pytest.approx(res["window"]["loss"], rel=1e-6)
    cut = streaming_perplexity(model, stream, 64, window=16, sink_tokens=(0, 2), max_tokens=512)
    assert cut["full"]["loss"] == pytest.approx(res["full"]["loss"], rel=1e-6)
    assert cut["window"]["loss"] != pytest.approx(cut["full"]["loss"], rel=1e-6)
    assert cut["window+2sink"]["sink_tokens"] == 2 and cut["window_size"] == 16
    # positions before the window fills are unaffected by it
    full = perplexity_at_lengths(model, stream, [64], max_tokens=512)[64]["per_position_loss"]
    assert len(full) == 64
