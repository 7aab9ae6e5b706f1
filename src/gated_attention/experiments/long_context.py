"""The long-context study in the studies format: the runner trains the arms (baseline and
gated, with the retrieval training mix), then this report evaluates them at 1x-8x the training
length under every RoPE scaling (``gated_attention.evals.run_long_context_study``) and adds the
provenance. The scale's ``analysis`` table holds the evaluation settings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gated_attention.experiments.study import RunRecord, Study
from gated_attention.experiments.summary import report_footer


def analyze(run_dir: Path, task: str, cfg: Any) -> dict[str, Any]:
    """Nothing per run: every arm is evaluated together at report time (same token stream)."""
    return {}


def write_report(
    study: Study, scale: str, records: list[RunRecord], out_dir: Path, meta: dict[str, Any]
) -> Path:
    from gated_attention.evals.long_context import run_long_context_study

    seed = study.scale(scale).get("seeds", [0])[0]
    runs = {r.arm: Path(r.run_dir) for r in records if r.status == "ok" and r.seed == seed}
    if not runs:
        raise ValueError("no arm of the long-context study finished; nothing to evaluate")
    settings = dict(study.scale(scale).get("analysis", {}))
    if "depths" in settings:
        settings["depths"] = tuple(settings["depths"])
    results = run_long_context_study(runs, out_dir, seed=seed, **settings)
    report = out_dir / "report.md"
    failed = [r for r in records if r.status != "ok"]
    extra = ["", *report_footer(failed, meta, "")]
    report.write_text(report.read_text() + "\n".join(extra))
    results["meta"] = meta
    results["runs"] = [r.to_dict() for r in records]
    (out_dir / "results.json").write_text(json.dumps(results, indent=1, default=str))
    return report
