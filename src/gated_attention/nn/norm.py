"""RMSNorm, plain (Qwen3: ``x_hat * w``, w = 1 at init) or zero-centred (Qwen3-Next:
``x_hat * (1 + w)``, w = 0 at init). Both normalise in float32."""

from __future__ import annotations

import torch
from torch import nn

from gated_attention.ops.gating import rms_norm


class RMSNorm(nn.Module):
    """RMS normalisation over the last axis of ``(..., dim)``."""

    def __init__(self, dim: int, eps: float = 1e-6, zero_centered: bool = False) -> None:
        super().__init__()
        self.eps = eps
        self.zero_centered = zero_centered
        self.weight = nn.Parameter(torch.empty(dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.weight.is_meta:
            return
        with torch.no_grad():
            self.weight.fill_(0.0 if self.zero_centered else 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps, self.zero_centered)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}, zero_centered={self.zero_centered}"
