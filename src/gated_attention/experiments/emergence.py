"""The sink-emergence report: when and how fast an ungated model grows an attention sink on
natural text, which training factors move it, and what the G1 gate does in the same regime.

Every run trains with the training-time probe (``probe = {...}`` in the study's task), so each
arm has its first-token mass, sink rate and residual spikes against tokens seen. The first arm of
the study is the reference regime; every other arm changes one factor of it (or adds a gate).
The report tables the last probe of each arm with the change against the reference (and its
seed spread), plots the curves, and writes verdicts from the numbers, including an extrapolation
of the tokens the reference would need to reach 2x the causal floor. Definitions of every metric
are in ``docs/sinks.md``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gated_attention.experiments.analyze_run import run_history
from gated_attention.experiments.metrics import Column
from gated_attention.experiments.paper import TABLE4
from gated_attention.experiments.reporting import (
    finish_report,
    fmt,
    fmt_ms,
    image,
    probe_figures,
    table,
)
from gated_attention.experiments.stats import Aggregate, aggregate, effect, mean_of, values_of
from gated_attention.experiments.study import RunRecord, Study

COLUMNS = (
    Column("tokens", "tokens"),
    Column("val_loss", "val loss"),
    Column("probe_ratio", "F-Attn / floor"),
    Column("ratio_max_layer", "max layer / floor"),
    Column("sink_rate", "sink rate (T)"),
    Column("sink_rate_short", "sink rate (64)"),
    Column("alpha_max", "max alpha_1"),
    Column("m_act_blocks", "M-Act (blocks)"),
    Column("embed_max", "embed max"),
    Column("gate_mean", "gate mean"),
    Column("f_attn_gated", "gate-weighted F-Attn"),
    Column("tokens_to_2x", "tokens to 2x"),
)
"""The factor table: the last training-time probe of each arm (mean ± std over seeds)."""


def analyze(run_dir: Path, task: str, cfg: Any) -> dict[str, Any]:
    """The run's logged history: validation loss, loss curve, probes and their emergence
    summary (the probes already measured the final model; no extra forward is needed)."""
    history = run_history(run_dir)
    if "probes" not in history:
        raise ValueError(
            f"{run_dir} has no training-time probes: the sink-emergence report needs "
            "probe = { every = N } in the study's task"
        )
    final = history["probes"][-1]
    keys = ("f_attn", "causal_floor", "sink_rate", "m_act", "gate_mean")
    history["summary"] = {k: final.get(k) for k in keys}
    history["summary"]["f_attn_ratio_to_floor"] = final["f_attn_ratio"]
    return history


def _compare(agg: Aggregate, task: str, ref: str, arm: str) -> str:
    diff, real, _ = effect(
        values_of(agg, task, ref, "probe_ratio"), values_of(agg, task, arm, "probe_ratio")
    )
    if diff is None:
        return "-"
    call = "" if real is None else (" (real)" if real else " (noise)")
    return f"{diff:+.2f}{call}"


def _table(study: Study, scale: str, agg: Aggregate, task: str, ref: str) -> list[str]:
    head = ["arm", *(c.header for c in COLUMNS), "change vs " + ref]
    rows = []
    for arm in study.arms_for(scale, task):
        if arm.name not in agg.get(task, {}):
            rows.append([arm.name, *(["failed"] * len(COLUMNS)), ""])
            continue
        cells = []
        for col in COLUMNS:
            e = agg[task][arm.name].get(col.metric) or {}
            if col.metric in ("tokens", "tokens_to_2x"):
                cells.append(fmt_tokens(e.get("mean")))
            else:
                cells.append(fmt_ms(e.get("mean"), e.get("std")))
        change = "" if arm.name == ref else _compare(agg, task, ref, arm.name)
        rows.append([arm.name, *cells, change])
    return table(head, rows)


def fmt_tokens(value: float | None) -> str:
    """Token counts as ``12.3M`` / ``1.2B`` (``-`` when unknown)."""
    if value is None:
        return "-"
    if value >= 1e9:
        return f"{value / 1e9:.2f}B"
    return f"{value / 1e6:.1f}M" if value >= 1e5 else f"{value / 1e3:.1f}k"


def verdicts(study: Study, scale: str, agg: Aggregate, task: str, ref: str) -> list[str]:
    """Which factors moved the sink, how fast the reference grows one, and the gated arms."""
    lines: list[str] = []
    r_ref = mean_of(agg, task, ref, "probe_ratio")
    if r_ref is None:
        return [f"**{task}**: the reference arm {ref!r} did not finish."]
    tokens = mean_of(agg, task, ref, "tokens")
    slope = mean_of(agg, task, ref, "ratio_slope")
    to_2x = mean_of(agg, task, ref, "tokens_to_2x")
    state = "a clear sink" if r_ref >= 2 else ("a weak sink" if r_ref >= 1.3 else "no sink")
    trend = (
        f"rising by {slope:.2f} per million tokens at the end"
        if slope is not None and slope > 0
        else "not rising at the end"
    )
    reach = (
        f"; at that rate it would reach 2x after about {fmt_tokens(to_2x)} tokens"
        if to_2x is not None and r_ref < 2
        else ""
    )
    lines.append(
        f"**{task}**: the reference regime `{ref}` has {state} after {fmt_tokens(tokens)} "
        f"tokens: first-token mass {r_ref:.2f}x the causal floor (largest layer "
        f"{fmt(mean_of(agg, task, ref, 'ratio_max_layer'), 2)}x, sink rate "
        f"{fmt(mean_of(agg, task, ref, 'sink_rate'), 2)}), {trend}{reach}."
    )
    moved, flat = [], []
    single = len(values_of(agg, task, ref, "probe_ratio")) < 2
    for arm in study.arms_for(scale, task):
        if arm.name == ref or arm.name not in agg.get(task, {}):
            continue
        r = mean_of(agg, task, arm.name, "probe_ratio")
        diff, real, _ = effect(
            values_of(agg, task, ref, "probe_ratio"), values_of(agg, task, arm.name, "probe_ratio")
        )
        if r is None or diff is None:
            continue
        text = f"`{arm.name}` {r:.2f}x ({diff:+.2f})"
        # One seed gives no spread to test against: call a change of a quarter of the
        # reference's ratio large, and say that it is one seed.
        big = abs(diff) >= 0.25 * max(r_ref, 1.0) if real is None else real
        (moved if big else flat).append((diff, text))
    how = (
        "by a quarter or more; one seed, no spread to test against"
        if single
        else ("beyond the seed spread")
    )
    if moved:
        texts = "; ".join(t for _, t in sorted(moved, reverse=True))
        lines.append(f"- moved the sink ({how}): {texts}.")
    if flat:
        what = "changed it by less than a quarter" if single else "within the seed spread"
        lines.append(f"- {what}: " + "; ".join(t for _, t in sorted(flat, reverse=True)) + ".")
    lines += _gate_verdicts(study, scale, agg, task, ref)
    return lines


def _gate_verdicts(study: Study, scale: str, agg: Aggregate, task: str, ref: str) -> list[str]:
    """One line per gated arm: its sink beside the reference's, and what its gates pass on."""
    lines = []
    f_ref = mean_of(agg, task, ref, "f_attn")
    for arm in study.arms_for(scale, task):
        if arm.gate == "none" or arm.name not in agg.get(task, {}):
            continue
        r = mean_of(agg, task, arm.name, "probe_ratio")
        if r is None:
            continue
        f = mean_of(agg, task, arm.name, "f_attn")
        gated = mean_of(agg, task, arm.name, "f_attn_gated")
        state = "no sink" if r < 1.3 else ("a weak sink" if r < 2 else "a sink")
        paper = TABLE4.get(arm.paper_row or arm.gate, {}).get("f_attn")
        paper_text = (
            f"; paper (Table 4): F-Attn {TABLE4['none']['f_attn']} without a gate, {paper} "
            f"with this one"
            if paper is not None
            else ""
        )
        passes = (
            f"; weighted by its gate scores (mean {fmt(mean_of(agg, task, arm.name, 'gate_mean'))})"
            f" the first token passes on {fmt(gated)} of the attention (F-Attn {fmt(f)}; "
            f"reference {fmt(f_ref)})"
            if gated is not None
            else ""
        )
        lines.append(
            f"- gate `{arm.name}`: {state}, {r:.2f}x the floor (largest layer "
            f"{fmt(mean_of(agg, task, arm.name, 'ratio_max_layer'), 2)}x, sink rate "
            f"{fmt(mean_of(agg, task, arm.name, 'sink_rate'), 2)}{paper_text}){passes}."
        )
    return lines


