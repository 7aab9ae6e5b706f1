"""Statistics the study reports share: aggregation over seeds and effect calls against the seed
spread (unpaired, or paired over shared seeds)."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from gated_attention.experiments.metrics import RunMetrics, check_metric
from gated_attention.experiments.study import RunRecord

Aggregate = dict[str, dict[str, dict[str, dict[str, Any]]]]
"""``{task: {arm: {metric: {"mean", "std", "n", "values"}}}}`` (see :func:`aggregate`)."""


def mean_std(values: Iterable[float | None]) -> tuple[float | None, float | None, int]:
    """Mean, sample standard deviation (``None`` with one value) and count of finite values."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not xs:
        return None, None, 0
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else None), len(xs)


def max_finite(values: Iterable[float | None]) -> float | None:
    """The largest finite value (``None`` when there is none)."""
    xs = [v for v in values if v is not None and math.isfinite(v)]
    return max(xs) if xs else None


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


def compare(
    better: dict[int, float], worse: dict[int, float]
) -> tuple[float | None, bool | None, str]:
    """``(mean loss of worse - mean loss of better, resolved?, how)``.

    Arms trained with the same seeds see the same data order, which moves every arm's loss
    together; so when at least two seeds are shared the comparison is paired: the per-seed
    differences must have a mean larger than their own standard deviation (the seed spread of
    the difference). Otherwise it falls back to :func:`effect` (the difference must exceed
    the larger of the two arms' seed standard deviations).
    """
    common = sorted(set(better) & set(worse))
    if len(common) >= 2:
        diffs = [worse[s] - better[s] for s in common]
        mean, std, n = mean_std(diffs)
        if mean is None:
            return None, None, "not measured"
        return mean, abs(mean) > (std or 0.0), f"paired sd {std:.3f} over {n} seeds"
    return effect(list(better.values()), list(worse.values()))


def aggregate(records: list[RunRecord]) -> Aggregate:
    """Every :class:`RunMetrics` field per task and arm over seeds (finished runs only)."""
    grouped: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for rec in records:
        if rec.status == "ok":
            grouped[rec.task][rec.arm].append(RunMetrics.from_record(rec).measured())
    out: Aggregate = {}
    for task, arms in grouped.items():
        out[task] = {}
        for arm, runs in arms.items():
            out[task][arm] = {}
            for k in sorted({k for r in runs for k in r}):
                vals = [r.get(k) for r in runs]
                m, s, n = mean_std(vals)
                out[task][arm][k] = {"mean": m, "std": s, "n": n, "values": vals}
    return out


def stat(agg: Aggregate, task: str, arm: str, metric: str) -> dict[str, Any]:
    """The aggregate of one metric (empty when the arm did not finish or did not measure it)."""
    return agg.get(task, {}).get(arm, {}).get(check_metric(metric)) or {}


def mean_of(agg: Aggregate, task: str, arm: str, metric: str) -> float | None:
    return stat(agg, task, arm, metric).get("mean")


def values_of(agg: Aggregate, task: str, arm: str, metric: str) -> list[float]:
    """The measured per-seed values of one metric."""
    return [v for v in stat(agg, task, arm, metric).get("values", []) if v is not None]
