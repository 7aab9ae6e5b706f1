"""``train --dry-run`` and ``reproduce --dry-run``: every code path of the GPU configs and the
``gpu`` preset runs on the CPU at reduced size (all of it in well under 2 minutes), reading a
shard set made by ``gated-attention data prepare`` as the GPU runs read theirs
(``$GATED_ATTENTION_CORPUS``)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from gated_attention.data import generate_documents
from gated_attention.train import load_run_config
from gated_attention.train.dryrun import DRY_STEPS, dry_run, dry_run_config, shrink_model
from tests.train.conftest import cli_env, run_cli

ROOT = Path(__file__).parents[2]
GPU_CONFIGS = sorted((ROOT / "configs").glob("gpu-*.toml"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A small shard set (generated documents, our BPE), as ``data prepare`` writes one."""
    tmp = tmp_path_factory.mktemp("corpus")
    lines = [json.dumps({"text": doc}) for doc in generate_documents(400)]
    (tmp / "docs.jsonl").write_text("\n".join(lines) + "\n")
    run_cli(
        "data",
        "prepare",
        "--input",
        str(tmp / "docs.jsonl"),
        "--out",
        str(tmp / "shards"),
        "--vocab-size",
        "512",
        "--workers",
        "1",
        "--cache-dir",
        str(tmp / "cache"),
    )
    return tmp / "shards"


def test_there_are_gpu_configs():
    assert {p.name for p in GPU_CONFIGS} >= {"gpu-125m.toml", "gpu-1.7b.toml"}


def test_shrink_keeps_every_choice_and_shrinks_every_size():
    spec = {
        "preset": "paper-15a2b-moe",
        "gate": "sdpa-headwise",
        "qk_norm": "zero_centered",
        "partial_rotary_factor": 0.25,
    }
    small = shrink_model(spec, data_vocab=True)
    assert "vocab_size" not in small  # the data's tokenizer fills it, as in the real run
    assert small["gate"]["granularity"] == "headwise" and small["qk_norm"] == "zero_centered"
    assert small["partial_rotary_factor"] == 0.25 and small["tie_word_embeddings"] is False
    assert small["hidden_size"] == 64 and small["num_hidden_layers"] == 2
    # 32 query heads over 4 KV heads (8 per group) -> 2 KV heads x 2
    assert (small["num_attention_heads"], small["num_key_value_heads"]) == (4, 2)
    moe = small["moe"]
    assert (moe["num_experts"], moe["top_k"], moe["expert_intermediate_size"]) == (4, 2, 32)


def test_dry_run_config_keeps_policies_and_runs_on_the_cpu(tmp_path):
    cfg = load_run_config(ROOT / "configs" / "gpu-1.7b.toml")
    small = dry_run_config(cfg, tmp_path)
    tc = small.train
    assert (tc.steps, tc.device, tc.progress) == (DRY_STEPS, "cpu", False)
    assert (tc.dtype, tc.compile, tc.activation_checkpointing) == ("bfloat16", True, "full")
    assert tc.compile_backend == "aot_eager" and tc.grad_accum == 2
    assert small.distributed.strategy == "fsdp" and small.data.seq_len == 64
    assert small.model["vocab_size"] == 151936  # set by the config: kept (the LM head's size)
    assert small.out_dir == str(tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("path", GPU_CONFIGS, ids=lambda p: p.stem)
def test_every_gpu_config_dry_runs_on_the_cpu(path, tmp_path, corpus, monkeypatch):
    monkeypatch.setenv("GATED_ATTENTION_CORPUS", str(corpus))
    cfg = load_run_config(path)
    assert cfg.data.kind == "files"  # the GPU configs read a prepared corpus
    summary = dry_run(cfg, tmp_path / "run")
    assert summary["steps"] == DRY_STEPS
    assert len(summary["losses"]) == DRY_STEPS and all(math.isfinite(x) for x in summary["losses"])
    assert math.isfinite(summary["val_loss"])
    paths = summary["paths"]
    assert paths["dtype"] == cfg.train.dtype
    assert paths["compile"] == ("aot_eager" if cfg.train.compile else False)
    assert paths["activation_checkpointing"] == cfg.train.activation_checkpointing
    assert paths["distributed"] == cfg.distributed.strategy
    assert (tmp_path / "run" / "final" / "model.safetensors").exists()
    data = json.loads((tmp_path / "run" / "data.json").read_text())
    assert str(corpus) in json.dumps(data)  # it trained on the shard set


@pytest.mark.slow
def test_reproduce_gpu_preset_dry_runs_every_run(tmp_path, corpus):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "gated_attention",
            "reproduce",
            "--preset",
            "gpu",
            "--dry-run",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        env={**cli_env(), "PYTHONPATH": str(ROOT / "src"), "GATED_ATTENTION_CORPUS": str(corpus)},
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout[proc.stdout.index("{") :])
    runs = out["dry_runs"]
    assert out["scale"] == "gpu"
    assert {(r["task"], r["arm"]) for r in runs} == {
        (t, a)
        for t in ("backcopy", "lm")
        for a in ("baseline", "gated-elementwise", "gated-headwise")
    }
    for r in runs:
        assert r["steps"] == DRY_STEPS and all(math.isfinite(x) for x in r["losses"])
        assert r["analysis"]  # the study's analysis ran on the small model
    lm = [r for r in runs if r["task"] == "lm"]
    assert all(r["paths"]["compile"] == "aot_eager" for r in lm)  # the gpu scale compiles
