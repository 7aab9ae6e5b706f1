"""The report kit every study report uses: number formatting, markdown tables, figures, the
results JSON and the closing footer (failures and provenance)."""

from __future__ import annotations

import json
import math
import os
import platform
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gated_attention.analysis import to_jsonable
from gated_attention.analysis.plots import figure, plot_loss_curves, save_figure

if TYPE_CHECKING:
    from gated_attention.experiments.study import RunRecord

__all__ = [
    "figure",
    "finish_report",
    "fmt",
    "fmt_g",
    "fmt_ms",
    "fmt_pct",
    "image",
    "probe_figures",
    "provenance",
    "report_footer",
    "runs_json",
    "save_figure",
    "table",
    "to_jsonable",
    "write_json",
    "write_report_files",
]


def fmt(value: float | None, digits: int = 3, *, fixed: bool = False) -> str:
    """A measured number: ``digits`` decimals below 100, one up to 1000, thousands separators
    above (``fixed``: always ``digits`` decimals, for numbers read by their small differences);
    ``-`` when missing or not finite."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if fixed:
        return f"{value:.{digits}f}"
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


def fmt_g(value: float | None) -> str:
    """A number as written in a config or the paper (``g`` format: no padding zeros)."""
    return "-" if value is None else f"{value:g}"


def fmt_pct(ratio: float) -> str:
    """A relative change as a signed percentage (``0.123`` -> ``+12.3%``)."""
    return f"{ratio * 100:+.1f}%"


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """Markdown table lines: the header, the rule and one line per row (an empty cell is
    written as ``| |``)."""

    def line(cells: Sequence[str]) -> str:
        return "|" + "|".join(f" {c} " if c else " " for c in cells) + "|"

    return [line(header), "|" + "---|" * len(header), *(line(r) for r in rows)]


def image(path: str | Path, out_dir: Path) -> str:
    """A markdown image of a figure, linked relative to the report in ``out_dir``."""
    rel = Path(path).relative_to(out_dir)
    return f"![{rel.stem}]({rel.as_posix()})"


PROBE_CURVES = (
    ("f_attn_ratio", "first-token mass / causal floor", (1.0, "causal floor")),
    ("sink_rate", "sink rate (eps 0.3)", None),
    ("m_act_blocks", "M-Act of what the blocks wrote", None),
)
"""Training-time probe keys plotted against tokens seen: (key, y label, reference line)."""


def probe_figures(records: list[RunRecord], task: str, out_dir: Path) -> list[Path]:
    """One figure per :data:`PROBE_CURVES` entry: the training-time probe of every arm's first
    seed against tokens seen (``plots/<task>_<key>.png``; none when no run was probed)."""
    first: dict[str, RunRecord] = {}
    for rec in records:
        if rec.task == task and rec.status == "ok" and rec.arm not in first:
            first[rec.arm] = rec
    figs = []
    for key, label, hline in PROBE_CURVES:
        curves = {
            arm: [(p["tokens"], p[key]) for p in rec.analysis.get("probes", []) if key in p]
            for arm, rec in first.items()
        }
        curves = {arm: pts for arm, pts in curves.items() if pts}
        if curves:
            path = out_dir / "plots" / f"{task}_{key}.png"
            title = f"{task}: {label} while training"
            figs.append(
                plot_loss_curves(
                    curves, path, title=title, xlabel="tokens seen", ylabel=label, hline=hline
                )
            )
    return figs


def runs_json(records: list[RunRecord], drop: Sequence[str] = ("maps", "report")) -> list[dict]:
    """The records as JSON-ready dicts, without the bulky analysis entries named in ``drop``."""
    return [
        r.to_dict() | {"analysis": {k: v for k, v in (r.analysis or {}).items() if k not in drop}}
        for r in records
    ]


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def write_json(path: Path, data: Any) -> Path:
    """``data`` as indented JSON; objects JSON lacks become their ``to_dict()``, ``tolist()``
    or ``str()``."""
    path.write_text(json.dumps(data, indent=1, default=_json_default))
    return path


def write_report_files(out_dir: Path, lines: list[str], results: dict[str, Any]) -> Path:
    """Write ``report.md`` (the lines) and ``results.json`` under ``out_dir``; returns the
    report's path."""
    report = out_dir / "report.md"
    report.write_text("\n".join(lines) + "\n")
    write_json(out_dir / "results.json", results)
    return report


def finish_report(
    out_dir: Path,
    lines: list[str],
    results: dict[str, Any],
    records: list[RunRecord],
    meta: dict[str, Any],
    *,
    failed: Sequence[str] = ("failed", "diverged"),
    configs_note: str = "Exact run configs are in each run directory's `config.json`.",
    drop: Sequence[str] = ("maps", "report"),
) -> Path:
    """Close a study report with :func:`report_footer` (listing the runs whose status is in
    ``failed``), add the records (:func:`runs_json` with ``drop``) and ``meta`` to the results
    and write both files."""
    footer = report_footer([r for r in records if r.status in failed], meta, configs_note)
    results = {**results, "runs": runs_json(records, drop), "meta": meta}
    return write_report_files(out_dir, [*lines, *footer], results)


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
    failed: list[RunRecord],
    meta: dict[str, Any],
    configs_note: str = "Exact run configs are in each run directory's `config.json`.",
) -> list[str]:
    """The closing sections every study report shares: failed runs (first line of their error)
    and the provenance (versions, machine, wall time) as JSON, then ``configs_note`` if any."""
    lines: list[str] = []
    if failed:
        lines += ["## Failures", ""]
        for r in failed:
            text = r.error or str((r.result or {}).get("diverged", "")) or ""
            first = text.splitlines()[0] if text else ""
            lines.append(f"- {r.task} / {r.arm} / seed {r.seed}: {r.status}: {first}")
        lines.append("")
    lines += ["## Provenance", "", "```json", json.dumps(meta, indent=1, default=str), "```", ""]
    return lines + ([configs_note] if configs_note else [])
