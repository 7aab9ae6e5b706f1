"""What a transformers user does next: packed sequences, static cache and compiled decoding,
gradient checkpointing, sequence classification, PEFT LoRA and ``transformers.Trainer``."""

import pytest
import torch
from transformers import (
    AutoModelForSequenceClassification,
    CompileConfig,
    DataCollatorWithFlattening,
    StaticCache,
    Trainer,
    TrainingArguments,
)

from gated_attention import GateConfig, MoEConfig
from gated_attention.hf import (
    GatedAttentionForCausalLM,
    GatedAttentionForSequenceClassification,
    GatedAttentionModel,
)
from gated_attention.hf.modeling import GatedAttentionDecoderLayer
from gated_attention.model import DecoderStack
from tests.hf.helpers import VOCAB, gated_lm

TOL = 1e-5


def _hf(gate: str = "sdpa-elementwise", **overrides) -> GatedAttentionForCausalLM:
    return GatedAttentionForCausalLM.from_gated_lm(gated_lm(gate=gate, **overrides)).eval()


# ---------------------------------------------------------------------- packed sequences
def _flattened(lengths: tuple[int, ...]) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
    """One padding-free row from transformers' own collator, and its documents."""
    docs = [torch.randint(0, VOCAB, (n,)) for n in lengths]
    batch = DataCollatorWithFlattening()([{"input_ids": d.tolist()} for d in docs])
    return batch, docs


@pytest.mark.parametrize("gate", GateConfig.names())
def test_padding_free_rows_equal_each_document_alone(gate):
    model = _hf(gate)  # GQA: 4 query heads over 2 KV heads
    batch, docs = _flattened((6, 1, 13, 9))
    assert "attention_mask" not in batch and batch["position_ids"][0, 7] == 0
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
        alone = torch.cat([model(d[None]).logits[0] for d in docs])
    torch.testing.assert_close(packed[0], alone, rtol=0, atol=TOL)


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_padding_free_loss_and_eager_path(implementation):
    model = _hf("sdpa-headwise", moe=MoEConfig(num_experts=4, top_k=2, expert_intermediate_size=8))
    model.config._attn_implementation = implementation
    batch, docs = _flattened((5, 11, 7))
    with torch.no_grad():
        out = model(**batch)
        alone = torch.cat([model(d[None]).logits[0] for d in docs])
        # the documents' boundaries also given as document ids: the same logits
        ids = torch.cat([torch.full((len(d),), i) for i, d in enumerate(docs)])[None]
        by_ids = model(input_ids=batch["input_ids"], document_ids=ids).logits
    torch.testing.assert_close(out.logits[0], alone, rtol=0, atol=TOL)
    torch.testing.assert_close(by_ids, out.logits, rtol=0, atol=TOL)
    # the collator's labels hold -100 at each document start: no cross-document targets
    assert (batch["labels"][0, [0, 5, 16]] == -100).all() and torch.isfinite(out.loss)


# ---------------------------------------------------------------------- static cache, compile
@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_static_cache_generate_equals_dynamic_with_left_padding(implementation):
    model = _hf()
    model.config._attn_implementation = implementation
    ids = torch.randint(3, VOCAB, (2, 7))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    kwargs = dict(attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=0)
    dynamic = model.generate(ids, **kwargs)
    static = model.generate(ids, cache_implementation="static", **kwargs)
    assert torch.equal(static, dynamic)


def test_ready_4d_masks_and_static_cache_in_forward():
    model = _hf()
    ids = torch.randint(0, VOCAB, (2, 9))
    full = model(ids).logits
    causal = torch.ones(9, 9, dtype=torch.bool).tril()[None, None].expand(2, 1, 9, 9)
    additive = torch.zeros(2, 1, 9, 9).masked_fill(~causal, torch.finfo(torch.float32).min)
    torch.testing.assert_close(model(ids, attention_mask=causal).logits, full, rtol=0, atol=TOL)
    torch.testing.assert_close(model(ids, attention_mask=additive).logits, full, rtol=0, atol=TOL)
    # transformers' StaticCache returns all its slots; queries sit at its fill level
    cache = StaticCache(config=model.config, max_cache_len=16)
    steps = [model(ids[:, :5], cache=cache, use_cache=True).logits]
    for t in range(5, 9):
        steps.append(model(ids[:, t : t + 1], cache=cache, use_cache=True).logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=0, atol=TOL)


def test_compile_flags_are_honest():
    assert GatedAttentionForCausalLM._can_compile_fullgraph
    moe = _hf(moe=MoEConfig(num_experts=4, top_k=2, expert_intermediate_size=8))
    assert not moe._can_compile_fullgraph  # the expert dispatch loop graph-breaks


@pytest.mark.slow
def test_transformers_compiled_static_cache_generate_equals_eager():
    # transformers compiles the decoding forward with fullgraph=True (a graph break raises)
    model = _hf()
    ids = torch.randint(3, VOCAB, (2, 6))
    eager = model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0)
    config = CompileConfig(fullgraph=True, dynamic=False)
    config._compile_all_devices = True  # transformers compiles on accelerators only by default
    compiled = model.generate(
        ids,
        max_new_tokens=8,
        do_sample=False,
        pad_token_id=0,
        cache_implementation="static",
        compile_config=config,
    )
    assert hasattr(model, "_compiled_call") and torch.equal(compiled, eager)


