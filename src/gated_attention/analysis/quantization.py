"""Quantisation friendliness: int8 per-tensor symmetric fake quantisation (W8A8).

A model's weights and the inputs of every ``nn.Linear`` are rounded to 256 levels of one scale
per tensor, ``s = max|x| / 127``. A single massive activation (docs/paper.md, section 5: 1053 in
the baseline) sets ``s`` for its whole tensor and crushes every ordinary value to a few levels,
which is why the paper argues that the gate, by removing massive activations, makes a model
easier to quantise. The sinks report measures the loss increase of :func:`w8a8_copy` on the
evaluation stream (``experiments.sinks``).

Hand-written rather than ``torch.ao`` quantisation: the op is two lines, runs on any device and
dtype, and keeps the float forward (fake quantisation), so the one model code path is measured.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

INT8_MAX = 127


def fake_quant_int8(x: torch.Tensor) -> torch.Tensor:
    """Symmetric per-tensor int8 fake quantisation: ``round(clamp(x / s, -127, 127)) * s`` with
    ``s = max|x| / 127`` (any shape; an all-zero tensor is returned unchanged). The result has
    ``x``'s shape and dtype; the rounding runs in float32 (or ``x``'s dtype when wider)."""
    work = x if x.dtype == torch.float64 else x.float()
    amax = work.abs().max()
    if amax == 0:
        return x.clone()
    scale = amax / INT8_MAX
    q = torch.round(torch.clamp(work / scale, -INT8_MAX, INT8_MAX)) * scale
    return q.to(x.dtype)


def _quant_input(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    return (fake_quant_int8(args[0]), *args[1:])


@torch.no_grad()
def w8a8_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose every ``nn.Linear`` has int8 fake-quantised weights (per
    tensor) and fake-quantises its input (per tensor, per forward call). ``model`` is unchanged.
    Embeddings, norms and biases stay in floating point (the usual W8A8 setting)."""
    q = copy.deepcopy(model)
    for module in q.modules():
        if isinstance(module, nn.Linear):
            module.weight.copy_(fake_quant_int8(module.weight))
            module.register_forward_pre_hook(_quant_input)
    return q


@torch.no_grad()
def linear_input_peaks(model: nn.Module, input_ids: torch.Tensor) -> dict[str, float]:
    """For every ``nn.Linear`` of ``model``, ``max|x| / mean|x|`` of its input on ``input_ids``
    ``(B, T)``: how many int8 steps of a per-tensor scale the typical input value spans is
    ``127 / peak`` (a peak above 127 rounds the typical value to 0 or one step). By module name."""
    peaks: dict[str, float] = {}

    def hook(name: str):
        def record(_module: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0].detach().float().abs()
            peaks[name] = max(peaks.get(name, 0.0), float(x.max() / x.mean().clamp_min(1e-30)))

        return record

    handles = [
        m.register_forward_pre_hook(hook(name))
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear)
    ]
    was_training = model.training
    model.eval()
    try:
        model(input_ids)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return peaks
