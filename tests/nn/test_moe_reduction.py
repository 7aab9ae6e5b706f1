"""Every expert takes part in each step's gradient, also without tokens (data parallelism
reduces the same parameters on every rank)."""

import torch

from gated_attention.config import MoEConfig
from gated_attention.nn.moe import MoEFeedForward


def test_idle_experts_get_zero_gradients_not_none():
    torch.manual_seed(0)
    moe = MoEFeedForward(16, MoEConfig(num_experts=8, top_k=1, expert_intermediate_size=8))
    x = torch.randn(1, 3, 16)  # 3 tokens, top-1: at least 5 experts idle
    out, aux = moe(x)
    (out.square().sum() + aux).backward()
    used = set(moe.route(x.reshape(-1, 16)).experts.reshape(-1).tolist())
    assert len(used) <= 3
    for e, expert in enumerate(moe.experts):
        for p in expert.parameters():
            assert p.grad is not None, e
            if e not in used:
                assert torch.count_nonzero(p.grad) == 0
            else:
                assert torch.count_nonzero(p.grad) > 0
