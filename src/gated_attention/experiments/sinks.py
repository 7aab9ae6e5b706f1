"""The main job's report: attention sinks, massive activations and gate sparsity per arm and
task, beside the paper's Table 4, with verdicts written from the measured numbers."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from gated_attention.analysis import (
    plot_attention_maps,
    plot_first_token_mass,
    plot_gate_histograms,
    plot_gate_mean_per_layer,
    plot_loss_curves,
    plot_max_activation,
)
from gated_attention.experiments.paper import TABLE4
from gated_attention.experiments.study import RunRecord, Study
from gated_attention.experiments.summary import effect, fmt, fmt_ms, mean_std, report_footer

# Metrics of the summary table: (key, header, path into a record's analysis summary).
COLUMNS = [
    ("val_loss", "val loss"),
    ("val_ppl", "val ppl"),
    ("f_attn", "F-Attn"),
    ("f_attn_ratio_to_floor", "F-Attn / floor"),
    ("sink_rate", "sink rate"),
    ("m_act", "M-Act"),
    ("gate_mean", "gate mean"),
    ("gate_share_below", "gate < 0.1"),
]


def run_metrics(rec: RunRecord) -> dict[str, float | None]:
    """The flat metrics of one run used in tables and verdicts."""
    a = rec.analysis or {}
    s = a.get("summary", {})
    out = {
        "val_loss": a.get("val_loss"),
        "val_ppl": a.get("val_ppl"),
        "f_attn": s.get("f_attn"),
        "causal_floor": s.get("causal_floor"),
        "f_attn_ratio_to_floor": s.get("f_attn_ratio_to_floor"),
        "sink_rate": s.get("sink_rate"),
        "m_act": s.get("m_act"),
        "max_abs": max(a.get("report", {}).get("massive", {}).get("max_abs_per_layer") or [0])
        if a
        else None,
        "gate_mean": s.get("gate_mean"),
        "gate_share_below": s.get("gate_share_below"),
        "z_before": s.get("mean_abs_z_before"),
        "z_after": s.get("mean_abs_z_after"),
        "max_attention_logit": a.get("max_attention_logit"),
        "spike_score": rec.result.get("spike_score"),
        "params": (rec.result.get("parameters") or {}).get("total"),
        "gate_params": (rec.result.get("parameters") or {}).get("gate"),
        "seconds": rec.seconds,
    }
    bc = a.get("backcopy")
    if bc:
        layers = bc["per_layer"]
        out["bos_other"] = max(x["bos_attention_other"] or 0 for x in layers)
        out["bos_trigger"] = max(x["bos_attention_trigger"] or 0 for x in layers)
        if layers and "gate_other" in layers[0]:
            out["gate_other"] = min(x["gate_other"] for x in layers)
            out["gate_trigger"] = max(x["gate_trigger"] for x in layers)
            out["effective_bos_other"] = max(x["effective_bos_other"] for x in layers)
    return out


def aggregate(records: list[RunRecord]) -> dict[str, dict[str, dict[str, Any]]]:
    """``{task: {arm: {metric: {"mean", "std", "n", "values"}}}}`` over seeds (ok runs)."""
    grouped: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for rec in records:
        if rec.status == "ok":
            grouped[rec.task][rec.arm].append(run_metrics(rec))
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for task, arms in grouped.items():
        out[task] = {}
        for arm, runs in arms.items():
            keys = {k for r in runs for k in r}
            out[task][arm] = {}
            for k in sorted(keys):
                vals = [r.get(k) for r in runs]
                m, s, n = mean_std(vals)
                out[task][arm][k] = {"mean": m, "std": s, "n": n, "values": vals}
    return out


def _values(agg: dict, task: str, arm: str, key: str) -> list[float]:
    entry = agg.get(task, {}).get(arm, {}).get(key)
    return [v for v in (entry or {}).get("values", []) if v is not None]


def _m(agg: dict, task: str, arm: str, key: str) -> float | None:
    return (agg.get(task, {}).get(arm, {}).get(key) or {}).get("mean")


def verdicts(study: Study, agg: dict, baseline: str = "baseline") -> list[str]:
    """Sentences written from the numbers, never hard-coded conclusions."""
    lines: list[str] = []
    gated = [a.name for a in study.arms if a.name != baseline]
    for task in agg:
        if baseline not in agg[task]:
            lines.append(f"**{task}**: the baseline did not finish; no comparison possible.")
            continue
        ratio = _m(agg, task, baseline, "f_attn_ratio_to_floor")
        f_base = _m(agg, task, baseline, "f_attn")
        floor = _m(agg, task, baseline, "causal_floor")
        if ratio is not None:
            if ratio >= 2.0:
                lines.append(
                    f"**{task}**: the baseline formed an attention sink: first-token mass "
                    f"{fmt(f_base)} is {ratio:.1f}x the causal floor {fmt(floor)} "
                    f"(paper's baseline: {TABLE4['none']['f_attn']})."
                )
            elif ratio >= 1.3:
                lines.append(
                    f"**{task}**: the baseline shows a weak sink: first-token mass {fmt(f_base)} "
                    f"is {ratio:.1f}x the causal floor {fmt(floor)}."
                )
            else:
                lines.append(
                    f"**{task}**: baseline first-token mass is {ratio:.1f}x the causal floor "
                    f"({fmt(f_base)} vs {fmt(floor)}): no sink formed at this scale, so this task "
                    "cannot show the paper's sink removal."
                )
        bo, bt = _m(agg, task, baseline, "bos_other"), _m(agg, task, baseline, "bos_trigger")
        if bo is not None and bt is not None:
            lines.append(
                f"- baseline: BOS attention {fmt(bo)} on non-trigger (dormant) queries vs "
                f"{fmt(bt)} on trigger queries"
                + (" — the dormant head parks on BOS (a sink)." if bo > 2 * bt else ".")
            )
        for arm in gated:
            if arm not in agg[task]:
                lines.append(f"- {arm}: did not finish (see the failures section).")
                continue
            parts = []
            f_arm = _m(agg, task, arm, "f_attn")
            if f_base and f_arm is not None and ratio is not None and ratio >= 1.3:
                parts.append(
                    f"first-token mass {fmt(f_arm)} vs {fmt(f_base)} "
                    f"({f_base / max(f_arm, 1e-9):.1f}x lower)"
                    if f_arm < f_base
                    else f"first-token mass {fmt(f_arm)} is not below the baseline's {fmt(f_base)}"
                )
            m_arm, m_base = _m(agg, task, arm, "m_act"), _m(agg, task, baseline, "m_act")
            if m_arm is not None and m_base:
                if m_arm < m_base:
                    change = f"{m_base / max(m_arm, 1e-9):.1f}x smaller"
                else:
                    change = f"{m_arm / m_base:.2f}x the baseline's: not smaller"
                parts.append(f"M-Act {fmt(m_arm)} vs {fmt(m_base)} ({change})")
            diff, real, how = effect(
                _values(agg, task, baseline, "val_loss"), _values(agg, task, arm, "val_loss")
            )
            if diff is not None:
                word = "lower" if diff < 0 else "higher"
                call = (
                    "" if real is None else (" — a real effect" if real else " — within seed noise")
                )
                parts.append(f"validation loss {abs(diff):.3f} nats {word} ({how}{call})")
            g = _m(agg, task, arm, "gate_mean")
            if g is not None:
                sparse = (
                    "sparse" if g < 0.3 else ("moderately sparse" if g < 0.45 else "not sparse")
                )
                parts.append(
                    f"mean gate {fmt(g)} ({sparse}; paper: "
                    f"{TABLE4.get(_paper_key(study, arm), {}).get('gate_mean', '-')})"
                )
            go, gt = _m(agg, task, arm, "gate_other"), _m(agg, task, arm, "gate_trigger")
            if go is not None and gt is not None:
                closes = go < 0.5 * gt
                parts.append(
                    f"on non-trigger queries its gate {'closes' if closes else 'stays open'} "
                    f"(lowest layer mean {fmt(go)} vs {fmt(gt)} on trigger queries)"
                )
            eff = _m(agg, task, arm, "effective_bos_other")
            if eff is not None and bo is not None:
                parts.append(
                    f"gate-weighted BOS attention on non-trigger queries {fmt(eff)} vs the "
                    f"baseline's BOS attention {fmt(bo)}"
                )
            lines.append(f"- {arm}: " + "; ".join(parts) + ".")
    return lines


def _paper_key(study: Study, arm_name: str) -> str:
    for arm in study.arms:
        if arm.name == arm_name:
            return arm.paper_row or arm.gate
    return arm_name


def _paper(value: float | None) -> str:
    """A paper number as printed (no padding zeros)."""
    return "-" if value is None else f"{value:g}"


def _table(study: Study, agg: dict, task: str) -> list[str]:
    head = ["arm", "gate"] + [h for _, h in COLUMNS] + ["paper gate / M-Act / F-Attn / PPL"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm in study.arms:
        if arm.name not in agg.get(task, {}):
            lines.append(
                f"| {arm.name} | {arm.gate} | " + " | ".join(["failed"] * len(COLUMNS)) + " | |"
            )
            continue
        row = [arm.name, arm.gate]
        for key, _ in COLUMNS:
            e = agg[task][arm.name].get(key) or {}
            row.append(fmt_ms(e.get("mean"), e.get("std")))
        p = TABLE4.get(arm.paper_row or arm.gate)
        row.append(
            " / ".join(_paper(p.get(k)) for k in ("gate_mean", "m_act", "f_attn", "ppl"))
            if p
            else "-"
        )
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _plots(study: Study, records: list[RunRecord], out_dir: Path) -> dict[str, list[str]]:
    """Per task: PNGs from the first seed of every arm (loss curves from all)."""
    figs: dict[str, list[str]] = defaultdict(list)
    by_task: dict[str, dict[str, RunRecord]] = defaultdict(dict)
    for rec in records:
        if rec.status == "ok" and rec.arm not in by_task[rec.task]:
            by_task[rec.task][rec.arm] = rec
    plots_dir = out_dir / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)
    for task, arms in by_task.items():
        reports = {arm: rec.analysis["report"] for arm, rec in arms.items()}
        floor = next(iter(reports.values()))["first_token_mass"]["floor"]
        figs[task].append(
            str(
                plot_first_token_mass(
                    reports,
                    plots_dir / f"{task}_first_token_mass.png",
                    floor=floor,
                    title=f"{task}: attention on the first token per layer",
                )
            )
        )
        figs[task].append(
            str(
                plot_max_activation(
                    reports,
                    plots_dir / f"{task}_max_activation.png",
                    title=f"{task}: largest residual activation per layer",
                )
            )
        )
        gated = {a: r for a, r in reports.items() if r.get("gates")}
        if gated:
            figs[task].append(
                str(
                    plot_gate_histograms(
                        gated,
                        plots_dir / f"{task}_gate_histograms.png",
                        title=f"{task}: gate scores",
                    )
                )
            )
            figs[task].append(
                str(
                    plot_gate_mean_per_layer(
                        gated,
                        plots_dir / f"{task}_gate_mean.png",
                        title=f"{task}: mean gate per layer",
                    )
                )
            )
        maps = {}
        for arm, rec in arms.items():
            layer_maps = rec.analysis.get("maps", {})
            if not layer_maps:
                continue
            last = str(len(layer_maps) - 1)
            m = layer_maps[last]
            maps[f"{arm} (layer {last})"] = {"probs": m["probs"], "effective": m.get("effective")}
        if maps:
            figs[task].append(
                str(
                    plot_attention_maps(
                        maps,
                        plots_dir / f"{task}_attention_maps.png",
                        title=f"{task}: head-averaged attention, first sequence",
                    )
                )
            )
        curves = {
            arm: [tuple(x) for x in rec.analysis.get("loss_curve", [])] for arm, rec in arms.items()
        }
        figs[task].append(
            str(
                plot_loss_curves(
                    curves,
                    plots_dir / f"{task}_loss_curves.png",
                    title=f"{task}: training loss",
                    smooth=10,
                )
            )
        )
    return figs


def _backcopy_table(study: Study, records: list[RunRecord], task: str) -> list[str]:
    rows = [
        "| arm | layer | BOS attn (trigger q) | BOS attn (other q) | gate (trigger q) "
        "| gate (other q) | gate-weighted BOS attn (other q) |",
        "|---|---|---|---|---|---|---|",
    ]
    seen = set()
    for rec in records:
        if rec.task != task or rec.status != "ok" or rec.arm in seen:
            continue
        seen.add(rec.arm)
        for x in rec.analysis.get("backcopy", {}).get("per_layer", []):
            rows.append(
                f"| {rec.arm} | {x['layer']} | {fmt(x['bos_attention_trigger'])} | "
                f"{fmt(x['bos_attention_other'])} | {fmt(x.get('gate_trigger'))} | "
                f"{fmt(x.get('gate_other'))} | {fmt(x.get('effective_bos_other'))} |"
            )
    return rows if len(rows) > 2 else []


def write_report(
    study: Study,
    scale: str,
    records: list[RunRecord],
    out_dir: Path,
    meta: dict[str, Any],
) -> Path:
    """Write ``report.md``, ``results.json`` and ``plots/*.png`` under ``out_dir``."""
    agg = aggregate(records)
    figs = _plots(study, records, out_dir)
    verdict_lines = verdicts(study, agg)
    seeds = study.scale(scale).get("seeds", [0])
    lines = [
        f"# {study.title}",
        "",
        f"Study `{study.name}` at scale `{scale}`: {len(study.arms_for(scale))} arms x "
        f"{len(study.tasks)} tasks x {len(seeds)} seed(s) ({', '.join(map(str, seeds))}). "
        f"Wall time {meta['wall_time_s'] / 60:.1f} min. Measured numbers come from this run; the "
        "paper's numbers (Table 4, 15A2B MoE after 400B tokens) are printed beside them for "
        "reference, not as targets a model of this size could reach.",
        "",
        "## Verdicts",
        "",
        *verdict_lines,
        "",
    ]
    for task in study.tasks:
        cfg_task = study.tasks[task]
        lines += [f"## Task `{task}`", ""]
        if cfg_task.get("description"):
            lines += [cfg_task["description"], ""]
        lines += _table(study, agg, task)
        lines += [
            "",
            "F-Attn: attention on the first token averaged over queries, heads and layers; floor: "
            "H_T/T of a uniform causal head. Sink rate: share of (layer, head) pairs with alpha_1 > "
            "0.3 (Gu et al.). M-Act: mean over layers of the largest |h| in the residual stream. "
            "Values are mean ± std over seeds.",
            "",
        ]
        bc = _backcopy_table(study, records, task)
        if bc:
            lines += [
                "Backcopy split (first seed): where the model must copy (trigger queries) "
                "vs where the head should be dormant (other queries).",
                "",
                *bc,
                "",
            ]
        for fig in figs.get(task, []):
            rel = Path(fig).relative_to(out_dir)
            lines += [f"![{rel.stem}]({rel.as_posix()})", ""]
    failed = [r for r in records if r.status != "ok"]
    lines += report_footer(
        failed,
        meta,
        "Exact run configs are in `results.json` and in each run directory's `config.json`.",
    )
    report = out_dir / "report.md"
    report.write_text("\n".join(lines) + "\n")
    results = {
        "study": study.name,
        "scale": scale,
        "aggregate": agg,
        "verdicts": verdict_lines,
        "runs": [r.to_dict() | {"analysis": _slim(r.analysis)} for r in records],
        "meta": meta,
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=1, default=str))
    return report


def _slim(analysis: dict[str, Any]) -> dict[str, Any]:
    """Drop the bulky attention maps from results.json (the plots show them)."""
    return {k: v for k, v in (analysis or {}).items() if k != "maps"}
