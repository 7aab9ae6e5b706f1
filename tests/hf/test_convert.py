"""Converters: transformers Qwen3 / Qwen3-Next and the paper's release layout, both directions."""

import json
import re

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, Qwen3ForCausalLM, Qwen3NextForCausalLM

from gated_attention.hf import GatedAttentionForCausalLM
from gated_attention.hf.convert import (
    ConversionError,
    export_checkpoint,
    import_checkpoint,
)
from tests.hf.helpers import VOCAB, gated_lm, perturb, qwen3_config, qwen3_next_config

MAX_ABS = 1e-5


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


# ---------------------------------------------------------------------- transformers Qwen3
@pytest.mark.parametrize("bias", [False, True])
def test_qwen3_import_matches_transformers_and_exports_back(tmp_path, bias):
    ref = perturb(Qwen3ForCausalLM(qwen3_config(attention_bias=bias, tie_word_embeddings=bias)))
    assert ref.config.num_attention_heads == 2 * ref.config.num_key_value_heads
    ref.save_pretrained(tmp_path / "qwen3")
    (tmp_path / "qwen3" / "tokenizer.json").write_text('{"version": "1.0"}')
    import_checkpoint("qwen3", tmp_path / "qwen3", tmp_path / "ours")
    ours = AutoModelForCausalLM.from_pretrained(tmp_path / "ours").eval()
    assert type(ours) is GatedAttentionForCausalLM
    cfg = ours.model.cfg
    assert not cfg.gate.enabled and cfg.attention_bias is bias and cfg.attention_out_bias is bias
    ids = torch.randint(0, VOCAB, (2, 13))
    with torch.no_grad():
        assert _max_abs(ours(ids).logits, ref(ids).logits) <= MAX_ABS
    expected = ref.generate(ids, max_new_tokens=20, do_sample=False)
    assert torch.equal(ours.generate(ids, max_new_tokens=20, do_sample=False), expected)
    assert (tmp_path / "ours" / "tokenizer.json").is_file()
    assert (tmp_path / "ours" / "generation_config.json").is_file()

    export_checkpoint("qwen3", tmp_path / "ours", tmp_path / "back")
    back = Qwen3ForCausalLM.from_pretrained(tmp_path / "back").eval()
    with torch.no_grad():
        assert _max_abs(back(ids).logits, ref(ids).logits) <= MAX_ABS
    src, out = (
        load_file(tmp_path / "qwen3" / "model.safetensors"),
        load_file(tmp_path / "back" / "model.safetensors"),
    )
    assert src.keys() == out.keys() and all(torch.equal(src[k], out[k]) for k in src)
    assert (tmp_path / "back" / "tokenizer.json").is_file()


# ---------------------------------------------------------------------- transformers Qwen3-Next
def test_qwen3_next_import_matches_transformers_and_exports_back(tmp_path):
    ref = perturb(Qwen3NextForCausalLM(qwen3_next_config()))
    assert ref.config.rope_parameters["partial_rotary_factor"] == 0.5
    ref.save_pretrained(tmp_path / "next")
    import_checkpoint("qwen3-next", tmp_path / "next", tmp_path / "ours")
    ours = AutoModelForCausalLM.from_pretrained(tmp_path / "ours").eval()
    cfg = ours.model.cfg
    assert cfg.gate.name is None and cfg.gate.position == "sdpa" and not cfg.gate.fp32
    assert (cfg.qk_norm, cfg.norm_type, cfg.rotary_dim) == ("zero_centered", "zero_centered", 4)
    ids = torch.randint(0, VOCAB, (2, 13))
    with torch.no_grad():
        assert _max_abs(ours(ids).logits, ref(ids).logits) <= MAX_ABS
        mask = torch.ones_like(ids)
        mask[1, :4] = 0
        assert (
            _max_abs(
                ours(ids, attention_mask=mask).logits[1, 4:],
                ref(ids, attention_mask=mask).logits[1, 4:],
            )
            <= MAX_ABS
        )

    export_checkpoint("qwen3-next", tmp_path / "ours", tmp_path / "back")
    back = Qwen3NextForCausalLM.from_pretrained(tmp_path / "back").eval()
    assert back.config.layer_types == ["full_attention"] * 2
    assert type(back.model.layers[0].mlp).__name__ == "Qwen3NextMLP"
    with torch.no_grad():
        assert _max_abs(back(ids).logits, ref(ids).logits) <= MAX_ABS
    src, out = (
        load_file(tmp_path / "next" / "model.safetensors"),
        load_file(tmp_path / "back" / "model.safetensors"),
    )
    assert src.keys() == out.keys() and all(torch.equal(src[k], out[k]) for k in src)