# ---------------------------------------------------------------------- gradient checkpointing
def _grads(model: torch.nn.Module, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad()
    model(ids, labels=ids).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(
    "moe", [None, MoEConfig(num_experts=4, top_k=2, expert_intermediate_size=8)]
)
def test_gated_lm_full_checkpointing_gives_the_same_gradients_with_less_saved(moe):
    lm = gated_lm(gate="sdpa-elementwise", moe=moe).train()
    ids = torch.randint(0, VOCAB, (2, 11))
    plain = _grads(lm, ids)
    lm.set_checkpointing("full")
    saved: list[int] = []
    with torch.autograd.graph.saved_tensors_hooks(
        lambda t: saved.append(t.numel()) or t, lambda t: t
    ):
        lm(ids, labels=ids).loss.backward()
    checkpointed = _grads(lm, ids)
    assert plain.keys() == checkpointed.keys()
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-5, atol=1e-6, msg=name)
    lm.set_checkpointing("none")
    reference: list[int] = []
    with torch.autograd.graph.saved_tensors_hooks(
        lambda t: reference.append(t.numel()) or t, lambda t: t
    ):
        lm(ids, labels=ids).loss.backward()
    assert sum(saved) < sum(reference) / 2
    with pytest.raises(ValueError, match="allowed: none, full"):
        lm.set_checkpointing("some")
    lm.set_checkpointing("full")
    with pytest.raises(ValueError, match="use_cache=False"):
        lm(ids, use_cache=True)
    with torch.no_grad():  # no gradients: nothing to checkpoint, the cache fills as usual
        assert lm(ids, use_cache=True).past_key_values is not None


def test_transformers_gradient_checkpointing_drives_the_stack():
    model = _hf().train()
    ids = torch.randint(0, VOCAB, (2, 11))
    plain = _grads(model, ids)
    assert GatedAttentionForCausalLM.supports_gradient_checkpointing
    # the name the issue and most user code use (deprecated in transformers 5 for
    # activation_checkpointing_enable, which it calls)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    stack = model.model
    assert isinstance(stack, DecoderStack) and stack.checkpointing == "full"
    assert all(isinstance(layer, GatedAttentionDecoderLayer) for layer in stack.layers)
    assert model.is_activation_checkpointing
    calls = []
    original = stack.layers[0]._gradient_checkpointing_func
    stack.layers[0]._gradient_checkpointing_func = lambda f, *a: calls.append(1) or original(f, *a)
    checkpointed = _grads(model, ids)  # use_cache=True from the config is turned off
    assert calls == [1]
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-5, atol=1e-6, msg=name)
    model.gradient_checkpointing_disable()
    assert stack.checkpointing == "none" and not model.is_activation_checkpointing
    with pytest.raises(ValueError, match="every_n_layers=2"):
        model.gradient_checkpointing_enable(every_n_layers=2)


# ---------------------------------------------------------------------- sequence classification
def test_sequence_classification_scores_the_last_real_token(tmp_path):
    lm = gated_lm(gate="sdpa-headwise")
    GatedAttentionForCausalLM.from_gated_lm(lm, pad_token_id=0).save_pretrained(tmp_path)
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path, num_labels=3).eval()
    assert type(model) is GatedAttentionForSequenceClassification
    assert type(model.model) is GatedAttentionModel
    ids = torch.randint(1, VOCAB, (2, 8))
    ids[1, 5:] = 0  # right padding
    out = model(ids, labels=torch.tensor([0, 2]))
    hidden = model.model(ids).last_hidden_state
    torch.testing.assert_close(out.logits[0], model.score(hidden[0, -1]), rtol=0, atol=TOL)
    torch.testing.assert_close(out.logits[1], model.score(hidden[1, 4]), rtol=0, atol=TOL)
    assert out.logits.shape == (2, 3) and torch.isfinite(out.loss)


# ---------------------------------------------------------------------- PEFT
def test_lora_on_the_fused_projection_merges_to_the_same_logits():
    from peft import LoraConfig, get_peft_model

    model = _hf()
    ids = torch.randint(0, VOCAB, (2, 9))
    with torch.no_grad():
        base = model(ids).logits
    lora = get_peft_model(model, LoraConfig(r=4, target_modules=["qkv_proj", "o_proj"]))
    adapted = [n for n, _ in lora.named_modules() if n.endswith(("qkv_proj", "o_proj"))]
    assert len(adapted) == 2 * model.config.num_hidden_layers
    trainable = {n for n, p in lora.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:  # B starts at zero: move it so the adapter does something
                p.normal_(0, 0.1)
    with torch.no_grad():
        adapted_logits = lora(ids).logits
        merged = lora.merge_and_unload()
        assert type(merged) is GatedAttentionForCausalLM
        assert (adapted_logits - base).abs().max() > 1e-2  # the adapter changed the model
        torch.testing.assert_close(merged(ids).logits, adapted_logits, rtol=0, atol=TOL)


# ---------------------------------------------------------------------- transformers.Trainer
@pytest.mark.parametrize("checkpointing", [False, True])
def test_trainer_runs_padding_free_steps(tmp_path, checkpointing):
    model = _hf()
    docs = [torch.randint(0, VOCAB, (n,)).tolist() for n in (9, 5, 12, 7, 10, 6)]
    args = TrainingArguments(
        tmp_path,
        max_steps=3,
        per_device_train_batch_size=3,
        learning_rate=1e-2,
        gradient_checkpointing=checkpointing,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
    )
    before = model.lm_head.weight.detach().clone()
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=[{"input_ids": d} for d in docs],
        data_collator=DataCollatorWithFlattening(),
    )
    result = trainer.train()
    assert model.model.checkpointing == ("full" if checkpointing else "none")
    assert result.global_step == 3 and torch.isfinite(torch.tensor(result.training_loss))
    assert not torch.equal(model.lm_head.weight, before)
