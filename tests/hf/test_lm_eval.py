"""``gated-attention lm-eval``: lm-evaluation-harness on a tiny random checkpoint of ours.

The bundled smoke tasks (multiple choice, rolling perplexity, greedy generation) run through the
real command, offline, at batch size 1 and 8. Every log-likelihood and generation must agree
between the two (padding and the KV cache must not change a score) and equal a direct
computation with the core :class:`~gated_attention.GatedLM` on each unpadded sequence alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from gated_attention import GatedLM
from gated_attention.cli.lm_eval import TASKS_DIR
from gated_attention.data import load_tokenizer, train_tokenizer
from gated_attention.hf import GatedAttentionConfig, GatedAttentionForCausalLM

pytest.importorskip("lm_eval", reason="lm-eval is a dev extra: pip install -e '.[dev]'")

pytestmark = pytest.mark.slow

TASKS = ("ga_smoke_choice", "ga_smoke_rolling", "ga_smoke_generate")
BATCH_SIZES = (1, 8)
ATOL = 1e-5
# A document's log-likelihood is a float32 sum near -250, whose rounding step (ulp) is already
# ~1.5e-5: totals are compared to 1e-6 relative (a few ulps) besides ATOL.
RTOL = 1e-6


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random ``sdpa-elementwise`` model with a BPE tokenizer trained on the task texts.

    ``initializer_range=0.3`` makes the next-token distributions far from uniform, so scores and
    greedy choices are not decided by rounding noise.
    """
    out = tmp_path_factory.mktemp("lm-eval-model")
    texts = [
        " ".join(str(value) for value in json.loads(line).values())
        for path in sorted((TASKS_DIR / "data").glob("*.jsonl"))
        for line in path.read_text(encoding="utf-8").splitlines()
    ]
    train_tokenizer(texts, vocab_size=320, out_dir=out, min_frequency=1)
    tokenizer = load_tokenizer(out)
    torch.manual_seed(0)
    config = GatedAttentionConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        intermediate_size=48,
        max_position_embeddings=256,
        gate="sdpa-elementwise",
        initializer_range=0.3,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    GatedAttentionForCausalLM(config).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def runs(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[int, dict[str, Any]]:
    """Results (with samples) of ``gated-attention lm-eval`` per batch size.

    Each run is a fresh process, so the command's own import registers our model type, and runs
    offline with one intra-op thread (tiny model; the two runs go in parallel on two cores).
    """
    tmp = tmp_path_factory.mktemp("lm-eval-runs")
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HOME": str(tmp / "hf-home"),  # nothing read from or written to a user cache
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    procs = {}
    for bs in BATCH_SIZES:
        cmd = [
            sys.executable,
            "-m",
            "gated_attention",
            "lm-eval",
            str(model_dir),
            "--tasks",
            ",".join(TASKS),
            "--batch-size",
            str(bs),
            "--bootstrap-iters",
            "0",
            "--log-samples",
            "--output",
            str(tmp / f"bs{bs}.json"),
        ]
        log = (tmp / f"bs{bs}.log").open("w")
        procs[bs] = (subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), log)
    results = {}
    for bs, (proc, log) in procs.items():
        code = proc.wait(timeout=600)
        log.close()
        output = (tmp / f"bs{bs}.log").read_text(errors="replace")
        assert code == 0, f"lm-eval at batch size {bs} exited {code}:\n{output[-4000:]}"
        results[bs] = json.loads((tmp / f"bs{bs}.json").read_text(encoding="utf-8"))
    return results


def _responses(result: dict[str, Any], task: str) -> list[list[Any]]:
    """Per-document filtered responses (one per request: ``[ll, is_greedy]`` for a choice, the
    total log-likelihood for a document, the text for a generation), in document order."""
    samples = sorted(result["samples"][task], key=lambda s: s["doc_id"])
    return [s["filtered_resps"] for s in samples]


