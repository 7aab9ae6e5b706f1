"""Runs on your own corpus: ``data.kind = "files"`` builds shards and mixtures, every run counts
its passes over the data and stops above ``data.max_passes``, and training from shards resumes
bit-identically after ``kill -9``."""

from __future__ import annotations

import json
import logging
import math
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from gated_attention.cli import main
from gated_attention.data import MixtureDataset, PackedTokenDataset, tiny_shard_set
from gated_attention.data.errors import EpochLimitError
from gated_attention.evals.streams import run_stream
from gated_attention.train import load_run_config, read_metrics
from gated_attention.train.checkpoint import list_checkpoints
from gated_attention.train.config import DataConfig, RunConfig
from gated_attention.train.datasets import build_data, check_passes
from tests.train.conftest import cli_env, run_cli

ROOT = Path(__file__).resolve().parents[2]

RUN_TOML = """
seed = 0
out_dir = "{out}"

[model]
preset = "tiny"
max_position_embeddings = 64

[data]
kind = "files"
path = "{path}"
seq_len = 32
{data_extra}

[train]
steps = {steps}
batch_size = 8
lr = 3e-3
warmup_steps = 5
eval_every = {every}
eval_batches = 2
ckpt_every = {every}
keep_last = 3
progress = false
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    return tiny_shard_set(tmp_path_factory.mktemp("tiny"))


def _config(tmp_path: Path, name: str, path: str, steps: int, every: int, data_extra: str = ""):
    toml = tmp_path / f"{name}.toml"
    toml.write_text(
        RUN_TOML.format(
            out=tmp_path / name, path=path, steps=steps, every=every, data_extra=data_extra
        )
    )
    return toml


def test_files_from_raw_inputs_and_from_a_shard_set(tmp_path: Path, tiny) -> None:
    corpus = tiny.root.parent / "corpus" / "documents.jsonl"
    cache = tmp_path / "cache"
    raw = build_data(
        DataConfig(
            kind="files",
            path=str(corpus),
            tokenizer=str(tiny.tokenizer_path),
            seq_len=32,
            cache_dir=str(cache),
        )
    )
    prepared = build_data(DataConfig(kind="files", path=str(tiny.root), seq_len=32))
    assert isinstance(raw.train, PackedTokenDataset)
    assert raw.info["sources"][0]["shards"].startswith(str(cache / "shards"))
    assert raw.info["tokenizer_fingerprint"] == prepared.info["tokenizer_fingerprint"]
    assert raw.vocab_size == prepared.vocab_size == 512
    for a, b in zip(raw.train.batch(3, 8, 0), prepared.train.batch(3, 8, 0)):
        assert a.equal(b)  # same stream, shard size aside
    # trained tokenizer when none is given
    own = build_data(
        DataConfig(kind="files", path=str(corpus), vocab_size=300, seq_len=32, cache_dir=str(cache))
    )
    assert own.vocab_size == 300 and own.tokenizer_path.is_file()


def test_mixture_config_records_provenance(tmp_path: Path, tiny) -> None:
    corpus = tiny.root.parent / "corpus" / "documents.jsonl"
    cfg = DataConfig(
        kind="files",
        path=[str(tiny.root), str(corpus)],
        weights=[3, 1],
        seq_len=32,
        cache_dir=str(tmp_path / "cache"),
    )
    data = build_data(cfg)
    assert isinstance(data.train, MixtureDataset) and isinstance(data.val, MixtureDataset)
    sources = data.info["sources"]
    assert [s["weight"] for s in sources] == [0.75, 0.25]
    assert sources[0]["shards"] == str(tiny.root) and sources[1]["path"] == str(corpus)
    # the raw source was prepared with the shard set's own tokenizer
    assert data.train.parts[1].info.tokenizer_sha256 == tiny.info.tokenizer_sha256


def test_data_config_validation() -> None:
    with pytest.raises(ValueError, match="one weight per entry"):
        DataConfig(kind="files", path="a.jsonl", weights=[1.0])
    with pytest.raises(ValueError, match=r"each of data\.weights"):
        DataConfig(kind="files", path=["a", "b"], weights=[1.0, 0.0])
    with pytest.raises(ValueError, match="non-empty list of paths"):
        DataConfig(kind="files", path=[])
    with pytest.raises(ValueError, match=r"data\.max_passes"):
        DataConfig(max_passes=0)
    with pytest.raises(ValueError, match=r"needs data\.path: a shard set"):
        DataConfig(kind="files")


def test_every_run_counts_its_passes(tmp_path: Path, tiny, caplog) -> None:
    cfg = RunConfig.from_dict(
        {
            "data": {"kind": "files", "path": str(tiny.root), "seq_len": 32},
            "train": {"steps": 100, "batch_size": 8},
        }
    )
    data = build_data(cfg.data)
    with caplog.at_level(logging.INFO, logger="gated_attention.train"):
        record = check_passes(data, cfg)
    train_windows = data.train.num_windows
    assert record["passes"] == pytest.approx(800 / train_windows)
    assert record["tokens"] == 100 * 8 * 32
    assert "25,600 tokens" in caplog.text and "passes over the" in caplog.text
    too_long = replace(cfg, train=replace(cfg.train, steps=400))
    with pytest.raises(EpochLimitError) as exc:
        check_passes(data, too_long, announce=False)
    message = str(exc.value)
    assert "\n" not in message and f"{3200 / train_windows:.1f} times" in message
    assert "data.path" in message and "data.max_passes = 4" in message
    unlimited = replace(too_long, data=replace(cfg.data, max_passes=math.inf))
    assert check_passes(data, unlimited, announce=False)["passes"] > 4
    backcopy = RunConfig.from_dict({"data": {"kind": "backcopy", "seq_len": 32, "vocab_size": 64}})
    assert check_passes(build_data(backcopy.data), backcopy, announce=False)["passes"] is None


def test_train_and_reproduce_stop_in_one_line(tmp_path: Path, tiny, capsys) -> None:
    toml = _config(tmp_path, "long", str(tiny.root), steps=1000, every=100)
    assert main(["train", "--config", str(toml)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "times" in err and "data.path" in err
    assert not (tmp_path / "long" / "checkpoints").exists()
    study = tmp_path / "study.toml"
    study.write_text(
        f"""
