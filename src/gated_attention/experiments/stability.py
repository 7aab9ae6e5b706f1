"""The stability study's report: a ×2 learning-rate sweep of the baseline and the G1-gated model,
with and without QK-norm (and the baseline with sandwich norm), as in the paper's Table 2 and its
loss curves (section 4.2: the gated model trains at learning rates where the baseline diverges).

Per arm and learning rate: final validation loss, divergence, loss spikes and SpikeScore, the
largest attention logit and the largest residual activation; per arm the largest stable learning
rate ``eta_max`` and an LR-sensitivity summary; verdicts are written from these numbers.

The study runs with ``train.stop_on_nonfinite = false``: a run whose loss becomes non-finite ends
there and is recorded as diverged (``RunRecord.status == "diverged"``), never as a crash.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gated_attention.experiments.metrics import RunMetrics
from gated_attention.experiments.reporting import (
    figure,
    finish_report,
    fmt,
    fmt_g,
    image,
    save_figure,
    table,
)
from gated_attention.experiments.stats import compare, max_finite, mean_std
from gated_attention.experiments.study import Arm, RunRecord, Study

TOLERANCE = 0.05
"""``eta_max`` is the largest LR whose final loss is within this many nats of the arm's best."""

RECOVERY_WINDOW = 8
"""Steps before a spike whose mean loss the run must fall back to for the spike to count as
recovered (compared with a moving average of the same width after it)."""

# (arm, reference arm, what the comparison isolates); arms absent from a run are skipped.
COMPARISONS: tuple[tuple[str, str, str], ...] = (
    ("gated", "baseline", "G1 gating (with QK-norm)"),
    ("gated-no-qk-norm", "baseline-no-qk-norm", "G1 gating without QK-norm"),
    ("baseline", "baseline-no-qk-norm", "QK-norm on the baseline"),
    ("gated", "gated-no-qk-norm", "QK-norm on the gated model"),
    ("baseline-sandwich", "baseline", "sandwich norm on the baseline"),
)

# Paper Table 2 (dense 1.7B, avg PPL; None = diverged), for reference beside our sweep.
PAPER_TABLE2: tuple[tuple[str, str, str, float | None], ...] = (
    ("48 layers, 400B tokens", "baseline", "4e-3", 7.421),
    ("48 layers, 400B tokens", "baseline", "8e-3", 9.195),
    ("48 layers, 400B tokens", "baseline + sandwich norm", "8e-3", 7.407),
    ("48 layers, 400B tokens", "gated elementwise", "4e-3", 7.288),
    ("48 layers, 400B tokens", "gated elementwise", "8e-3", 7.325),
    ("48 layers, 1T tokens", "baseline", "5.3e-3", 7.363),
    ("48 layers, 1T tokens", "baseline", "8e-3", None),
    ("48 layers, 1T tokens", "gated elementwise", "5.3e-3", 7.101),
    ("48 layers, 1T tokens", "gated elementwise", "8e-3", 7.078),
)


