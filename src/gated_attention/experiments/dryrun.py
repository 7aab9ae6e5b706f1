"""``reproduce --dry-run``: every run of a study's scale, shrunk, on the CPU.

Each (task, arm) of the scale — its first seed — trains as ``train --dry-run`` trains a run
config (:mod:`gated_attention.train.dryrun`: same gate, dtype policy, compile, checkpointing,
distributed wrapping, data source, checkpoint and resume; reduced width, depth, length, batch
and steps), and is then analysed by the study's own analysis, so the GPU scale's code paths
all run before a GPU is rented. No report is written: the numbers of models this small mean
nothing.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from gated_attention.experiments.study import Study


def dry_run_study(
    study: Study,
    scale: str,
    out_dir: str | Path,
    analyze: Any = None,
    compile_backend: str = "aot_eager",
) -> list[dict[str, Any]]:
    """Dry-run every (task, arm) of ``study`` at ``scale`` (first seed) into ``out_dir``; raises
    what the first failing run raises. Returns one summary per run."""
    from gated_attention.train import RunConfig
    from gated_attention.train.dryrun import dry_run

    out_dir = Path(out_dir)
    seed = study.scale(scale).get("seeds", [0])[0]
    summaries = []
    for task in study.tasks:
        for arm in study.arms_for(scale, task):
            run_dir = out_dir / task / arm.name / f"seed{seed}"
            cfg = RunConfig.from_dict(study.run_config(task, arm, scale, seed, run_dir))
            start = time.perf_counter()
            summary = dry_run(cfg, run_dir, compile_backend)
            if analyze is not None:  # on the run as it trained (its config.json)
                small = RunConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
                summary["analysis"] = sorted(analyze(run_dir, task, small))
            summary.update(task=task, arm=arm.name, seconds=round(time.perf_counter() - start, 1))
            summaries.append(summary)
    return summaries
