"""The sink-mitigation zoo study (``configs/studies/sink-zoo.toml``): end to end at smoke scale
through the one study runner and the sinks report, the report's normaliser additions, and the
backcopy split computed on each normaliser's own weights."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from gated_attention import GatedLM, ModelConfig
from gated_attention.analysis.probe import capture_model
from gated_attention.cli import main
from gated_attention.config import NormalizerConfig
from gated_attention.experiments.analyze_run import _backcopy_split
from gated_attention.experiments.sinks import (
    eval_settings,
    gate_pairs,
    has_normalizers,
    normalizer_label,
)
from gated_attention.experiments.study import load_study

ROOT = Path(__file__).resolve().parents[2]
ZOO = ROOT / "configs" / "studies" / "sink-zoo.toml"
SINKS = ROOT / "configs" / "studies" / "sinks.toml"


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory) -> Path:
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models run fastest on one thread
    out = tmp_path_factory.mktemp("sink-zoo")
    args = ["reproduce", "--study", str(ZOO), "--scale", "smoke", "--out", str(out)]
    try:
        assert main([*args, "--no-progress"]) == 0
    finally:
        torch.set_num_threads(before)
    return out


def test_zoo_covers_every_normaliser_alone_and_the_main_ones_with_the_gate():
    study = load_study(ZOO)
    ungated = {normalizer_label(a).split(" ")[0] for a in study.arms if a.gate == "none"}
    assert ungated == set(NormalizerConfig.kinds())
    gated = {normalizer_label(a).split(" ")[0] for a in study.arms if a.gate == "sdpa-elementwise"}
    assert gated == set(NormalizerConfig.kinds())
    assert study.arm("gated-headwise").gate == "sdpa-headwise"
    assert [p[0] for p in gate_pairs(study)] == [
        "softmax",
        "sink",
        "softmax1",
        "kv-bias",
        "sigmoid (length=128)",
        "softpick",
    ]
    assert set(study.scales) == {"smoke", "quick", "full", "gpu"}
    assert study.scales["full"]["seeds"] == [0, 1, 2]
    # the backcopy task at the recalibrated sink-forming settings
    train = study.tasks["backcopy"]["train"]
    assert (train["lr"], train["steps"]) == (3e-2, 300)
    assert has_normalizers(study) and not has_normalizers(load_study(SINKS))
    # the natural-text task, with W8A8 and 2x-8x lengths measured at every real scale
    assert set(study.tasks) == {"backcopy", "lm"}
    for scale in ("quick", "full", "gpu"):
        settings = eval_settings(study, scale)
        assert settings["w8a8"] and settings["length_multipliers"] == [2, 4, 8]
    assert eval_settings(load_study(SINKS), "quick")["w8a8"] is False


def test_eval_settings_reject_unknown_keys_and_lengths():
    study = load_study(ZOO)
    study.scales["smoke"]["analysis"] = {"w8a8": True, "lengths": [2]}
    with pytest.raises(ValueError, match="unknown analysis keys"):
        eval_settings(study, "smoke")
    study.scales["smoke"]["analysis"] = {"length_multipliers": [3]}
    with pytest.raises(ValueError, match="length_multipliers"):
        eval_settings(study, "smoke")


def test_normalizer_label_reads_every_toml_form():
    study = load_study(ZOO)
    assert normalizer_label(study.arm("baseline")) == "softmax"
    assert normalizer_label(study.arm("sink+G1")) == "sink"
    assert normalizer_label(study.arm("sigmoid")) == "sigmoid (length=128)"
    nested = SimpleNamespace(
        overrides={"model": {"normalizer": {"kind": "softpick", "options": {"eps": 1e-6}}}}
    )
    assert normalizer_label(nested) == "softpick (eps=1e-06)"


@pytest.mark.parametrize("kind", ["sink", "sigmoid"])
def test_backcopy_split_uses_the_layers_normaliser(kind):
    """BOS weight and null mass on trigger / other queries, against the normaliser's formula
    written out here from q and k (not the analysis code)."""
    torch.manual_seed(0)
    norm = {"kind": "sigmoid", "length": 16} if kind == "sigmoid" else kind
    cfg = ModelConfig(
        vocab_size=32,
        hidden_size=24,
        num_hidden_layers=2,
        num_attention_heads=3,
        num_key_value_heads=1,
        head_dim=8,
        intermediate_size=48,
        max_position_embeddings=64,
        normalizer=norm,
        gate="sdpa-elementwise",
    )
    model = GatedLM(cfg).eval()
    if kind == "sink":
        with torch.no_grad():
            for layer in model.layers:
                layer.self_attn.sinks.copy_(torch.tensor([1.5, -0.5, 0.3]))
    ids = torch.randint(0, 32, (2, 13))
    trigger = torch.rand(2, 13) < 0.3
    trigger[:, 1] = True
    trigger[:, 2] = False
    captured = capture_model(model, ids, query_mask=trigger)
    task = SimpleNamespace(optimal_loss=lambda: 0.0, bigram_loss_floor=lambda: 1.0)
    split = _backcopy_split(captured, trigger, task)["per_layer"]
    query = torch.ones_like(trigger)
    query[:, 0] = False
    for layer, (q, k) in enumerate(zip(captured.q, captured.k)):
        q, k = q.double(), k.double().repeat_interleave(3, dim=2)
        x = torch.einsum("bthd,bshd->bhts", q, k) / math.sqrt(8)
        causal = torch.ones(13, 13, dtype=torch.bool).tril()
        if kind == "sink":
            s = model.layers[layer].self_attn.sinks.detach().double()[None, :, None, None]
            e = torch.where(causal, x.exp(), 0.0)
            w = e / (s.exp() + e.sum(-1, keepdim=True))
        else:
            w = torch.where(causal, torch.sigmoid(x - math.log(16)), 0.0)
        bos = w[..., 0].mean(1)  # (B, T) head mean
        rows = w.sum(-1).mean(1)
        for name, sel in (("trigger", trigger & query), ("other", ~trigger & query)):
            got = split[layer]
            assert got[f"bos_attention_{name}"] == pytest.approx(float(bos[sel].mean()), abs=1e-5)
            assert got[f"row_mass_{name}"] == pytest.approx(float(rows[sel].mean()), abs=1e-5)
            if kind == "sink":
                assert got[f"null_{name}"] == pytest.approx(1 - float(rows[sel].mean()), abs=1e-5)
            else:  # rows of sigmoid attention may exceed 1: no null attention
                assert f"null_{name}" not in got


def _summary_table(lines: list[str], task: str) -> dict[str, dict[str, str]]:
    """The summary table of ``task``: ``{arm: {header: cell}}``."""
    at = lines.index(f"## Task `{task}`")
    start = next(i for i in range(at, len(lines)) if lines[i].startswith("| arm | gate |"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = dict(zip(header, cells))
    return rows


@pytest.mark.slow
def test_zoo_smoke_report_has_every_arm_and_no_nan(zoo_dir):
    study = load_study(ZOO)
    report = (zoo_dir / "report.md").read_text()
    results = json.loads((zoo_dir / "results.json").read_text())
    assert {r["status"] for r in results["runs"]} == {"ok"}
    lm_arms = study.arms_for("smoke", "lm")
    assert len(results["runs"]) == len(study.arms) + len(lm_arms)
    lines = report.splitlines()
    backcopy = _summary_table(lines, "backcopy")
    lm = _summary_table(lines, "lm")
    assert set(lm) == {a.name for a in lm_arms}  # only the arms the scale runs on lm
    for rows in (backcopy, lm):
        for row in rows.values():
            for cell in row.values():
                assert not re.search(r"\b(nan|inf)\b", cell.lower()), row
            assert re.fullmatch(r"-?[0-9.]+", row["int8 W8A8 Δloss"]), row
            assert re.fullmatch(r"[0-9.,]+", row["Linear input peak"]), row
    # perplexity beyond the training length: on natural text only, at the smoke scale's lengths
    assert "ppl 2x len" not in next(iter(backcopy.values()))
    for row in lm.values():
        for col in ("ppl 1x len", "ppl 2x len", "ppl 4x len"):
            assert re.fullmatch(r"[0-9.,]+", row[col]), (col, row)
        assert "ppl 8x len" not in row
    agg_lm = results["aggregate"]["lm"]
    for arm in lm:
        assert math.isfinite(agg_lm[arm]["w8a8_delta"]["mean"])
        assert agg_lm[arm]["ppl_4x"]["mean"] > 1
    assert "lm: - " not in report and "did not finish" not in report
    rows = backcopy
    assert list(rows) == [a.name for a in study.arms]
    for arm in study.arms:
        row = rows[arm.name]
        assert row["normaliser"] == normalizer_label(arm)
        for col in ("val loss", "F-Attn", "sink rate", "M-Act"):
            assert re.fullmatch(r"[0-9.,]+", row[col]), (arm.name, col, row[col])
        kind = row["normaliser"].split(" ")[0]
        # null attention exactly where the kind has it
        has_null = kind not in ("softmax", "sigmoid")
        assert (row["null mass"] != "-") == has_null, arm.name
        assert (row["token-0 share"] != "-") == (kind != "softmax"), arm.name
        assert (row["sink logit"] != "-") == (kind == "sink"), arm.name
        assert (row["gate mean"] != "-") == (arm.gate != "none"), arm.name
    for needle in (
        "### Does the gate add anything on top of each normaliser?",
        "| softmax | baseline -> gated-elementwise |",
        "| sink | sink -> sink+G1 |",
        "| sigmoid (length=128) | sigmoid -> sigmoid+G1 |",
        "null (other q)",
        "Sigmoid rows are not normalised",
        "0.467",  # the paper's baseline F-Attn beside ours
        "## Provenance",
    ):
        assert needle in report, needle
    agg = results["aggregate"]["backcopy"]
    assert agg["sink"]["null_other"]["mean"] > 0
    assert agg["sigmoid"]["null_mass"]["mean"] is None
    assert agg["sigmoid"]["row_mass"]["mean"] > 0
    assert (zoo_dir / "plots" / "backcopy_attention_maps.png").stat().st_size > 1000


@pytest.mark.slow
def test_zoo_lr_sweep_runs_through_the_stability_report(tmp_path):
    """The zoo's largest-stable-LR sweep (configs/studies/sink-zoo-lr.toml) is the stability
    study's sweep and report on the zoo's lm task: eta_max per arm, the absurd LR diverged."""
    study = load_study(ROOT / "configs" / "studies" / "sink-zoo-lr.toml")
    assert study.report == "stability" and "quick" not in study.scales
    zoo = load_study(ZOO)
    assert study.tasks["lm"]["model"] == zoo.tasks["lm"]["model"]
    assert study.tasks["lm"]["data"] == zoo.tasks["lm"]["data"]
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        args = ["reproduce", "--study", str(ROOT / "configs" / "studies" / "sink-zoo-lr.toml")]
        assert main([*args, "--scale", "smoke", "--out", str(tmp_path), "--no-progress"]) == 0
    finally:
        torch.set_num_threads(before)
    report = (tmp_path / "report.md").read_text()
    for arm in ("baseline", "sink", "gated-elementwise"):
        assert re.search(rf"\| {re.escape(arm)} \| 0\.003 \| [0-9.]+ \| 0\.003 \|", report), arm
        assert re.search(rf"\| {re.escape(arm)} \| 1000 \| - \| - \| yes", report), arm


def test_loss_effect_is_paired_over_shared_seeds():
    """Seed 2 moves both arms together: paired, the arm is 0.01 nats better on every seed (a
    real effect); unpaired, the seed spread (0.5) hides it. One seed: no call."""
    from gated_attention.experiments.sinks import loss_effect, seed_losses
    from gated_attention.experiments.stats import aggregate
    from gated_attention.experiments.study import RunRecord

    base = {0: 3.0, 1: 3.1, 2: 4.0}
    recs = [
        RunRecord("t", arm, seed, "", "ok", analysis={"val_loss": v - (0.01 if arm == "x" else 0)})
        for arm in ("baseline", "x")
        for seed, v in base.items()
    ]
    agg = aggregate(recs)
    diff, real, how = loss_effect(agg, "t", "baseline", "x", seed_losses(recs))
    assert diff == pytest.approx(-0.01) and real is True and "paired" in how
    diff, real, how = loss_effect(agg, "t", "baseline", "x")
    assert diff == pytest.approx(-0.01) and real is False
    one = [r for r in recs if r.seed == 0]
    diff, real, how = loss_effect(aggregate(one), "t", "baseline", "x", seed_losses(one))
    assert real is None and "single seed" in how
