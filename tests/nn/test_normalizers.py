"""Every attention normaliser in the attention layer and the model: with and without a gate
against the float64 layer reference (forward and backward, 1e-10), and every way of decoding
(growing cache, static cache, windowed cache, generate) against the full forward."""

import pytest
import torch

import gated_attention.nn.attention as attn_module
from gated_attention import GatedLM, KVCache
from gated_attention.generation import generate
from gated_attention.nn import GatedAttention
from gated_attention.nn.static_cache import StaticCache
from gated_attention.ops.attention import attention
from gated_attention.ops.normalizers import KINDS
from gated_attention.ops.reference import attention_layer_weights, reference_attention_layer
from tests.conftest import small_cfg
from tests.nn.test_attention import _rope_tables

T = 9
KIND_NAMES = list(KINDS)
NORMALIZERS = [{"kind": k, "length": 16} if k == "sigmoid" else k for k in KIND_NAMES]
IDS = [str(k) for k in KIND_NAMES]
GATES = [
    "none",
    "sdpa-elementwise",
    "sdpa-headwise",
    "value-elementwise",
    "key-headwise",
    "dense-elementwise",
    "sdpa-input-independent",
    "sdpa-rmsnorm",
]


def _randomise(module: torch.nn.Module, scale: float = 0.5) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * scale + (0.3 * scale / 0.5 if p.dim() == 1 else 0.0))


def _gate(name):
    if name == "key-headwise":
        return {"position": "key", "granularity": "headwise"}
    return name


