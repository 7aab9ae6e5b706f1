"""The causal LM: cache, generation, padding, loss, MoE routing, devices."""

import pytest
import torch
import torch.nn.functional as F

from gated_attention import GatedLM, KVCache, ModelConfig, MoEConfig, count_parameters, lm_loss
from tests.conftest import small_cfg

VARIANTS = [
    "none",
    "sdpa-elementwise",
    "sdpa-headwise",
    "value-elementwise",
    "key-elementwise",
    "query-elementwise",
    "dense-elementwise",
    "sdpa-input-independent",
    "sdpa-rmsnorm",
]


def _model(**overrides) -> GatedLM:
    model = GatedLM(small_cfg(**overrides)).eval()
    with torch.no_grad():  # leave the init so that gates/norms are not trivially uniform
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.mark.parametrize("gate", VARIANTS)
def test_incremental_decoding_equals_full_forward(gate):
    model = _model(gate=gate)
    ids = torch.randint(0, 97, (2, 11))
    full = model(ids).logits
    cache = KVCache()
    prefix = model(ids[:, :4], past_key_values=cache, use_cache=True).logits
    steps = [prefix]
    for t in range(4, 11):
        steps.append(model(ids[:, t : t + 1], past_key_values=cache, use_cache=True).logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)
    assert cache.get_seq_length(0) == 11 and len(cache) == 2
    # a multi-token chunk after a prefix (bottom-right aligned causal mask)
    cache = KVCache()
    a = model(ids[:, :5], past_key_values=cache, use_cache=True).logits
    b = model(ids[:, 5:], past_key_values=cache, use_cache=True).logits
    torch.testing.assert_close(torch.cat((a, b), dim=1), full, rtol=1e-5, atol=1e-5)


def test_cache_stores_only_keys_and_values():
    for gate in ("none", "sdpa-elementwise"):
        model = _model(gate=gate)
        cache = KVCache()
        model(torch.randint(0, 97, (1, 5)), past_key_values=cache, use_cache=True)
        assert cache.keys[0].shape == (1, 2, 5, 6) and cache.values[0].shape == (1, 2, 5, 6)


@pytest.mark.parametrize("gate", ["none", "sdpa-elementwise", "value-headwise"])
def test_greedy_generate_equals_argmax_of_full_forwards(gate):
    model = _model(gate=gate)
    ids = torch.randint(0, 97, (3, 5))
    out = model.generate(ids, max_new_tokens=12)
    expected = ids
    for _ in range(12):
        nxt = model(expected).logits[:, -1].argmax(-1, keepdim=True)
        expected = torch.cat((expected, nxt), dim=1)
    assert torch.equal(out, expected)


def test_generate_eos_and_sampling():
    model = _model(gate="sdpa-elementwise")
    ids = torch.randint(0, 97, (2, 4))
    greedy = model.generate(ids, 6)
    eos = int(greedy[0, 5])
    stopped = model.generate(ids, 6, eos_token_id=eos)
    assert (stopped[0, 6:] == eos).all()
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    s1 = model.generate(ids, 8, do_sample=True, temperature=0.7, top_k=5, generator=g1)
    s2 = model.generate(ids, 8, do_sample=True, temperature=0.7, top_k=5, generator=g2)
    assert torch.equal(s1, s2) and s1.shape == (2, 12)
    with pytest.raises(ValueError, match="temperature"):
        model.generate(ids, 2, do_sample=True, temperature=0.0)


