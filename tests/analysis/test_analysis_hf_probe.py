"""collect_hf + analyze_captured on tiny randomly initialised transformers models (no downloads)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

from transformers import (  # noqa: E402
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)
from transformers.models.llama.modeling_llama import (  # noqa: E402
    apply_rotary_pos_emb as llama_rope,
)
from transformers.models.qwen3.modeling_qwen3 import (  # noqa: E402
    apply_rotary_pos_emb as qwen3_rope,
)

from gated_attention.analysis import (  # noqa: E402
    Captured,
    analyze_captured,
    attention_probs_from_qk,
    collect_hf,
    find_decoder_layers,
)

VOCAB, T, B = 100, 24, 2


def make_model(kind: str, attn: str = "eager") -> nn.Module:
    torch.manual_seed(0)
    if kind == "qwen3":
        cfg = Qwen3Config(
            vocab_size=VOCAB,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            max_position_embeddings=128,
            attn_implementation=attn,
        )
        return Qwen3ForCausalLM(cfg).eval()
    if kind == "llama":
        cfg = LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=48,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=6,
            num_key_value_heads=2,
            max_position_embeddings=128,
            attn_implementation=attn,
        )
        return LlamaForCausalLM(cfg).eval()
    cfg = GPT2Config(
        vocab_size=VOCAB,
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_positions=128,
        bos_token_id=0,
        eos_token_id=0,
        attn_implementation=attn,
    )
    return GPT2LMHeadModel(cfg).eval()


def final_norm(model: nn.Module) -> nn.Module:
    return model.transformer.ln_f if hasattr(model, "transformer") else model.model.norm


def capture_qk(model: nn.Module, kind: str, input_ids: torch.Tensor) -> tuple[list, list, float]:
    """Recompute each layer's post-RoPE q ``(B, T, H, D)`` and k ``(B, T, K, D)`` from its input."""
    qs: list[torch.Tensor] = []
    ks: list[torch.Tensor] = []
    scale: list[float] = []

    def hook(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        x = kwargs.get("hidden_states", args[0] if args else None)
        Bx, Tx, _ = x.shape
        if kind == "gpt2":
            H = module.num_heads
            D = module.head_dim
            q, k, _ = module.c_attn(x).split(module.embed_dim, dim=2)
            qs.append(q.view(Bx, Tx, H, D))
            ks.append(k.view(Bx, Tx, H, D))
            scale.append(D**-0.5)
            return
        D = module.head_dim
        q = module.q_proj(x).view(Bx, Tx, -1, D)
        k = module.k_proj(x).view(Bx, Tx, -1, D)
        if kind == "qwen3":
            q, k = module.q_norm(q), module.k_norm(k)
        cos, sin = kwargs["position_embeddings"]
        rope = qwen3_rope if kind == "qwen3" else llama_rope
        q, k = rope(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
        qs.append(q.transpose(1, 2))
        ks.append(k.transpose(1, 2))
        scale.append(module.scaling)

    attn_modules = [
        layer.attn if kind == "gpt2" else layer.self_attn for layer in find_decoder_layers(model)
    ]
    handles = [m.register_forward_pre_hook(hook, with_kwargs=True) for m in attn_modules]
    try:
        with torch.no_grad():
            model(input_ids=input_ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return qs, ks, scale[0]


def input_ids() -> torch.Tensor:
    return torch.randint(1, VOCAB, (B, T), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("kind", ["qwen3", "llama", "gpt2"])
def test_collect_hf_probs_hidden_and_report(kind: str) -> None:
    model = make_model(kind)
    ids = input_ids()
    cap = collect_hf(model, ids)
    n = model.config.num_hidden_layers
    H = model.config.num_attention_heads
    assert cap.n_layers == n and cap.seq_len == T and cap.batch_size == B
    assert len(cap.hidden) == n and len(cap.probs) == n

    # Probabilities: right shape, rows sum to one, nothing above the diagonal.
    upper = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
    for p in cap.probs:
        assert p.shape == (B, H, T, T)
        torch.testing.assert_close(p.sum(-1), torch.ones(B, H, T))
        assert p[..., upper].abs().max() == 0

    # Hidden states: raw block outputs; transformers' last entry is the final-normed one.
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True, use_cache=False)
    assert len(out.hidden_states) == n + 1
    for i in range(n - 1):
        torch.testing.assert_close(cap.hidden[i], out.hidden_states[i + 1])
    assert not torch.allclose(cap.hidden[-1], out.hidden_states[-1])
    with torch.no_grad():
        torch.testing.assert_close(final_norm(model)(cap.hidden[-1]), out.hidden_states[-1])

    # The same maps recomputed from q/k captured independently.
    qs, ks, scale = capture_qk(model, kind, ids)
    assert len(qs) == n
    for p, q, k in zip(cap.probs, qs, ks):
        torch.testing.assert_close(
            attention_probs_from_qk(q, k, scale=scale), p, atol=1e-5, rtol=1e-4
        )

    report = analyze_captured(cap)
    assert len(report.first_token_mass.per_layer) == n
    assert 0.0 <= report.sink.rate <= 1.0
    assert len(report.massive.layers) == n
    assert report.gates is None and report.sparsity is None
    summary = report.summary()
    assert summary["causal_floor"] == pytest.approx(sum(1 / (t + 1) for t in range(T)) / T)
    text = json.dumps(report.to_dict())
    assert "f_attn" in text and report.meta["model_type"] == model.config.model_type

    # Our own model's probe path: the same container filled with q/k instead of probs.
    from_qk = analyze_captured(
        Captured(n_layers=n, seq_len=T, hidden=cap.hidden, q=qs, k=ks, scale=scale),
        query_chunk=7,
    )
    assert from_qk.first_token_mass.per_layer_mean == pytest.approx(
        report.first_token_mass.per_layer_mean, abs=1e-5
    )
    torch.testing.assert_close(
        torch.tensor(from_qk.sink.per_layer_head_alpha),
        torch.tensor(report.sink.per_layer_head_alpha),
        atol=1e-5,
        rtol=0,
    )
    assert from_qk.sink.rate == report.sink.rate


def test_collect_hf_restores_training_mode_and_offloads() -> None:
    model = make_model("qwen3").train()
    cap = collect_hf(model, input_ids(), offload_to_cpu=True, keep_probs=False)
    assert model.training
    assert cap.probs is None and cap.hidden[0].device.type == "cpu"
    report = analyze_captured(cap)
    assert report.first_token_mass is None and report.sink is None
    assert report.massive is not None


def test_collect_hf_requires_eager_attention() -> None:
    model = make_model("llama", attn="sdpa")
    with pytest.raises(ValueError, match="eager"):
        collect_hf(model, input_ids())


def test_analyze_refuses_padded_batches() -> None:
    model = make_model("gpt2")
    mask = torch.ones(B, T, dtype=torch.long)
    mask[0, -3:] = 0
    cap = collect_hf(model, input_ids(), attention_mask=mask)
    with pytest.raises(ValueError, match="padding"):
        analyze_captured(cap)


def test_analyze_captured_with_gates_and_sdpa_outputs() -> None:
    """A container like our own model's probe fills: q/k, gate scores and z before/after."""
    g = torch.Generator().manual_seed(4)
    n, H, K, D, d = 2, 4, 2, 8, 16
    hidden = [torch.randn(B, T, d, generator=g) for _ in range(n)]
    q = [torch.randn(B, T, H, D, generator=g) for _ in range(n)]
    k = [torch.randn(B, T, K, D, generator=g) for _ in range(n)]
    gates = [torch.rand(B, T, H, D, generator=g) * 0.3 + 0.01 for _ in range(n)]
    z = [torch.randn(B, T, H, D, generator=g) for _ in range(n)]
    z_gated = [zi * gi for zi, gi in zip(z, gates)]
    trigger = torch.zeros(B, T, dtype=torch.bool)
    trigger[:, 5] = True
    cap = Captured(
        n_layers=n,
        seq_len=T,
        hidden=hidden,
        q=q,
        k=k,
        gate_scores=gates,
        z_before=z,
        z_after=z_gated,
        query_mask=trigger,
        meta={"source": "synthetic"},
    )
    report = analyze_captured(cap)
    assert report.gates.mean == pytest.approx(
        torch.cat([x.flatten() for x in gates]).double().mean().item()
    )
    assert report.gates.in_mask.n_values == n * B * H * D
    assert report.sparsity.mean_abs_after < report.sparsity.mean_abs_before
    s = report.summary()
    assert {"f_attn", "sink_rate", "m_act", "gate_mean", "mean_abs_z_after"} <= set(s)
    json.dumps(report.to_dict())

    with pytest.raises(ValueError, match="n_layers"):
        Captured(n_layers=3, seq_len=T, hidden=hidden)
    with pytest.raises(ValueError, match="both q and k"):
        Captured(n_layers=n, seq_len=T, hidden=hidden, q=q)
