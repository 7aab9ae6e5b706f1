"""The model's loss paths (chunked in training, plain on returned logits) and activation
checkpointing: bit-exact losses and weights against no checkpointing in float64."""

import copy

import pytest
import torch

from gated_attention import GatedLM, MoEConfig, lm_loss
from gated_attention.model import CHECKPOINTING
from gated_attention.nn.hooks import in_recompute
from tests.conftest import small_cfg


def _model(dtype=torch.float64, **overrides) -> GatedLM:
    model = GatedLM(small_cfg(**overrides)).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def test_training_loss_is_chunked_and_equals_the_plain_loss():
    model = _model(gate="sdpa-elementwise")
    ids = torch.randint(0, 97, (2, 63))
    labels = ids.clone()
    labels[0, :7] = -100
    out = model(ids, labels=labels)  # training mode: no logits
    assert out.logits is None
    logits = model(ids, labels=labels, return_logits=True).logits
    ref = lm_loss(logits[:, :-1], labels[:, 1:])
    torch.testing.assert_close(out.loss, ref, rtol=1e-10, atol=1e-10)
    (g,) = torch.autograd.grad(out.loss, model.lm_head.weight)
    (g_ref,) = torch.autograd.grad(ref, model.lm_head.weight)
    torch.testing.assert_close(g, g_ref, rtol=1e-8, atol=1e-12)
    # aligned targets (the trainer's batches) are the same loss without the shift
    targets = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], -100)], dim=1)
    torch.testing.assert_close(model(ids, targets=targets).loss, ref, rtol=1e-10, atol=1e-10)
    # outside training the logits come back and the loss is computed on them
    model.eval()
    out = model(ids, labels=labels)
    assert out.logits.shape == (2, 63, 97)
    torch.testing.assert_close(out.loss, ref, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="not both"):
        model(ids, labels=labels, targets=targets)


def test_z_loss_adds_the_mean_squared_log_partition():
    model = _model()
    ids = torch.randint(0, 97, (2, 17))
    base = model(ids, targets=ids).loss
    logits = model(ids, targets=ids, return_logits=True).logits
    lse = torch.logsumexp(logits, dim=-1)
    z = model(ids, targets=ids, z_loss=1e-3).loss
    torch.testing.assert_close(z, base + 1e-3 * lse.square().mean(), rtol=1e-10, atol=1e-12)


def _train(model: GatedLM, mode: str, steps: int = 3, forward=None) -> tuple[list, dict]:
    model.set_checkpointing(mode)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(5)
    losses = []
    forward = model if forward is None else forward
    for _ in range(steps):
        ids = torch.randint(0, 97, (3, 33), generator=gen)
        loss = forward(ids, targets=ids.roll(-1, 1)).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach())
    return losses, model.state_dict()


@pytest.mark.parametrize(
    "overrides",
    [
        {"gate": "sdpa-elementwise"},
        {"gate": "sdpa-headwise", "sandwich_norm": True},
        {
            "gate": "sdpa-elementwise",
            "moe": MoEConfig(num_experts=4, top_k=2, expert_intermediate_size=16),
        },
    ],
    ids=["elementwise", "headwise-sandwich", "moe"],
)
def test_checkpointing_is_bit_exact_in_float64(overrides):
    base = _model(**overrides)
    ref_losses, ref_state = _train(copy.deepcopy(base), "none")
    for mode in ("full", "attention"):
        losses, state = _train(copy.deepcopy(base), mode)
        assert all(torch.equal(a, b) for a, b in zip(losses, ref_losses)), mode
        assert all(torch.equal(state[k], ref_state[k]) for k in ref_state), mode


def test_checkpointing_saves_less_and_replays_taps_under_in_recompute():
    model = _model(dtype=torch.float32, gate="sdpa-elementwise")
    ids = torch.randint(0, 97, (2, 63))
    calls = {"forward": 0, "recompute": 0}

    def hook(_m, _i, _o):
        calls["recompute" if in_recompute() else "forward"] += 1

    model.layers[0].self_attn.hook_gate.register_forward_hook(hook)
    saved = {}
    for mode in CHECKPOINTING:
        model.set_checkpointing(mode)
        calls.update(forward=0, recompute=0)
        total = 0

        def pack(t: torch.Tensor) -> torch.Tensor:
            nonlocal total
            total += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = model(ids, targets=ids).loss
        loss.backward()
        saved[mode] = total
        assert calls == {"forward": 1, "recompute": 0 if mode == "none" else 1}, mode
    assert saved["full"] < saved["attention"] < saved["none"]
    # no recomputation without gradients or with a cache
    model.set_checkpointing("full")
    calls.update(forward=0, recompute=0)
    with torch.no_grad():
        model(ids)
    assert calls == {"forward": 1, "recompute": 0}


def test_unknown_checkpointing_mode_is_a_clear_error():
    model = _model()
    with pytest.raises(ValueError, match="allowed: none, full, attention"):
        model.set_checkpointing("selective")


@pytest.fixture
def one_thread():
    """Inductor's CPU kernels split reductions over threads by load, so compiled float64 runs
    repeat each other only on one thread (measured: 1 ulp apart on 2 threads, also without
    checkpointing)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_checkpointing_is_bit_exact_under_compile_in_float64(one_thread):
    torch._dynamo.reset()
    base = _model(gate="sdpa-elementwise")
    results = {}
    for mode in CHECKPOINTING:
        model = copy.deepcopy(base)
        results[mode] = _train(model, mode, forward=torch.compile(model))
    ref_losses, ref_state = results["none"]
    eager_losses, _ = _train(copy.deepcopy(base), "none")
    torch.testing.assert_close(ref_losses, eager_losses, rtol=1e-6, atol=1e-6)
    for mode in ("full", "attention"):
        losses, state = results[mode]
        assert all(torch.equal(a, b) for a, b in zip(losses, ref_losses)), mode
        assert all(torch.equal(state[k], ref_state[k]) for k in ref_state), mode


@pytest.mark.slow
@pytest.mark.parametrize("mode", CHECKPOINTING)
def test_training_forward_compiles_without_graph_breaks(mode):
    """The chunked loss (its chunk loop and custom backward) and each checkpointing mode trace
    into one graph (``aot_eager`` traces forward and backward as inductor does, without code
    generation)."""
    model = _model(dtype=torch.float32, gate="sdpa-elementwise")
    model.set_checkpointing(mode)
    # static shapes: other tests compiled this forward at other sizes (dynamo would go dynamic)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager", dynamic=False)
    ids = torch.randint(0, 97, (2, 63))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = compiled(ids, targets=ids).loss
        ref = model(ids, targets=ids).loss
    torch.testing.assert_close(out, ref)
    (g1,) = torch.autograd.grad(out, model.lm_head.weight)
    (g2,) = torch.autograd.grad(ref, model.lm_head.weight)
    torch.testing.assert_close(g1, g2)