def test_qwen3_next_mixed_ffn_and_linear_attention_are_refused(tmp_path):
    perturb(
        Qwen3NextForCausalLM(
            qwen3_next_config(
                num_experts=4,
                num_experts_per_tok=2,
                moe_intermediate_size=8,
                shared_expert_intermediate_size=8,
                mlp_only_layers=[1],
            )
        )
    ).save_pretrained(tmp_path / "moe")
    with pytest.raises(ConversionError, match=r"makes layers \[1\] dense"):
        import_checkpoint("qwen3-next", tmp_path / "moe", tmp_path / "x")
    raw = json.loads((tmp_path / "moe" / "config.json").read_text())
    raw.update(num_experts=0, layer_types=["linear_attention", "full_attention"])
    (tmp_path / "moe" / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ConversionError, match=r"layer_types\[0\]='linear_attention'"):
        import_checkpoint("qwen3-next", tmp_path / "moe", tmp_path / "x")


# ---------------------------------------------------------------------- the paper's release
H, K, D, HIDDEN, INTER, LAYERS = 4, 2, 8, 32, 48, 2  # g = 2


def _paper_checkpoint(directory, granularity: str, qkv_bias: bool, tie: bool) -> dict:
    """Write a paper-layout checkpoint whose q_proj rows are placed by the index formula
    (docs/paper.md section 5): group j = h // g holds its g query heads, then their gates."""
    g, dg = H // K, (D if granularity == "elementwise" else 1)
    per_group = g * D + g * dg
    state = {"model.embed_tokens.weight": torch.randn(VOCAB, HIDDEN) * 0.3}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        q, gate = torch.randn(H * D, HIDDEN) * 0.2, torch.randn(H * dg, HIDDEN) * 0.5
        q_proj = torch.empty(K * per_group, HIDDEN)
        for h in range(H):
            j, slot = divmod(h, g)
            for d in range(D):
                q_proj[j * per_group + slot * D + d] = q[h * D + d]
            for e in range(dg):
                q_proj[j * per_group + g * D + slot * dg + e] = gate[h * dg + e]
        state[p + "self_attn.q_proj.weight"] = q_proj
        state[p + "self_attn.k_proj.weight"] = torch.randn(K * D, HIDDEN) * 0.2
        state[p + "self_attn.v_proj.weight"] = torch.randn(K * D, HIDDEN) * 0.2
        if qkv_bias:
            for name, rows in (("q", K * per_group), ("k", K * D), ("v", K * D)):
                state[p + f"self_attn.{name}_proj.bias"] = torch.randn(rows) * 0.1
        state[p + "self_attn.o_proj.weight"] = torch.randn(HIDDEN, H * D) * 0.2
        for norm, size in (
            ("input_layernorm", HIDDEN),
            ("post_attention_layernorm", HIDDEN),
            ("self_attn.q_norm", D),
            ("self_attn.k_norm", D),
        ):
            state[p + norm + ".weight"] = 1 + torch.randn(size) * 0.1
        state[p + "mlp.gate_proj.weight"] = torch.randn(INTER, HIDDEN) * 0.2
        state[p + "mlp.up_proj.weight"] = torch.randn(INTER, HIDDEN) * 0.2
        state[p + "mlp.down_proj.weight"] = torch.randn(HIDDEN, INTER) * 0.2
    state["model.norm.weight"] = 1 + torch.randn(HIDDEN) * 0.1
    if not tie:
        state["lm_head.weight"] = torch.randn(VOCAB, HIDDEN) * 0.3
    config = {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "vocab_size": VOCAB,
        "hidden_size": HIDDEN,
        "intermediate_size": INTER,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": H,
        "num_key_value_heads": K,
        "head_dim": D,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "max_position_embeddings": 128,
        "tie_word_embeddings": tie,
        "qkv_bias": qkv_bias,
        "headwise_attn_output_gate": granularity == "headwise",
        "elementwise_attn_output_gate": granularity == "elementwise",
        "eos_token_id": 2,
        "torch_dtype": "float32",
    }
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(config))
    (directory / "generation_config.json").write_text(json.dumps({"eos_token_id": 2}))
    save_file(state, directory / "model.safetensors", metadata={"format": "pt"})
    return state


