"""Pure ops against plain float64 references on random inputs."""

import math

import pytest
import torch

from gated_attention import GateConfig
from gated_attention.ops import (
    apply_gate,
    apply_rope,
    attention,
    attention_probabilities,
    causal_mask,
    gate_activation,
    rms_norm,
    rope_cos_sin,
    rope_parameters,
)


def test_gate_activations_against_formulas():
    x = torch.randn(5, 7, dtype=torch.float64)
    sig = 1 / (1 + torch.exp(-x))
    torch.testing.assert_close(gate_activation(x, "sigmoid"), sig)
    torch.testing.assert_close(gate_activation(x, "silu"), x * sig)
    torch.testing.assert_close(gate_activation(x, "ns_sigmoid"), 0.5 + 0.5 * sig)
    torch.testing.assert_close(gate_activation(x, "identity"), x)
    bf = gate_activation(x.bfloat16(), "sigmoid", fp32=True)
    assert bf.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="activation"):
        gate_activation(x, "tanh")


def test_apply_gate_modes_headwise_and_head_shared():
    y = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    logits = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    sig = torch.sigmoid(logits)
    out, s = apply_gate(y, logits, GateConfig(position="sdpa"))
    torch.testing.assert_close(out, y * sig)
    out, _ = apply_gate(y, logits, GateConfig(position="sdpa", mode="additive", activation="silu"))
    torch.testing.assert_close(out, y + logits * sig)
    head_logits = logits[..., :1]
    out, s = apply_gate(y, head_logits, GateConfig(position="sdpa", granularity="headwise"))
    torch.testing.assert_close(out, y * torch.sigmoid(head_logits))
    out, s = apply_gate(y, logits, GateConfig(position="sdpa", head_shared=True))
    shared = sig.mean(dim=2, keepdim=True)
    torch.testing.assert_close(out, y * shared)
    assert s.shape == (2, 3, 1, 5)


@pytest.mark.parametrize("zero_centered", [False, True])
def test_rms_norm(zero_centered):
    x = torch.randn(3, 7, 10, dtype=torch.float64)
    w = torch.randn(10, dtype=torch.float64)
    ref = x / torch.sqrt((x**2).mean(-1, keepdim=True) + 1e-6)
    ref = ref * (1 + w) if zero_centered else ref * w
    torch.testing.assert_close(rms_norm(x, w, 1e-6, zero_centered), ref)


@pytest.mark.parametrize("rot", [8, 4])
def test_rope_against_pairwise_rotation(rot):
    D = 8
    x = torch.randn(2, 9, 3, D, dtype=torch.float64)
    pos = torch.arange(9)[None].expand(2, 9)
    inv, factor = rope_parameters(rot, 10000.0)
    cos, sin = rope_cos_sin(pos, inv, factor, torch.float64)
    out = apply_rope(x, cos, sin)
    ref = x.clone()
    half = rot // 2
    for i in range(half):
        ang = torch.arange(9).double() * 10000.0 ** (-2 * i / rot)
        c, s = torch.cos(ang)[None, :, None], torch.sin(ang)[None, :, None]
        a, b = x[..., i], x[..., i + half]
        ref[..., i], ref[..., i + half] = a * c - b * s, b * c + a * s
    torch.testing.assert_close(out, ref)
    # rotation preserves the norm of the rotated part; the rest is untouched
    torch.testing.assert_close(out[..., rot:], x[..., rot:])


def _reference_attention(q, k, v, offset):
    B, T, H, D = q.shape
    K = k.shape[2]
    out = torch.zeros_like(q)
    for b in range(B):
        for h in range(H):
            j = h // (H // K)
            for t in range(T):
                scores = torch.stack([q[b, t, h] @ k[b, s, j] for s in range(offset + t + 1)])
                p = torch.softmax(scores / math.sqrt(D), 0)
                out[b, t, h] = (p[:, None] * v[b, : offset + t + 1, j]).sum(0)
    return out


@pytest.mark.parametrize("backend", ["sdpa", "eager", "auto"])
@pytest.mark.parametrize("T, S", [(7, 7), (3, 10), (1, 6)])
def test_attention_against_loop_reference(backend, T, S):
    q = torch.randn(2, T, 4, 6, dtype=torch.float64)
    k = torch.randn(2, S, 2, 6, dtype=torch.float64)
    v = torch.randn(2, S, 2, 6, dtype=torch.float64)
    out = attention(q, k, v, backend=backend)
    torch.testing.assert_close(out, _reference_attention(q, k, v, S - T))


def test_attention_probabilities_rows_and_gradients():
    q = torch.randn(2, 7, 4, 6, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, 7, 2, 6, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, 7, 2, 6, dtype=torch.float64, requires_grad=True)
    p = attention_probabilities(q, k)
    torch.testing.assert_close(p.sum(-1), torch.ones(2, 4, 7, dtype=torch.float64))
    assert (p.triu(1) == 0).all()
    gq, gk, gv = torch.autograd.grad(attention(q, k, v, backend="sdpa").sum(), (q, k, v))
    eq, ek, ev = torch.autograd.grad(attention(q, k, v, backend="eager").sum(), (q, k, v))
    torch.testing.assert_close((gq, gk, gv), (eq, ek, ev))


def test_causal_mask_and_errors():
    assert causal_mask(5, 5) is None
    assert causal_mask(1, 9) is None
    m = causal_mask(2, 4)
    assert m.shape == (1, 1, 2, 4)
    assert m[0, 0].tolist() == [[True, True, True, False], [True, True, True, True]]
    pad = torch.tensor([[0, 1, 1, 1]])
    m = causal_mask(4, 4, pad)
    assert not m[0, 0, 1, 0] and m[0, 0, 1, 1]
    assert m[0, 0, 0].all()  # an all-padding row attends everywhere to stay finite
    with pytest.raises(ValueError, match="attention_mask"):
        causal_mask(2, 4, torch.ones(1, 3))
    q = torch.randn(1, 3, 3, 4)
    with pytest.raises(ValueError, match="multiple"):
        attention(q, torch.randn(1, 3, 2, 4), torch.randn(1, 3, 2, 4))
    with pytest.raises(ValueError, match="backend"):
        attention(q, q, q, backend="flash9")
