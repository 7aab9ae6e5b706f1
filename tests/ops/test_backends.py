"""Every attention backend against a float64 loop reference, against SDPA, and under compile.

Random inputs with odd sizes (T = 63, head_dim 10), grouped-query heads (g = 3), cached queries
(bottom-right causal mask), padding masks and single-query decoding; forward and gradients.
"""

import pytest
import torch

from gated_attention import GatedLM
from gated_attention.ops.attention import (
    SDPA_FP32_MAX_KEYS_CPU,
    attention,
    attention_backends,
    causal_mask,
    compute_dtype,
    select_backend,
)
from gated_attention.ops.reference import reference_attention as reference
from tests.conftest import small_cfg

FAST = ["sdpa", "sdpa_fp32", "matmul"]
ALL = [*FAST, "eager", "auto"]
SIZES = [(63, 63), (5, 70), (1, 9)]  # full causal, a chunk after 65 cached tokens, decoding


def inputs(T, S, H=6, K=2, D=10, B=2, scale=1.0, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, D, generator=gen, dtype=torch.float64) * scale
    k = torch.randn(B, S, K, D, generator=gen, dtype=torch.float64) * scale
    v = torch.randn(B, S, K, D, generator=gen, dtype=torch.float64)
    return [t.to(dtype).requires_grad_() for t in (q, k, v)]


def rel_err(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max())


def grads(out, ins, seed=1):
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out.dtype)
    return torch.autograd.grad(out, ins, g)


def test_registry_lists_the_backends():
    assert set(ALL) <= set(attention_backends())


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("T, S", SIZES)
@pytest.mark.parametrize("H, K", [(6, 2), (3, 3)])
def test_float64_forward_and_gradients_match_reference(backend, T, S, H, K):
    ins = inputs(T, S, H, K)
    out = attention(*ins, backend=backend)
    ref_ins = [t.detach().clone().requires_grad_() for t in ins]
    ref = reference(*ref_ins)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(grads(out, ins), grads(ref, ref_ins))


@pytest.mark.parametrize("backend", ALL)
def test_padding_mask_with_cache(backend):
    # Left padding: row 0 has two pad tokens; 4 new queries after 9 cached tokens.
    T, S = 4, 13
    padding = torch.ones(2, S, dtype=torch.bool)
    padding[0, :2] = False
    mask = causal_mask(T, S, padding)
    ins = inputs(T, S)
    out = attention(*ins, mask=mask, backend=backend)
    ref_ins = [t.detach().clone().requires_grad_() for t in ins]
    ref = reference(*ref_ins, mask=mask)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(grads(out, ins), grads(ref, ref_ins))


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("T, S", SIZES)
def test_float32_close_to_reference(backend, T, S):
    ins = inputs(T, S, dtype=torch.float32)
    out = attention(*ins, backend=backend)
    ref_ins = [t.detach().double().requires_grad_() for t in ins]
    ref = reference(*ref_ins)
    assert out.dtype == torch.float32
    assert rel_err(out, ref) < 1e-5
    for a, b in zip(grads(out, ins), grads(ref, ref_ins)):
        assert rel_err(a, b) < 1e-5


def _bf16_errors(backend, T, S, scale, autocast):
    """Relative errors (output, dq, dk, dv) of a bf16 run against float64 on the same
    (bf16-rounded) inputs. ``autocast``: q, k in float32 (as the float32 QK-norm hands them
    over) and v in bf16 under bf16 autocast, as in the model's training step."""
    ins = inputs(T, S, scale=scale, dtype=torch.bfloat16)
    if autocast:
        ins = [ins[0].detach().float().requires_grad_(), ins[1].detach().float().requires_grad_()]
        ins.append(inputs(T, S, scale=scale, dtype=torch.bfloat16)[2])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = attention(*ins, backend=backend)
    else:
        out = attention(*ins, backend=backend)
    assert out.dtype == torch.bfloat16
    ref_ins = [t.detach().double().requires_grad_() for t in ins]
    ref = reference(*ref_ins)
    got = [out, *grads(out, ins)]
    want = [ref, *grads(ref, ref_ins)]
    return [rel_err(a, b) for a, b in zip(got, want)]