def _rms(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))


def _rope(x: torch.Tensor) -> torch.Tensor:
    """NeoX-halves RoPE on ``(B, heads, T, D)`` at positions 0..T-1, base 10000."""
    T = x.shape[2]
    inv = 1.0 / (10000.0 ** (torch.arange(0, D, 2).float() / D))
    freqs = torch.arange(T).float()[:, None] * inv
    cos, sin = torch.cat((freqs, freqs), -1).cos(), torch.cat((freqs, freqs), -1).sin()
    x1, x2 = x[..., : D // 2], x[..., D // 2 :]
    return x * cos + torch.cat((-x2, x1), -1) * sin


def _paper_reference_logits(state: dict, granularity: str, ids: torch.Tensor) -> torch.Tensor:
    """The paper's forward written from the layout description: ``q_proj`` output viewed as
    ``(B, T, K, -1)`` and split per group into ``[g*D queries | g*Dg gate logits]``; the
    SDPA output times ``sigmoid(gate)`` before ``o_proj`` (G1)."""
    g, dg = H // K, (D if granularity == "elementwise" else 1)
    B, T = ids.shape
    h = state["model.embed_tokens.weight"][ids]
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        x = _rms(h, state[p + "input_layernorm.weight"])
        qg = F.linear(
            x, state[p + "self_attn.q_proj.weight"], state.get(p + "self_attn.q_proj.bias")
        )
        q, gate = qg.view(B, T, K, -1).split([g * D, g * dg], dim=-1)
        q, gate = q.reshape(B, T, H, D), gate.reshape(B, T, H, dg)
        k = F.linear(
            x, state[p + "self_attn.k_proj.weight"], state.get(p + "self_attn.k_proj.bias")
        )
        v = F.linear(
            x, state[p + "self_attn.v_proj.weight"], state.get(p + "self_attn.v_proj.bias")
        )
        q = _rope(_rms(q, state[p + "self_attn.q_norm.weight"]).transpose(1, 2))
        k = _rope(_rms(k.view(B, T, K, D), state[p + "self_attn.k_norm.weight"]).transpose(1, 2))
        k = k.repeat_interleave(g, dim=1)
        v = v.view(B, T, K, D).transpose(1, 2).repeat_interleave(g, dim=1)
        scores = (q @ k.transpose(-1, -2)) / D**0.5
        probs = scores.masked_fill(~causal, float("-inf")).softmax(-1)
        z = (probs @ v).transpose(1, 2) * torch.sigmoid(gate)
        h = h + F.linear(z.reshape(B, T, H * D), state[p + "self_attn.o_proj.weight"])
        x = _rms(h, state[p + "post_attention_layernorm.weight"])
        mlp = F.silu(F.linear(x, state[p + "mlp.gate_proj.weight"])) * F.linear(
            x, state[p + "mlp.up_proj.weight"]
        )
        h = h + F.linear(mlp, state[p + "mlp.down_proj.weight"])
    head = state.get("lm_head.weight", state["model.embed_tokens.weight"])
    return F.linear(_rms(h, state["model.norm.weight"]), head)


@pytest.mark.parametrize(
    ("granularity", "qkv_bias", "tie"), [("elementwise", True, False), ("headwise", False, True)]
)
def test_paper_layout_round_trip_is_bit_exact_and_matches_the_reference(
    tmp_path, granularity, qkv_bias, tie
):
    state = _paper_checkpoint(tmp_path / "paper", granularity, qkv_bias, tie)
    config = import_checkpoint("paper", tmp_path / "paper", tmp_path / "ours")
    cfg = config.to_model_config()
    assert cfg.gate.granularity == granularity and cfg.gate.position == "sdpa"
    assert not cfg.gate.fp32  # the paper's sigmoid runs in the model dtype
    assert cfg.attention_bias is qkv_bias and not cfg.attention_out_bias
    assert config.eos_token_id == 2

    ours = AutoModelForCausalLM.from_pretrained(tmp_path / "ours").eval()
    ids = torch.randint(0, VOCAB, (2, 11))
    with torch.no_grad():
        assert (
            _max_abs(ours(ids).logits, _paper_reference_logits(state, granularity, ids)) <= MAX_ABS
        )
    # our fused layout holds the gate of head h, feature e at row H*D + 2*K*D + h*Dg + e
    dg = D if granularity == "elementwise" else 1
    qkv = ours.model.layers[0].self_attn.qkv_proj.weight
    q_proj = state["model.layers.0.self_attn.q_proj.weight"]
    assert torch.equal(
        qkv[H * D + 2 * K * D + 3 * dg], q_proj[1 * (2 * D + 2 * dg) + 2 * D + 1 * dg]
    )

    written = export_checkpoint("paper", tmp_path / "ours", tmp_path / "back")
    back = load_file(tmp_path / "back" / "model.safetensors")
    assert back.keys() == state.keys()
    assert all(torch.equal(back[k], state[k]) for k in state)
    assert written[f"{granularity}_attn_output_gate"] is True and written["qkv_bias"] is qkv_bias
    original = json.loads((tmp_path / "paper" / "config.json").read_text())
    assert {k: written[k] for k in original} == original
    assert (tmp_path / "back" / "generation_config.json").is_file()


def test_paper_baseline_without_gate_and_qwen2_model_type(tmp_path):
    _paper_checkpoint(tmp_path / "paper", "elementwise", True, True)
    raw = json.loads((tmp_path / "paper" / "config.json").read_text())
    raw.update(model_type="qwen2", elementwise_attn_output_gate=False)
    (tmp_path / "paper" / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ConversionError, match=r"q_proj\.bias: paper q_proj has 64 rows"):
        # the flags say "no gate" but q_proj still holds gate rows
        import_checkpoint("paper", tmp_path / "paper", tmp_path / "ours")
    lm = gated_lm(gate="none", attention_bias=True)
    GatedAttentionForCausalLM.from_gated_lm(lm).save_pretrained(tmp_path / "base")
    written = export_checkpoint("paper", tmp_path / "base", tmp_path / "paper-base")
    assert not written["headwise_attn_output_gate"] and not written["elementwise_attn_output_gate"]
    import_checkpoint("paper", tmp_path / "paper-base", tmp_path / "again")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "again").eval()
    ids = torch.randint(0, VOCAB, (1, 6))
    assert torch.equal(again(ids).logits, lm(ids).logits)


