"""The sink-emergence study: the emergence summary of probe records, and the study end to end at
smoke scale."""

from __future__ import annotations

import json

import pytest

from gated_attention.analysis.training import emergence
from gated_attention.cli import main
from gated_attention.experiments.study import find_study, load_study


def _probes(ratios: list[float], every: int = 1_000_000) -> list[dict]:
    floor = 0.02
    return [
        {
            "step": i,
            "tokens": i * every,
            "f_attn_ratio": r,
            "f_attn": r * floor,
            "causal_floor": floor,
            "f_attn_layers": [r * floor, 2 * r * floor],
            "sink_rate": 0.1,
            "m_act": 5.0,
        }
        for i, r in enumerate(ratios)
    ]


def test_emergence_extrapolates_a_rising_ratio():
    e = emergence(_probes([1.0, 1.0, 1.1, 1.2, 1.3, 1.4]))
    assert e["slope"] == pytest.approx(0.1)  # per million tokens, over the second half
    assert e["tokens"] == 5_000_000
    assert e["ratio_max_layer"] == pytest.approx(2.8)
    # 1.4 at 5M, +0.1 per 1M: 2.0 at 11M
    assert e["tokens_to_target"] == pytest.approx(11_000_000)


def test_emergence_reports_when_the_target_was_reached_and_none_when_falling():
    assert emergence(_probes([1.0, 2.5, 2.1, 1.9]))["tokens_to_target"] == 1_000_000
    falling = emergence(_probes([1.5, 1.4, 1.3, 1.2]))
    assert falling["slope"] < 0 and falling["tokens_to_target"] is None
    assert emergence([]) == {}


def test_study_file_is_valid_and_every_factor_arm_changes_one_thing():
    study = load_study(find_study("sink-emergence"))
    assert study.report == "sink-emergence"
    assert study.arms[0].name == "reference" and study.arms[0].gate == "none"
    gated = [a for a in study.arms if a.gate != "none"]
    assert {a.gate for a in gated} == {"sdpa-elementwise", "sdpa-headwise"}
    for arm in study.arms[1:]:
        assert arm.gate != "none" or arm.overrides, arm.name
    assert study.probe("lm", "quick")["every"] >= 1
    assert set(study.scale("full")["seeds"]) == {0, 1, 2}


@pytest.mark.slow
def test_smoke_study_writes_factor_table_curves_and_verdicts(tmp_path):
    out = tmp_path / "se"
    assert (
        main(
            [
                "reproduce",
                "--study",
                "sink-emergence",
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
    assert "### Factors" in report and "### Verdicts" in report
    assert "the reference regime `reference`" in report
    assert "- gate `gated-elementwise`:" in report and "the first token passes on" in report
    for arm in ("reference", "qk-norm", "no-bos", "gated-elementwise"):
        assert f"| {arm} |" in report
    for key in ("f_attn_ratio", "sink_rate", "m_act_blocks"):
        assert (out / "plots" / f"lm_{key}.png").stat().st_size > 1000
    results = json.loads((out / "results.json").read_text())
    ref = results["aggregate"]["lm"]["reference"]
    assert ref["tokens"]["mean"] == 8 * 4 * 32
    assert ref["probe_ratio"]["mean"] > 0
    gated = results["aggregate"]["lm"]["gated-elementwise"]
    assert 0 < gated["f_attn_gated"]["mean"] < 1
