"""The variants study's report: every gate variant of the paper (Tables 1, 3 and 4) and the
parameter-matched baselines of Table 1, per task, beside the paper's numbers, with a summary of
which of the paper's orderings hold at the scale that was run.

Each ordering is a list of (better, worse) arm pairs compared on validation loss over seeds; a
pair is *resolved* only when the difference exceeds the seed spread (paired over shared seeds,
see :func:`~gated_attention.experiments.stats.compare`), so a single-seed run resolves nothing and says so rather than guessing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gated_attention.config import ModelConfig
from gated_attention.experiments.metrics import Column
from gated_attention.experiments.paper import TABLE1, TABLE4
from gated_attention.experiments.reporting import (
    figure,
    finish_report,
    fmt,
    fmt_ms,
    image,
    save_figure,
    table,
)
from gated_attention.experiments.stats import Aggregate, aggregate, compare, stat
from gated_attention.experiments.study import Arm, RunRecord, Study

BASELINE = "baseline"


@dataclass(frozen=True)
class Ordering:
    """One of the paper's claims as pairs of arms: in each pair the first should have the lower
    validation loss."""

    key: str
    claim: str
    source: str
    pairs: tuple[tuple[str, str], ...]


ORDERINGS: tuple[Ordering, ...] = (
    Ordering(
        "gate-helps",
        "G1 gating beats the ungated baseline at equal parameter count",
        "Table 2 (dense 1.7B, FFN narrowed): 7.404 vs 7.499 PPL",
        (("sdpa-elementwise", BASELINE),),
    ),
    Ordering(
        "g1-g2-best",
        "G1 (after SDPA) and G2 (after the value projection) are the best positions",
        "Table 1 rows 5-9: G1 5.761, G2 5.820 vs G3 6.016, G4 5.981, G5 6.017 PPL",
        tuple(
            (good, bad)
            for good in ("sdpa-elementwise", "value-elementwise")
            for bad in ("key-elementwise", "query-elementwise", "dense-elementwise")
        ),
    ),
    Ordering(
        "head-specific",
        "head-specific gates beat head-shared ones",
        "Table 1 rows 5/12 and 6/13: 5.761 vs 5.801, 5.820 vs 5.867 PPL",
        (
            ("sdpa-elementwise", "sdpa-head-shared"),
            ("value-elementwise", "value-head-shared"),
        ),
    ),
    Ordering(
        "multiplicative",
        "multiplicative gating beats additive gating",
        "Table 1 rows 5/14: 5.761 (sigmoid, multiplicative) vs 5.821 (SiLU, additive) PPL",
        (("sdpa-elementwise", "sdpa-additive-silu"),),
    ),
    Ordering(
        "sigmoid",
        "a sigmoid gate beats a SiLU gate",
        "Table 1 rows 5/15: 5.761 vs 5.822 PPL",
        (("sdpa-elementwise", "sdpa-elementwise-silu"),),
    ),
    Ordering(
        "beats-matched",
        "the G1 gate beats baselines given the same extra parameters",
        "Table 1 rows 2-5: k=8 5.979, q=48 5.953, +4 experts 5.964 vs G1 5.761 PPL",
        (
            ("sdpa-elementwise+params", "more-kv-heads"),
            ("sdpa-elementwise+params", "more-query-heads"),
            ("sdpa-elementwise+params", "more-ffn"),
        ),
    ),
    Ordering(
        "elementwise",
        "elementwise G1 beats headwise G1 (headwise is close behind)",
        "Table 1 rows 5/10: 5.761 vs 5.792 PPL",
        (("sdpa-elementwise", "sdpa-headwise"),),
    ),
    Ordering(
        "controls",
        "query-dependent, sparse gating beats its controls (input-independent, NS-sigmoid)",
        "Table 4: G1 5.761 vs input-independent 5.917, NS-sigmoid 5.900 PPL",
        (
            ("sdpa-elementwise", "sdpa-input-independent"),
            ("sdpa-elementwise", "sdpa-ns-sigmoid"),
        ),
    ),
)

SUBSTITUTES = {"sdpa-elementwise+params": "sdpa-elementwise"}
"""When an arm was not run, the arm that stands in for it. G1 at equal parameters standing in
for G1 with its extra parameters makes the parameter-matched comparison stricter, not looser."""

COLUMNS = (
    Column("val_loss", "val loss"),
    Column("val_ppl", "val ppl"),
    Column("gate_mean", "gate mean"),
    Column("m_act", "M-Act"),
    Column("f_attn", "F-Attn"),
    Column("sink_rate", "sink rate"),
)


# ----------------------------------------------------------------------------- parameters
def _shape_change(cfg: ModelConfig, base: ModelConfig) -> str:
    """What differs in size from the baseline: FFN width, experts, KV or query heads."""
    parts = []
    if cfg.moe is None and cfg.intermediate_size != base.intermediate_size:
        parts.append(f"FFN {base.intermediate_size}→{cfg.intermediate_size}")
    if cfg.moe is not None and base.moe is not None:
        if cfg.moe.expert_intermediate_size != base.moe.expert_intermediate_size:
            a, b = base.moe.expert_intermediate_size, cfg.moe.expert_intermediate_size
            parts.append(f"expert width {a}→{b}")
        if cfg.moe.num_experts != base.moe.num_experts:
            parts.append(f"experts {base.moe.num_experts}→{cfg.moe.num_experts}")
    if cfg.num_key_value_heads != base.num_key_value_heads:
        parts.append(f"KV heads {base.num_key_value_heads}→{cfg.num_key_value_heads}")
    if cfg.num_attention_heads != base.num_attention_heads:
        parts.append(f"query heads {base.num_attention_heads}→{cfg.num_attention_heads}")
    return ", ".join(parts) or "-"


def parameter_table(study: Study, scale: str, task: str) -> dict[str, dict[str, Any]]:
    """Per arm: total parameters, parameters added over the baseline, the gate's own
    parameters, and which sizes parameter matching changed (all from the configs, so failed
    runs are covered; the vocabulary is the task's ``data.vocab_size``)."""
    arms = {a.name: a for a in study.arms_for(scale, task)}
    base_arm = arms.get(BASELINE) or study.arm(BASELINE)

    def build(arm: Arm) -> ModelConfig:
        # The run's vocabulary: the model section's when it sets one, else the tokenizer's.
        raw = study.run_config(task, arm, scale, 0, Path("."))
        vocab = raw["model"].get("vocab_size") or raw.get("data", {}).get("vocab_size", 8192)
        return study.model_config(task, arm, scale).replace(vocab_size=vocab)

    base = build(base_arm)
    n_base = base.num_parameters()
    out = {}
    for name, arm in arms.items():
        cfg = build(arm)
        n = cfg.num_parameters()
        out[name] = {
            "params": n,
            "added": n - n_base,
            "gate_params": cfg.gate_parameters(),
            "shape": _shape_change(cfg, base),
            "match": arm.match,
            "grow": arm.grow,
        }
    return out


# ----------------------------------------------------------------------------- orderings
def losses_by_seed(records: list[RunRecord]) -> dict[str, dict[str, dict[int, float]]]:
    """``{task: {arm: {seed: final validation loss}}}`` of the finished runs."""
    out: dict[str, dict[str, dict[int, float]]] = {}
    for rec in records:
        val = (rec.analysis or {}).get("val_loss")
        if rec.status == "ok" and val is not None and math.isfinite(val):
            out.setdefault(rec.task, {}).setdefault(rec.arm, {})[rec.seed] = float(val)
    return out


def judge(
    losses: dict[str, dict[str, dict[int, float]]], task: str, ordering: Ordering
) -> dict[str, Any]:
    """Verdict of one ordering on one task: ``holds``, ``partly holds``, ``contradicted``,
    ``mixed``, ``cannot resolve at this scale`` or ``not run at this scale``, with the per-pair
    differences (``diff`` = loss of the worse arm minus loss of the better one: positive agrees
    with the paper)."""
    arms = losses.get(task, {})
    pairs, missing = [], []
    for better, worse in ordering.pairs:
        if better not in arms and SUBSTITUTES.get(better) in arms:
            better = SUBSTITUTES[better]
        if better not in arms or worse not in arms:
            missing.extend(n for n in (better, worse) if n not in arms)
            continue
        diff, real, how = compare(arms[better], arms[worse])
        if diff is None:
            missing.extend((better, worse))
            continue
        pairs.append({"better": better, "worse": worse, "diff": diff, "real": real, "how": how})
    agree = [p for p in pairs if p["real"] and p["diff"] > 0]
    against = [p for p in pairs if p["real"] and p["diff"] < 0]
    if not pairs:
        verdict = "not run at this scale"
    elif agree and against:
        verdict = "mixed"
    elif against:
        verdict = "contradicted"
    elif agree and len(agree) == len(pairs):
        verdict = "holds"
    elif agree:
        verdict = "partly holds"
    else:
        verdict = "cannot resolve at this scale"
    return {
        "key": ordering.key,
        "claim": ordering.claim,
        "paper": ordering.source,
        "verdict": verdict,
        "pairs": pairs,
        "missing": sorted(set(missing)),
    }


def _pair_text(p: dict[str, Any]) -> str:
    if p["real"] is None:
        note = "single seed"
    else:
        note = f"{p['how']}: {'resolved' if p['real'] else 'unresolved'}"
    return f"{p['better']} vs {p['worse']} {p['diff']:+.3f} ({note})"


def ordering_table(judgements: list[dict[str, Any]]) -> list[str]:
    """Markdown table of the orderings of one task: verdict and per-pair loss differences
    (``+`` agrees with the paper)."""
    head = ["paper's ordering", "verdict", "pairs: Δ loss (nats, + agrees with the paper)", "paper"]
    rows = []
    for j in judgements:
        pairs = "; ".join(_pair_text(p) for p in j["pairs"]) or "-"
        if j["missing"]:
            pairs += f" (not run: {', '.join(j['missing'])})"
        rows.append([j["claim"], f"**{j['verdict']}**", pairs, j["paper"]])
    return table(head, rows)


# ----------------------------------------------------------------------------- tables
def _table(
    study: Study, scale: str, agg: Aggregate, task: str, params: dict[str, dict[str, Any]]
) -> list[str]:
    head = (
        ["arm", "gate", "params", "added", "sizes"]
        + [c.header for c in COLUMNS]
        + ["paper PPL", "paper MMLU", "paper gate / M-Act / F-Attn"]
    )
    rows = []
    for arm in study.arms_for(scale, task):
        p = params.get(arm.name, {})
        row = [
            arm.name,
            arm.gate,
            f"{p.get('params', 0):,}",
            f"{p.get('added', 0):+,}",
            p.get("shape", "-"),
        ]
        if arm.name in agg.get(task, {}):
            for c in COLUMNS:
                e = stat(agg, task, arm.name, c.metric)
                row.append(fmt_ms(e.get("mean"), e.get("std")))
        else:
            row += ["failed"] * len(COLUMNS)
        t1 = TABLE1.get(arm.paper_key, {})
        t4 = TABLE4.get(arm.paper_key)
        row += [fmt(t1.get("ppl")), fmt(t1.get("mmlu"), 2)]
        row.append(
            f"{fmt(t4.get('gate_mean'))} / {t4['m_act']:,.0f} / {fmt(t4.get('f_attn'))}"
            if t4
            else "-"
        )
        rows.append(row)
    return table(head, rows)


def _ranking_plot(study: Study, agg: Aggregate, path: Path) -> Path | None:
    """Validation loss per arm (mean ± std over seeds as a dot and bar), best at the top, one
    panel per task, with the baseline as a vertical line; parameter-matched baselines orange."""
    tasks = [t for t in study.tasks if agg.get(t)]
    if not tasks:
        return None
    height = max(3.0, 0.32 * max(len(agg[t]) for t in tasks) + 1.2)
    fig = figure((6.5 * len(tasks), height))
    axes = fig.subplots(1, len(tasks), squeeze=False)[0]
    for ax, task in zip(axes, tasks):
        rows = []
        for arm, metrics in agg[task].items():
            e = metrics.get("val_loss") or {}
            if e.get("mean") is not None:
                rows.append((arm, e["mean"], e.get("std") or 0.0))
        rows.sort(key=lambda r: r[1], reverse=True)
        ys = np.arange(len(rows))
        for y, (name, mean, std) in zip(ys, rows):
            color = (
                "tab:gray"
                if name == BASELINE
                else ("tab:orange" if name.startswith("more-") else "tab:blue")
            )
            ax.errorbar(mean, y, xerr=std, fmt="o", color=color, capsize=3)
        ax.set_yticks(ys, [r[0] for r in rows])
        base = agg[task].get(BASELINE, {}).get("val_loss", {}).get("mean")
        if base is not None:
            ax.axvline(base, color="k", lw=0.8, ls="--", label="baseline")
            ax.legend(loc="lower right", fontsize=8)
        ax.set(xlabel="validation loss (nats, lower is better)", title=f"{task}: arms ranked")
        ax.tick_params(axis="y", labelsize=8)
        ax.grid(axis="x", alpha=0.3)
    return save_figure(fig, path)


# ----------------------------------------------------------------------------- report
def write_report(
    study: Study, scale: str, records: list[RunRecord], out_dir: Path, meta: dict[str, Any]
) -> Path:
    """Write ``report.md``, ``results.json`` and ``plots/variants_ranking.png`` under
    ``out_dir``."""
    out_dir = Path(out_dir)
    agg = aggregate(records)
    seeds = study.scale(scale).get("seeds", [0])
    tasks = [t for t in study.tasks if study.arms_for(scale, t)]
    params = {t: parameter_table(study, scale, t) for t in tasks}
    losses = losses_by_seed(records)
    judgements = {t: [judge(losses, t, o) for o in ORDERINGS] for t in tasks}
    plot = _ranking_plot(study, agg, out_dir / "plots" / "variants_ranking.png")
    n_arms = {t: len(study.arms_for(scale, t)) for t in tasks}
    lines = [
        f"# {study.title}",
        "",
        f"Study `{study.name}` at scale `{scale}`: "
        + ", ".join(f"{n} arms on `{t}`" for t, n in n_arms.items())
        + f"; {len(seeds)} seed(s) ({', '.join(map(str, seeds))}). "
        f"Wall time {meta.get('wall_time_s', 0.0) / 60:.1f} min.",
        "",
        *(
            [f"Scale `{scale}`: {desc}", ""]
            if (desc := study.scale(scale).get("description"))
            else []
        ),
        "Gated arms are parameter-matched to the baseline by narrowing the FFN (the paper's "
        "dense protocol) unless their `added` column says otherwise; `sdpa-elementwise+params` "
        "keeps the G1 gate's extra parameters, and the `more-*` arms spend the same budget on KV "
        "heads, query heads or FFN capacity (a wider FFN in a dense model, more experts in an MoE "
        "model), as the parameter-matched baselines of Table 1. The paper's numbers (15A2B MoE "
        "after 400B tokens) are printed beside ours for reference, not as targets a model of "
        "this size could reach.",
        "",
        "## Which of the paper's orderings hold at this scale",
        "",
        "A pair is resolved only when its loss difference exceeds the seed spread: arms share "
        "seeds (and so data order), so the per-seed differences are compared with their own "
        "standard deviation; without shared seeds, with the larger of the two arms' standard "
        "deviations. With one seed there is no spread: nothing is resolved and the sign is "
        "shown for information only.",
        "",
    ]
    for task in tasks:
        lines += [f"### `{task}`", "", *ordering_table(judgements[task]), ""]
        if any(
            p["better"] == SUBSTITUTES.get(b)
            for j in judgements[task]
            for p in j["pairs"]
            for b in SUBSTITUTES
        ):
            lines += [
                "`sdpa-elementwise+params` was not run: G1 at equal parameters stands in for "
                "it against the parameter-matched baselines, which then have more parameters "
                "than the gated model (a stricter test).",
                "",
            ]
    if plot is not None:
        lines += [image(plot, out_dir), ""]
    for task in tasks:
        cfg_task = study.tasks[task]
        lines += [f"## Task `{task}`", ""]
        if cfg_task.get("description"):
            lines += [cfg_task["description"], ""]
        lines += _table(study, scale, agg, task, params[task])
        g1 = params[task].get("sdpa-elementwise", {}).get("gate_params")
        lines += [
            "",
            "params: total parameters (tied embeddings once); added: over the baseline; sizes: "
            "what parameter matching changed. Validation loss and ppl are mean ± std over seeds. "
            "Gate mean: mean gate score (for additive gates, the added term's activation); M-Act: "
            "mean over layers of the largest |h| of the residual stream; F-Attn: attention on the "
            "first token; sink rate: share of (layer, head) pairs with alpha_1 > 0.3.",
            "",
        ]
        if g1:
            lines += [f"The G1 elementwise gate adds {g1:,} parameters on this task.", ""]
    results = {
        "study": study.name,
        "scale": scale,
        "aggregate": agg,
        "parameters": params,
        "orderings": judgements,
    }
    return finish_report(out_dir, lines, results, records, meta)


def analyze(run_dir: Path, task: str, cfg: Any, study: Study | None = None) -> dict[str, Any]:
    """Per-run metrics of the variants study (no attention maps: nothing plots them)."""
    from gated_attention.experiments.analyze_run import analyze_run

    return analyze_run(run_dir, cfg, keep_maps=False)
