"""Attention maps from post-RoPE q/k against an explicit float64 reference, and streaming."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from gated_attention.analysis import (
    alpha_from_qk,
    alpha_k,
    attention_probs_from_qk,
    effective_attention,
    first_token_mass,
    first_token_mass_from_qk,
    head_averaged_map,
    key_mass_from_qk,
)


def reference_probs(
    q: torch.Tensor,
    k: torch.Tensor,
    scale: float,
    causal: bool,
    mask: torch.Tensor | None,
) -> torch.Tensor:
    """Row-by-row float64 softmax with explicit GQA indexing and bottom-right causal mask."""
    B, T, H, _ = q.shape
    S, K = k.shape[1], k.shape[2]
    group = H // K
    out = torch.zeros(B, H, T, S, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            kv = h // group
            for t in range(T):
                allowed = [
                    s
                    for s in range(S)
                    if (not causal or s <= t + S - T) and (mask is None or bool(mask[b, s]))
                ]
                if not allowed:
                    continue
                logits = [
                    float(q[b, t, h].double() @ k[b, s, kv].double()) * scale for s in allowed
                ]
                top = max(logits)
                w = [math.exp(v - top) for v in logits]
                z = sum(w)
                for s, v in zip(allowed, w):
                    out[b, h, t, s] = v / z
    return out


def make_qk(B: int, T: int, S: int, H: int, K: int, D: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, D, generator=g)
    k = torch.randn(B, S, K, D, generator=g)
    return q, k


CASES = [
    # (T, S, H, K): GQA with odd sizes, S > T (a cached prefix), MHA, groups of three.
    (7, 7, 4, 2),
    pytest.param(63, 63, 4, 2, marks=pytest.mark.slow),  # seconds: the reference loops
    (7, 12, 4, 2),
    (5, 9, 6, 3),
    (6, 6, 2, 2),
]


@pytest.mark.parametrize(("T", "S", "H", "K"), CASES)
@pytest.mark.parametrize("padded", [False, True])
def test_probs_match_float64_reference(T: int, S: int, H: int, K: int, padded: bool) -> None:
    B, D = 2, 8
    q, k = make_qk(B, T, S, H, K, D)
    mask = None
    if padded:
        mask = torch.ones(B, S, dtype=torch.bool)
        mask[1, :3] = False  # left padding in sequence 1: its first rows see no key at all
    scale = 1.0 / math.sqrt(D)
    ref = reference_probs(q, k, scale, True, mask)
    got = attention_probs_from_qk(q, k, attention_mask=mask)
    assert got.shape == (B, H, T, S) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), ref, atol=2e-6, rtol=1e-5)
    got64 = attention_probs_from_qk(q, k, attention_mask=mask, dtype=torch.float64)
    torch.testing.assert_close(got64, ref, atol=1e-12, rtol=1e-10)
    for chunk in (1, 3, 16):
        chunked = attention_probs_from_qk(q, k, attention_mask=mask, query_chunk=chunk)
        torch.testing.assert_close(chunked, got, atol=5e-7, rtol=0)  # float32 summation order
        chunked64 = attention_probs_from_qk(
            q, k, attention_mask=mask, query_chunk=chunk, dtype=torch.float64
        )
        torch.testing.assert_close(chunked64, got64, atol=1e-14, rtol=0)


def test_non_causal_and_custom_scale() -> None:
    q, k = make_qk(1, 4, 6, 4, 2, 8, seed=3)
    ref = reference_probs(q, k, 0.3, False, None)
    got = attention_probs_from_qk(q, k, scale=0.3, causal=False, dtype=torch.float64)
    torch.testing.assert_close(got, ref, atol=1e-12, rtol=1e-10)


def test_gqa_grouping_matches_torch_sdpa() -> None:
    """probs @ V must equal torch's SDPA with enable_gqa (consecutive query-head groups)."""
    B, T, H, K, D = 2, 9, 6, 2, 8
    q, k = make_qk(B, T, T, H, K, D, seed=5)
    v = torch.randn(B, T, K, D, generator=torch.Generator().manual_seed(6))
    probs = attention_probs_from_qk(q, k, dtype=torch.float64)
    v_rep = v.double().repeat_interleave(H // K, dim=2)  # (B, T, H, D)
    ours = torch.einsum("bhts,bshd->bhtd", probs, v_rep)
    sdpa = F.scaled_dot_product_attention(
        q.double().transpose(1, 2),
        k.double().transpose(1, 2),
        v.double().transpose(1, 2),
        is_causal=True,
        enable_gqa=True,
    )
    torch.testing.assert_close(ours, sdpa, atol=1e-10, rtol=1e-8)


def test_low_precision_inputs_are_upcast() -> None:
    q, k = make_qk(1, 8, 8, 4, 2, 16)
    probs = attention_probs_from_qk(q.bfloat16(), k.bfloat16())
    assert probs.dtype == torch.float32
    torch.testing.assert_close(probs.sum(-1), torch.ones(1, 4, 8))
    ref = attention_probs_from_qk(q.bfloat16().float(), k.bfloat16().float())
    torch.testing.assert_close(probs, ref)


@pytest.mark.parametrize(("T", "S"), [(63, 63), (7, 12)])
def test_streaming_first_token_mass_and_alpha_equal_dense(T: int, S: int) -> None:
    q, k = make_qk(2, T, S, 4, 2, 8, seed=7)
    q[..., 0] += 2.0  # a little structure so key 0 is not at the floor
    k[:, 0] += 1.5
    dense = attention_probs_from_qk(q, k)
    for include in (True, False):
        want = first_token_mass(dense, include_first_query=include)
        got = first_token_mass_from_qk(q, k, query_chunk=5, include_first_query=include)
        assert got.mean == pytest.approx(want.mean, abs=1e-7)
        assert got.per_head == pytest.approx(want.per_head, abs=1e-7)
        assert got.floor == want.floor and got.key_len == S
    for position in (1, 2, S):
        torch.testing.assert_close(
            alpha_from_qk(q, k, position, query_chunk=4), alpha_k(dense, position)
        )
    torch.testing.assert_close(key_mass_from_qk(q, k, 3, query_chunk=6), dense[..., 3])


def test_qk_shape_errors() -> None:
    q, k = make_qk(1, 5, 5, 4, 3, 8)
    with pytest.raises(ValueError, match="multiple of KV heads"):
        attention_probs_from_qk(q, k)
    q, k = make_qk(1, 6, 4, 4, 2, 8)
    with pytest.raises(ValueError, match="S >= T"):
        attention_probs_from_qk(q, k)
    q, k = make_qk(1, 4, 4, 4, 2, 8)
    with pytest.raises(ValueError, match="attention_mask"):
        attention_probs_from_qk(q, k, attention_mask=torch.ones(1, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="head dim"):
        attention_probs_from_qk(q, k[..., :4])
    with pytest.raises(ValueError, match=r"\(batch, T, H, D\)"):
        attention_probs_from_qk(q[0], k)
    with pytest.raises(ValueError, match="query_chunk"):
        attention_probs_from_qk(q, k, query_chunk=0)


def test_effective_attention_matches_explicit_product() -> None:
    B, H, T, D = 2, 4, 6, 3
    q, k = make_qk(B, T, T, H, 2, 8, seed=11)
    probs = attention_probs_from_qk(q, k)
    gate = torch.rand(B, T, H, D, generator=torch.Generator().manual_seed(12)) * 0.9 + 0.05
    eff = effective_attention(probs, gate)
    for b in range(B):
        for h in range(H):
            for t in range(T):
                torch.testing.assert_close(eff[b, h, t], probs[b, h, t] * gate[b, t, h].mean())

    # Headwise: the effective map applied to V is exactly the gated SDPA output.
    headwise = gate[..., :1]
    v = torch.randn(B, T, H, 5)
    gated_out = torch.einsum("bhts,bshd->bthd", probs, v) * headwise
    eff_out = torch.einsum("bhts,bshd->bthd", effective_attention(probs, headwise), v)
    torch.testing.assert_close(eff_out, gated_out)

    avg = head_averaged_map(probs)
    assert avg.shape == (B, T, T)
    torch.testing.assert_close(avg, probs.mean(dim=1))
    with pytest.raises(ValueError, match="does not match"):
        effective_attention(probs, gate[:, :, :2])