def write_report(
    study: Study, scale: str, records: list[RunRecord], out_dir: Path, meta: dict[str, Any]
) -> Path:
    """Write ``report.md``, ``results.json`` and ``plots/*.png`` under ``out_dir``."""
    agg = aggregate(records)
    seeds = study.scale(scale).get("seeds", [0])
    lines = [
        f"# {study.title}",
        "",
        f"Study `{study.name}` at scale `{scale}`: {len(seeds)} seed(s). Wall time "
        f"{meta['wall_time_s'] / 60:.1f} min. {study.description}",
        "",
    ]
    all_verdicts = []
    for task in study.tasks:
        arms = study.arms_for(scale, task)
        if not arms:
            continue
        ref = arms[0].name
        task_verdicts = verdicts(study, scale, agg, task, ref)
        all_verdicts += task_verdicts
        lines += [f"## Task `{task}`", ""]
        if study.tasks[task].get("description"):
            lines += [study.tasks[task]["description"], ""]
        lines += ["### Verdicts", "", *task_verdicts, "", "### Factors", ""]
        lines += _table(study, scale, agg, task, ref)
        lines += [
            "",
            "Each row is the last training-time probe of an arm on a fixed held-out batch "
            "(mean ± std over seeds). F-Attn / floor: attention on token 0 over queries, heads "
            "and layers, divided by H_T/T, the first-token mass of a uniform causal head. Sink "
            "rate: share of (layer, head) pairs whose mean attention on token 0 exceeds 0.3, at "
            "the run's length T and on the first 64 tokens (Gu et al.). M-Act (blocks): mean over "
            "layers of the largest |h_l - h_embed|, the residual spikes the blocks wrote, apart "
            "from the token embeddings (embed max). Tokens to 2x: when the ratio reached 2, else "
            "a linear extrapolation of its slope over the second half of the run. Change: "
            "difference of F-Attn / floor from the reference arm; (real) when it exceeds the seed "
            "spread, (noise) when not; no call with one seed. Definitions: docs/sinks.md.",
            "",
        ]
        for fig in probe_figures(records, task, out_dir):
            lines += [image(fig, out_dir), ""]
    results = {"study": study.name, "scale": scale, "aggregate": agg, "verdicts": all_verdicts}
    return finish_report(out_dir, lines, results, records, meta, drop=("probes",))
