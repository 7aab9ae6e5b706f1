"""The paper studies: the variants study (Tables 1, 3, 4) and the stability study (Table 2) end
to end at smoke scale, their parameter matching, the study-format keys they use, and the
report logic on planted numbers."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch

from gated_attention import GateConfig
from gated_attention.cli import main
from gated_attention.experiments.stability import Sweep, unrecovered_spikes
from gated_attention.experiments.stats import compare
from gated_attention.experiments.study import Arm, load_study, study_from_dict
from gated_attention.experiments.variants import ORDERINGS, judge, parameter_table

ROOT = Path(__file__).resolve().parents[2]
VARIANTS = ROOT / "configs" / "studies" / "variants.toml"
STABILITY = ROOT / "configs" / "studies" / "stability.toml"


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread (and do not fight other processes for cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _reproduce(study: Path, out: Path, *extra: str) -> int:
    args = ["reproduce", "--study", str(study), "--scale", "smoke", "--out", str(out)]
    return main([*args, "--no-progress", *extra])


@pytest.fixture(scope="module")
def variants_dir(tmp_path_factory, one_thread) -> Path:
    out = tmp_path_factory.mktemp("variants")
    assert _reproduce(VARIANTS, out) == 0
    return out


@pytest.fixture(scope="module")
def stability_dir(tmp_path_factory, one_thread) -> Path:
    out = tmp_path_factory.mktemp("stability")
    # exit status 1: the smoke scale's absurd learning rate diverges on purpose
    assert _reproduce(STABILITY, out) in (0, 1)
    return out


# ----------------------------------------------------------------------------- variants study
@pytest.mark.slow
def test_variants_smoke_report_is_complete(variants_dir):
    report = (variants_dir / "report.md").read_text()
    for needle in (
        "## Which of the paper's orderings hold at this scale",
        "### `dense`",
        "### `moe`",
        "| paper's ordering | verdict |",
        "G1 gating beats the ungated baseline at equal parameter count",
        "cannot resolve at this scale",
        "not run at this scale",
        "Task `dense`",
        "Task `moe`",
        "| arm | gate | params | added | sizes |",
        "FFN 64→53",  # sdpa-elementwise narrowed to the baseline's count
        "KV heads 2→4",  # more-kv-heads
        "experts 4→5",  # more-ffn on the MoE task
        "5.761",  # the paper's G1 PPL beside ours
        "60.82",  # and its MMLU
        "0.116 / 94 / 0.048",  # Table 4 gate mean / M-Act / F-Attn
        "## Provenance",
    ):
        assert needle in report, needle
    png = variants_dir / "plots" / "variants_ranking.png"
    assert png.stat().st_size > 5000 and "plots/variants_ranking.png" in report
    results = json.loads((variants_dir / "results.json").read_text())
    assert {r["status"] for r in results["runs"]} == {"ok"} and len(results["runs"]) == 5
    for task in ("dense", "moe"):
        assert len(results["orderings"][task]) == len(ORDERINGS)
        assert results["aggregate"][task]["baseline"]["val_loss"]["mean"] > 0
    dense = results["aggregate"]["dense"]
    assert 0 < dense["sdpa-elementwise"]["gate_mean"]["mean"] < 1
    assert dense["baseline"]["m_act"]["mean"] > 0 and dense["baseline"]["f_attn"]["mean"] > 0
    # parameters in the report are those the runs really trained
    params = results["parameters"]
    for rec in results["runs"]:
        assert rec["result"]["parameters"]["total"] == params[rec["task"]][rec["arm"]]["params"]


def test_variants_matched_baselines_within_one_percent_at_every_scale():
    study = load_study(VARIANTS)
    matched = [a for a in study.arms if a.grow]
    assert {a.grow for a in matched} == {"kv_heads", "query_heads", "ffn"}
    for scale in study.scales:
        for task in study.tasks:
            g1 = study.model_config(task, study.arm("sdpa-elementwise+params"), scale)
            budget = g1.gate_parameters()
            for arm in matched:
                cfg = study.model_config(task, arm, scale)
                base = study.model_config(task, study.arm("baseline"), scale)
                n, target = cfg.num_parameters(), g1.num_parameters()
                assert abs(n - target) / target < 0.01, (scale, task, arm.name)
                added = n - base.num_parameters()
                assert abs(added - budget) / budget < 0.05, (scale, task, arm.name, added, budget)
            # gated arms are narrowed to the baseline's count by default
            for name in ("sdpa-elementwise", "value-elementwise", "sdpa-headwise"):
                cfg = study.model_config(task, study.arm(name), scale)
                ref = study.model_config(task, study.arm("baseline"), scale).num_parameters()
                assert abs(cfg.num_parameters() - ref) / ref < 0.01, (scale, task, name)


def test_variants_study_covers_every_named_variant_and_quick_covers_the_minimum():
    study = load_study(VARIANTS)
    assert {a.gate for a in study.arms} == set(GateConfig.names())
    assert study.arms_for("quick", "moe") == []
    assert study.arms_for("full", "dense") == study.arms == study.arms_for("full", "moe")
    quick = {a.name for a in study.arms_for("quick", "dense")}
    required = {
        "baseline",
        "sdpa-elementwise",
        "sdpa-headwise",
        "value-elementwise",
        "key-elementwise",
        "query-elementwise",
        "dense-elementwise",
        "sdpa-head-shared",
        "sdpa-additive-silu",
        "sdpa-input-independent",
        "sdpa-ns-sigmoid",
    }
    assert required <= quick and any(n.startswith("more-") for n in quick)
    table = parameter_table(study, "quick", "dense")
    assert table["sdpa-elementwise"]["shape"] == "FFN 192→171"
    assert table["more-kv-heads"]["added"] == 4 * 64 * 64  # the G1 gate's parameters


def test_orderings_are_judged_against_the_seed_spread():
    o = next(x for x in ORDERINGS if x.key == "head-specific")
    losses = {
        "t": {
            "sdpa-elementwise": {0: 5.00, 1: 5.10, 2: 5.20},
            "sdpa-head-shared": {0: 5.05, 1: 5.15, 2: 5.26},  # worse on every seed
            "value-elementwise": {0: 5.00, 1: 5.10, 2: 5.20},
            "value-head-shared": {0: 5.02, 1: 5.08, 2: 5.21},  # noise
        }
    }
    j = judge(losses, "t", o)
    assert j["verdict"] == "partly holds" and [p["real"] for p in j["pairs"]] == [True, False]
    # unpaired, the same numbers would not resolve (the seed spread of each arm is 0.1)
    diff, real, how = compare({0: 5.0, 1: 5.1, 2: 5.2}, {3: 5.05, 4: 5.15, 5: 5.26})
    assert diff > 0 and real is False and "spread" in how
    losses["t"]["value-head-shared"] = {0: 4.9, 1: 5.0, 2: 5.1}  # better on every seed
    assert judge(losses, "t", o)["verdict"] == "mixed"
    del losses["t"]["sdpa-head-shared"]
    assert judge(losses, "t", o)["verdict"] == "contradicted"
    one_seed = {"t": {k: {0: v[0]} for k, v in losses["t"].items()}}
    assert judge(one_seed, "t", o)["verdict"] == "cannot resolve at this scale"
    assert judge({"t": {}}, "t", o)["verdict"] == "not run at this scale"
    # G1 at equal parameters stands in for G1 with its extra parameters
    matched = next(x for x in ORDERINGS if x.key == "beats-matched")
    subs = {"t": {"sdpa-elementwise": {0: 5.0, 1: 5.1}, "more-kv-heads": {0: 5.2, 1: 5.3}}}
    j = judge(subs, "t", matched)
    assert j["verdict"] == "holds" and j["pairs"][0]["better"] == "sdpa-elementwise"


# ----------------------------------------------------------------------------- stability study
@pytest.mark.slow
def test_stability_smoke_records_divergence_and_reports(stability_dir):
    results = json.loads((stability_dir / "results.json").read_text())
    status = {r["arm"]: r["status"] for r in results["runs"]}
    assert status == {
        "baseline@lr0.003": "ok",
        "baseline@lr1000": "diverged",
        "gated@lr0.003": "ok",
        "gated@lr1000": "diverged",
    }
    sweep = results["sweeps"]["lm"]
    for arm in ("baseline", "gated"):
        assert sweep[arm]["summary"]["eta_max"] == 0.003
        assert sweep[arm]["summary"]["first_diverged_lr"] == 1000
        ok, bad = sweep[arm]["points"]["0.003"], sweep[arm]["points"]["1000"]
        assert ok["val_loss"] > 0 and ok["max_attention_logit"] > 0 and ok["max_abs"] > 0
        assert bad["diverged"] and bad["val_loss"] is None and bad["diverged_at"]
    report = (stability_dir / "report.md").read_text()
    for needle in (
        "### Verdicts",
        "**G1 gating (with QK-norm)** (gated vs baseline)",
        "### LR sensitivity",
        "| arm | best LR | best val loss | eta_max |",
        "### Every run",
        "| baseline | 1000 | - | - | yes (step",
        "max attn logit",
        "SpikeScore",
        "Table 2",
        "9.195",
    ):
        assert needle in report, needle
    for png in ("lm_loss_vs_lr", "lm_loss_curves"):
        path = stability_dir / "plots" / f"{png}.png"
        assert path.stat().st_size > 5000 and f"plots/{png}.png" in report


@pytest.mark.slow
def test_stability_resume_keeps_finished_and_diverged_runs(stability_dir):
    records = sorted(stability_dir.glob("lm/*/seed0/record.json"))
    assert len(records) == 4
    stamps = {p: p.stat().st_mtime_ns for p in records}
    (stability_dir / "report.md").unlink()
    assert _reproduce(STABILITY, stability_dir, "--resume") in (0, 1)
    assert (stability_dir / "report.md").exists()
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())


def test_stability_study_grid_and_no_stop_on_nonfinite():
    study = load_study(STABILITY)
    quick = study.arms_for("quick", "lm")
    assert len(study.lrs_for("quick")) >= 5
    lrs = study.lrs_for("quick")
    assert all(b / a == 2 for a, b in itertools.pairwise(lrs))  # a x2 grid
    assert {a.base for a in quick} == {
        "baseline",
        "gated",
        "baseline-no-qk-norm",
        "gated-no-qk-norm",
    }
    for scale in study.scales:
        for arm in study.arms_for(scale, "lm"):
            raw = study.run_config("lm", arm, scale, 0, Path("."))
            assert raw["train"]["stop_on_nonfinite"] is False
            assert raw["train"]["lr"] == arm.lr
    sandwich = study.model_config("lm", study.arm("baseline-sandwich"), "full")
    assert sandwich.sandwich_norm and sandwich.gate.position == "none"


def test_unrecovered_spikes_and_eta_max():
    flat = [(i, 3.0, False) for i in range(20)]
    spike_recovers = flat[:10] + [(10, 9.0, True)] + [(i, 2.9, False) for i in range(11, 30)]
    spike_stays = flat[:10] + [(10, 9.0, True)] + [(i, 6.0, False) for i in range(11, 30)]
    assert unrecovered_spikes(flat) == 0
    assert unrecovered_spikes(spike_recovers) == 0
    assert unrecovered_spikes(spike_stays) == 1

    def point(val, diverged=False, unrecovered=0):
        return {"val_loss": val, "diverged": diverged, "unrecovered_spikes": unrecovered}

    s = Sweep("a")
    s.points = {
        0.001: point(5.20),
        0.002: point(5.00),
        0.004: point(5.04),  # within 0.05 of the best: still fine
        0.008: point(5.03, unrecovered=1),  # an unrecovered spike: not stable
        0.016: point(None, diverged=True),
    }
    assert s.best == (0.002, 5.00) and s.eta_max == 0.004 and s.first_diverged == 0.016
    assert s.penalty_per_doubling == pytest.approx(0.03 / 2)


# ----------------------------------------------------------------------------- study format
BASE = {
    "name": "x",
    "arms": [
        {"name": "baseline", "gate": "none"},
        {"name": "g1", "gate": "sdpa-elementwise"},
    ],
    "tasks": {"t": {"model": {"preset": "tiny"}, "data": {"kind": "backcopy", "seq_len": 16}}},
    "scales": {"smoke": {}},
}


def _study(**changes):
    data = json.loads(json.dumps(BASE))
    for key, value in changes.items():
        data[key] = value
    return study_from_dict(data)


def test_study_lr_sweep_and_per_task_arm_subsets():
    study = _study(scales={"smoke": {"lrs": [1e-3, 2e-3]}, "other": {}}, lrs=[5e-3])
    arms = study.arms_for("smoke", "t")
    assert [a.name for a in arms] == [
        "baseline@lr0.001",
        "baseline@lr0.002",
        "g1@lr0.001",
        "g1@lr0.002",
    ]
    assert arms[1].base == "baseline" and arms[1].lr == 2e-3
    assert study.run_config("t", arms[1], "smoke", 0, Path("."))["train"]["lr"] == 2e-3
    assert [a.name for a in study.arms_for("other")] == ["baseline@lr0.005", "g1@lr0.005"]
    tasks = dict(BASE["tasks"], u=BASE["tasks"]["t"])
    study = _study(tasks=tasks, scales={"smoke": {"arms": {"t": ["g1"], "u": []}}})
    assert [a.name for a in study.arms_for("smoke", "t")] == ["g1"]
    assert study.arms_for("smoke", "u") == []
    assert [a.name for a in study.arms_for("smoke")] == ["g1"]


def test_study_parameter_matching_keys():
    arms = [
        {"name": "baseline", "gate": "none"},
        {"name": "g1", "gate": "sdpa-elementwise"},
        {"name": "g1-full", "gate": "sdpa-elementwise", "equal_params": False},
        {"name": "kv", "gate": "none", "match": "g1-full", "grow": "kv_heads"},
    ]
    tasks = {"t": dict(BASE["tasks"]["t"], equal_params=True)}
    study = _study(arms=arms, tasks=tasks)
    base, g1, full, kv = (study.model_config("t", study.arm(a["name"]), "smoke") for a in arms)
    assert g1.intermediate_size < base.intermediate_size == full.intermediate_size
    assert kv.num_key_value_heads == 4 and kv.num_parameters() == full.num_parameters()
    raw = study.run_config("t", study.arm("g1"), "smoke", 3, Path("out"))
    assert raw["model"]["intermediate_size"] == g1.intermediate_size and raw["seed"] == 3
    assert "equal_params" not in raw  # a study key, not a run-config key
    # without equal_params, old studies read exactly as before
    plain = _study()
    assert (
        "intermediate_size"
        not in plain.run_config("t", plain.arm("g1"), "smoke", 0, Path("."))["model"]
    )
    assert isinstance(plain.arm("g1"), Arm) and plain.arms_for("smoke")[1].lr is None


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"lrs": [1e-3, -1.0]}, "positive learning rates"),
        ({"lrs": [1e-3, 1e-3]}, "repeated"),
        ({"scales": {"smoke": {"lrs": "1e-3"}}}, "positive learning rates"),
        ({"scales": {"smoke": {"arms": {"nope": ["g1"]}}}}, "unknown task 'nope'"),
        ({"scales": {"smoke": {"arms": {"t": ["g2"]}}}}, "unknown arms"),
        ({"arms": [{"name": "a", "grow": "kv_heads"}]}, "needs match"),
        ({"arms": [{"name": "a", "match": "a", "grow": "layers"}]}, "grow='layers'"),
        ({"arms": [{"name": "a", "match": "zzz"}]}, "names no arm"),
        ({"arms": [{"name": "a", "equal_params": "yes"}]}, "equal_params"),
        ({"arms": [{"name": "a", "grow_by": 1}]}, "Did you mean 'grow'"),
    ],
)
def test_study_format_validation(changes, message):
    with pytest.raises(ValueError, match=message):
        _study(**changes)


def test_metric_names_are_checked():
    from gated_attention.experiments.metrics import Column
    from gated_attention.experiments.stats import mean_of

    with pytest.raises(ValueError, match="Did you mean 'val_loss'"):
        Column("val_los", "val loss")
    with pytest.raises(ValueError, match="unknown metric 'f_atn'"):
        mean_of({}, "lm", "baseline", "f_atn")


def test_study_files_ship_in_the_package():
    """`reproduce --study NAME` finds every study from an installed wheel: the files live in the
    package, pyproject's package data names them, and configs/studies of a checkout links there."""
    import fnmatch

    import gated_attention
    from gated_attention.experiments.study import find_study, studies_dir, tomllib

    package = Path(gated_attention.__file__).resolve().parent
    assert studies_dir().is_relative_to(package)
    shipped = sorted(p.relative_to(package).as_posix() for p in studies_dir().glob("*.toml"))
    assert {"experiments/studies/sinks.toml", "experiments/studies/sink-zoo.toml"} <= set(shipped)
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["gated_attention"]
    for rel in shipped:
        assert any(fnmatch.fnmatch(rel, pat) for pat in patterns), rel
        name = Path(rel).stem
        assert find_study(name).resolve() == (package / rel).resolve()
    assert (ROOT / "configs" / "studies").resolve() == studies_dir()
