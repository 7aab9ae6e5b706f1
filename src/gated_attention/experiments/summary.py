"""Aggregation over seeds, effect calls against the seed spread, and run provenance."""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import sys
from collections.abc import Iterable
from typing import Any


def mean_std(values: Iterable[float | None]) -> tuple[float | None, float | None, int]:
    """Mean, sample standard deviation (``None`` with one value) and count of finite values."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not xs:
        return None, None, 0
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else None), len(xs)


def fmt(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.1f}"
    return f"{value:.{digits}f}"


def fmt_ms(mean: float | None, std: float | None, digits: int = 3) -> str:
    """``mean ± std`` (just the mean with one seed)."""
    if std is None:
        return fmt(mean, digits)
    return f"{fmt(mean, digits)} ± {fmt(std, digits)}"


def effect(
    a: list[float], b: list[float], min_abs: float = 0.0
) -> tuple[float | None, bool | None, str]:
    """Difference ``mean(b) - mean(a)`` and whether it is a real effect.

    With several seeds on both sides, an effect is called only when the difference exceeds
    the larger of the two seed standard deviations (and ``min_abs``). With a single seed no
    spread is known: the call is ``None`` and the text says so.
    """
    ma, sa, na = mean_std(a)
    mb, sb, nb = mean_std(b)
    if ma is None or mb is None:
        return None, None, "not measured"
    diff = mb - ma
    if na < 2 or nb < 2:
        return diff, None, "single seed: no seed spread to test against"
    spread = max(sa or 0.0, sb or 0.0)
    real = abs(diff) > max(spread, min_abs)
    return diff, real, f"seed spread {spread:.3g}"


def provenance() -> dict[str, Any]:
    """Versions and machine description for reports."""
    import numpy
    import torch

    from gated_attention import __version__

    try:
        import transformers

        tf_version = transformers.__version__
    except ImportError:  # pragma: no cover
        tf_version = None
    return {
        "gated_attention": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": tf_version,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def report_footer(
    failed: list[Any],
    meta: dict[str, Any],
    configs_note: str = "Exact run configs are in each run directory's `config.json`.",
) -> list[str]:
    """The closing sections every study report shares: failed runs (first line of their error)
    and the provenance (versions, machine, wall time) as JSON."""
    lines: list[str] = []
    if failed:
        lines += ["## Failures", ""]
        for r in failed:
            text = r.error or str((r.result or {}).get("diverged", "")) or ""
            first = text.splitlines()[0] if text else ""
            lines.append(f"- {r.task} / {r.arm} / seed {r.seed}: {r.status}: {first}")
        lines.append("")
    lines += ["## Provenance", "", "```json", json.dumps(meta, indent=1, default=str), "```", ""]
    lines.append(configs_note)
    return lines