def test_left_padding_matches_unpadded_sequences():
    model = _model(gate="sdpa-elementwise")
    a, b = torch.randint(1, 97, (1, 7)), torch.randint(1, 97, (1, 4))
    batch = torch.cat((a, torch.cat((torch.zeros(1, 3, dtype=torch.long), b), dim=1)))
    mask = torch.ones_like(batch)
    mask[1, :3] = 0
    out = model(batch, attention_mask=mask).logits
    torch.testing.assert_close(out[0], model(a).logits[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[1, 3:], model(b).logits[0], rtol=1e-5, atol=1e-5)
    assert torch.isfinite(out).all()


def test_loss_is_shifted_cross_entropy():
    model = _model(gate="sdpa-headwise")
    ids = torch.randint(0, 97, (2, 9))
    out = model(ids, labels=ids)
    manual = F.cross_entropy(out.logits[:, :-1].reshape(-1, 97), ids[:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, manual)
    torch.testing.assert_close(lm_loss(out.logits[:, :-1], ids[:, 1:]), manual)
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_tied_embeddings_and_meta_device():
    model = GatedLM(small_cfg(), device="meta")
    assert model.lm_head.weight is model.embed_tokens.weight
    assert model.embed_tokens.weight.is_meta
    untied = GatedLM(small_cfg(tie_word_embeddings=False))
    assert count_parameters(untied).total == count_parameters(GatedLM(small_cfg())).total + 97 * 24


def test_bf16_forward_and_backward():
    model = _model(gate="sdpa-elementwise").to(torch.bfloat16)
    ids = torch.randint(0, 97, (2, 9))
    out = model(ids, labels=ids)
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.loss)
    out.loss.backward()


# ---------------------------------------------------------------------- MoE
def _moe_model(**moe) -> GatedLM:
    cfg = small_cfg(
        gate="sdpa-elementwise",
        moe=MoEConfig(num_experts=6, top_k=2, expert_intermediate_size=16, **moe),
    )
    return _model(**{k: getattr(cfg, k) for k in ("gate", "moe")})


def test_moe_routes_each_token_to_exactly_top_k_experts():
    model = _moe_model()
    moe = model.layers[0].mlp
    x = torch.randn(30, 24)
    routing = moe.route(x)
    assert routing.experts.shape == (30, 2)
    assert all(len(set(row.tolist())) == 2 for row in routing.experts)
    torch.testing.assert_close(routing.weights.sum(-1), torch.ones(30))
    # top-k are the largest router probabilities
    assert torch.equal(
        routing.experts.sort(-1).values, routing.probs.topk(2).indices.sort(-1).values
    )


@pytest.mark.parametrize("shared", [0, 12])
def test_moe_output_equals_dense_mixture(shared):
    model = _moe_model(shared_expert_intermediate_size=shared)
    moe = model.layers[0].mlp
    x = torch.randn(2, 5, 24)
    out, aux = moe(x)
    flat = x.reshape(-1, 24)
    routing = moe.route(flat)
    expected = torch.zeros_like(flat)
    for n in range(flat.shape[0]):
        for j in range(2):
            e = int(routing.experts[n, j])
            expected[n] += routing.weights[n, j] * moe.experts[e](flat[n])
    if shared:
        expected += moe.shared_expert(flat)
    torch.testing.assert_close(out.reshape(-1, 24), expected, rtol=1e-5, atol=1e-6)
    assert aux.dim() == 0 and torch.isfinite(aux)


def test_moe_aux_losses_are_finite_and_differentiable():
    model = _moe_model()
    ids = torch.randint(0, 97, (2, 9))
    out = model(ids, labels=ids)
    assert out.aux_loss is not None and torch.isfinite(out.aux_loss) and out.aux_loss > 0
    out.aux_loss.backward()
    router_grad = model.layers[0].mlp.gate.weight.grad
    assert router_grad is not None and router_grad.abs().sum() > 0
    # the balance term is E * sum f_i P_i >= 1 at its minimum; its coefficient scales it
    model2 = _moe_model(load_balancing_coef=0.0, z_loss_coef=0.0)
    assert model2(ids).aux_loss.item() == 0.0


def test_moe_incremental_decoding():
    model = _moe_model()
    ids = torch.randint(0, 97, (2, 8))
    full = model(ids).logits
    cache = KVCache()
    parts = [model(ids[:, :3], past_key_values=cache, use_cache=True).logits]
    parts += [
        model(ids[:, t : t + 1], past_key_values=cache, use_cache=True).logits for t in range(3, 8)
    ]
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=1e-5, atol=1e-5)


def test_preset_models_build_and_run():
    for name in ("tiny", "small"):
        model = GatedLM(ModelConfig.from_preset(name, gate="sdpa-elementwise"))
        ids = torch.randint(0, model.cfg.vocab_size, (1, 16))
        assert model(ids).logits.shape == (1, 16, model.cfg.vocab_size)
