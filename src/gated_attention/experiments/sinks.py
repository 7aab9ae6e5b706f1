"""The main job's report: attention sinks, massive activations and gate sparsity per arm and
task, beside the paper's Table 4, with verdicts written from the measured numbers.

A study whose arms change the attention normaliser (``model.normalizer``, the sink-mitigation
zoo of ``docs/normalizers.md``) gets a normaliser column, the null-attention metrics and a
section pairing each normaliser with and without a gate, in the same report."""

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
from gated_attention.experiments.metrics import LENGTH_MULTIPLIERS, Column
from gated_attention.experiments.paper import TABLE4
from gated_attention.experiments.reporting import (
    finish_report,
    fmt,
    fmt_g,
    fmt_ms,
    image,
    probe_figures,
    table,
)
from gated_attention.experiments.stats import (
    Aggregate,
    aggregate,
    compare,
    effect,
    mean_of,
    stat,
    values_of,
)
from gated_attention.experiments.study import Arm, RunRecord, Study

COLUMNS = (
    Column("val_loss", "val loss"),
    Column("val_ppl", "val ppl"),
    Column("f_attn", "F-Attn"),
    Column("f_attn_ratio_to_floor", "F-Attn / floor"),
    Column("sink_rate", "sink rate"),
    Column("sink_rate_short", "sink rate (64)"),
    Column("m_act", "M-Act"),
    Column("m_act_blocks", "M-Act (blocks)"),
    Column("gate_mean", "gate mean"),
    Column("gate_share_below", "gate < 0.1"),
    Column("f_attn_gated", "gate-weighted F-Attn"),
)
"""The metrics of the summary table."""

NORMALIZER_COLUMNS = (
    Column("null_mass", "null mass"),
    Column("row_mass", "row mass"),
    Column("first_token_share", "token-0 share"),
    Column("sinks_mean", "sink logit"),
)
"""Added to the summary table when an arm changes the attention normaliser."""

EVAL_COLUMNS = (
    Column("w8a8_delta", "int8 W8A8 Δloss"),
    Column("linear_input_peak", "Linear input peak"),
    *(Column(f"ppl_{m}x", f"ppl {m}x len") for m in LENGTH_MULTIPLIERS),
)
"""Report-time evaluations (a scale's ``analysis`` settings): shown where a task measured them."""

EVAL_SETTINGS = ("w8a8", "length_multipliers", "eval_tokens")


def eval_settings(study: Study, scale: str) -> dict[str, Any]:
    """The report-time evaluations a scale asks for: ``analysis = { w8a8 = true,
    length_multipliers = [2, 4, 8], eval_tokens = 16384 }`` (all optional; nothing by
    default). Perplexity beyond the training length runs on natural-text tasks only."""
    raw = dict(study.scale(scale).get("analysis", {}))
    unknown = sorted(set(raw) - set(EVAL_SETTINGS))
    if unknown:
        raise ValueError(
            f"study {study.name!r} scale {scale!r}: unknown analysis keys {unknown}; the sinks "
            f"report reads {', '.join(EVAL_SETTINGS)}."
        )
    mults = [int(m) for m in raw.get("length_multipliers", [])]
    bad = [m for m in mults if m not in LENGTH_MULTIPLIERS]
    if bad:
        raise ValueError(
            f"study {study.name!r} scale {scale!r}: analysis.length_multipliers {bad} not in "
            f"{list(LENGTH_MULTIPLIERS)} (the lengths the report has columns for)."
        )
    return {
        "w8a8": bool(raw.get("w8a8", False)),
        "length_multipliers": mults,
        "eval_tokens": raw.get("eval_tokens"),
    }


CACHE_FORMAT = 2
"""Version of ``evaluations.json`` (a cache of another version is recomputed)."""


