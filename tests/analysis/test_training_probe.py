"""The training-time sink probe: what it logs, that it leaves training alone, and that it agrees
with the offline analysis of the same checkpoint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from gated_attention.analysis.training import SinkProbe, held_out_batch, probe_metrics
from gated_attention.cli import main
from gated_attention.train import RunConfig, Trainer, load_model, read_metrics, train
from tests.evals.conftest import write_corpus


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "corpus.txt")


def _cfg(tmp_path, corpus_file, gate: str, steps: int = 6, seq_len: int = 80) -> RunConfig:
    return RunConfig.from_dict(
        {
            "seed": 3,
            "out_dir": str(tmp_path / gate),
            "model": {"preset": "tiny", "gate": gate, "qk_norm": "none"},
            "data": {
                "kind": "files",
                "path": str(corpus_file),
                "cache_dir": str(tmp_path / "cache"),
                "seq_len": seq_len,
                "vocab_size": 300,
            },
            "train": {
                "steps": steps,
                "batch_size": 4,
                "lr": 1e-2,
                "eval_every": 0,
                "ckpt_every": 3,
                "progress": False,
            },
        }
    )


@pytest.fixture(scope="module")
def probed_run(tmp_path_factory, corpus_file):
    tmp = tmp_path_factory.mktemp("probe")
    cfg = _cfg(tmp, corpus_file, "sdpa-elementwise")
    train(cfg, callbacks=[SinkProbe(every=3, batch_size=4)])
    return cfg, read_metrics(tmp / "sdpa-elementwise" / "metrics.jsonl", "probe")


def test_probe_records_every_interval_and_before_the_first_step(probed_run):
    _, probes = probed_run
    assert [p["step"] for p in probes] == [0, 3, 6]
    assert [p["tokens"] for p in probes] == [0, 3 * 4 * 80, 6 * 4 * 80]
    p = probes[-1]
    layers = 2
    for key in (
        "f_attn_layers",
        "sink_rate_layers",
        "resid_max_layers",
        "spike_max_layers",
        "sink_rate_short_layers",
        "gate_mean_layers",
        "resid_max_where",
    ):
        assert len(p[key]) == layers, key
    assert p["causal_floor"] == pytest.approx(sum(1 / t for t in range(1, 81)) / 80)
    assert p["f_attn_ratio"] == pytest.approx(p["f_attn"] / p["causal_floor"])
    assert p["m_act"] == pytest.approx(sum(p["resid_max_layers"]) / layers)
    assert 0 <= p["sink_rate"] <= 1 and 0 <= p["sink_rate_short"] <= 1
    assert 0 < p["gate_mean"] < 1 and p["probe_seconds"] > 0
    # a sigmoid gate only lets part of token 0's share through
    assert 0 < p["f_attn_gated"] < p["f_attn"]
    assert len(p["f_attn_gated_layers"]) == layers
    token, channel = p["embed_max_where"]
    assert 0 <= token < 80 and 0 <= channel < 32


def test_probe_equals_offline_analysis_of_the_same_checkpoint(probed_run, tmp_path):
    cfg, probes = probed_run
    run = Path(cfg.out_dir)
    by_step = {p["step"]: p for p in probes}
    trainer = Trainer(cfg)  # only for the held-out batch: same data, same selection
    ids = held_out_batch(trainer, 4)
    for step in (3, 6):
        model = load_model(run / "checkpoints" / f"step_{step:07d}").eval()
        offline = probe_metrics(model, ids)
        for key, value in offline.items():
            if key.endswith("_where"):
                assert by_step[step][key] == value, (step, key)
            else:
                assert by_step[step][key] == pytest.approx(value, abs=1e-6), (step, key)
    # The analyze command reads the same first validation batch of the run's final weights.
    out = tmp_path / "analysis"
    assert main(["analyze", str(run), "--batch-size", "4", "--out", str(out)]) == 0
    summary = json.loads((out / "analysis.json").read_text())["summary"]
    last = by_step[6]
    assert summary["f_attn"] == pytest.approx(last["f_attn"], abs=1e-6)
    assert summary["sink_rate"] == pytest.approx(last["sink_rate"], abs=1e-6)
    assert summary["m_act"] == pytest.approx(last["m_act"], abs=1e-6)


def test_probe_does_not_change_training(tmp_path, corpus_file):
    plain = train(_cfg(tmp_path / "a", corpus_file, "none", steps=4))
    probed = train(_cfg(tmp_path / "b", corpus_file, "none", steps=4), callbacks=[SinkProbe(2)])
    assert plain.final_train_loss == probed.final_train_loss
    a = load_model(tmp_path / "a" / "none")
    b = load_model(tmp_path / "b" / "none")
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name


def test_probe_on_a_resumed_run_matches_the_uninterrupted_run(tmp_path, corpus_file):
    cfg = _cfg(tmp_path, corpus_file, "none", steps=6)
    cfg.train.keep_last = 3
    train(cfg, callbacks=[SinkProbe(every=2, batch_size=2)])
    run = Path(cfg.out_dir)
    full = read_metrics(run / "metrics.jsonl", "probe")
    # Lose the last checkpoint as a killed run would, then resume from step 3.
    shutil.rmtree(run / "checkpoints" / "step_0000006")
    train(cfg, resume=True, callbacks=[SinkProbe(every=2, batch_size=2)])
    resumed = read_metrics(run / "metrics.jsonl", "probe")
    assert [p["step"] for p in resumed] == [0, 2, 4, 6]

    def strip(records):
        return [{k: v for k, v in r.items() if k != "probe_seconds"} for r in records]

    assert strip(resumed) == strip(full)


def test_probe_rejects_bad_settings():
    with pytest.raises(ValueError, match="every >= 1"):
        SinkProbe(every=0)
