"""The chunked LM-head loss against the plain float64 loss on random inputs."""

import math

import pytest
import torch
import torch.nn.functional as F

from gated_attention.ops.loss import default_chunk_size, linear_cross_entropy


def _inputs(B=3, T=63, H=17, V=101, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(B, T, H, generator=gen, dtype=dtype).requires_grad_()
    w = torch.randn(V, H, generator=gen, dtype=dtype).requires_grad_()
    t = torch.randint(0, V, (B, T), generator=gen)
    t[0, :5] = -100
    t[-1, T // 2] = -100
    return h, w, t


def _reference(h, w, t, shift=False, z_loss=0.0, num_items=None):
    """The plain loss: full logits, float64, F.cross_entropy."""
    if shift:
        t = torch.cat([t[:, 1:], torch.full_like(t[:, :1], -100)], dim=1)
    logits = (h @ w.T).reshape(-1, w.shape[0])
    t = t.reshape(-1)
    valid = t != -100
    nll = F.cross_entropy(logits, t, ignore_index=-100, reduction="sum")
    lse = torch.logsumexp(logits, dim=-1)
    total = nll + z_loss * lse[valid].square().sum()
    return total / (valid.sum() if num_items is None else num_items)


@pytest.mark.parametrize("shift", [False, True])
@pytest.mark.parametrize("z_loss", [0.0, 1e-2])
@pytest.mark.parametrize("chunk", [1, 10, 64, 1000])
def test_equals_plain_loss_and_gradients_in_float64(shift, z_loss, chunk):
    h, w, t = _inputs()
    ref = _reference(h, w, t, shift, z_loss)
    ref_grads = torch.autograd.grad(ref, (h, w))
    out = linear_cross_entropy(h, w, t, shift=shift, z_loss=z_loss, chunk_size=chunk)
    grads = torch.autograd.grad(out, (h, w))
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    for g, r in zip(grads, ref_grads):
        assert g.dtype == torch.float64
        torch.testing.assert_close(g, r, rtol=1e-6, atol=1e-8)


def test_num_items_divides_the_sum_and_upstream_gradient_scales():
    h, w, t = _inputs(seed=1)
    ref = _reference(h, w, t, num_items=500)
    out = linear_cross_entropy(h, w, t, num_items=500, chunk_size=7)
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-8)
    g_ref = torch.autograd.grad(3.5 * ref, (h, w))
    g_out = torch.autograd.grad(3.5 * out, (h, w))
    for g, r in zip(g_out, g_ref):
        torch.testing.assert_close(g, r, rtol=1e-6, atol=1e-8)


def test_flat_inputs_only_hidden_gradient_and_no_grad():
    h, w, t = _inputs(seed=2)
    flat = linear_cross_entropy(h.reshape(-1, 17), w, t.reshape(-1), chunk_size=33)
    torch.testing.assert_close(flat, _reference(h, w, t))
    w_frozen = w.detach()
    (g,) = torch.autograd.grad(linear_cross_entropy(h, w_frozen, t), (h,))
    (g_ref,) = torch.autograd.grad(_reference(h, w_frozen, t), (h,))
    torch.testing.assert_close(g, g_ref)
    with torch.no_grad():
        torch.testing.assert_close(linear_cross_entropy(h, w, t), _reference(h, w, t))


def test_all_targets_ignored_gives_nan_like_cross_entropy():
    h, w, t = _inputs()
    t = torch.full_like(t, -100)
    assert math.isnan(float(linear_cross_entropy(h, w, t).detach()))
    assert math.isnan(float(F.cross_entropy((h @ w.T).reshape(-1, 101), t.reshape(-1)).detach()))


def test_bf16_autocast_matches_the_plain_loss_on_bf16_logits():
    h, w, t = _inputs(B=4, T=63, H=32, V=257, seed=3, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = F.linear(h, w)  # bf16 under autocast, as the LM head
        ref = F.cross_entropy(logits.float().reshape(-1, 257), t.reshape(-1))
        out = linear_cross_entropy(h, w, t, chunk_size=50)
    assert logits.dtype == torch.bfloat16 and out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    g_ref = torch.autograd.grad(ref, (h, w))
    g_out = torch.autograd.grad(out, (h, w))
    for g, r in zip(g_out, g_ref):
        assert g.dtype == torch.float32
        # the hidden-state gradient rounds like the plain path; the weight gradient is summed
        # over chunks in float32 (each chunk's product rounded to bf16 once)
        torch.testing.assert_close(g, r, rtol=1e-2, atol=1e-2 * float(r.abs().max()))


def test_saves_no_tensor_of_logits_size():
    h, w, t = _inputs(B=2, T=64, H=16, V=500, dtype=torch.float32)
    sizes: list[int] = []

    def pack(x: torch.Tensor) -> torch.Tensor:
        sizes.append(x.numel())
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        loss = linear_cross_entropy(h, w, t, chunk_size=16)
    loss.backward()
    assert max(sizes) == w.numel() < 16 * 500 * 2  # the weight, never (tokens, vocab)
    assert 2 * 64 * 500 not in sizes


def test_bad_shapes_and_chunk_sizes_are_clear_errors():
    h, w, t = _inputs()
    with pytest.raises(ValueError, match="targets"):
        linear_cross_entropy(h, w, t[:, :-1])
    with pytest.raises(ValueError, match="weight"):
        linear_cross_entropy(h, w[:, :-1], t)
    with pytest.raises(ValueError, match="chunk_size"):
        linear_cross_entropy(h, w, t, chunk_size=-1)


def test_default_chunk_size_by_device():
    assert default_chunk_size(8192, "cpu") == 256
    assert default_chunk_size(151669, "cpu") == 128  # never fewer than 128 tokens
    assert default_chunk_size(151669, "cuda") == (1 << 26) // 151669
