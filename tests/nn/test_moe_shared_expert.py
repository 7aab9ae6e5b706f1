"""The MoE block's shared expert, plain and sigmoid-gated (Qwen3-Next), against float64."""

import pytest
import torch
import torch.nn.functional as F

from gated_attention import GatedLM, MoEConfig, count_parameters
from gated_attention.nn.moe import MoEFeedForward
from tests.conftest import small_cfg


def _swiglu(x: torch.Tensor, expert: torch.nn.Module) -> torch.Tensor:
    w = {n: p.double() for n, p in expert.named_parameters()}
    return (F.silu(x @ w["gate_proj.weight"].T) * (x @ w["up_proj.weight"].T)) @ w[
        "down_proj.weight"
    ].T


def _reference(block: MoEFeedForward, x: torch.Tensor) -> torch.Tensor:
    """Softmax top-k routing, every token through its experts one at a time, plus the shared
    expert scaled by ``sigmoid(x w)`` when gated; float64 except the router softmax, which the
    block computes in float32 by design."""
    cfg = block.cfg
    flat = x.double().reshape(-1, x.shape[-1])
    probs = torch.softmax((flat @ block.gate.weight.double().T).float(), dim=-1)
    out = torch.zeros_like(flat)
    for n in range(flat.shape[0]):
        weights, experts = probs[n].topk(cfg.top_k)
        if cfg.norm_topk_prob:
            weights = weights / weights.sum()
        for w, e in zip(weights.double(), experts):
            out[n] += w * _swiglu(flat[n], block.experts[int(e)])
    shared = _swiglu(flat, block.shared_expert)
    if block.shared_expert_gate is not None:
        shared = torch.sigmoid(flat @ block.shared_expert_gate.weight.double().T) * shared
    return (out + shared).reshape(x.shape)


@pytest.mark.parametrize("gated", [False, True])
def test_shared_expert_matches_the_float64_reference_forward_and_backward(gated):
    cfg = MoEConfig(
        num_experts=5,
        top_k=2,
        expert_intermediate_size=7,
        shared_expert_intermediate_size=9,
        shared_expert_gate=gated,
    )
    block = MoEFeedForward(24, cfg).double()
    assert (block.shared_expert_gate is not None) is gated
    x = torch.randn(2, 7, 24, dtype=torch.float64, requires_grad=True)
    out, _ = block(x)
    want = _reference(block, x)
    torch.testing.assert_close(out, want, rtol=0, atol=1e-12)
    (grad,) = torch.autograd.grad(out.square().sum(), x)
    (grad_want,) = torch.autograd.grad(want.square().sum(), x)
    torch.testing.assert_close(grad, grad_want, rtol=0, atol=1e-10)


def test_shared_expert_gate_is_counted_and_initialised():
    moe = MoEConfig(num_experts=4, expert_intermediate_size=8, shared_expert_intermediate_size=8)
    plain = small_cfg(moe=moe)
    gated = small_cfg(moe=moe.__class__(**{**moe.to_dict(), "shared_expert_gate": True}))
    extra = gated.num_parameters() - plain.num_parameters()
    assert extra == gated.hidden_size * gated.num_hidden_layers
    model = GatedLM(gated)
    assert count_parameters(model).total == gated.num_parameters()
    weight = model.layers[0].mlp.shared_expert_gate.weight
    assert weight.shape == (1, gated.hidden_size) and 0 < weight.std() < 0.1
