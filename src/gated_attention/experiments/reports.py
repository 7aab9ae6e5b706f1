"""Registry of report writers: a study's ``report`` key names one."""

from __future__ import annotations

import importlib
from collections.abc import Callable

REPORTS = {
    "sinks": "sinks",
    "variants": "variants",
    "stability": "stability",
    "long-context": "long_context",
    "sink-emergence": "emergence",
}
"""Report name -> the module under ``gated_attention.experiments`` that writes it."""


def report_writer(name: str) -> tuple[Callable, Callable]:
    """``(write_report, analyze)`` of the report kind ``name``."""
    if name not in REPORTS:
        raise ValueError(f"unknown study report {name!r}; available: {', '.join(REPORTS)}")
    module = importlib.import_module(f"gated_attention.experiments.{REPORTS[name]}")
    return module.write_report, module.analyze