def test_every_task_ran_on_every_document(runs):
    for task in TASKS:
        data = TASKS_DIR / "data" / f"{task.removeprefix('ga_smoke_')}.jsonl"
        n_docs = len(data.read_text(encoding="utf-8").splitlines())
        for result in runs.values():
            assert len(result["samples"][task]) == n_docs


def test_batch_size_does_not_change_any_score(runs):
    one, eight = runs[1], runs[8]
    for a, b in zip(
        _responses(one, "ga_smoke_choice"), _responses(eight, "ga_smoke_choice"), strict=True
    ):
        assert [ll for ll, _ in a] == pytest.approx([ll for ll, _ in b], abs=ATOL)
    for a, b in zip(
        _responses(one, "ga_smoke_rolling"), _responses(eight, "ga_smoke_rolling"), strict=True
    ):
        assert a == pytest.approx(b, rel=RTOL, abs=ATOL)
    assert _responses(one, "ga_smoke_generate") == _responses(eight, "ga_smoke_generate")
    for task in TASKS:
        for key, value in one["results"][task].items():
            if isinstance(value, float):
                assert eight["results"][task][key] == pytest.approx(value, rel=ATOL, abs=ATOL), key


def _direct(model_dir: Path) -> tuple[GatedLM, Any]:
    model = GatedAttentionForCausalLM.from_pretrained(model_dir).eval()
    return model.to_gated_lm().eval(), load_tokenizer(model_dir)


@torch.no_grad()
def _loglikelihood(lm: GatedLM, context: list[int], continuation: list[int]) -> float:
    """Sum of ``log p(continuation | context)`` from one unpadded, uncached forward."""
    ids = torch.tensor([context + continuation])
    logprobs = torch.log_softmax(lm(ids[:, :-1]).logits.double(), dim=-1)[0]
    targets = ids[0, len(context) :]
    return float(logprobs[len(context) - 1 :].gather(-1, targets[:, None]).sum())


def test_scores_equal_a_direct_computation_with_our_model(runs, model_dir):
    lm, tok = _direct(model_dir)
    result = runs[8]
    # Multiple choice: lm-eval encodes context + continuation together and splits at the
    # context's token count (a trailing space of the context moves to the continuation).
    for sample in result["samples"]["ga_smoke_choice"]:
        for (context, continuation), (ll, _) in zip(
            sample["arguments"], sample["filtered_resps"], strict=True
        ):
            ctx = tok.encode(context)
            whole = tok.encode(context + continuation)
            assert whole[: len(ctx)] == ctx
            assert ll == pytest.approx(_loglikelihood(lm, ctx, whole[len(ctx) :]), abs=ATOL)
    # Rolling: every token of the document, the first conditioned on the BOS prefix (the texts
    # fit one window).
    for sample in result["samples"]["ga_smoke_rolling"]:
        (text,) = sample["arguments"][0]
        tokens = tok.encode(text)
        assert len(tokens) < 256
        expected = _loglikelihood(lm, [tok.bos_token_id], tokens)
        assert sample["filtered_resps"] == pytest.approx([expected], rel=RTOL, abs=ATOL)


@torch.no_grad()
def test_generations_equal_greedy_decoding_without_cache_or_padding(runs, model_dir):
    lm, tok = _direct(model_dir)
    for sample in runs[8]["samples"]["ga_smoke_generate"]:
        prompt, gen_kwargs = sample["arguments"][0]
        ids = tok.encode(prompt)
        new: list[int] = []
        for _ in range(gen_kwargs["max_gen_toks"]):
            nxt = int(lm(torch.tensor([ids + new])).logits[0, -1].argmax())
            if nxt == tok.eos_token_id:
                break
            new.append(nxt)
        text = tok.decode(new, skip_special_tokens=True)
        for stop in gen_kwargs["until"]:
            text = text.split(stop)[0]
        assert sample["filtered_resps"] == [text]