@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("normalizer", NORMALIZERS, ids=IDS)
@pytest.mark.parametrize("backend", ["auto", "eager"])
def test_layer_matches_float64_reference(normalizer, gate, backend):
    cfg = small_cfg(gate=_gate(gate), normalizer=normalizer)
    module = GatedAttention(cfg).double()
    module.attn_backend = backend
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
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-10, atol=1e-10)
    packed = [weights["wq"], weights["wk"], weights["wv"], weights["wg"]]
    fused = torch.cat([w.grad for w, n in zip(packed, module.split_sizes) if n], dim=0)
    torch.testing.assert_close(module.qkv_proj.weight.grad, fused, rtol=1e-10, atol=1e-10)
    assert len(module.normalizer_params) == len(KINDS[cfg.normalizer.kind].parameter_shapes(cfg))
    for name in module.normalizer_params:
        got = getattr(module, name).grad
        torch.testing.assert_close(got, weights[name].grad, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("normalizer", NORMALIZERS, ids=IDS)
def test_parameters_are_named_counted_and_start_at_zero(normalizer):
    cfg = small_cfg(normalizer=normalizer, gate="sdpa-headwise")
    model = GatedLM(cfg)
    shapes = cfg.normalizer.parameter_shapes(cfg)
    for layer in model.layers:
        attn = layer.self_attn
        assert attn.normalizer_params == tuple(shapes)
        for name, shape in shapes.items():
            p = getattr(attn, name)
            assert tuple(p.shape) == shape and bool((p == 0).all())
    assert sum(p.numel() for p in model.parameters()) == cfg.num_parameters()
    if cfg.normalizer.is_softmax:
        assert model.layers[0].self_attn.normalizer() is None


def _model(normalizer, gate="sdpa-elementwise", dtype=torch.float64) -> GatedLM:
    model = GatedLM(small_cfg(gate=gate, normalizer=normalizer)).to(dtype).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        for layer in model.layers:  # sinks / biases away from zero
            for name in layer.self_attn.normalizer_params:
                getattr(layer.self_attn, name).normal_(0, 0.7)
    return model


@pytest.mark.parametrize("gate", ["none", "sdpa-headwise", "value-elementwise"])
@pytest.mark.parametrize("normalizer", NORMALIZERS, ids=IDS)
def test_cached_decoding_equals_full_forward(normalizer, gate):
    model = _model(normalizer, gate)
    ids = torch.randint(0, 97, (2, 11))
    with torch.no_grad():
        full = model(ids).logits
        for cache in (KVCache(), StaticCache(11)):
            steps = [model(ids[:, :4], past_key_values=cache, use_cache=True).logits]
            for t in range(4, 11):
                steps.append(model(ids[:, t : t + 1], past_key_values=cache, use_cache=True).logits)
            torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-10, atol=1e-10)
        cache = KVCache()  # a multi-token chunk after a prefix
        a = model(ids[:, :5], past_key_values=cache, use_cache=True).logits
        b = model(ids[:, 5:], past_key_values=cache, use_cache=True).logits
        torch.testing.assert_close(torch.cat((a, b), 1), full, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("normalizer", NORMALIZERS, ids=IDS)
def test_left_padding_matches_unpadded_sequences(normalizer):
    model = _model(normalizer)
    ids = torch.randint(1, 97, (1, 6))
    padded = torch.cat((torch.zeros(1, 3, dtype=torch.long), ids), dim=1)
    mask = torch.cat((torch.zeros(1, 3), torch.ones(1, 6)), dim=1)
    with torch.no_grad():
        want = model(ids).logits
        got = model(padded, attention_mask=mask).logits[:, 3:]
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def _sliding_reference(model, ids, window, sinks, monkeypatch):
    """Full forward with an explicit sliding-window + sink mask in every layer (eager)."""
    n = ids.shape[1]
    q, k = torch.arange(n)[:, None], torch.arange(n)[None, :]
    mask = ((k <= q) & ((q - k < window) | (k < sinks)))[None, None]

    def masked(q_, k_, v_, m, causal, scale, backend, normalizer=None):
        return attention(q_, k_, v_, mask, causal, scale, "eager", normalizer)

    with monkeypatch.context() as patch:
        patch.setattr(attn_module, "attention", masked)
        return model(ids).logits


@pytest.mark.parametrize("normalizer", NORMALIZERS, ids=IDS)
def test_windowed_cache_equals_sliding_window_reference(normalizer, monkeypatch):
    model = _model(normalizer, "sdpa-headwise")
    ids = torch.randint(0, 97, (2, 17))
    window, sinks = 5, 2
    with torch.no_grad():
        ref = _sliding_reference(model, ids, window, sinks, monkeypatch)
        for chunk in (1, 4):
            cache = KVCache(window=window, sink_tokens=sinks)
            out = [
                model(ids[:, t : t + chunk], past_key_values=cache, use_cache=True).logits
                for t in range(0, 17, chunk)
            ]
            torch.testing.assert_close(torch.cat(out, 1), ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("normalizer", NORMALIZERS, ids=IDS)
def test_generate_equals_argmax_of_full_forwards(normalizer, monkeypatch):
    import gated_attention.generation as generation

    model = _model(normalizer, dtype=torch.float32)
    ids = torch.randint(0, 97, (2, 5))
    expected = ids
    with torch.no_grad():
        for _ in range(6):
            nxt = model(expected).logits[:, -1].argmax(-1, keepdim=True)
            expected = torch.cat((expected, nxt), dim=1)
    assert torch.equal(model.generate(ids, max_new_tokens=6), expected)
    # the static-shape decoding step (what compile=True compiles), run eagerly
    monkeypatch.setattr(generation, "_compiled_decode_step", lambda: generation.decode_step)
    assert torch.equal(generate(model, ids, 6, compile=True), expected)


@pytest.mark.parametrize("normalizer", NORMALIZERS, ids=IDS)
def test_bf16_training_step_is_finite(normalizer):
    model = _model(normalizer, dtype=torch.float32).train()
    ids = torch.randint(0, 97, (2, 33))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(ids, labels=ids).loss
    loss.backward()
    assert torch.isfinite(loss)
    for name in model.layers[0].self_attn.normalizer_params:
        grad = getattr(model.layers[0].self_attn, name).grad
        assert grad is not None and bool(torch.isfinite(grad).all()) and bool((grad != 0).any())


@pytest.mark.slow
@pytest.mark.parametrize("normalizer", ["sink", {"kind": "sigmoid", "length": 16}])
def test_compiled_training_step_matches_eager(normalizer):
    """A columns kind (virtual columns on SDPA) and a weights kind (eager) under
    ``torch.compile``, as the trainer compiles the model: same loss and gradients."""
    model = _model(normalizer, dtype=torch.float32).train()
    ids = torch.randint(0, 97, (2, 17))
    compiled = torch.compile(model)
    losses, grads = [], []
    for m in (model, compiled):
        loss = m(ids, labels=ids).loss
        loss.backward()
        losses.append(loss.detach())
        grads.append([p.grad.clone() for p in model.parameters()])
        model.zero_grad(set_to_none=True)
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-5)
    for a, b in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
