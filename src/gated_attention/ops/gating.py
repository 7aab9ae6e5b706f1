"""Gate application: the one function every gate position runs (paper Eq. 5).

``Y' = Y * act(s)`` (multiplicative) or ``Y + act(s)`` (additive), where ``s = X W_g`` is the gate
logit computed from the normed block input, or a learned input-independent parameter. Shapes are
``(..., heads, head_dim)`` for per-head positions (G1-G4) and ``(..., hidden)`` for G5; a headwise
logit has a trailing axis of size 1 and broadcasts over ``head_dim``.

The multiplicative gate keeps for backward only its two inputs, ``Y`` and the logits: its backward
recomputes the activation from the logits, where autograd would also keep the float32 scores and
their low-precision copy (``_MultiplicativeGate``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gated_attention.config import GateConfig


def upcast(x: torch.Tensor) -> torch.Tensor:
    """``x`` in at least float32 (float64 stays float64, for the references and tests)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def gate_activation(logits: torch.Tensor, activation: str, fp32: bool = True) -> torch.Tensor:
    """Gate scores from logits, returned in the logits' dtype.

    ``ns_sigmoid`` is the paper's non-sparse control ``0.5 + 0.5 * sigmoid(x)`` (range [0.5, 1]).
    With ``fp32`` the activation runs in float32 (as Megatron does) and is cast back.
    """
    x = upcast(logits) if fp32 else logits
    if activation == "sigmoid":
        y = torch.sigmoid(x)
    elif activation == "silu":
        y = F.silu(x)
    elif activation == "ns_sigmoid":
        y = 0.5 + 0.5 * torch.sigmoid(x)
    elif activation == "identity":
        y = x
    else:
        raise ValueError(
            f"unknown gate activation {activation!r}; allowed: sigmoid, silu, ns_sigmoid, identity"
        )
    return y.to(logits.dtype)


def _activation_grad(x: torch.Tensor, activation: str) -> torch.Tensor:
    """``d act(x) / dx`` for the activations of :func:`gate_activation`, in ``x``'s dtype."""
    if activation == "identity":
        return torch.ones_like(x)
    s = torch.sigmoid(x)
    if activation == "sigmoid":
        return s * (1 - s)
    if activation == "ns_sigmoid":
        return 0.5 * s * (1 - s)
    return s * (1 + x * (1 - s))  # silu


def _compact(t: torch.Tensor) -> torch.Tensor:
    """``t`` to keep for backward: itself, or a compact copy when it is a half-precision strided
    view (the columns of a larger buffer) that would pin that buffer. The gate logits are a slice of the fused ``[Q|K|V|G]``
    projection; in float32 autograd keeps that buffer anyway (QK-norm and SDPA save views of
    it), while under bf16 autocast the upcasting norm and attention keep float32 copies
    instead, so pinning it would cost the whole buffer for the gate's slice."""
    if t.dtype in (torch.float16, torch.bfloat16) and not t.is_contiguous():
        return t.contiguous()  # a slice of the last axis of a larger buffer
    return t


class _MultiplicativeGate(torch.autograd.Function):
    """``(y * act(logits), act(logits))`` saving only ``y`` and ``logits`` for backward.

    The scores (second output) are returned for taps and statistics and carry no gradient.
    Gradients: ``dy = g * act(logits)``; ``dlogits = sum_to(g * y) * act'(logits)``, formed in at
    least float32 and cast to each input's dtype."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        y: torch.Tensor,
        logits: torch.Tensor,
        activation: str,
        fp32: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        scores = gate_activation(logits, activation, fp32)
        ctx.save_for_backward(y, _compact(logits))
        ctx.options = (activation, fp32)
        ctx.mark_non_differentiable(scores)
        return y * scores, scores

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor, _grad_scores: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None]:
        y, logits = ctx.saved_tensors
        activation, fp32 = ctx.options
        grad_y = grad_logits = None
        if ctx.needs_input_grad[0]:
            scores = gate_activation(logits, activation, fp32)
            grad_y = (grad * scores).to(y.dtype).sum_to_size(y.shape)
        if ctx.needs_input_grad[1]:
            x = upcast(logits) if fp32 else logits
            dscores = (upcast(grad) * upcast(y)).sum_to_size(logits.shape)
            grad_logits = (dscores * _activation_grad(x, activation)).to(logits.dtype)
        return grad_y, grad_logits, None, None


def apply_gate(
    y: torch.Tensor, logits: torch.Tensor, gate: GateConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gate ``y`` with ``act(logits)`` as ``gate`` says; returns ``(gated, scores)``.

    Args:
        y: the gated tensor, ``(batch, seq, heads, head_dim)`` or ``(batch, seq, hidden)``.
        logits: broadcastable to ``y``: ``(batch, seq, heads, head_dim | 1)`` or
            ``(batch, seq, hidden)``; an input-independent gate passes ``(heads, head_dim | 1)``.
        gate: the gate's config (mode, activation, head sharing, fp32).

    Head-shared gates average the per-head *scores* over the head axis (paper section 4.1:
    (n, q, d_k) -> (n, d_k)), so every head sees the same gate.

    The scores of a multiplicative gate that is not head-shared carry no gradient (its backward
    recomputes them, :class:`_MultiplicativeGate`); use them for statistics, not in a loss.
    """
    if gate.mode == "multiplicative" and not gate.head_shared:
        if gate.activation not in ("sigmoid", "silu", "ns_sigmoid", "identity"):
            gate_activation(logits, gate.activation)  # raises the ValueError
        return _MultiplicativeGate.apply(y, logits, gate.activation, gate.fp32)
    scores = gate_activation(logits, gate.activation, gate.fp32)
    if gate.head_shared:
        scores = scores.mean(dim=-2, keepdim=True)
    if gate.mode == "multiplicative":
        return y * scores, scores
    return y + scores, scores


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor | None, eps: float, zero_centered: bool = False
) -> torch.Tensor:
    """RMS normalisation over the last axis, computed in float32.

    ``zero_centered`` scales by ``(1 + weight)`` (Qwen3-Next) instead of ``weight`` (Qwen3).
    """
    dtype = x.dtype
    x32 = upcast(x)
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    if weight is None:
        return x32.to(dtype)
    if zero_centered:
        return (x32 * (1.0 + upcast(weight))).to(dtype)
    return weight * x32.to(dtype)


def silu_transform(y: torch.Tensor) -> torch.Tensor:
    """The paper's parameter-free control: ``SiLU(Y)`` on the SDPA output (Table 3)."""
    return F.silu(y)
