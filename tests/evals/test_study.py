"""The long-context study end to end at smoke scale through the study runner (offline: a local
text corpus)."""

from __future__ import annotations

import json
import time

import pytest

from gated_attention.cli import main
from gated_attention.evals import SCALING_MODES
from gated_attention.experiments import long_context
from gated_attention.experiments.study import deep_merge, find_study, load_study, run_study

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def study(tmp_path_factory, corpus_file):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("long-context")
    data = {"kind": "files", "path": str(corpus_file), "cache_dir": str(out / "cache")}
    spec = load_study(find_study("long-context"))
    spec.tasks["lm"] = deep_merge(spec.tasks["lm"], {"data": data})
    start = time.perf_counter()
    try:
        records = run_study(spec, "smoke", out, analyze=long_context.analyze, progress=False)
        long_context.write_report(spec, "smoke", records, out / "study", {"wall_time_s": 0.0})
    finally:
        torch.set_num_threads(threads)
    results = json.loads((out / "study" / "results.json").read_text())
    results["training"] = {r.arm: r.result for r in records}
    return out, results, time.perf_counter() - start


def test_smoke_study_runs_and_reports(study):
    out, results, seconds = study
    assert seconds < 30
    assert set(results["arms"]) == {"baseline", "gated"}
    assert results["config"]["lengths"] == [32, 64, 128, 256]
    for arm in results["arms"].values():
        assert list(arm["scalings"]) == list(SCALING_MODES)
        for entry in arm["scalings"].values():
            assert set(entry["ppl"]) == {"32", "64", "128", "256"}
            assert all(v > 1 for v in entry["ppl"].values())
            assert entry["retrieval"]["task"] == "passkey"  # trained with the mix
        assert {"full", "window", "window+4sink"} <= set(arm["streaming"])
    # plain RoPE and dynamic NTK agree within the trained length
    for arm in results["arms"].values():
        s = arm["scalings"]
        assert s["dynamic"]["ppl"]["32"] == pytest.approx(s["none"]["ppl"]["32"], rel=1e-6)
    study_dir = out / "study"
    saved = json.loads((study_dir / "results.json").read_text())
    assert saved["verdict"] == results["verdict"] and results["verdict"]
    report = (study_dir / "report.md").read_text()
    assert "| baseline | yarn |" in report and "gated + YaRN" in report
    assert "## First-token attention" in report and "uniform causal floor" in report
    for name in ("ppl_vs_length.png", "per_position_loss.png", "retrieval_vs_length.png"):
        assert (study_dir / name).stat().st_size > 1000
    assert results["training"]["gated"]["steps"] == 30


def test_cli_eval_kinds(study, tmp_path):
    out, _, _ = study
    run = str(out / "lm" / "gated" / "seed0")
    common = ["--multipliers", "1", "2", "--max-tokens", "256"]
    assert (
        main(
            [
                "eval",
                run,
                "--kind",
                "ppl",
                "--scaling",
                "none",
                "yarn",
                *common,
                "--out",
                str(tmp_path / "ppl.json"),
            ]
        )
        == 0
    )
    ppl = json.loads((tmp_path / "ppl.json").read_text())
    assert set(ppl["results"]) == {"none", "yarn"} and ppl["factor"] == 2
    assert (
        main(
            [
                "eval",
                run,
                "--kind",
                "passkey",
                "--num-examples",
                "2",
                "--depths",
                "0.5",
                *common,
                "--out",
                str(tmp_path / "pk.json"),
            ]
        )
        == 0
    )
    pk = json.loads((tmp_path / "pk.json").read_text())
    assert set(pk["results"]["none"]["result"]["accuracy"]) == {"32", "64"}
    assert main(["eval", run, "--kind", "streaming", "--window", "8", *common]) == 0
    assert (out / "lm" / "gated" / "seed0" / "evals" / "streaming-none.json").is_file()
    assert main(["eval", run, "--kind", "ppl", "--scaling", "sideways"]) == 2
    assert (
        main(
            [
                "eval",
                "gated=" + run,
                "--kind",
                "study",
                "--scaling",
                "none",
                *common,
                "--num-examples",
                "1",
                "--depths",
                "1",
                "--out",
                str(tmp_path / "s"),
            ]
        )
        == 0
    )
    assert (tmp_path / "s" / "report.md").is_file()


def test_arms_must_share_their_data(tmp_path):
    from gated_attention.experiments.long_context import run_long_context_study

    for name, kind in (("a", "backcopy"), ("b", "files")):
        (tmp_path / name).mkdir()
        cfg = {"data": {"kind": kind, "seq_len": 16, "path": "x"}}
        (tmp_path / name / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"data\.kind"):
        run_long_context_study({"a": tmp_path / "a", "b": tmp_path / "b"}, tmp_path / "out")


def test_verdict_follows_the_numbers():
    from gated_attention.experiments.long_context import verdict

    def arm(ppl_1x, ppl_8x):
        return {"scalings": {"yarn": {"ppl": {"32": ppl_1x, "256": ppl_8x}}}}

    results = {
        "config": {"lengths": [32, 256], "multipliers": [1, 8]},
        "arms": {"baseline": arm(10.0, 30.0), "gated": arm(10.0, 12.0)},
    }
    lines = verdict(results)
    assert "gated degrades less than baseline" in lines[0]
    assert "under 1 of 1 scaling modes" in lines[1] and "paper direction" in lines[1]
    results["arms"]["gated"] = arm(10.0, 40.0)
    lines = verdict(results)
    assert "degrades more than" in lines[0] and "paper direction" not in lines[1]
