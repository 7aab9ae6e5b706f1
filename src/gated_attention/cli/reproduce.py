"""``gated-attention reproduce``: run a study (or a preset of the main sinks study) and write
its report."""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from gated_attention.experiments.study import find_study, load_study, run_study

PRESETS = ("smoke", "quick", "full", "gpu")
"""``--preset NAME`` runs the main study (``configs/studies/sinks.toml``) at that scale."""

log = logging.getLogger("gated_attention.experiments")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--preset",
        choices=PRESETS,
        help="the main sinks study at this scale (smoke < 1 min, quick <= 15 min "
        "on 2 CPU cores, full: 3 seeds, gpu: ~100M models)",
    )
    which.add_argument("--study", help="a study TOML file or name in configs/studies")
    parser.add_argument("--scale", choices=PRESETS, help="scale of --study (default quick)")
    parser.add_argument(
        "--out", help="output directory (default runs/<preset> or runs/<study>-<scale>)"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="skip runs that already finished and continue interrupted ones",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="train and analyse every run of the scale (first seed) on the CPU for a few steps "
        "at reduced size, keeping dtype, compile, checkpointing and data (train --dry-run); no "
        "report",
    )


def run(args: argparse.Namespace) -> int:
    from gated_attention.experiments.reports import report_writer

    if args.study:
        study = load_study(find_study(args.study))
        scale = args.scale or "quick"
        out = Path(args.out or f"runs/{study.name}-{scale}")
    else:
        if args.scale:
            raise ValueError("--scale goes with --study; with --preset the preset is the scale")
        scale = args.preset or "quick"
        study = load_study(find_study("sinks"))
        out = Path(args.out or f"runs/{scale}")
    writer, analyze = report_writer(study.report)
    if args.dry_run:
        import tempfile

        from gated_attention.experiments.dryrun import dry_run_study

        with tempfile.TemporaryDirectory(prefix="dry-run-") as tmp:
            runs = dry_run_study(study, scale, args.out or tmp, analyze)
        print(json.dumps({"study": study.name, "scale": scale, "dry_runs": runs}, indent=1))
        return 0
    from gated_attention.train.lock import RunLock

    with RunLock(out):
        if not args.resume and _has_study(out):
            raise ValueError(
                f"{out} already holds a study; add --resume to continue it (finished runs are "
                "kept) or choose another --out"
            )
        return _run(args, study, scale, out, writer, analyze)


def _has_study(out: Path) -> bool:
    """Whether ``out`` holds (part of) a study: a report or any run's record or checkpoints."""
    if (out / "report.md").exists():
        return True
    return any(out.glob("**/record.json")) or any(out.glob("**/checkpoints"))


def _portable(path: Path | str) -> str:
    """The study file as the report records it: relative to the working directory when under
    it (``configs/studies/sinks.toml``), else its file name, so a report names no machine path."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return path.name


def _run(args: argparse.Namespace, study, scale: str, out: Path, writer, analyze) -> int:
    start = time.perf_counter()
    records = run_study(study, scale, out, args.resume, analyze, not args.no_progress)
    from gated_attention.experiments.reporting import provenance

    meta = {
        "study": study.name,
        "study_file": _portable(study.source),
        "scale": scale,
        "scale_spec": study.scale(scale),
        "wall_time_s": time.perf_counter() - start,
        "versions": provenance(),
    }
    report = writer(study, scale, records, out, meta)
    # a diverged run is a finished measurement (the stability study expects some)
    ok = sum(r.status in ("ok", "diverged") for r in records)
    print(
        json.dumps(
            {
                "report": str(report),
                "runs_ok": ok,
                "runs": len(records),
                "minutes": round(meta["wall_time_s"] / 60, 2),
            },
            indent=1,
        )
    )
    return 0 if ok == len(records) else 1
