"""The multiplicative gate's own backward (recomputes the activation from the logits) against
float64 references: values, gradients, what it saves, and bf16 against autograd's path."""

import pytest
import torch

from gated_attention import GateConfig
from gated_attention.ops.gating import apply_gate


def _act(x: torch.Tensor, activation: str) -> torch.Tensor:
    """Plain float64 formulas of the gate activations (paper Eq. 5 and Table 4)."""
    sig = 1 / (1 + torch.exp(-x))
    return {"sigmoid": sig, "silu": x * sig, "ns_sigmoid": 0.5 + 0.5 * sig, "identity": x}[
        activation
    ]


LOGIT_SHAPES = {
    "elementwise": (2, 63, 4, 8),  # G1 elementwise: (B, T, H, D)
    "headwise": (2, 63, 4, 1),  # one score per head, broadcast over D
    "input-independent": (4, 8),  # a learned (H, D) logit, broadcast over B and T
}


@pytest.mark.parametrize("activation", ["sigmoid", "silu", "ns_sigmoid", "identity"])
@pytest.mark.parametrize("shape", list(LOGIT_SHAPES))
def test_gate_values_and_gradients_against_float64(activation, shape):
    gen = torch.Generator().manual_seed(0)
    y = torch.randn(2, 63, 4, 8, generator=gen, dtype=torch.float64).requires_grad_()
    logits = torch.randn(LOGIT_SHAPES[shape], generator=gen, dtype=torch.float64)
    logits.requires_grad_()
    gate = GateConfig(position="sdpa", activation=activation)
    out, scores = apply_gate(y, logits, gate)
    ref = y * _act(logits, activation)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(scores, _act(logits, activation), rtol=1e-12, atol=1e-12)
    assert not scores.requires_grad  # statistics only
    grad_out = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    got = torch.autograd.grad(out, (y, logits), grad_out)
    want = torch.autograd.grad(ref, (y, logits), grad_out)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)
    # finite differences on a small copy of the same layout
    small_shape = {"elementwise": (1, 5, 2, 3), "headwise": (1, 5, 2, 1)}.get(shape, (2, 3))
    small = (
        torch.randn(1, 5, 2, 3, generator=gen, dtype=torch.float64).requires_grad_(),
        torch.randn(small_shape, generator=gen, dtype=torch.float64).requires_grad_(),
    )
    assert torch.autograd.gradcheck(lambda a, b: apply_gate(a, b, gate)[0], small)


def _saved_bytes(fn) -> tuple[object, list[torch.Tensor]]:
    saved: list[torch.Tensor] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, saved


def test_gate_saves_only_its_inputs():
    y = torch.randn(2, 63, 4, 8, dtype=torch.bfloat16, requires_grad=True)
    logits = torch.randn(2, 63, 4, 8, dtype=torch.bfloat16, requires_grad=True)
    _, saved = _saved_bytes(lambda: apply_gate(y, logits, GateConfig(position="sdpa")))
    assert len(saved) == 2 and saved[0] is y and saved[1] is logits
    # autograd's composition keeps the float32 sigmoid and the bf16 scores on top
    from gated_attention.ops.gating import gate_activation

    _, plain = _saved_bytes(lambda: y * gate_activation(logits, "sigmoid"))
    assert sum(t.numel() * t.element_size() for t in plain) > sum(
        t.numel() * t.element_size() for t in saved
    )


def test_bf16_logits_slice_of_the_fused_projection_is_kept_compact():
    qkvg = torch.randn(2, 63, 4 * 8 * 3, dtype=torch.bfloat16, requires_grad=True)
    y = torch.randn(2, 63, 4, 8, dtype=torch.bfloat16, requires_grad=True)
    logits = qkvg[..., -32:].view(2, 63, 4, 8)  # the gate's columns, as nn/attention.py
    (out, _), saved = _saved_bytes(lambda: apply_gate(y, logits, GateConfig(position="sdpa")))
    kept = saved[1]
    assert kept.untyped_storage().nbytes() == logits.numel() * 2  # not the whole buffer
    assert torch.equal(kept, logits)
    out.sum().backward()
    assert qkvg.grad[..., :-32].abs().sum() == 0 and qkvg.grad[..., -32:].abs().sum() > 0
    # in float32 the view is kept as is (the layer keeps the buffer for backward anyway)
    f32 = qkvg.detach().float().requires_grad_()
    _, saved = _saved_bytes(
        lambda: apply_gate(y.float(), f32[..., -32:].view(2, 63, 4, 8), GateConfig(position="sdpa"))
    )
    assert saved[1].untyped_storage().data_ptr() == f32.untyped_storage().data_ptr()


@pytest.mark.parametrize("shape", ["elementwise", "headwise"])
def test_bf16_gate_matches_autograd_path(shape):
    gen = torch.Generator().manual_seed(1)
    y64 = torch.randn(2, 63, 4, 8, generator=gen, dtype=torch.float64)
    l64 = torch.randn(LOGIT_SHAPES[shape], generator=gen, dtype=torch.float64)
    g64 = torch.randn(2, 63, 4, 8, generator=gen, dtype=torch.float64)
    y, logits = (t.bfloat16().requires_grad_() for t in (y64, l64))
    out, _ = apply_gate(y, logits, GateConfig(position="sdpa"))
    got = torch.autograd.grad(out, (y, logits), g64.bfloat16())
    y2, l2 = (t.detach().clone().requires_grad_() for t in (y, logits))
    ref = y2 * torch.sigmoid(l2.float()).bfloat16()  # autograd's path, as before
    want = torch.autograd.grad(ref, (y2, l2), g64.bfloat16())
    assert torch.equal(out, ref)
    assert torch.equal(got[0], want[0])
    # the logit gradient is formed in float32 here (bf16 products in autograd's path)
    y3, l3 = (t.detach().double().requires_grad_() for t in (y, logits))
    exact = torch.autograd.grad(y3 * torch.sigmoid(l3), (y3, l3), g64.bfloat16().double())[1]
    err_ours = float((got[1].double() - exact).abs().max())
    err_autograd = float((want[1].double() - exact).abs().max())
    assert err_ours <= err_autograd + 1e-3
