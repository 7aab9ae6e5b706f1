"""Every attention normaliser on every backend that claims it, against the float64 reference.

Random inputs and random per-head parameters, odd sizes (T = 63, head_dim 10), grouped-query
heads (g = 3), cached queries (bottom-right causal mask), padding masks and single-query
decoding; forward and gradients (inputs and parameters) to 1e-10 in float64.
"""

import math

import pytest
import torch

from gated_attention import ModelConfig
from gated_attention.config import NormalizerConfig
from gated_attention.ops.attention import (
    attention,
    attention_backends,
    attention_probabilities,
    attention_scores,
    backend_supports,
    causal_mask,
    eager_attention,
    select_backend,
)
from gated_attention.ops.normalizers import KINDS, Normalizer, as_normalizer
from gated_attention.ops.reference import REFERENCE_NORMALIZERS, reference_attention

KIND_NAMES = list(KINDS)
SIZES = [(63, 63), (5, 70), (1, 9)]  # full causal, a chunk after 65 cached tokens, decoding
OPTIONS = {"sigmoid": {"length": 48}}
TOL = {"rtol": 1e-10, "atol": 1e-10}


def make_normalizer(kind, H=6, K=2, D=10, seed=3, dtype=torch.float64):
    """A normaliser of ``kind`` with random parameters (away from their zero init)."""
    cfg = ModelConfig(
        num_attention_heads=H,
        num_key_value_heads=K,
        head_dim=D,
        normalizer={"kind": kind, **OPTIONS.get(kind, {})},
    )
    gen = torch.Generator().manual_seed(seed)
    params = {
        name: torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype).requires_grad_()
        for name, shape in cfg.normalizer.parameter_shapes(cfg).items()
    }
    kind_obj = KINDS[kind]
    return Normalizer(kind_obj, kind_obj.resolve(cfg.normalizer.options, cfg), params)


def inputs(T, S, H=6, K=2, D=10, B=2, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, D, generator=gen, dtype=torch.float64)
    k = torch.randn(B, S, K, D, generator=gen, dtype=torch.float64)
    v = torch.randn(B, S, K, D, generator=gen, dtype=torch.float64)
    return [t.to(dtype).requires_grad_() for t in (q, k, v)]


def reference(ins, norm, mask=None):
    """The float64 reference on detached copies; returns (out, inputs, params)."""
    ref_ins = [t.detach().double().clone().requires_grad_() for t in ins]
    params = {n: p.detach().double().clone().requires_grad_() for n, p in norm.params.items()}
    out = reference_attention(
        *ref_ins, mask=mask, kind=norm.name, params=params, options=norm.options
    )
    return out, ref_ins, params


def grads(out, leaves, seed=1):
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out.dtype)
    return torch.autograd.grad(out, leaves, g)


def claiming(kind):
    return [
        b for b in attention_backends() if b == "auto" or backend_supports(b, make_normalizer(kind))
    ]


CASES = [(kind, b) for kind in KIND_NAMES for b in claiming(kind)]


def test_every_kind_has_a_reference_and_a_config_name():
    assert set(KINDS) == set(REFERENCE_NORMALIZERS)
    assert NormalizerConfig.kinds() == KIND_NAMES