def evaluate_run(run_dir: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """W8A8 loss increase and perplexity at multiples of the training length for one finished
    run, on its validation stream (``evals.streams.run_stream``), through the length study's
    :func:`~gated_attention.evals.perplexity.perplexity_at_lengths` (RoPE unscaled).

    Returns ``{"quantization"?: {"loss", "loss_w8a8", "delta", "linear_input_peak",
    "peak_module"}, "lengths"?: {"train_len",
    "tokens", "ppl": {multiplier: ppl}}}``; cached in ``run_dir/evaluations.json`` per settings.
    """
    from gated_attention.analysis.quantization import linear_input_peaks, w8a8_copy
    from gated_attention.evals.perplexity import perplexity_at_lengths
    from gated_attention.evals.streams import read_run_config, run_stream, windows
    from gated_attention.train import load_model

    cache = Path(run_dir) / "evaluations.json"
    if cache.exists():
        saved = json.loads(cache.read_text())
        if saved.get("settings") == settings and saved.get("format") == CACHE_FORMAT:
            return saved["results"]
    data = read_run_config(run_dir)["data"]
    train_len = int(data["seq_len"])
    natural = data.get("kind") != "backcopy"
    mults = sorted({1, *settings["length_multipliers"]}) if natural else []
    lengths = [m * train_len for m in mults] or [train_len]
    tokens = int(settings.get("eval_tokens") or 16 * max(lengths))
    model = load_model(run_dir).eval()
    stream = run_stream(run_dir, num_tokens=tokens + 1)
    out: dict[str, Any] = {}
    ppl = perplexity_at_lengths(model, stream, lengths, max_tokens=tokens, per_position=False)
    if settings["w8a8"]:
        low = perplexity_at_lengths(
            w8a8_copy(model), stream, [train_len], max_tokens=tokens, per_position=False
        )
        base, q = ppl[train_len]["loss"], low[train_len]["loss"]
        inputs, _ = windows(stream, train_len, train_len * (tokens // train_len))
        peaks = linear_input_peaks(model, inputs[:16])
        worst = max(peaks, key=peaks.get)
        out["quantization"] = {
            "loss": base,
            "loss_w8a8": q,
            "delta": q - base,
            "linear_input_peak": peaks[worst],
            "peak_module": worst,
        }
    if mults:
        out["lengths"] = {
            "train_len": train_len,
            "tokens": ppl[lengths[0]]["tokens"],
            "ppl": {str(m): ppl[m * train_len]["ppl"] for m in mults},
        }
    cache.write_text(json.dumps({"settings": settings, "format": CACHE_FORMAT, "results": out}))
    return out


def evaluate_runs(study: Study, scale: str, records: list[RunRecord]) -> None:
    """Add the scale's report-time evaluations (:func:`eval_settings`) to every finished run's
    analysis, where :class:`~gated_attention.experiments.metrics.RunMetrics` reads them."""
    settings = eval_settings(study, scale)
    if not settings["w8a8"] and not settings["length_multipliers"]:
        return
    for rec in records:
        if rec.status == "ok":
            rec.analysis = {**(rec.analysis or {}), **evaluate_run(Path(rec.run_dir), settings)}


def normalizer_label(arm: Arm) -> str:
    """The attention normaliser an arm sets (``softmax`` when it sets none), with the options it
    names: ``sigmoid (length=128)``."""
    raw = arm.overrides.get("model", {}).get("normalizer")
    if raw is None or isinstance(raw, str):
        return raw or "softmax"
    flat = {**raw.get("options", {}), **{k: v for k, v in raw.items() if k != "options"}}
    kind = flat.pop("kind", "softmax")
    opts = ", ".join(f"{k}={v}" for k, v in sorted(flat.items()))
    return f"{kind} ({opts})" if opts else kind


def has_normalizers(study: Study) -> bool:
    """Whether any arm of ``study`` changes the attention normaliser."""
    return any(normalizer_label(a) != "softmax" for a in study.arms)


def verdicts(
    study: Study,
    agg: Aggregate,
    baseline: str = "baseline",
    scheduled: dict[str, set[str]] | None = None,
    losses: SeedLosses | None = None,
) -> list[str]:
    """Sentences written from the numbers, never hard-coded conclusions. ``scheduled``: the arms
    each task ran (a scale may run a subset per task); others are left out, not called failed."""
    lines: list[str] = []
    gated = [a.name for a in study.arms if a.name != baseline]
    for task in agg:
        if baseline not in agg[task]:
            lines.append(f"**{task}**: the baseline did not finish; no comparison possible.")
            continue
        ratio = mean_of(agg, task, baseline, "f_attn_ratio_to_floor")
        f_base = mean_of(agg, task, baseline, "f_attn")
        floor = mean_of(agg, task, baseline, "causal_floor")
        n = len(values_of(agg, task, baseline, "f_attn"))
        spread = f"mean ± std over {n} seeds: " if n > 1 else ""
        rates = _sink_rates(agg, task, baseline)
        if ratio is not None:
            if ratio >= 2.0:
                lines.append(
                    f"**{task}**: the baseline formed an attention sink: first-token mass "
                    f"{_ms(agg, task, baseline, 'f_attn')} is {ratio:.1f}x the causal floor "
                    f"{fmt(floor)} ({spread}ratio {_ms(agg, task, baseline, 'f_attn_ratio_to_floor', 2)}"
                    f"{rates}; paper's baseline: {TABLE4['none']['f_attn']})."
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
        bo, bt = (
            mean_of(agg, task, baseline, "bos_other"),
            mean_of(agg, task, baseline, "bos_trigger"),
        )
        if bo is not None and bt is not None:
            lines.append(
                f"- baseline: BOS attention {fmt(bo)} on non-trigger (dormant) queries vs "
                f"{fmt(bt)} on trigger queries"
                + (" — the dormant head parks on BOS (a sink)." if bo > 2 * bt else ".")
            )
        for arm in gated:
            if scheduled is not None and arm not in scheduled.get(task, set()):
                continue
            if arm not in agg[task]:
                lines.append(f"- {arm}: did not finish (see the failures section).")
                continue
            parts = []
            f_arm = mean_of(agg, task, arm, "f_attn")
            r_arm = mean_of(agg, task, arm, "f_attn_ratio_to_floor")
            if f_base and f_arm is not None and ratio is not None and ratio >= 1.3:
                near = (
                    ", below it"
                    if r_arm < 0.77
                    else (", within 1.3x of it" if r_arm <= 1.3 else "")
                )
                parts.append(
                    f"first-token mass {_ms(agg, task, arm, 'f_attn')} ({r_arm:.1f}x the floor"
                    f"{near}) vs {fmt(f_base)}, {_times_lower(f_base, f_arm)}"
                    f"{_sink_rates(agg, task, arm)}"
                    if f_arm < f_base
                    else f"first-token mass {fmt(f_arm)} is not below the baseline's {fmt(f_base)}"
                )
            f_gated = mean_of(agg, task, arm, "f_attn_gated")
            if f_gated is not None:
                parts.append(f"gate-weighted first-token mass {fmt(f_gated)}")
            # Residual spikes: what the blocks wrote when the probe measured it (embeddings
            # apart), else the paper's M-Act over the whole residual stream.
            key = "m_act_blocks" if mean_of(agg, task, arm, "m_act_blocks") else "m_act"
            name = "M-Act of the blocks' writes" if key == "m_act_blocks" else "M-Act"
            m_arm, m_base = mean_of(agg, task, arm, key), mean_of(agg, task, baseline, key)
            if m_arm is not None and m_base:
                if m_arm < m_base:
                    change = f"{m_base / max(m_arm, 1e-9):.1f}x smaller"
                else:
                    change = f"{m_arm / m_base:.2f}x the baseline's: not smaller"
                parts.append(f"{name} {fmt(m_arm)} vs {fmt(m_base)} ({change})")
            diff, real, how = loss_effect(agg, task, baseline, arm, losses)
            if diff is not None:
                word = "lower" if diff < 0 else "higher"
                call = (
                    "" if real is None else (" — a real effect" if real else " — within seed noise")
                )
                parts.append(f"validation loss {abs(diff):.3f} nats {word} ({how}{call})")
            g = mean_of(agg, task, arm, "gate_mean")
            if g is not None:
                sparse = (
                    "sparse" if g < 0.3 else ("moderately sparse" if g < 0.45 else "not sparse")
                )
                parts.append(
                    f"mean gate {fmt(g)} ({sparse}; paper: "
                    f"{TABLE4.get(study.arm(arm).paper_key, {}).get('gate_mean', '-')})"
                )
            go, gt = mean_of(agg, task, arm, "gate_other"), mean_of(agg, task, arm, "gate_trigger")
            if go is not None and gt is not None:
                closes = go < 0.5 * gt
                parts.append(
                    f"on non-trigger queries its gate {'closes' if closes else 'stays open'} "
                    f"(lowest layer mean {fmt(go)} vs {fmt(gt)} on trigger queries)"
                )
            eff = mean_of(agg, task, arm, "effective_bos_other")
            if eff is not None and bo is not None:
                parts.append(
                    f"gate-weighted BOS attention on non-trigger queries {fmt(eff)} vs the "
                    f"baseline's BOS attention {fmt(bo)}"
                )
            parts += _normalizer_parts(agg, task, arm, bo)
            lines.append(f"- {arm}: " + "; ".join(parts) + ".")
    return lines


SeedLosses = dict[tuple[str, str], dict[int, float]]
"""``{(task, arm): {seed: validation loss}}`` of the finished runs."""


def seed_losses(records: list[RunRecord]) -> SeedLosses:
    """The validation loss of every finished run by task, arm and seed."""
    out: SeedLosses = defaultdict(dict)
    for rec in records:
        loss = (rec.analysis or {}).get("val_loss")
        if rec.status == "ok" and loss is not None:
            out[(rec.task, rec.arm)][rec.seed] = float(loss)
    return out


def loss_effect(
    agg: Aggregate, task: str, ref: str, arm: str, losses: SeedLosses | None = None
) -> tuple[float | None, bool | None, str]:
    """Validation loss of ``arm`` minus ``ref``'s: paired over the seeds both ran when they
    share two or more (:func:`~gated_attention.experiments.stats.compare`, as the variants
    study), else against the seed spread (:func:`~gated_attention.experiments.stats.effect`)."""
    if losses is not None:
        a, b = losses.get((task, ref), {}), losses.get((task, arm), {})
        if len(set(a) & set(b)) >= 2:
            return compare(a, b)
    return effect(values_of(agg, task, ref, "val_loss"), values_of(agg, task, arm, "val_loss"))


def _times_lower(base: float, value: float) -> str:
    """``12.3x lower``; ``over 100x lower`` where the ratio is only a small number's noise."""
    ratio = base / max(value, 1e-12)
    return "over 100x lower" if ratio > 100 else f"{ratio:.1f}x lower"


def _normalizer_parts(agg: Aggregate, task: str, arm: str, bos_base: float | None) -> list[str]:
    """Verdict clauses for an arm with a non-softmax normaliser: where its dormant queries put
    their weight (BOS, the null column) and how its first-token mass compares."""
    parts: list[str] = []
    row = mean_of(agg, task, arm, "row_mass")
    if row is None:  # softmax
        return parts
    null = mean_of(agg, task, arm, "null_mass")
    share = mean_of(agg, task, arm, "first_token_share")
    if null is None:
        parts.append(
            f"rows are not normalised (mean weight on the real tokens {fmt(row)}), so its "
            f"first-token mass is not on the softmax scale; token 0's share of each row "
            f"{fmt(share)}"
        )
    else:
        parts.append(
            f"null attention {fmt(null)} (token 0's share of the real-token weight {fmt(share)})"
        )
    bo = mean_of(agg, task, arm, "bos_other")
    null_o, null_t = mean_of(agg, task, arm, "null_other"), mean_of(agg, task, arm, "null_trigger")
    if bo is not None and bos_base is not None:
        clause = f"BOS weight on dormant queries {fmt(bo)} vs the baseline's {fmt(bos_base)}"
        if null_o is not None and null_t is not None:
            parks = null_o >= 0.5 and null_o > null_t and bo < 0.5 * bos_base
            clause += (
                f"; dormant rows give {fmt(null_o)} of their weight to null attention (trigger "
                f"rows {fmt(null_t)})"
                + (" — the dormant head parks there instead of on BOS" if parks else "")
            )
        row_o = mean_of(agg, task, arm, "row_mass_other")
        if null_o is None and row_o is not None:
            clause += f"; total weight of dormant rows on the real tokens {fmt(row_o)}"
            if row_o < 0.05 and bo < 0.5 * bos_base:
                clause += " — the dormant head attends to nothing and needs no sink"
        parts.append(clause)
    return parts


def gate_pairs(study: Study) -> list[tuple[str, str, str]]:
    """``(normaliser, ungated arm, gated arm)`` for every normaliser that runs both without a
    gate and with one (the first of each, in declaration order)."""
    ungated: dict[str, str] = {}
    gated: dict[str, str] = {}
    for arm in study.arms:
        if arm.match or arm.grow:
            continue
        key = normalizer_label(arm)
        (ungated if arm.gate == "none" else gated).setdefault(key, arm.name)
    return [(k, ungated[k], gated[k]) for k in ungated if k in gated]


GATE_PAIR_METRICS = (
    ("val_loss", "val loss"),
    ("f_attn", "F-Attn"),
    ("sink_rate", "sink rate"),
    ("bos_other", "BOS attn (dormant q)"),
    ("null_other", "null (dormant q)"),
    ("m_act", "M-Act"),
    ("w8a8_delta", "W8A8 Δloss"),
    ("linear_input_peak", "Linear input peak"),
    ("ppl_8x", "ppl 8x len"),
)


def _gate_pair_section(
    study: Study, agg: Aggregate, task: str, losses: SeedLosses | None = None
) -> list[str]:
    """Does the gate add anything on top of each normaliser: the same normaliser without and
    with the gate, side by side, and the loss effect against the seed spread."""
    pairs = [p for p in gate_pairs(study) if p[1] in agg.get(task, {}) and p[2] in agg[task]]
    if not pairs:
        return []
    head = ["normaliser", "without -> with gate", *(h for _, h in GATE_PAIR_METRICS)]
    head += ["gate-weighted BOS attn (dormant q)", "gate mean", "loss effect of the gate"]
    rows = []
    for norm, off, on in pairs:
        cells = [norm, f"{off} -> {on}"]
        for metric, _ in GATE_PAIR_METRICS:
            a, b = mean_of(agg, task, off, metric), mean_of(agg, task, on, metric)
            cells.append("-" if a is None and b is None else f"{fmt(a)} -> {fmt(b)}")
        cells.append(fmt(mean_of(agg, task, on, "effective_bos_other")))
        cells.append(fmt(mean_of(agg, task, on, "gate_mean")))
        diff, real, how = loss_effect(agg, task, off, on, losses)
        if diff is None:
            cells.append("-")
        else:
            call = "" if real is None else ("; real" if real else "; within seed noise")
            cells.append(f"{diff:+.3f} nats ({how}{call})")
        rows.append(cells)
    return [
        "### Does the gate add anything on top of each normaliser?",
        "",
        "The same normaliser without and with the G1 gate (first number: without). The gate-"
        "weighted BOS attention is the BOS weight times the head's mean gate on dormant queries "
        "(what reaches the output from BOS).",
        "",
        *table(head, rows),
        "",
    ]


NORMALIZER_DEFINITIONS = (
    "Non-softmax normalisers (docs/normalizers.md): every attention metric here is computed on "
    "the weights the layer's own normaliser gives the real tokens, recomputed from the captured "
    "post-RoPE queries and keys and the layer's learned parameters (the analysis sees exactly "
    "the weights the forward pass used). F-Attn is the mean weight on token 0 (the sink, '+1' or "
    "bias column is not a token, so its weight is not in F-Attn); null mass is the mean 1 - row "
    "mass, the weight the sink / '+1' / bias column takes (softpick: the weight it withholds); "
    "token-0 share is the mean w_0 / row mass, the F-Attn the same logits give with the null "
    "column removed, over the rows with any weight (a softpick row that withholds everything "
    "is left out; a switched-off sigmoid row keeps small positive weights and still "
    "counts); sink logit is the mean learned s_h of the `sink` kind. Sigmoid rows are "
    "not normalised (row mass may exceed 1), so their null mass is undefined (-), F-Attn and "
    "the sink rate (alpha_1 > 0.3 on the raw weight) are not on the softmax scale, and token-0 "
    "share is the comparable number. The causal floor is a uniform softmax head's."
)
"""What the normaliser metrics mean, printed under a zoo study's table."""


def _ms(agg: Aggregate, task: str, arm: str, metric: str, digits: int = 3) -> str:
    e = stat(agg, task, arm, metric)
    return fmt_ms(e.get("mean"), e.get("std"), digits)


def _sink_rates(agg: Aggregate, task: str, arm: str) -> str:
    """``, sink rate X (Y on 64 tokens)`` from the analysis and the training-time probe."""
    rate, short = mean_of(agg, task, arm, "sink_rate"), mean_of(agg, task, arm, "sink_rate_short")
    if rate is None:
        return ""
    return f", sink rate {fmt(rate, 2)}" + (f" ({fmt(short, 2)} on 64 tokens)" if short else "")


def _table(study: Study, agg: Aggregate, task: str, ran: set[str] | None = None) -> list[str]:
    zoo = has_normalizers(study)
    columns = COLUMNS + NORMALIZER_COLUMNS if zoo else COLUMNS
    measured = {m for arm in agg.get(task, {}).values() for m, e in arm.items() if e.get("n")}
    columns += tuple(c for c in EVAL_COLUMNS if c.metric in measured)
    kinds = ["normaliser"] if zoo else []
    head = ["arm", "gate", *kinds, *(c.header for c in columns)]
    head.append("paper gate / M-Act / F-Attn / PPL")
    rows = []
    for arm in study.arms:
        if ran is not None and arm.name not in ran:
            continue
        first = [arm.name, arm.gate, *([normalizer_label(arm)] if zoo else [])]
        if arm.name not in agg.get(task, {}):
            rows.append([*first, *["failed"] * len(columns), ""])
            continue
        row = list(first)
        for c in columns:
            e = stat(agg, task, arm.name, c.metric)
            row.append(fmt_ms(e.get("mean"), e.get("std")))
        p = TABLE4.get(arm.paper_key)
        row.append(
            " / ".join(fmt_g(p.get(k)) for k in ("gate_mean", "m_act", "f_attn", "ppl"))
            if p
            else "-"
        )
        rows.append(row)
    return table(head, rows)


def _plots(records: list[RunRecord], out_dir: Path) -> dict[str, list[Path]]:
    """Per task: PNGs from the first seed of every arm (loss curves from all)."""
    figs: dict[str, list[Path]] = defaultdict(list)
    by_task: dict[str, dict[str, RunRecord]] = defaultdict(dict)
    for rec in records:
        if rec.status == "ok" and rec.arm not in by_task[rec.task]:
            by_task[rec.task][rec.arm] = rec
    plots_dir = out_dir / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)
    for task, arms in by_task.items():
        out = figs[task]
        reports = {arm: rec.analysis["report"] for arm, rec in arms.items()}
        floor = next(iter(reports.values()))["first_token_mass"]["floor"]
        out.append(
            plot_first_token_mass(
                reports,
                plots_dir / f"{task}_first_token_mass.png",
                floor=floor,
                title=f"{task}: attention on the first token per layer",
            )
        )
        out.append(
            plot_max_activation(
                reports,
                plots_dir / f"{task}_max_activation.png",
                title=f"{task}: largest residual activation per layer",
            )
        )
        gated = {a: r for a, r in reports.items() if r.get("gates")}
        if gated:
            out.append(
                plot_gate_histograms(
                    gated, plots_dir / f"{task}_gate_histograms.png", title=f"{task}: gate scores"
                )
            )
            out.append(
                plot_gate_mean_per_layer(
                    gated, plots_dir / f"{task}_gate_mean.png", title=f"{task}: mean gate per layer"
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
            out.append(
                plot_attention_maps(
                    maps,
                    plots_dir / f"{task}_attention_maps.png",
                    title=f"{task}: head-averaged attention, first sequence",
                )
            )
        out += probe_figures(records, task, out_dir)
        curves = {
            arm: [tuple(x) for x in rec.analysis.get("loss_curve", [])] for arm, rec in arms.items()
        }
        out.append(
            plot_loss_curves(
                curves,
                plots_dir / f"{task}_loss_curves.png",
                title=f"{task}: training loss",
                smooth=10,
            )
        )
    return figs


def _backcopy_table(records: list[RunRecord], task: str, zoo: bool = False) -> list[str]:
    head = [
        "arm",
        "layer",
        "BOS attn (trigger q)",
        "BOS attn (other q)",
        "gate (trigger q)",
        "gate (other q)",
        "gate-weighted BOS attn (other q)",
    ]
    keys = ("bos_attention_trigger", "bos_attention_other", "gate_trigger", "gate_other")
    keys += ("effective_bos_other",)
    if zoo:
        head += ["row mass (trigger q)", "row mass (other q)", "null (trigger q)", "null (other q)"]
        keys += ("row_mass_trigger", "row_mass_other", "null_trigger", "null_other")
    rows, seen = [], set()
    for rec in records:
        if rec.task != task or rec.status != "ok" or rec.arm in seen:
            continue
        seen.add(rec.arm)
        for x in rec.analysis.get("backcopy", {}).get("per_layer", []):
            rows.append([rec.arm, str(x["layer"]), *(fmt(x.get(k)) for k in keys)])
    return table(head, rows) if rows else []


def analyze(run_dir: Path, task: str, cfg: Any) -> dict[str, Any]:
    """Per-run metrics with the attention maps the report plots."""
    from gated_attention.experiments.analyze_run import analyze_run

    return analyze_run(run_dir, cfg)


def write_report(
    study: Study, scale: str, records: list[RunRecord], out_dir: Path, meta: dict[str, Any]
) -> Path:
    """Write ``report.md``, ``results.json`` and ``plots/*.png`` under ``out_dir``."""
    evaluate_runs(study, scale, records)
    agg = aggregate(records)
    figs = _plots(records, out_dir)
    scheduled: dict[str, set[str]] = defaultdict(set)
    for rec in records:
        scheduled[rec.task].add(rec.arm)
    losses = seed_losses(records)
    verdict_lines = verdicts(study, agg, scheduled=scheduled, losses=losses)
    seeds = study.scale(scale).get("seeds", [0])
    lines = [
        f"# {study.title}",
        "",
        f"Study `{study.name}` at scale `{scale}`: {len(study.arms_for(scale))} arms x "
        f"{len(study.tasks)} tasks x {len(seeds)} seed(s) ({', '.join(map(str, seeds))}). "
        f"Wall time {meta['wall_time_s'] / 60:.1f} min; the runs took "
        f"{sum(r.seconds for r in records) / 60:.1f} min of training and analysis in all (a "
        "resumed invocation reuses finished runs). Measured numbers come from this run; the "
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
        lines += _table(study, agg, task, scheduled[task])
        lines += [
            "",
            "F-Attn: attention on the first token averaged over queries, heads and layers; floor: "
            "H_T/T of a uniform causal head. Sink rate: share of (layer, head) pairs with alpha_1 > "
            "0.3 (Gu et al.). M-Act: mean over layers of the largest |h| in the residual stream. "
            "From the training-time probe's last measurement (when the task is probed): the sink "
            "rate on the first 64 tokens, M-Act (blocks), the mean over layers of the largest "
            "|h_l - h_embed| (what the blocks wrote, without the token embeddings), and the "
            "gate-weighted F-Attn (attention on token 0 times the head's gate). Values are mean "
            "± std over seeds; definitions in docs/sinks.md.",
            "",
        ]
        if has_normalizers(study):
            lines += [NORMALIZER_DEFINITIONS, ""]
            lines += _gate_pair_section(study, agg, task, losses)
        bc = _backcopy_table(records, task, has_normalizers(study))
        if bc:
            lines += [
                "Backcopy split (first seed): where the model must copy (trigger queries) "
                "vs where the head should be dormant (other queries).",
                "",
                *bc,
                "",
            ]
        for fig in figs.get(task, []):
            lines += [image(fig, out_dir), ""]
    results = {"study": study.name, "scale": scale, "aggregate": agg, "verdicts": verdict_lines}
    note = "Exact run configs are in `results.json` and in each run directory's `config.json`."
    return finish_report(out_dir, lines, results, records, meta, configs_note=note, drop=("maps",))