# ----------------------------------------------------------------------------- per run
def loss_curve(rec: RunRecord) -> list[tuple[int, float, bool]]:
    """``(step, loss, spike)`` of every logged training step of a run (empty when none)."""
    from gated_attention.train import read_metrics

    path = Path(rec.run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    for r in read_metrics(path, "train"):
        loss = r.get("loss")
        loss = float("nan") if loss is None else float(loss)
        out.append((int(r["step"]), loss, bool(r.get("spike"))))
    return out


def unrecovered_spikes(curve: list[tuple[int, float, bool]]) -> int:
    """Spikes after which the loss never returns to its level just before the spike.

    A spike at index ``i`` is recovered when some later moving average (``RECOVERY_WINDOW``
    steps) falls to the mean loss of the ``RECOVERY_WINDOW`` steps before it.
    """
    losses = np.array([c[1] for c in curve], dtype=float)
    count = 0
    for i, (_, _, spike) in enumerate(curve):
        if not spike:
            continue
        before = losses[max(0, i - RECOVERY_WINDOW) : i]
        after = losses[i + 1 :]
        if not len(before) or not np.isfinite(before).all():
            continue
        level = float(before.mean())
        w = min(RECOVERY_WINDOW, len(after))
        if w == 0:
            count += 1
            continue
        smooth = np.convolve(after, np.ones(w) / w, mode="valid")
        if not (np.isfinite(smooth) & (smooth <= level)).any():
            count += 1
    return count


def point_metrics(rec: RunRecord) -> dict[str, Any]:
    """The numbers of one (arm, LR, seed) run."""
    m = RunMetrics.from_record(rec) if rec.status == "ok" else RunMetrics()
    curve = loss_curve(rec)
    val = m.val_loss
    if val is None:
        val = rec.result.get("final_val_loss")
    finite = val is not None and math.isfinite(val)
    diverged = rec.status == "diverged" or rec.result.get("diverged_at") is not None
    return {
        "status": rec.status,
        "val_loss": val if finite else None,
        "diverged": bool(diverged or (rec.status == "ok" and not finite)),
        "diverged_at": rec.result.get("diverged_at"),
        "spikes": rec.result.get("spikes"),
        "spike_score": rec.result.get("spike_score"),
        "unrecovered_spikes": unrecovered_spikes(curve),
        "max_attention_logit": m.max_attention_logit,
        "max_abs": m.max_abs,
        "m_act": m.m_act,
    }


# ----------------------------------------------------------------------------- per arm
@dataclass
class Sweep:
    """One arm's learning-rate sweep on one task (values averaged over seeds)."""

    arm: str
    points: dict[float, dict[str, Any]] = field(default_factory=dict)
    """``{lr: {"val_loss", "val_values", "diverged", "seeds", "spikes", ...}}``."""

    @property
    def lrs(self) -> list[float]:
        return sorted(self.points)

    def stable(self, lr: float) -> bool:
        """Finite loss in every seed, no divergence and no unrecovered spike."""
        p = self.points[lr]
        return p["val_loss"] is not None and not p["diverged"] and p["unrecovered_spikes"] == 0

    @property
    def best(self) -> tuple[float | None, float | None]:
        """``(lr, loss)`` of the lowest final validation loss."""
        finite = [(lr, p["val_loss"]) for lr, p in self.points.items() if p["val_loss"] is not None]
        if not finite:
            return None, None
        return min(finite, key=lambda x: x[1])

    @property
    def eta_max(self) -> float | None:
        """Largest stable LR whose loss is within ``TOLERANCE`` of the arm's best."""
        _, best = self.best
        if best is None:
            return None
        ok = [lr for lr in self.lrs if self.stable(lr)]
        ok = [lr for lr in ok if self.points[lr]["val_loss"] <= best + TOLERANCE]
        return max(ok) if ok else None

    @property
    def first_diverged(self) -> float | None:
        div = [lr for lr in self.lrs if self.points[lr]["diverged"]]
        return min(div) if div else None

    @property
    def penalty_per_doubling(self) -> float | None:
        """Mean loss increase per doubling of the LR above the best LR (finite runs only):
        how sharply the loss degrades past the optimum."""
        best_lr, _ = self.best
        if best_lr is None:
            return None
        above = [lr for lr in self.lrs if lr >= best_lr and self.points[lr]["val_loss"] is not None]
        if len(above) < 2:
            return None
        rise = self.points[above[-1]]["val_loss"] - self.points[above[0]]["val_loss"]
        return rise / math.log2(above[-1] / above[0])

    def summary(self) -> dict[str, Any]:
        best_lr, best = self.best
        within = [
            lr
            for lr in self.lrs
            if best is not None
            and self.points[lr]["val_loss"] is not None
            and self.points[lr]["val_loss"] <= best + TOLERANCE
        ]
        return {
            "best_lr": best_lr,
            "best_val_loss": best,
            "eta_max": self.eta_max,
            "lrs_within_tolerance": within,
            "first_diverged_lr": self.first_diverged,
            "penalty_per_doubling": self.penalty_per_doubling,
            "total_spikes": sum(p["spikes"] or 0 for p in self.points.values()),
            "largest_lr_tried": max(self.lrs) if self.lrs else None,
        }


def _arm_index(study: Study, scale: str, task: str) -> dict[str, Arm]:
    return {a.name: a for a in study.arms_for(scale, task)}


def sweeps(study: Study, scale: str, records: list[RunRecord]) -> dict[str, dict[str, Sweep]]:
    """``{task: {base arm: Sweep}}`` from the records (failed runs are left out)."""
    runs: dict[tuple[str, str, float], list[dict[str, Any]]] = defaultdict(list)
    for rec in records:
        arm = _arm_index(study, scale, rec.task).get(rec.arm)
        if arm is None or rec.status == "failed":
            continue
        base = arm.base or arm.name
        lr = arm.lr if arm.lr is not None else _lr_of(study, scale, rec.task, arm)
        runs[(rec.task, base, lr)].append(point_metrics(rec) | {"seed": rec.seed})
    out: dict[str, dict[str, Sweep]] = defaultdict(dict)
    for (task, base, lr), pts in runs.items():
        sweep = out[task].setdefault(base, Sweep(base))
        vals = [p["val_loss"] for p in pts]
        mean, std, n = mean_std(vals)
        diverged = sum(p["diverged"] for p in pts)
        sweep.points[lr] = {
            "val_loss": mean if n == len(pts) else None,
            "val_std": std,
            "val_values": vals,
            "val_by_seed": {p["seed"]: p["val_loss"] for p in pts if p["val_loss"] is not None},
            "seeds": len(pts),
            "diverged": diverged > 0,
            "diverged_seeds": diverged,
            "diverged_at": [p["diverged_at"] for p in pts if p["diverged_at"] is not None],
            "spikes": sum(p["spikes"] or 0 for p in pts),
            "spike_score": mean_std([p["spike_score"] for p in pts])[0],
            "unrecovered_spikes": sum(p["unrecovered_spikes"] for p in pts),
            "max_attention_logit": max_finite(p["max_attention_logit"] for p in pts),
            "max_abs": max_finite(p["max_abs"] for p in pts),
            "m_act": mean_std([p["m_act"] for p in pts])[0],
        }
    # arms in declaration order
    order = [a.name for a in study.arms]
    return {t: dict(sorted(s.items(), key=lambda kv: order.index(kv[0]))) for t, s in out.items()}


def _lr_of(study: Study, scale: str, task: str, arm: Arm) -> float:
    return float(study.run_config(task, arm, scale, 0, Path("."))["train"].get("lr", 3e-3))


# ----------------------------------------------------------------------------- verdicts
def verdicts(task_sweeps: dict[str, Sweep]) -> list[str]:
    """Sentences from the numbers of one task: largest stable LR, sensitivity, spikes and
    outliers for each comparison whose arms ran."""
    lines = []
    for arm, ref, what in COMPARISONS:
        if arm not in task_sweeps or ref not in task_sweeps:
            continue
        a, r = task_sweeps[arm], task_sweeps[ref]
        ea, er = a.eta_max, r.eta_max
        if ea is None or er is None:
            lines.append(f"- {what}: no stable LR for {arm if ea is None else ref}.")
            continue
        if ea > er:
            call = (
                f"{arm} trains stably up to {fmt_g(ea)}, {ea / er:g}x the {fmt_g(er)} of {ref}: "
                "a larger stable learning rate"
            )
        elif ea < er:
            call = (
                f"{arm} is stable only up to {fmt_g(ea)}, below the {fmt_g(er)} of {ref}: a "
                "smaller stable learning rate"
            )
        else:
            call = (
                f"both arms have eta_max {fmt_g(ea)}: cannot resolve at this scale (the grid's "
                "resolution is one doubling)"
            )
        parts = [call]
        pa, pr = a.penalty_per_doubling, r.penalty_per_doubling
        if pa is not None and pr is not None:
            parts.append(
                f"loss rises {pa:+.3f} vs {pr:+.3f} nats per doubling above the best LR "
                f"({'less' if pa < pr else 'more'} sensitive)"
            )
        common = [lr for lr in a.lrs if lr in r.points]
        finite = [
            lr
            for lr in common
            if a.points[lr]["val_loss"] is not None and r.points[lr]["val_loss"] is not None
        ]
        if finite:
            top = max(finite)
            # compare(better=arm, worse=ref) returns ref - arm: negate for arm - ref
            diff, real, how = compare(a.points[top]["val_by_seed"], r.points[top]["val_by_seed"])
            diff = None if diff is None else -diff
            if diff is not None:
                call_txt = "unresolved" if not real else "resolved"
                parts.append(
                    f"at LR {fmt_g(top)} (largest where both finished) its loss is "
                    f"{abs(diff):.3f} nats {'lower' if diff < 0 else 'higher'} ({call_txt}: {how})"
                )
        div_a = [lr for lr in common if a.points[lr]["diverged"]]
        div_r = [lr for lr in common if r.points[lr]["diverged"]]
        if div_a or div_r:
            parts.append(
                f"diverged at {', '.join(map(fmt_g, div_a)) or 'no LR'} vs "
                f"{', '.join(map(fmt_g, div_r)) or 'no LR'}"
            )
        sa, sr = a.summary()["total_spikes"], r.summary()["total_spikes"]
        parts.append(f"{sa} vs {sr} loss spikes over the sweep")
        la = [a.points[lr]["max_attention_logit"] for lr in common]
        lr_ = [r.points[lr]["max_attention_logit"] for lr in common]
        pairs = [(x, y) for x, y in zip(la, lr_) if x is not None and y is not None]
        if pairs:
            ratio = float(np.median([x / y for x, y in pairs if y > 0])) if pairs else None
            if ratio is not None and math.isfinite(ratio):
                parts.append(f"max attention logit {ratio:.2f}x the reference's (median over LRs)")
        ha = [a.points[lr]["max_abs"] for lr in common]
        hr = [r.points[lr]["max_abs"] for lr in common]
        hpairs = [(x, y) for x, y in zip(ha, hr) if x is not None and y is not None and y > 0]
        if hpairs:
            ratio = float(np.median([x / y for x, y in hpairs]))
            parts.append(f"max |h| {ratio:.2f}x the reference's (median over LRs)")
        lines.append(f"- **{what}** ({arm} vs {ref}): " + "; ".join(parts) + ".")
    return lines


# ----------------------------------------------------------------------------- plots
def plot_loss_vs_lr(task_sweeps: dict[str, Sweep], path: Path, title: str) -> Path:
    """Final validation loss against LR (log2 axis) per arm; diverged runs as crosses at the
    top, each arm's ``eta_max`` as a star."""
    fig = figure((7, 4.2))
    ax = fig.subplots()
    finite_all = [
        p["val_loss"] for s in task_sweeps.values() for p in s.points.values() if p["val_loss"]
    ]
    top = max(finite_all) if finite_all else 1.0
    for arm, sweep in task_sweeps.items():
        xs = [lr for lr in sweep.lrs if sweep.points[lr]["val_loss"] is not None]
        ys = [sweep.points[lr]["val_loss"] for lr in xs]
        (line,) = ax.plot(xs, ys, marker="o", label=arm)
        div = [lr for lr in sweep.lrs if sweep.points[lr]["val_loss"] is None]
        if div:
            ax.plot(div, [top * 1.02] * len(div), "x", color=line.get_color(), ms=9)
        eta = sweep.eta_max
        if eta is not None:
            ax.plot(
                [eta], [sweep.points[eta]["val_loss"]], "*", color=line.get_color(), ms=14, mec="k"
            )
    ax.set_xscale("log", base=2)
    lrs = sorted({lr for s in task_sweeps.values() for lr in s.lrs})
    ax.set_xticks(lrs, [f"{lr:g}" for lr in lrs], rotation=30, fontsize=8)
    ax.minorticks_off()
    ax.set(xlabel="peak learning rate", ylabel="final validation loss", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.text(
        0.01,
        0.99,
        "x: diverged   *: eta_max",
        transform=ax.transAxes,
        va="top",
        fontsize=8,
    )
    return save_figure(fig, path)


def plot_curves_by_lr(
    curves: dict[float, dict[str, list[tuple[int, float, bool]]]],
    path: Path,
    title: str,
    order: list[str] | None = None,
) -> Path:
    """Training loss curves, one panel per LR with every arm overlaid (moving average of 5
    over a faint raw curve); spikes marked with dots, a divergence with a cross. ``order``
    fixes each arm's colour (as in :func:`plot_loss_vs_lr`: the n-th arm gets colour ``Cn``)."""
    lrs = sorted(curves)
    cols = min(3, max(1, len(lrs)))
    rows = math.ceil(len(lrs) / cols)
    fig = figure((4.4 * cols, 3.2 * rows))
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    seen = {a for per_lr in curves.values() for a in per_lr}
    arms = [a for a in (order or []) if a in seen] + sorted(seen - set(order or []))
    colors = {a: f"C{i % 10}" for i, a in enumerate(arms)}
    for ax, lr in zip(axes, lrs):
        lo, hi = math.inf, -math.inf
        for arm in [a for a in arms if a in curves[lr]]:
            pts = curves[lr][arm]
            if not pts:
                continue
            steps = np.array([p[0] for p in pts], dtype=float)
            loss = np.array([p[1] for p in pts], dtype=float)
            ok = np.isfinite(loss)
            c = colors[arm]
            ax.plot(steps[ok], loss[ok], color=c, alpha=0.25, lw=0.7)
            if ok.sum() >= 5:
                sm = np.convolve(loss[ok], np.ones(5) / 5, mode="valid")
                ax.plot(steps[ok][4:], sm, color=c, lw=1.2, label=arm)
            else:
                ax.plot(steps[ok], loss[ok], color=c, lw=1.2, label=arm)
            spikes = [(p[0], p[1]) for p in pts if p[2] and math.isfinite(p[1])]
            if spikes:
                ax.plot(*zip(*spikes), "o", color=c, ms=4)
            if not ok.all() and ok.any():
                ax.plot([steps[~ok][0]], [loss[ok][-1]], "x", color=c, ms=10, mew=2)
            if ok.any():
                lo = min(lo, float(loss[ok].min()))
                hi = max(hi, float(np.median(loss[ok][: max(1, len(loss) // 10)])))
        if math.isfinite(lo) and math.isfinite(hi) and hi > lo:
            ax.set_ylim(lo - 0.05 * (hi - lo), hi + 0.15 * (hi - lo))
        ax.set_title(f"LR {lr:g}", fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in axes[len(lrs) :]:
        ax.set_visible(False)
    if len(axes):
        axes[0].set_ylabel("training loss")
        axes[0].legend(fontsize=7)
    fig.suptitle(title)
    return save_figure(fig, path)


# ----------------------------------------------------------------------------- report
def _first_seed_curves(
    study: Study, scale: str, records: list[RunRecord], task: str
) -> dict[float, dict[str, list[tuple[int, float, bool]]]]:
    arms = _arm_index(study, scale, task)
    curves: dict[float, dict[str, list]] = defaultdict(dict)
    for rec in records:
        arm = arms.get(rec.arm)
        if rec.task != task or arm is None or rec.status == "failed":
            continue
        base = arm.base or arm.name
        lr = arm.lr if arm.lr is not None else _lr_of(study, scale, task, arm)
        if base not in curves[lr]:
            curves[lr][base] = loss_curve(rec)
    return dict(curves)


def _sweep_table(task_sweeps: dict[str, Sweep]) -> list[str]:
    head = [
        "arm",
        "LR",
        "val loss",
        "Δ vs arm best",
        "diverged",
        "spikes",
        "SpikeScore",
        "unrecovered",
        "max attn logit",
        "max abs(h)",
        "stable",
    ]
    rows = []
    for arm, sweep in task_sweeps.items():
        _, best = sweep.best
        for lr in sweep.lrs:
            p = sweep.points[lr]
            delta = p["val_loss"] - best if p["val_loss"] is not None and best is not None else None
            div = "no"
            if p["diverged"]:
                at = ", ".join(str(s) for s in p["diverged_at"]) or "?"
                div = (
                    f"yes (step {at})"
                    if p["diverged_seeds"] == p["seeds"]
                    else (f"{p['diverged_seeds']}/{p['seeds']} seeds")
                )
            val = fmt(p["val_loss"])
            if p["val_std"] is not None:
                val += f" ± {fmt(p['val_std'])}"
            rows.append(
                [
                    arm,
                    fmt_g(lr),
                    val,
                    "-" if delta is None else f"{delta:+.3f}",
                    div,
                    str(p["spikes"]),
                    fmt(p["spike_score"]),
                    str(p["unrecovered_spikes"]),
                    fmt(p["max_attention_logit"]),
                    fmt(p["max_abs"]),
                    "yes" if sweep.stable(lr) else "no",
                ]
            )
    return table(head, rows)


def _summary_table(task_sweeps: dict[str, Sweep]) -> list[str]:
    head = [
        "arm",
        "best LR",
        "best val loss",
        "eta_max",
        f"LRs within {TOLERANCE} nats",
        "first diverged LR",
        "Δloss per doubling above best",
        "spikes (all LRs)",
    ]
    rows = []
    for arm, sweep in task_sweeps.items():
        s = sweep.summary()
        per = s["penalty_per_doubling"]
        rows.append(
            [
                arm,
                fmt_g(s["best_lr"]),
                fmt(s["best_val_loss"]),
                fmt_g(s["eta_max"]),
                ", ".join(map(fmt_g, s["lrs_within_tolerance"])) or "-",
                fmt_g(s["first_diverged_lr"]),
                "-" if per is None else f"{per:+.3f}",
                str(s["total_spikes"]),
            ]
        )
    return table(head, rows)


def write_report(
    study: Study, scale: str, records: list[RunRecord], out_dir: Path, meta: dict[str, Any]
) -> Path:
    """Write ``report.md``, ``results.json`` and ``plots/<task>_loss_vs_lr.png`` /
    ``plots/<task>_loss_curves.png`` under ``out_dir``."""
    out_dir = Path(out_dir)
    all_sweeps = sweeps(study, scale, records)
    seeds = study.scale(scale).get("seeds", [0])
    lrs = study.lrs_for(scale)
    tasks = [t for t in study.tasks if study.arms_for(scale, t)]
    figs: dict[str, list[Path]] = defaultdict(list)
    for task in tasks:
        if not all_sweeps.get(task):
            continue
        figs[task].append(
            plot_loss_vs_lr(
                all_sweeps[task],
                out_dir / "plots" / f"{task}_loss_vs_lr.png",
                f"{task}: final validation loss vs learning rate",
            )
        )
        curves = _first_seed_curves(study, scale, records, task)
        if curves:
            figs[task].append(
                plot_curves_by_lr(
                    curves,
                    out_dir / "plots" / f"{task}_loss_curves.png",
                    f"{task}: training loss per learning rate (seed {seeds[0]})",
                    order=list(all_sweeps[task]),
                )
            )
    base_arms = sorted({(a.base or a.name) for t in tasks for a in study.arms_for(scale, t)})
    lines = [
        f"# {study.title}",
        "",
        f"Study `{study.name}` at scale `{scale}`: {len(base_arms)} arms x "
        f"{len(lrs) or 1} learning rates ({', '.join(map(fmt_g, lrs)) or 'task default'}) x "
        f"{len(seeds)} seed(s) on {', '.join(f'`{t}`' for t in tasks)}. "
        f"Wall time {meta.get('wall_time_s', 0.0) / 60:.1f} min.",
        "",
        *(
            [f"Scale `{scale}`: {desc}", ""]
            if (desc := study.scale(scale).get("description"))
            else []
        ),
        f"eta_max: the largest learning rate whose run has a finite loss, no unrecovered loss "
        f"spike and a final validation loss within {TOLERANCE} nats of the best over that arm's "
        "learning rates. A spike is a step whose loss exceeds mean + sigma·std of the previous "
        "`train.spike_window` steps (OLMo-core's monitor); SpikeScore is the share of steps with "
        "one; it is unrecovered when the loss never falls back to its level before the spike. "
        "Max attention logit: the largest |q·k|/sqrt(d) over layers on validation text; max "
        "abs(h): the largest residual-stream activation. Diverged runs stop at the first "
        "non-finite loss and have no final-model metrics.",
        "",
    ]
    for task in tasks:
        task_sweeps = all_sweeps.get(task, {})
        lines += [f"## Task `{task}`", ""]
        if study.tasks[task].get("description"):
            lines += [study.tasks[task]["description"], ""]
        if not task_sweeps:
            lines += ["No run of this task finished.", ""]
            continue
        lines += ["### Verdicts", "", *verdicts(task_sweeps), ""]
        lines += ["### LR sensitivity", "", *_summary_table(task_sweeps), ""]
        lines += ["### Every run", "", *_sweep_table(task_sweeps), ""]
        for fig in figs.get(task, []):
            lines += [image(fig, out_dir), ""]
    lines += [
        "## The paper's numbers (Table 2, dense 1.7B, avg PPL; '-' = diverged)",
        "",
        *table(
            ["setting", "model", "LR", "PPL"], [[*row[:3], fmt(row[3])] for row in PAPER_TABLE2]
        ),
        "",
        "Those models are ~1,000x larger and trained ~100,000x longer than ours: compare "
        "directions (which arm tolerates the larger LR), not values.",
        "",
    ]
    results = {
        "study": study.name,
        "scale": scale,
        "lrs": lrs,
        "sweeps": {
            task: {
                arm: {
                    "summary": s.summary(),
                    "points": {fmt_g(lr): p for lr, p in s.points.items()},
                }
                for arm, s in task_sweeps.items()
            }
            for task, task_sweeps in all_sweeps.items()
        },
        "verdicts": {task: verdicts(s) for task, s in all_sweeps.items()},
    }
    return finish_report(out_dir, lines, results, records, meta, failed=("failed",))


def analyze(run_dir: Path, task: str, cfg: Any, study: Study | None = None) -> dict[str, Any]:
    """Per-run metrics of a finished (non-diverged) run: no attention maps (nothing plots
    them), the rest as the main study computes it."""
    from gated_attention.experiments.analyze_run import analyze_run

    return analyze_run(run_dir, cfg, keep_maps=False)
