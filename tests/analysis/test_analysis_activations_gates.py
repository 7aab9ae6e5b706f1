"""Massive activations, gate statistics and SDPA-output sparsity on constructed tensors."""

from __future__ import annotations

import json

import pytest
import torch

from gated_attention.analysis import gate_statistics, massive_activations, output_sparsity


def random_hidden(
    n_layers: int = 3, shape: tuple[int, int, int] = (2, 16, 32)
) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(*shape, generator=g) for _ in range(n_layers)]


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_planted_massive_activation_is_found(sign: float) -> None:
    hidden = random_hidden()
    hidden[1][1, 0, 7] = sign * 5000.0
    res = massive_activations(hidden, top_k=3)

    layer = res.layers[1]
    assert layer.is_massive and layer.n_massive == 1
    assert layer.massive_tokens == [0] and layer.massive_dims == [7]
    top = layer.top[0]
    assert (top.batch, top.token, top.dim) == (1, 0, 7)
    assert top.value == pytest.approx(sign * 5000.0) and top.abs_value == pytest.approx(5000.0)
    median = hidden[1].abs().flatten().median().item()
    assert layer.median_abs == pytest.approx(median, rel=1e-6)
    assert layer.max_to_median == pytest.approx(5000.0 / median, rel=1e-6)
    assert layer.max_to_median > 1000
    assert len(layer.top) == 3 and layer.top[1].abs_value <= top.abs_value
    # The planted token's hidden norm dwarfs the others.
    norms = hidden[1].double().norm(dim=-1)
    assert layer.first_token_norm_ratio == pytest.approx(
        float(norms[:, 0].mean() / norms[:, 1:].mean()), rel=1e-9
    )
    assert layer.first_token_norm_ratio > 10

    assert res.any_massive and res.massive_layers == [1]
    assert not res.layers[0].is_massive and not res.layers[2].is_massive
    maxes = [h.abs().max().item() for h in hidden]
    assert res.max_abs_per_layer == pytest.approx(maxes, rel=1e-6)
    assert res.m_act == pytest.approx(sum(maxes) / 3, rel=1e-6)
    json.dumps(res.to_dict())


def test_no_planted_value_means_no_massive_activation() -> None:
    res = massive_activations(random_hidden())
    assert not res.any_massive and res.massive_layers == []
    assert all(layer.n_massive == 0 for layer in res.layers)
    assert all(0.5 < layer.first_token_norm_ratio < 2 for layer in res.layers)


def test_massive_needs_both_absolute_and_ratio_criteria() -> None:
    hidden = random_hidden(1)
    hidden[0][0, 3, 2] = 150.0  # > 100, but only ~200x the median (~0.67)
    res = massive_activations(hidden)
    assert not res.any_massive
    big = [h * 0.01 for h in random_hidden(1)]
    big[0][0, 3, 2] = 50.0  # ~7000x the median, but below 100
    assert not massive_activations(big).any_massive


def test_massive_activations_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(batch, seq, d\)"):
        massive_activations([torch.randn(4, 8)])


def headwise_gate() -> torch.Tensor:
    """(batch=2, seq=2, heads=2, 1) with hand-picked scores."""
    return torch.tensor(
        [
            [[0.05, 0.95], [0.5, 0.3]],  # b0: t0, t1
            [[0.02, 0.6], [0.92, 0.4]],  # b1: t0, t1
        ]
    ).unsqueeze(-1)