# ---------------------------------------------------------------------- errors
def test_bad_inputs_give_clear_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConversionError, match=r"no config\.json"):
        import_checkpoint("qwen3", tmp_path / "empty", tmp_path / "x")
    perturb(Qwen3ForCausalLM(qwen3_config())).save_pretrained(tmp_path / "q")
    (tmp_path / "q" / "model.safetensors").rename(tmp_path / "weights.bak")
    with pytest.raises(ConversionError, match="has no weights"):
        import_checkpoint("qwen3", tmp_path / "q", tmp_path / "x")
    (tmp_path / "weights.bak").rename(tmp_path / "q" / "model.safetensors")

    raw = json.loads((tmp_path / "q" / "config.json").read_text())
    (tmp_path / "q" / "config.json").write_text(json.dumps({**raw, "intermediate_size": 40}))
    with pytest.raises(
        ConversionError, match=r"shape mismatch: model\.layers\.0\.mlp\.down_proj\.weight"
    ):
        import_checkpoint("qwen3", tmp_path / "q", tmp_path / "x")
    (tmp_path / "q" / "config.json").write_text(json.dumps({**raw, "model_type": "llama"}))
    with pytest.raises(ConversionError, match="model_type='llama'"):
        import_checkpoint("qwen3", tmp_path / "q", tmp_path / "x")
    with pytest.raises(ConversionError, match="unknown format 'gpt2'"):
        import_checkpoint("gpt2", tmp_path / "q", tmp_path / "x")
    assert not (tmp_path / "x").exists()  # nothing written on failure

    _paper_checkpoint(tmp_path / "p", "elementwise", False, True)
    raw = json.loads((tmp_path / "p" / "config.json").read_text())
    (tmp_path / "p" / "config.json").write_text(
        json.dumps({**raw, "headwise_attn_output_gate": True})
    )
    with pytest.raises(ConversionError, match="both headwise_attn_output_gate and elementwise"):
        import_checkpoint("paper", tmp_path / "p", tmp_path / "x")


