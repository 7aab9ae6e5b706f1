"""The packing layouts: split/merge are inverse, bit-exact, and agree with the index formulas."""

import pytest
import torch

from gated_attention.hf.layouts import (
    gate_row,
    merge_megatron_qkv,
    merge_paper_q_proj,
    merge_qwen3_next_q_proj,
    query_row,
    split_megatron_qkv,
    split_paper_q_proj,
    split_qwen3_next_q_proj,
)

H, K, D, HIDDEN = 6, 2, 4, 5  # g = 3


@pytest.mark.parametrize("gate_dim", [D, 1])
def test_paper_split_follows_the_index_formula(gate_dim):
    g = H // K
    rows = K * (g * D + g * gate_dim)
    w = torch.randn(rows, HIDDEN)
    q, gate = split_paper_q_proj(w, H, K, D, gate_dim)
    for h in range(H):
        j, i = divmod(h, g)
        per_group = g * D + g * gate_dim
        for d in range(D):
            assert torch.equal(q[h * D + d], w[j * per_group + i * D + d])
            assert query_row("paper", h, d, H, K, D, gate_dim) == j * per_group + i * D + d
        for e in range(gate_dim):
            row = j * per_group + g * D + i * gate_dim + e
            assert torch.equal(gate[h * gate_dim + e], w[row])
            assert gate_row("paper", h, e, H, K, D, gate_dim) == row
    assert torch.equal(merge_paper_q_proj(q, gate, H, K, D), w)
    bias = torch.randn(rows)
    assert torch.equal(
        merge_paper_q_proj(*split_paper_q_proj(bias, H, K, D, gate_dim), H, K, D), bias
    )


def test_qwen3_next_split_is_per_head_interleaved():
    w = torch.randn(H * 2 * D, HIDDEN)
    q, gate = split_qwen3_next_q_proj(w, H, D)
    # transformers' Qwen3NextAttention: view (..., H, 2D) then chunk in two along the last axis
    x = torch.randn(3, HIDDEN)
    ref_q, ref_g = torch.chunk((x @ w.T).view(3, H, 2 * D), 2, dim=-1)
    torch.testing.assert_close((x @ q.T).view(3, H, D), ref_q, rtol=0, atol=0)
    torch.testing.assert_close((x @ gate.T).view(3, H, D), ref_g, rtol=0, atol=0)
    for h in range(H):
        for d in range(D):
            assert torch.equal(w[query_row("qwen3-next", h, d, H, K, D, D)], q[h * D + d])
            assert torch.equal(w[gate_row("qwen3-next", h, d, H, K, D, D)], gate[h * D + d])
    assert torch.equal(merge_qwen3_next_q_proj(q, gate, H, D), w)


def test_megatron_split_and_formula():
    g = H // K
    w = torch.randn(K * (2 * g * D + 2 * D), HIDDEN)
    q, k, v, gate = split_megatron_qkv(w, H, K, D)
    per_group = 2 * g * D + 2 * D
    for h in range(H):
        for d in range(D):
            assert torch.equal(w[query_row("megatron", h, d, H, K, D, D)], q[h * D + d])
            assert torch.equal(w[gate_row("megatron", h, d, H, K, D, D)], gate[h * D + d])
    for j in range(K):
        for d in range(D):
            assert torch.equal(w[j * per_group + 2 * g * D + d], k[j * D + d])
            assert torch.equal(w[j * per_group + 2 * g * D + D + d], v[j * D + d])
    assert torch.equal(merge_megatron_qkv(q, k, v, gate, H, K, D), w)


def test_ours_formula_matches_the_attention_module_split():
    from gated_attention import ModelConfig
    from gated_attention.nn import GatedAttention

    for gate_name, gate_dim in (("sdpa-elementwise", D), ("sdpa-headwise", 1)):
        cfg = ModelConfig(
            hidden_size=HIDDEN,
            num_attention_heads=H,
            num_key_value_heads=K,
            head_dim=D,
            gate=gate_name,
        )
        w = GatedAttention(cfg).qkv_proj.weight
        q, _, _, gate = w.split(GatedAttention(cfg).split_sizes)
        for h in range(H):
            assert torch.equal(w[query_row("ours", h, 1, H, K, D, gate_dim)], q[h * D + 1])
            assert torch.equal(w[gate_row("ours", h, 0, H, K, D, gate_dim)], gate[h * gate_dim])


def test_layouts_coincide_only_when_g_is_1():
    # docs/paper.md section 5: paper (elementwise) and Qwen3-Next agree exactly when H == K.
    w = torch.randn(K * 2 * D, HIDDEN)
    assert all(
        torch.equal(a, b)
        for a, b in zip(split_paper_q_proj(w, K, K, D, D), split_qwen3_next_q_proj(w, K, D))
    )
    w = torch.randn(H * 2 * D, HIDDEN)
    assert not torch.equal(
        split_paper_q_proj(w, H, K, D, D)[0], split_qwen3_next_q_proj(w, H, D)[0]
    )


def test_wrong_row_counts_raise():
    with pytest.raises(ValueError, match="paper q_proj has 7 rows"):
        split_paper_q_proj(torch.randn(7, HIDDEN), H, K, D, D)
    with pytest.raises(ValueError, match="qwen3-next q_proj"):
        split_qwen3_next_q_proj(torch.randn(H * D, HIDDEN), H, D)
    with pytest.raises(ValueError, match="unknown layout"):
        query_row("gpt2", 0, 0, H, K, D, D)
