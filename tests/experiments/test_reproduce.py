"""The main job end to end at smoke scale, and the analyze command on ours and HF models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gated_attention.cli import main
from gated_attention.experiments.study import load_study, study_from_dict


@pytest.fixture(scope="module")
def smoke_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("smoke")
    assert main(["reproduce", "--preset", "smoke", "--out", str(out), "--no-progress"]) == 0
    return out


@pytest.mark.slow
def test_smoke_report_is_complete(smoke_dir):
    report = (smoke_dir / "report.md").read_text()
    for needle in (
        "## Verdicts",
        "Task `backcopy`",
        "Task `lm`",
        "F-Attn",
        "M-Act",
        "Backcopy split",
        "## Provenance",
        "0.467",
    ):
        assert needle in report, needle
    for png in (
        "backcopy_first_token_mass",
        "lm_max_activation",
        "lm_gate_histograms",
        "backcopy_attention_maps",
        "lm_loss_curves",
        "backcopy_gate_mean",
    ):
        path = smoke_dir / "plots" / f"{png}.png"
        assert path.exists() and path.stat().st_size > 1000, png
        assert f"plots/{png}.png" in report
    results = json.loads((smoke_dir / "results.json").read_text())
    assert {r["status"] for r in results["runs"]} == {"ok"} and len(results["runs"]) == 6
    agg = results["aggregate"]
    for task in ("backcopy", "lm"):
        for arm in ("baseline", "gated-elementwise", "gated-headwise"):
            assert agg[task][arm]["val_loss"]["mean"] > 0
            assert agg[task][arm]["f_attn"]["mean"] > 0
        assert agg[task]["baseline"]["gate_mean"]["mean"] is None
        assert 0 < agg[task]["gated-headwise"]["gate_mean"]["mean"] < 1
    assert results["meta"]["versions"]["torch"] == torch.__version__
    assert results["verdicts"]


@pytest.mark.slow
def test_resume_skips_finished_runs_and_keeps_failures_apart(smoke_dir, tmp_path):
    # resume: every run is finished, so nothing retrains (fast) and the report is rewritten
    (smoke_dir / "report.md").unlink()
    assert (
        main(
            ["reproduce", "--preset", "smoke", "--out", str(smoke_dir), "--resume", "--no-progress"]
        )
        == 0
    )
    assert (smoke_dir / "report.md").exists()
    # a crash in one arm is reported and does not lose the others
    study = load_study("configs/studies/sinks.toml")
    from gated_attention.experiments.sinks import write_report
    from gated_attention.experiments.study import run_study

    def analyze(run_dir, task, cfg):
        if "headwise" in str(run_dir):
            raise RuntimeError("planted failure")
        from gated_attention.experiments.analyze_run import analyze_run

        return analyze_run(run_dir, cfg)

    study.tasks.pop("lm")
    records = run_study(study, "smoke", tmp_path, analyze=analyze, progress=False)
    assert [r.status for r in records] == ["ok", "ok", "failed"]
    report = write_report(study, "smoke", records, tmp_path, {"wall_time_s": 1.0})
    text = report.read_text()
    assert "## Failures" in text and "planted failure" in text
    assert "gated-elementwise" in text


def test_study_validation_errors():
    with pytest.raises(ValueError, match="Did you mean 'arms'"):
        study_from_dict({"name": "x", "armz": [], "tasks": {}, "scales": {}})
    base = {
        "name": "x",
        "arms": [{"name": "a", "gate": "none"}],
        "tasks": {"t": {"train": {"stpes": 3}}},
        "scales": {"smoke": {}},
    }
    with pytest.raises(ValueError, match="Did you mean 'steps'"):
        study_from_dict(base)
    base["tasks"]["t"] = {"model": {"gate": "x"}}
    base["arms"][0]["gate"] = "sdpa-elemntwise"
    with pytest.raises(ValueError, match="Unknown gate variant"):
        study_from_dict(base)


@pytest.mark.slow
def test_analyze_command_on_our_run(smoke_dir, tmp_path, capsys):
    run = smoke_dir / "backcopy" / "gated-headwise" / "seed0"
    assert main(["analyze", str(run), "--out", str(tmp_path / "a")]) == 0
    data = json.loads((tmp_path / "a" / "analysis.json").read_text())
    assert data["gates"]["mean"] > 0 and data["first_token_mass"]["floor"] > 0
    assert (tmp_path / "a" / "first_token_mass.png").exists()
    assert (tmp_path / "a" / "gate_histogram.png").exists()


def test_analyze_command_on_a_local_hf_model(tmp_path):
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

    from gated_attention.data import train_tokenizer

    docs = [
        f"document {i}: the quick brown fox jumps over the lazy dog {i * 7}" for i in range(200)
    ]
    tok_file = train_tokenizer(docs, vocab_size=300, out_dir=tmp_path / "tok")
    tok = PreTrainedTokenizerFast(
        tokenizer_file=str(tok_file), bos_token="<|bos|>", eos_token="<|eos|>", pad_token="<|pad|>"
    )
    cfg = Qwen3Config(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=256,
    )
    model_dir = tmp_path / "hf"
    Qwen3ForCausalLM(cfg).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    text = tmp_path / "text.txt"
    text.write_text(" ".join(docs))
    assert (
        main(
            [
                "analyze",
                str(model_dir),
                "--text",
                str(text),
                "--seq-len",
                "32",
                "--batch-size",
                "2",
                "--out",
                str(tmp_path / "out"),
            ]
        )
        == 0
    )
    data = json.loads((tmp_path / "out" / "analysis.json").read_text())
    assert data["n_layers"] == 2 and data["gates"] is None
    assert abs(data["first_token_mass"]["floor"] - sum(1 / t for t in range(1, 33)) / 32) < 1e-9


@pytest.mark.slow
def test_long_context_study_runs_at_smoke_scale(tmp_path):
    out = tmp_path / "lc"
    assert (
        main(
            [
                "reproduce",
                "--study",
                "long-context",
                "--scale",
                "smoke",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    report = (out / "report.md").read_text()
    assert "## Provenance" in report and "yarn" in report.lower()
    results = json.loads((out / "results.json").read_text())
    assert {r["status"] for r in results["runs"]} == {"ok"}
    assert (out / "ppl_vs_length.png").stat().st_size > 1000