@pytest.mark.parametrize("kind, backend", CASES)
@pytest.mark.parametrize("T, S", SIZES)
@pytest.mark.parametrize("H, K", [(6, 2), (3, 3)])
def test_float64_forward_and_gradients_match_reference(kind, backend, T, S, H, K):
    ins = inputs(T, S, H, K)
    norm = make_normalizer(kind, H, K)
    out = attention(*ins, backend=backend, normalizer=norm)
    ref, ref_ins, ref_params = reference(ins, norm)
    torch.testing.assert_close(out, ref, **TOL)
    leaves = [*ins, *norm.params.values()]
    ref_leaves = [*ref_ins, *ref_params.values()]
    for a, b in zip(grads(out, leaves), grads(ref, ref_leaves), strict=True):
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("kind, backend", CASES)
def test_padding_mask_with_cache(kind, backend):
    # Left padding: row 0 has two pad tokens; 4 new queries after 9 cached tokens.
    T, S = 4, 13
    padding = torch.ones(2, S, dtype=torch.bool)
    padding[0, :2] = False
    mask = causal_mask(T, S, padding)
    ins = inputs(T, S)
    norm = make_normalizer(kind)
    out = attention(*ins, mask=mask, backend=backend, normalizer=norm)
    ref, ref_ins, ref_params = reference(ins, norm, mask)
    torch.testing.assert_close(out, ref, **TOL)
    leaves = [*ins, *norm.params.values()]
    for a, b in zip(grads(out, leaves), grads(ref, [*ref_ins, *ref_params.values()]), strict=True):
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_weights_on_real_keys_match_the_reference_rows(kind):
    """``attention_probabilities`` returns the weights on the real keys; ``eager_attention``'s
    output is those weights times the values plus the virtual columns' share."""
    q, k, v = inputs(7, 7, H=3, K=3, D=10)
    norm = make_normalizer(kind, H=3, K=3)
    probs = attention_probabilities(q, k, normalizer=norm)
    weights, out = eager_attention(q, k, v, normalizer=norm)
    torch.testing.assert_close(probs, weights, rtol=0, atol=0)
    torch.testing.assert_close(out, attention(q, k, v, backend="eager", normalizer=norm))
    params = {n: p.detach() for n, p in norm.params.items()}
    allowed = torch.ones(7, 7, dtype=torch.bool).tril()
    for h in range(3):
        logits = q[0, :, h].detach() @ k[0, :, h].detach().T / math.sqrt(10)
        want, _ = REFERENCE_NORMALIZERS[kind](
            logits, allowed, q[0, :, h].detach(), h, h, 1 / math.sqrt(10), params, norm.options
        )
        torch.testing.assert_close(probs[0, h], want, **TOL)
    sums = probs.sum(-1)
    if kind == "softmax":
        torch.testing.assert_close(sums, torch.ones_like(sums))
    elif KINDS[kind].form == "columns":
        assert bool((sums < 1).all()), "the virtual columns always take some weight"
    elif KINDS[kind].null_attention:
        assert bool((sums <= 1).all()) and bool((sums < 1).any())


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_float32_close_to_reference(kind):
    ins = inputs(63, 63, dtype=torch.float32)
    norm = make_normalizer(kind, dtype=torch.float32)
    out = attention(*ins, normalizer=norm)
    ref, _, _ = reference(ins, norm)
    assert out.dtype == torch.float32
    assert float((out.detach().double() - ref).abs().max() / ref.abs().max()) < 1e-5


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_bf16_autocast_runs_close_to_reference(kind):
    """Under bf16 autocast (q, k float32 from the QK-norm, v bf16) each kind stays at bf16-level
    error on its ``auto`` backend."""
    q, k, v = inputs(63, 63, dtype=torch.float32)
    v = v.detach().bfloat16().requires_grad_()
    norm = make_normalizer(kind, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attention(q, k, v, normalizer=norm)
    ref, _, _ = reference([q, k, v], norm)
    assert out.dtype == torch.bfloat16
    assert float((out.detach().double() - ref).abs().max() / ref.abs().max()) < 3e-2


def test_auto_routes_on_the_normalizer_form():
    q, k, _ = inputs(63, 63, dtype=torch.bfloat16)
    for kind in KIND_NAMES:
        norm = make_normalizer(kind)
        chosen = select_backend(q, k, None, norm)
        if KINDS[kind].form == "weights":
            assert chosen == "eager", kind
        else:
            assert chosen == "sdpa_fp32", kind  # the softmax rule: bf16 CPU, <= 512 keys
    sigmoid = make_normalizer("sigmoid")
    assert backend_supports("sdpa", "softmax1") and not backend_supports("sdpa", sigmoid)
    assert backend_supports("matmul", sigmoid) and backend_supports("matmul", "softmax1")


def test_backend_that_cannot_run_a_kind_says_which_can():
    ins = inputs(5, 5)
    with pytest.raises(ValueError, match=r"'sdpa' cannot run the 'sigmoid' normalizer.*eager"):
        attention(*ins, backend="sdpa", normalizer=make_normalizer("sigmoid"))


def test_softmax_default_is_untouched():
    """No normaliser, ``"softmax"`` and a softmax ``Normalizer`` are the same call, bit for bit."""
    ins = inputs(63, 63, dtype=torch.float32)
    for backend in ("sdpa", "sdpa_fp32", "matmul", "eager"):
        base = attention(*ins, backend=backend)
        assert torch.equal(base, attention(*ins, backend=backend, normalizer="softmax"))
    assert as_normalizer("softmax") is None


def test_named_normalizer_needs_its_options():
    with pytest.raises(ValueError, match="needs options"):
        as_normalizer("sigmoid")
    with pytest.raises(ValueError, match="unknown normalizer 'softmux'"):
        as_normalizer("softmux")


# ---------------------------------------------------------------------- config
def test_config_accepts_names_dicts_and_flat_dicts():
    assert ModelConfig(normalizer="sink").normalizer == NormalizerConfig("sink")
    flat = ModelConfig(normalizer={"kind": "sigmoid", "length": 64}).normalizer
    nested = NormalizerConfig.coerce({"kind": "sigmoid", "options": {"length": 64}})
    assert flat == nested and flat.options == {"length": 64}
    assert NormalizerConfig("sigmoid").options == {"length": None}  # defaults filled in


def test_config_round_trips_through_json():
    cfg = ModelConfig(normalizer={"kind": "sigmoid", "length": 64}, gate="sdpa-headwise")
    back = ModelConfig.from_json(cfg.to_json())
    assert back == cfg and back.to_dict()["normalizer"] == {
        "kind": "sigmoid",
        "options": {"length": 64},
    }


@pytest.mark.parametrize(
    "value, match",
    [
        ("softmux", r"NormalizerConfig.kind='softmux' is not valid.*Did you mean 'softmax'"),
        ({"kind": "sigmoid", "length": 0}, r"normalizer.options.length must be a positive"),
        ({"kind": "sink", "length": 4}, r"normalizer.options.length is not an option of kind"),
        ({"kind": "softmax", "eps": 1.0}, r"options: none"),
        (3, "normalizer must be a NormalizerConfig"),
    ],
)
def test_config_refuses_bad_values_by_name(value, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig(normalizer=value)


def test_parameter_counts_include_the_normalizer():
    base = ModelConfig.from_preset("tiny")
    for kind, per_layer in (("sink", 4), ("kv-bias", 2 * 2 * 8), ("softmax1", 0)):
        cfg = base.replace(normalizer=kind)
        assert cfg.num_parameters() - base.num_parameters() == per_layer * 2
        assert cfg.gate_parameters() == 0


def test_sink_is_a_headwise_gate_on_softmax_attention():
    """``docs/paper.md`` section 8: a learnable sink ``s_h`` equals softmax attention times
    ``sigmoid(LSE - s_h)``, ``LSE`` the row's log-sum-exp; softmax + 1 is ``s_h = 0``."""
    q, k, v = (t.detach() for t in inputs(17, 17))
    norm = make_normalizer("sink")
    sinks = norm.params["sinks"].detach()
    scores = torch.einsum("bthd,bshd->bhts", q, k.repeat_interleave(3, dim=2)) / math.sqrt(10)
    lse = scores.masked_fill(~torch.ones(17, 17, dtype=torch.bool).tril(), float("-inf"))
    lse = lse.logsumexp(-1)  # (B, H, T)
    gate = torch.sigmoid(lse - sinks[None, :, None]).transpose(1, 2)[..., None]  # (B, T, H, 1)
    softmax = attention(q, k, v)
    torch.testing.assert_close(attention(q, k, v, normalizer=norm), softmax * gate, **TOL)
    plus_one = torch.sigmoid(lse).transpose(1, 2)[..., None]
    torch.testing.assert_close(attention(q, k, v, normalizer="softmax1"), softmax * plus_one, **TOL)


# ---------------------------------------------------------------------- softpick
def test_softpick_rectifies_and_may_attend_to_nothing():
    """Masked and negative logits get exactly 0, rows sum to at most 1, and a row of negative
    logits attends to nothing; the option eps is validated by name."""
    q, k, _ = (t.detach() for t in inputs(9, 9, H=3, K=3))
    weights = attention_probabilities(q, k, normalizer="softpick")
    logits = attention_scores(q, k)
    assert bool((weights[logits <= 0] == 0).all()) and bool((weights[logits > 0] > 0).all())
    assert bool((weights.sum(-1) <= 1).all())
    x = torch.ones(1, 1, 1, 4, dtype=torch.float64)
    assert bool((attention_probabilities(x, -x, normalizer="softpick") == 0).all())
    with pytest.raises(ValueError, match=r"normalizer.options.eps must be a number > 0"):
        ModelConfig(normalizer={"kind": "softpick", "eps": -1})
    assert NormalizerConfig("softpick").options == {"eps": 1e-8}