def test_gate_statistics_on_hand_computed_values() -> None:
    g = headwise_gate()
    mask = torch.tensor([[False, True], [True, False]])
    res = gate_statistics([g, 1.0 - g], query_mask=mask, bins=4)
    layer = res.layers[0]
    assert layer.headwise
    # All eight scores sum to 3.74.
    assert layer.mean == pytest.approx(3.74 / 8)
    assert layer.share_below == pytest.approx(2 / 8)  # 0.05, 0.02
    assert layer.share_above == pytest.approx(2 / 8)  # 0.95, 0.92
    assert layer.first_token_mean == pytest.approx((0.05 + 0.95 + 0.02 + 0.6) / 4)
    assert layer.other_tokens_mean == pytest.approx((0.5 + 0.3 + 0.92 + 0.4) / 4)
    assert layer.per_head_mean == pytest.approx([1.49 / 4, 2.25 / 4])
    assert layer.per_head_share_below == pytest.approx([0.5, 0.0])
    assert layer.histogram == [2, 2, 2, 2]  # [0,.25): .05 .02 | .3 .4 | .5 .6 | .92 .95
    assert layer.n_out_of_range == 0
    assert layer.in_mask.mean == pytest.approx((0.5 + 0.3 + 0.02 + 0.6) / 4)
    assert layer.in_mask.share_below == pytest.approx(0.25)
    assert layer.in_mask.n_values == 4
    assert layer.out_of_mask.mean == pytest.approx((0.05 + 0.95 + 0.92 + 0.4) / 4)
    assert layer.out_of_mask.share_above == pytest.approx(0.5)

    # The second layer mirrors the first, so the overall mean is exactly one half.
    assert res.per_layer_mean == pytest.approx([3.74 / 8, 1 - 3.74 / 8])
    assert res.mean == pytest.approx(0.5)
    assert res.first_token_mean == pytest.approx(0.5)
    assert res.share_below == pytest.approx(0.25)
    assert res.in_mask.n_values == 8 and res.in_mask.mean == pytest.approx(0.5)
    assert res.bin_edges == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    assert sum(res.histogram) == 16
    json.dumps(res.to_dict())


def test_elementwise_gate_per_head_and_out_of_range() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 5, 4, 8, generator=g) * 0.98 + 0.01
    res = gate_statistics(x)
    layer = res.layers[0]
    assert not layer.headwise
    assert layer.per_head_mean == pytest.approx(x.double().mean(dim=(0, 1, 3)).tolist())
    assert layer.first_token_mean == pytest.approx(x[:, 0].double().mean().item())
    assert layer.in_mask is None and res.in_mask is None
    assert sum(layer.histogram) == x.numel()

    silu_like = x.clone()
    silu_like[0, 0, 0, 0] = 1.5
    silu_like[0, 0, 0, 1] = -0.2
    assert gate_statistics(silu_like).n_out_of_range == 2


def test_gate_statistics_shape_errors() -> None:
    with pytest.raises(ValueError, match="heads"):
        gate_statistics(torch.rand(2, 3, 4))
    with pytest.raises(ValueError, match="query_mask"):
        gate_statistics(torch.rand(2, 3, 4, 1), query_mask=torch.ones(2, 4, dtype=torch.bool))


def test_output_sparsity_on_known_values() -> None:
    before = torch.tensor([0.5, -0.005, 0.0005, 2.0]).reshape(1, 1, 2, 2)
    after = before * 0.01
    res = output_sparsity(before, after)
    assert res.thresholds == [1e-2, 1e-3]
    assert res.mean_abs_before == pytest.approx(2.5055 / 4, rel=1e-6)
    assert res.mean_abs_after == pytest.approx(2.5055 / 400, rel=1e-6)
    assert res.share_below_before == pytest.approx([0.5, 0.25])
    assert res.share_below_after == pytest.approx([0.75, 0.5])
    assert res.ratio == pytest.approx(0.01, rel=1e-6)

    two = output_sparsity([before, before * 2], [after, after])
    assert len(two.per_layer) == 2
    assert two.mean_abs_before == pytest.approx(3 * 2.5055 / 8, rel=1e-6)
    json.dumps(two.to_dict())


def test_output_sparsity_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        output_sparsity(torch.rand(1, 2, 3, 4) + 0.1, torch.rand(1, 2, 3, 5) + 0.1)
    with pytest.raises(ValueError, match="layers"):
        output_sparsity([torch.rand(2) + 0.1], [torch.rand(2) + 0.1, torch.rand(2) + 0.1])
