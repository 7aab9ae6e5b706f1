"""AdamW with the usual parameter groups, and learning-rate schedules as pure functions."""

from __future__ import annotations

import math

import torch
from torch import nn

from gated_attention.train.config import TrainConfig


def param_groups(
    model: nn.Module, weight_decay: float, decay_embeddings: bool = False
) -> list[dict]:
    """Decay matrices; never norms, biases, 1-D gate parameters; embeddings only if asked."""
    decay, no_decay, seen = [], [], set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        is_embedding = "embed_tokens" in name or "lm_head" in name
        if p.dim() < 2 or name.endswith("gate_logits") or (is_embedding and not decay_embeddings):
            no_decay.append(p)
        else:
            decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(
        param_groups(model, cfg.weight_decay, cfg.decay_embeddings),
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        eps=cfg.eps,
    )


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for optimizer step ``step`` (0-based).

    Linear warm-up over ``warmup_steps``, then ``cosine`` decay to ``min_lr_ratio * lr``,
    ``wsd`` (stable, then linear decay over the last ``decay_fraction`` of steps) or
    ``constant``.
    """
    peak, floor = cfg.lr, cfg.lr * cfg.min_lr_ratio
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return peak * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return peak
    if cfg.schedule == "cosine":
        span = max(cfg.steps - cfg.warmup_steps, 1)
        progress = min((step - cfg.warmup_steps) / span, 1.0)
        return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    decay_steps = max(int(cfg.steps * cfg.decay_fraction), 1)
    decay_start = cfg.steps - decay_steps
    if step < decay_start:
        return peak
    progress = min((step - decay_start) / decay_steps, 1.0)
    return peak + (floor - peak) * progress
