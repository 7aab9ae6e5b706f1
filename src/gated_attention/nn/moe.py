"""Fine-grained mixture-of-experts FFN: softmax top-k routing (Qwen3-MoE), an optional shared
expert (optionally sigmoid-gated per token, as Qwen3-Next), and the load-balancing and router
z-losses returned beside the output."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gated_attention.config import MoEConfig
from gated_attention.nn.mlp import SwiGLU


@dataclass
class Routing:
    """Routing of ``N`` tokens: ``weights``/``experts`` ``(N, top_k)``, router ``logits``
    ``(N, num_experts)`` and ``probs`` (softmax of the logits, float32)."""

    weights: torch.Tensor
    experts: torch.Tensor
    logits: torch.Tensor
    probs: torch.Tensor


class MoEFeedForward(nn.Module):
    """``(B, T, hidden) -> ((B, T, hidden), aux_loss)``. Names follow Qwen3-MoE and Qwen3-Next
    (``gate`` is the router, ``experts.{i}`` SwiGLU experts, ``shared_expert`` and its
    ``shared_expert_gate``)."""

    def __init__(self, hidden_size: int, cfg: MoEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.gate = nn.Linear(hidden_size, cfg.num_experts, bias=False)
        self.experts = nn.ModuleList(
            SwiGLU(hidden_size, cfg.expert_intermediate_size) for _ in range(cfg.num_experts)
        )
        self.shared_expert = (
            SwiGLU(hidden_size, cfg.shared_expert_intermediate_size)
            if cfg.shared_expert_intermediate_size
            else None
        )
        self.shared_expert_gate = (
            nn.Linear(hidden_size, 1, bias=False) if cfg.shared_expert_gate else None
        )

    def route(self, x: torch.Tensor) -> Routing:
        """Route tokens ``(N, hidden)`` to their top-k experts."""
        logits = self.gate(x)
        probs = torch.softmax(logits.float(), dim=-1)
        weights, experts = probs.topk(self.cfg.top_k, dim=-1)
        if self.cfg.norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return Routing(weights.to(x.dtype), experts, logits, probs)

    def aux_loss(self, routing: Routing) -> torch.Tensor:
        """``lb_coef * E * sum_i f_i P_i + z_coef * mean(logsumexp(logits)^2)``.

        ``f_i`` is the share of top-k assignments that go to expert ``i`` and ``P_i`` its mean
        router probability (Switch Transformer); the z-loss is ST-MoE's.
        """
        cfg = self.cfg
        counts = F.one_hot(routing.experts, cfg.num_experts).sum(dim=(0, 1)).float()
        share = counts / counts.sum()
        balance = cfg.num_experts * (share * routing.probs.mean(dim=0)).sum()
        z = torch.logsumexp(routing.logits.float(), dim=-1).pow(2).mean()
        return cfg.load_balancing_coef * balance + cfg.z_loss_coef * z

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        routing = self.route(flat)
        out = torch.zeros_like(flat)
        # Token dispatch per expert: only the routed tokens go through each expert, so compute
        # is proportional to top_k rather than num_experts.
        token_idx = torch.arange(flat.shape[0], device=x.device).repeat_interleave(self.cfg.top_k)
        expert_idx = routing.experts.reshape(-1)
        weight = routing.weights.reshape(-1, 1)
        order = expert_idx.argsort(stable=True)
        counts = torch.bincount(expert_idx, minlength=self.cfg.num_experts).tolist()
        start = 0
        for e, n in enumerate(counts):
            if n == 0:
                continue
            sel = order[start : start + n]
            start += n
            tokens = token_idx[sel]
            out.index_add_(0, tokens, self.experts[e](flat[tokens]) * weight[sel])
        if self.shared_expert is not None:
            shared = self.shared_expert(flat)
            if self.shared_expert_gate is not None:
                shared = torch.sigmoid(self.shared_expert_gate(flat)) * shared
            out = out + shared
        return out.reshape(shape), self.aux_loss(routing)