name = "tiny-files"
[[arms]]
name = "baseline"
gate = "none"
[[arms]]
name = "gated"
gate = "sdpa-elementwise"
[tasks.lm]
model = {{ preset = "tiny", max_position_embeddings = 64 }}
data = {{ kind = "files", path = "{tiny.root}", seq_len = 32 }}
train = {{ steps = 1000, batch_size = 8, eval_every = 0, ckpt_every = 500 }}
[scales.smoke]
seeds = [0]
"""
    )
    out = tmp_path / "study-out"
    args = ["reproduce", "--study", str(study), "--scale", "smoke", "--out", str(out)]
    assert main([*args, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "data.max_passes" in err
    assert not (out / "lm" / "gated").exists()  # stopped at the first run, not per arm


def test_gpu_presets_need_a_corpus_path(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.delenv("GATED_ATTENTION_CORPUS", raising=False)
    cfg = load_run_config(ROOT / "configs" / "gpu-125m.toml")
    assert (cfg.data.kind, cfg.data.path) == ("files", "$GATED_ATTENTION_CORPUS")
    assert main(["train", "--config", str(ROOT / "configs" / "gpu-125m.toml")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "GATED_ATTENTION_CORPUS, which is not set" in err
    from gated_attention.experiments.study import find_study, load_study

    study = load_study(find_study("sinks"))
    raw = study.run_config("lm", study.arms[0], "gpu", 0, Path("."))
    assert raw["data"]["kind"] == "files" and raw["data"]["path"] == "$GATED_ATTENTION_CORPUS"


@pytest.mark.slow
def test_training_from_shards_resumes_bit_identically(tmp_path: Path, tiny) -> None:
    steps = 120
    ref = _config(tmp_path, "reference", str(tiny.root), steps=steps, every=20)
    run_cli("train", "--config", str(ref))
    killed = _config(tmp_path, "killed", str(tiny.root), steps=steps, every=20)
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "gated_attention", "train", "--config", str(killed)],
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline and len(list_checkpoints(out / "checkpoints")) < 2:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = list_checkpoints(out / "checkpoints")
    assert done and not (out / "final").exists(), "the run must be killed mid-way"
    run_cli("train", "--config", str(killed), "--resume")
    losses = [r["loss"] for r in read_metrics(out / "metrics.jsonl")]
    reference = [r["loss"] for r in read_metrics(tmp_path / "reference" / "metrics.jsonl")]
    assert losses == reference and len(losses) == steps  # exact, not approximate
    info = json.loads((out / "data.json").read_text())
    assert info["kind"] == "files" and 0 < info["passes"]["passes"] < 4
    # the evaluation streams read the same held-out split
    stream = run_stream(out, num_tokens=500)
    val = build_data(load_run_config(tmp_path / "killed.toml").data).val
    assert stream.tokens.tolist() == val.split_tokens(0, 501).tolist()


@pytest.mark.slow
def test_study_presets_stay_under_the_pass_limit() -> None:
    """Every study's smoke and quick scale reads the default corpus fewer than
    ``data.max_passes`` times (the full scale of ``sinks`` sets its limit explicitly)."""
    from gated_attention.data import CorpusError
    from gated_attention.experiments.study import load_study

    built: dict = {}
    for path in sorted((ROOT / "configs" / "studies").glob("*.toml")):
        study = load_study(path)
        for scale in ("smoke", "quick", "full"):
            if scale not in study.scales:
                continue
            for task in study.tasks:
                for arm in study.arms_for(scale, task)[:1]:
                    cfg = RunConfig.from_dict(study.run_config(task, arm, scale, 0, Path(".")))
                    if cfg.data.kind == "backcopy":
                        continue
                    key = (cfg.data.vocab_size, cfg.data.seq_len, cfg.data.bos)
                    if key not in built:
                        try:
                            built[key] = build_data(replace(cfg.data, retrieval_mix=0.0))
                        except CorpusError as exc:
                            pytest.skip(f"default corpus not available: {exc}")
                    record = check_passes(built[key], cfg, announce=False)
                    assert record["passes"] <= cfg.data.max_passes, (path.name, scale, task)
                    if scale != "full":
                        assert cfg.data.max_passes == 4.0, (path.name, scale, task)
