"""Every gate variant's attention layer against the float64 reference, forward and backward."""

import pytest
import torch

from gated_attention import GateConfig
from gated_attention.nn import GatedAttention
from gated_attention.ops.reference import attention_layer_weights, reference_attention_layer
from gated_attention.ops.rope import rope_cos_sin, rope_parameters
from tests.conftest import small_cfg

T = 7


def _randomise(module: GatedAttention) -> None:
    """Move every parameter away from its init so norms, biases and gate params are exercised."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.5 + (0.3 if p.dim() == 1 else 0.0))


def _rope_tables(cfg, batch, seq, dtype):
    inv_freq, factor = rope_parameters(cfg.rotary_dim, cfg.rope_theta)
    pos = torch.arange(seq)[None].expand(batch, seq)
    return rope_cos_sin(pos, inv_freq, factor, dtype)


CASES = [(name, {}) for name in GateConfig.names()] + [
    ("sdpa-elementwise", {"partial_rotary_factor": 0.5, "head_dim": 8, "qk_norm": "zero_centered"}),
    ("sdpa-headwise", {"attention_bias": True, "attention_out_bias": True}),
    ("value-elementwise", {"qk_norm": "none"}),
    ("key-elementwise", {"num_key_value_heads": 4}),
    ("sdpa-rmsnorm", {"norm_type": "zero_centered"}),
    (
        "query-headwise",
        {"gate": GateConfig(position="query", granularity="headwise")},
    ),
    ("key-headwise", {"gate": GateConfig(position="key", granularity="headwise")}),
    (
        "dense-input-independent",
        {"gate": GateConfig(position="dense", input_dependent=False)},
    ),
    (
        "value-input-independent-headwise",
        {"gate": GateConfig(position="value", granularity="headwise", input_dependent=False)},
    ),
]


@pytest.mark.parametrize(
    "name, overrides", CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)]
)
def test_attention_matches_float64_reference(name, overrides):
    overrides = dict(overrides)
    gate = overrides.pop("gate", name if name in GateConfig.names() else None)
    cfg = small_cfg(gate=gate, **overrides)
    module = GatedAttention(cfg).double()
    _randomise(module)
    x = torch.randn(2, T, cfg.hidden_size, dtype=torch.float64, requires_grad=True)
    cos, sin = _rope_tables(cfg, 2, T, torch.float64)
    out = module(x, cos, sin)

    weights = {
        k: (v.clone().requires_grad_() if v is not None else None)
        for k, v in attention_layer_weights(module).items()
    }
    x_ref = x.detach().clone().requires_grad_()
    ref = reference_attention_layer(x_ref, weights, cfg)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)

    grad = torch.randn_like(out)
    out.backward(grad)
    ref.backward(grad)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-9, atol=1e-10)
    sizes = module.split_sizes
    packed = [weights["wq"], weights["wk"], weights["wv"], weights["wg"]]
    fused_grad = torch.cat([w.grad for w, n in zip(packed, sizes) if n], dim=0)
    torch.testing.assert_close(module.qkv_proj.weight.grad, fused_grad, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(module.o_proj.weight.grad, weights["wo"].grad, rtol=1e-9, atol=1e-10)
    for attr, key in (("gate_logits", "gate_logits"),):
        if getattr(module, attr) is not None:
            torch.testing.assert_close(getattr(module, attr).grad, weights[key].grad)
    if module.out_norm is not None:
        torch.testing.assert_close(module.out_norm.weight.grad, weights["out_norm"].grad)
    if module.q_norm is not None:
        torch.testing.assert_close(module.q_norm.weight.grad, weights["q_norm"].grad)


def test_fp32_and_bf16_run_close_to_float64():
    cfg = small_cfg(gate="sdpa-elementwise")
    module = GatedAttention(cfg)
    _randomise(module)
    x = torch.randn(2, T, cfg.hidden_size)
    ref = reference_attention_layer(x, attention_layer_weights(module), cfg)
    cos, sin = _rope_tables(cfg, 2, T, torch.float32)
    torch.testing.assert_close(module(x, cos, sin).double(), ref, rtol=1e-4, atol=1e-4)
    bf = module.to(torch.bfloat16)
    cos, sin = _rope_tables(cfg, 2, T, torch.bfloat16)
    out = bf(x.bfloat16(), cos, sin).double()
    assert (out - ref).abs().max() < 0.1 * ref.abs().max()


@pytest.mark.parametrize("gate", ["none", "sdpa-elementwise", "value-elementwise", "sdpa-headwise"])
def test_gqa_equals_mha_with_repeated_kv_weights(gate):
    """GQA with K KV heads equals MHA whose KV (and per-KV gate) weights repeat per group."""
    gqa_cfg = small_cfg(gate=gate, num_key_value_heads=2)
    mha_cfg = small_cfg(gate=gate, num_key_value_heads=4)
    gqa, mha = GatedAttention(gqa_cfg), GatedAttention(mha_cfg)
    _randomise(gqa)
    D, g = gqa_cfg.head_dim, 2
    w = attention_layer_weights(gqa)

    def repeat(t, per):
        return t.view(2, per, -1).repeat_interleave(g, dim=0).reshape(-1, t.shape[-1])

    with torch.no_grad():
        parts = [w["wq"], repeat(w["wk"], D), repeat(w["wv"], D)]
        if w["wg"] is not None:
            per = w["wg"].shape[0] // (2 if gate.startswith("value") else 4)
            parts.append(repeat(w["wg"], per) if gate.startswith("value") else w["wg"])
        mha.qkv_proj.weight.copy_(torch.cat(parts).float())
        mha.o_proj.weight.copy_(gqa.o_proj.weight)
        mha.q_norm.weight.copy_(gqa.q_norm.weight)
        mha.k_norm.weight.copy_(gqa.k_norm.weight)
    x = torch.randn(3, T, gqa_cfg.hidden_size)
    cos, sin = _rope_tables(gqa_cfg, 3, T, torch.float32)
    torch.testing.assert_close(gqa(x, cos, sin), mha(x, cos, sin), rtol=1e-5, atol=1e-6)


def test_backends_agree():
    cfg = small_cfg(gate="sdpa-elementwise")
    module = GatedAttention(cfg).double()
    _randomise(module)
    x = torch.randn(2, T, cfg.hidden_size, dtype=torch.float64)
    cos, sin = _rope_tables(cfg, 2, T, torch.float64)
    outs = {}
    for backend in ("sdpa", "eager"):
        module.attn_backend = backend
        outs[backend] = module(x, cos, sin)
    torch.testing.assert_close(outs["sdpa"], outs["eager"], rtol=1e-12, atol=1e-12)


def test_hooks_capture_gate_scores_and_outputs():
    cfg = small_cfg(gate="sdpa-headwise")
    module = GatedAttention(cfg)
    seen = {}
    handles = [
        getattr(module, n).register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, o))
        for n in ("hook_gate", "hook_z", "hook_z_gated", "hook_q", "hook_k")
    ]
    x = torch.randn(2, T, cfg.hidden_size)
    cos, sin = _rope_tables(cfg, 2, T, torch.float32)
    module(x, cos, sin)
    for h in handles:
        h.remove()
    assert seen["hook_gate"].shape == (2, T, 4, 1)
    assert ((seen["hook_gate"] > 0) & (seen["hook_gate"] < 1)).all()
    torch.testing.assert_close(seen["hook_z"] * seen["hook_gate"], seen["hook_z_gated"])
    assert seen["hook_q"].shape == (2, T, 4, 6) and seen["hook_k"].shape == (2, T, 2, 6)