@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("T, S", SIZES)
def test_bf16_backends_against_float64_and_sdpa(T, S, autocast):
    # Unit-scale logits, as QK-norm gives (|q| = |k| = sqrt(D) at init).
    sdpa = _bf16_errors("sdpa", T, S, 1.0, autocast)
    for backend in ("sdpa_fp32", "auto"):
        errs = _bf16_errors(backend, T, S, 1.0, autocast)
        # float32 SDPA: at least as accurate as bf16 SDPA (up to rounding noise)
        assert max(errs) <= 1.5 * max(sdpa) + 2e-3, (backend, errs, sdpa)
    matmul = _bf16_errors("matmul", T, S, 1.0, autocast)
    # bf16 logits: bf16-level error, within a small factor of SDPA's at these logits
    assert max(matmul) < 3e-2 and max(matmul) <= 4 * max(sdpa), (matmul, sdpa)


def test_matmul_error_grows_with_logits_sdpa_fp32_does_not():
    """Why ``auto`` does not pick ``matmul``: bf16 logits lose precision as they grow."""
    sdpa32 = _bf16_errors("sdpa_fp32", 63, 63, 3.0, False)
    matmul = _bf16_errors("matmul", 63, 63, 3.0, False)
    assert max(sdpa32) < 1e-2
    assert max(matmul) > 2 * max(sdpa32)


def test_select_backend_by_device_dtype_and_length():
    def q(T, dtype=torch.bfloat16):
        return torch.zeros(1, T, 4, 8, dtype=dtype)

    assert select_backend(q(128, torch.float32)) == "sdpa"
    assert select_backend(q(128)) == "sdpa_fp32"
    assert select_backend(q(1), q(200)) == "sdpa"  # decoding
    assert select_backend(q(8), q(SDPA_FP32_MAX_KEYS_CPU)) == "sdpa_fp32"
    assert select_backend(q(8), q(SDPA_FP32_MAX_KEYS_CPU + 1)) == "sdpa"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        # float32 queries from the float32 QK-norm still compute in bf16 under autocast
        assert compute_dtype(q(128, torch.float32)) == torch.bfloat16
        assert select_backend(q(128, torch.float32)) == "sdpa_fp32"
        assert select_backend(q(128, torch.float64)) == "sdpa"
    meta = torch.zeros(1, 128, 4, 8, dtype=torch.bfloat16, device="meta")
    assert select_backend(meta) == "sdpa"  # not CPU


@pytest.mark.parametrize("gate", ["none", "sdpa-elementwise", "sdpa-headwise"])
def test_model_backends_agree_under_autocast(gate):
    model = GatedLM(small_cfg(gate=gate))
    ids = torch.randint(0, 97, (2, 63))
    outs = {}
    for backend in ("sdpa", "sdpa_fp32", "matmul", "eager"):
        for layer in model.layers:
            layer.self_attn.attn_backend = backend
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outs[backend] = model(ids).logits.float()
    ref = outs.pop("eager")
    for backend, out in outs.items():
        assert rel_err(out, ref) < 3e-2, backend


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["auto", "sdpa_fp32", "matmul"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_decoder_block_compiles_without_graph_breaks(backend, dtype):
    """``fullgraph=True`` fails on any graph break; ``aot_eager`` traces forward and backward
    like inductor does, without generating code (seconds, not minutes)."""
    model = GatedLM(small_cfg(gate="sdpa-elementwise"))
    block = model.layers[0]
    block.self_attn.attn_backend = backend
    h = torch.randn(2, 63, 24, requires_grad=True)
    positions = torch.arange(63)[None].expand(2, 63)
    cos, sin = model.rotary(positions, h.dtype)
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    ctx = (
        torch.autocast("cpu", dtype=torch.bfloat16)
        if dtype == "bfloat16"
        else torch.autocast("cpu", enabled=False)
    )
    with ctx:
        out, _ = compiled(h, cos, sin)
        ref, _ = block(h, cos, sin)
    torch.testing.assert_close(out, ref)
    (g1,) = torch.autograd.grad(out.float().sum(), h)
    (g2,) = torch.autograd.grad(ref.float().sum(), h)
    torch.testing.assert_close(g1, g2)
