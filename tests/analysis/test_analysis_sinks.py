"""First-token mass, causal floor, alpha_k and sink rate on constructed attention maps."""

from __future__ import annotations

import json
import math

import pytest
import torch

from gated_attention.analysis import (
    alpha_k,
    causal_floor,
    first_token_mass,
    first_token_mass_by_layer,
    sink_rate,
    sink_rate_by_layer,
)


def harmonic(n: int) -> float:
    return sum(1.0 / i for i in range(1, n + 1))


def uniform_causal(B: int, H: int, T: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A[t, s] = 1 / (t + 1) for s <= t: ``(B, H, T, T)``."""
    t = torch.arange(T, dtype=torch.float64)
    a = torch.tril(torch.ones(T, T, dtype=torch.float64)) / (t + 1)[:, None]
    return a.expand(B, H, T, T).to(dtype).clone()


def planted_sink(T: int, m: float) -> torch.Tensor:
    """Query 0 puts 1 on key 0; query t >= 1 puts m on key 0 and (1 - m)/t on keys 1..t."""
    a = torch.zeros(T, T, dtype=torch.float64)
    a[0, 0] = 1.0
    for t in range(1, T):
        a[t, 0] = m
        a[t, 1 : t + 1] = (1.0 - m) / t
    return a


def test_causal_floor_matches_paper_values() -> None:
    assert causal_floor(64) == pytest.approx(0.074, abs=5e-4)
    assert causal_floor(256) == pytest.approx(0.024, abs=5e-4)
    assert causal_floor(512) == pytest.approx(0.013, abs=5e-4)
    for T in (1, 7, 64):
        assert causal_floor(T) == pytest.approx(harmonic(T) / T, rel=1e-12)
    assert causal_floor(64, include_first_query=False) == pytest.approx(
        (harmonic(64) - 1) / 63, rel=1e-12
    )
    # Cached prefix of 3 keys: query t sees t + 4 keys.
    assert causal_floor(5, key_len=8) == pytest.approx(sum(1 / (t + 4) for t in range(5)) / 5)


def test_causal_floor_rejects_bad_lengths() -> None:
    with pytest.raises(ValueError, match="T <= key_len"):
        causal_floor(8, key_len=4)
    with pytest.raises(ValueError, match="no query"):
        causal_floor(1, include_first_query=False)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_uniform_causal_map_sits_on_the_floor(dtype: torch.dtype) -> None:
    T = 64
    probs = uniform_causal(2, 3, T, dtype)
    res = first_token_mass(probs)
    tol = 1e-12 if dtype == torch.float64 else 1e-6 if dtype == torch.float32 else 4e-3
    assert res.mean == pytest.approx(harmonic(T) / T, abs=tol)
    assert res.floor == pytest.approx(harmonic(T) / T, rel=1e-12)
    assert res.ratio_to_floor == pytest.approx(1.0, abs=tol * 20)
    assert len(res.per_head) == 3
    assert res.seq_len == T and res.key_len == T and res.include_first_query

    excl = first_token_mass(probs, include_first_query=False)
    assert excl.mean == pytest.approx((harmonic(T) - 1) / (T - 1), abs=tol)
    assert excl.ratio_to_floor == pytest.approx(1.0, abs=tol * 20)

    rate = sink_rate(probs, eps=0.3)
    assert rate.rate == 0.0
    assert alpha_k(probs, 1).shape == (2, 3)
    assert torch.allclose(
        alpha_k(probs, 1), torch.full((2, 3), harmonic(T) / T, dtype=torch.float64), atol=tol
    )


def test_alpha_k_later_positions_on_uniform_map() -> None:
    T = 16
    probs = uniform_causal(1, 2, T)
    # alpha_2 = 1/(T-1) * sum_{t=1}^{T-1} 1/(t+1) = (H_T - 1)/(T - 1)
    assert torch.allclose(
        alpha_k(probs, 2), torch.full((1, 2), (harmonic(T) - 1) / (T - 1), dtype=torch.float64)
    )
    # The last key is seen only by the last query: 1/T.
    assert torch.allclose(alpha_k(probs, T), torch.full((1, 2), 1.0 / T, dtype=torch.float64))
    with pytest.raises(ValueError, match="1-based"):
        alpha_k(probs, 0)


def test_planted_sink_gives_expected_alpha_and_rate() -> None:
    T, m = 64, 0.6
    uni = uniform_causal(1, 1, T)[0, 0]
    sink = planted_sink(T, m)
    probs = torch.stack([sink, uni, sink, uni]).unsqueeze(0).repeat(2, 1, 1, 1)  # (2, 4, T, T)
    assert torch.allclose(probs.sum(-1), torch.ones(2, 4, T, dtype=torch.float64))

    expected = (1.0 + (T - 1) * m) / T
    a = alpha_k(probs, 1)
    assert torch.allclose(a[:, 0], torch.full((2,), expected, dtype=torch.float64))
    assert torch.allclose(a[:, 1], torch.full((2,), harmonic(T) / T, dtype=torch.float64))

    rate = sink_rate(probs, eps=0.3)
    assert rate.rate == pytest.approx(0.5)
    assert rate.per_layer_rate == [pytest.approx(0.5)]
    assert rate.per_layer_head_rate == [[1.0, 0.0, 1.0, 0.0]]
    assert rate.per_layer_head_alpha[0][0] == pytest.approx(expected)
    assert rate.seq_len == T and rate.n_sequences == 2 and rate.k == 1

    ftm = first_token_mass(probs)
    assert ftm.per_head[0] == pytest.approx(expected)
    assert ftm.mean == pytest.approx((expected + harmonic(T) / T) / 2)


def test_multi_layer_sink_rate_and_first_token_mass() -> None:
    T = 64
    uni = uniform_causal(2, 4, T)
    sinky = uni.clone()
    sinky[:, :2] = planted_sink(T, 0.6)
    rate = sink_rate_by_layer([sinky, uni, sinky])
    assert rate.per_layer_rate == [pytest.approx(0.5), 0.0, pytest.approx(0.5)]
    assert rate.rate == pytest.approx(1 / 3)
    by_layer = first_token_mass_by_layer([uni, sinky, uni])
    assert by_layer.max_layer == 1
    assert len(by_layer.per_layer) == 3
    assert by_layer.per_layer_mean[0] == pytest.approx(harmonic(T) / T)
    assert by_layer.mean == pytest.approx(sum(by_layer.per_layer_mean) / 3)
    json.dumps(by_layer.to_dict())
    json.dumps(rate.to_dict())


def test_sink_rate_thresholds_each_sequence_like_gu_et_al() -> None:
    """One head is a sink in sequence 0 only: its rate is 0.5, not 0 or 1 from a mean alpha."""
    T = 64
    probs = uniform_causal(2, 1, T)
    probs[0, 0] = planted_sink(T, 0.5)  # alpha ~ 0.51 in sequence 0, 0.074 in sequence 1
    rate = sink_rate(probs, eps=0.3)
    assert rate.rate == pytest.approx(0.5)
    mean_alpha = rate.per_layer_head_alpha[0][0]
    assert mean_alpha == pytest.approx(((1 + 63 * 0.5) / 64 + harmonic(T) / T) / 2)
    assert not math.isnan(mean_alpha)


def test_shape_errors_are_clear() -> None:
    with pytest.raises(ValueError, match=r"\(batch, heads, query, key\)"):
        first_token_mass(torch.rand(4, 8, 8))
    with pytest.raises(ValueError, match="non-empty"):
        sink_rate([])
