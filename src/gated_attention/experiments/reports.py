"""Registry of report writers: a study's ``report`` key names one."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from gated_attention.experiments.study import Study


def _sinks() -> tuple[Callable, Callable]:
    from gated_attention.experiments import sinks
    from gated_attention.experiments.analyze_run import analyze_run

    def analyze(run_dir: Path, task: str, cfg: Any, study: Study | None = None) -> dict:
        return analyze_run(run_dir, cfg)

    return sinks.write_report, analyze


def _variants() -> tuple[Callable, Callable]:
    from gated_attention.experiments import variants

    return variants.write_report, variants.analyze


def _stability() -> tuple[Callable, Callable]:
    from gated_attention.experiments import stability

    return stability.write_report, stability.analyze


def _long_context() -> tuple[Callable, Callable]:
    from gated_attention.experiments import long_context

    return long_context.write_report, long_context.analyze


REPORTS: dict[str, Callable[[], tuple[Callable, Callable]]] = {
    "sinks": _sinks,
    "variants": _variants,
    "stability": _stability,
    "long-context": _long_context,
}


def report_writer(name: str) -> tuple[Callable, Callable]:
    """``(write_report, analyze_run)`` of the report kind ``name``."""
    if name not in REPORTS:
        raise ValueError(f"unknown study report {name!r}; available: {', '.join(REPORTS)}")
    return REPORTS[name]()