@pytest.mark.parametrize(
    ("fmt", "overrides", "field"),
    [
        ("qwen3", {"gate": "sdpa-elementwise"}, "gate='sdpa-elementwise'"),
        (
            "qwen3-next",
            {"gate": "sdpa-headwise", "qk_norm": "zero_centered", "norm_type": "zero_centered"},
            "gate='sdpa-headwise'",
        ),
        ("qwen3-next", {"gate": "sdpa-elementwise"}, "norm_type='rms'"),
        ("paper", {"gate": "value-elementwise"}, "gate='value-elementwise'"),
        ("paper", {"gate": "sdpa-elementwise", "attention_out_bias": True}, "attention_out_bias"),
        ("qwen3", {"attention_bias": True}, "attention_bias=True with attention_out_bias=False"),
        ("qwen3", {"partial_rotary_factor": 0.5, "head_dim": 8}, "partial_rotary_factor"),
    ],
)
def test_export_refuses_what_the_target_cannot_express(tmp_path, fmt, overrides, field):
    GatedAttentionForCausalLM.from_gated_lm(gated_lm(**overrides)).save_pretrained(
        tmp_path / "ours"
    )
    with pytest.raises(ConversionError, match=re.escape(field)):
        export_checkpoint(fmt, tmp_path / "ours", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_destination_must_be_empty_unless_overwrite(tmp_path):
    perturb(Qwen3ForCausalLM(qwen3_config())).save_pretrained(tmp_path / "q")
    (tmp_path / "dst").mkdir()
    (tmp_path / "dst" / "keep.txt").write_text("x")
    with pytest.raises(ConversionError, match="not empty"):
        import_checkpoint("qwen3", tmp_path / "q", tmp_path / "dst")
    import_checkpoint("qwen3", tmp_path / "q", tmp_path / "dst", overwrite=True)
    with pytest.raises(ConversionError, match="export needs one of ours"):
        export_checkpoint("qwen3", tmp_path / "q", tmp_path / "y")


def test_export_refuses_core_fields_it_does_not_map(tmp_path, monkeypatch):
    from gated_attention.hf import convert

    GatedAttentionForCausalLM.from_gated_lm(gated_lm(initializer_range=0.05)).save_pretrained(
        tmp_path / "ours"
    )
    monkeypatch.setattr(convert, "MAPPED_FIELDS", convert.MAPPED_FIELDS - {"initializer_range"})
    with pytest.raises(ConversionError, match=r"initializer_range=0\.05 cannot be exported"):
        export_checkpoint("qwen3", tmp_path / "ours", tmp_path / "out")
