"""The long-context study (paper section 4.5, Table 5 at small scale).

The study runner trains the arms (baseline and gated, with the retrieval training mix);
:func:`write_report` then evaluates them together (:func:`run_long_context_study`: the same
validation tokens for every arm) and adds the provenance. The scale's ``analysis`` table holds the
evaluation settings.

:func:`run_long_context_study` takes trained runs and evaluates each under every RoPE scaling mode
at 1x..8x the training length: perplexity on the same validation tokens (with per-position loss
and the first-token attention mass), passkey / recall accuracy when the run was trained with the
retrieval mix, and the StreamingLLM test. It writes ``results.json``, ``report.md`` (tables in
Table 5's shape beside the paper's numbers, and a verdict computed from the numbers) and PNG
figures.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from matplotlib.ticker import FuncFormatter

from gated_attention.analysis import to_jsonable
from gated_attention.data.retrieval import make_task, retrieval_vocab
from gated_attention.evals.perplexity import bin_curve, perplexity_at_lengths
from gated_attention.evals.retrieval import DEFAULT_DEPTHS, evaluate_retrieval
from gated_attention.evals.scaling import SCALING_MODES, scaling_config, with_rope_scaling
from gated_attention.evals.streaming import streaming_perplexity
from gated_attention.evals.streams import (
    TokenStream,
    common_token_budget,
    read_run_config,
    run_stream,
)
from gated_attention.experiments.paper import TABLE5, TABLE5_LENGTHS
from gated_attention.experiments.reporting import (
    figure,
    fmt,
    fmt_pct,
    image,
    report_footer,
    runs_json,
    save_figure,
    table,
    write_report_files,
)
from gated_attention.experiments.study import RunRecord, Study

log = logging.getLogger("gated_attention.experiments")

PAPER_TABLE5: dict[str, Any] = {
    "title": "Paper Table 5 (RULER accuracy, %): 32k models, then YaRN to 128k without training",
    "columns": list(TABLE5_LENGTHS),
    "rows": TABLE5,
}
"""Table 5 as shown beside ours. Columns 4k..32k lie within the 32k training length; 64k and
128k need YaRN (factor 4)."""


# DataConfig fields that decide the token stream (and so the vocabulary) of a run.
_STREAM_FIELDS = (
    "kind",
    "sources",
    "path",
    "tokenizer",
    "vocab_size",
    "bos",
    "val_fraction",
    "num_triggers",
    "task_seed",
)


def _check_same_data(runs: dict[str, Path]) -> None:
    """All arms are scored on the first arm's validation stream: their data must match."""
    names = list(runs)
    ref = read_run_config(runs[names[0]])["data"]
    for name in names[1:]:
        data = read_run_config(runs[name])["data"]
        diff = [k for k in _STREAM_FIELDS if data.get(k) != ref.get(k)]
        if diff:
            raise ValueError(
                f"run {name!r} was trained on different data than {names[0]!r} "
                f"(data.{', data.'.join(diff)} differ); arms must share their data to be "
                "compared on one validation stream"
            )


def _retrieval_setup(run_dir: Path, stream: TokenStream, data_cfg: dict[str, Any]) -> Any:
    tokenizer = run_dir / "tokenizer.json"
    tok = tokenizer if tokenizer.is_file() else stream.tokenizer_path
    bos = stream.bos_id if stream.bos_id is not None else 0
    vocab = retrieval_vocab(stream.vocab_size, tok, bos)
    return make_task(data_cfg.get("retrieval_task", "passkey"), vocab)


def run_long_context_study(
    runs: dict[str, str | Path],
    out_dir: str | Path,
    train_len: int | None = None,
    multipliers: Sequence[int] = (1, 2, 4, 8),
    scalings: Sequence[str] = ("none", "linear", "ntk", "dynamic", "yarn"),
    *,
    factor: float | None = None,
    dynamic_factor: float = 1.0,
    max_tokens: int | None = None,
    retrieval: bool | None = None,
    retrieval_examples: int = 16,
    depths: Sequence[float] = DEFAULT_DEPTHS,
    streaming: bool = True,
    streaming_window: int | None = None,
    sink_tokens: Sequence[int] = (0, 4),
    first_token_mass: bool = True,
    tokens_per_batch: int = 4096,
    seed: int = 0,
    plots: bool = True,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Evaluate trained runs at several lengths under several RoPE scalings.

    Args:
        runs: arm name -> training run directory (``gated_attention.train.load_model`` loads
            it; its ``config.json`` gives the evaluation data). All arms are evaluated on the
            first arm's validation stream.
        out_dir: where ``results.json``, ``report.md`` and the figures go.
        train_len: the trained length (default: the first run's ``data.seq_len``).
        multipliers: lengths as multiples of ``train_len``.
        scalings: modes of :data:`~gated_attention.evals.scaling.SCALING_MODES`.
        factor: the static scale of ``linear``/``ntk``/``yarn`` (default: the largest
            multiplier, one setting for every length as in the paper's YaRN rows).
        dynamic_factor: dynamic NTK's factor (1: the NTK scale equals length / trained length).
        max_tokens: label tokens per length (default ``16 x`` the longest length).
        retrieval: evaluate the run's retrieval task (default: when trained with the mix).
        retrieval_examples: examples per (length, depth).
        streaming: run the StreamingLLM test at the longest length (plain RoPE).
        streaming_window: its cache window (default ``train_len // 2``).
        sink_tokens: sink-token counts compared in the streaming test (0 = plain window).
        first_token_mass: record F-Attn at every length (two windows, streamed).

    Returns:
        The results dict also written to ``results.json``.
    """
    from gated_attention.train import load_model

    if not runs:
        raise ValueError("runs must name at least one arm")
    for mode in scalings:
        if mode not in SCALING_MODES:
            raise ValueError(
                f"scaling mode {mode!r} is not valid; allowed: {', '.join(SCALING_MODES)}."
            )
    runs = {name: Path(p) for name, p in runs.items()}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    first_run = next(iter(runs.values()))
    first_cfg = read_run_config(first_run)
    _check_same_data(runs)
    train_len = int(train_len or first_cfg["data"]["seq_len"])
    multipliers = [int(m) for m in multipliers]
    if any(m < 1 for m in multipliers):
        raise ValueError(f"multipliers must be >= 1, got {multipliers}")
    lengths = [m * train_len for m in multipliers]
    factor = float(factor or max(multipliers))
    max_tokens = int(max_tokens or 16 * max(lengths))
    stream = run_stream(first_run, num_tokens=max_tokens + 1)
    budget = common_token_budget(stream, lengths, max_tokens)
    window = int(streaming_window or max(1, train_len // 2))
    start = time.perf_counter()

    results: dict[str, Any] = {
        "config": {
            "train_len": train_len,
            "multipliers": multipliers,
            "lengths": lengths,
            "scalings": list(scalings),
            "factor": factor,
            "dynamic_factor": dynamic_factor,
            "max_tokens": max_tokens,
            "tokens_per_length": budget,
            "stream": stream.source,
            "stream_tokens": len(stream),
            "runs": {k: str(v) for k, v in runs.items()},
        },
        "paper_table5": PAPER_TABLE5,
        "arms": {},
    }
    for arm, run_dir in runs.items():
        model = load_model(run_dir, device=device).eval()
        data_cfg = read_run_config(run_dir)["data"]
        mixed = float(data_cfg.get("retrieval_mix", 0.0)) > 0
        do_retrieval = mixed if retrieval is None else retrieval
        task = _retrieval_setup(run_dir, stream, data_cfg) if do_retrieval else None
        arm_res: dict[str, Any] = {
            "run": str(run_dir),
            "gate": model.cfg.gate.name,
            "trained_with_retrieval": mixed,
            "scalings": {},
        }
        for mode in scalings:
            f = dynamic_factor if mode == "dynamic" else factor
            scaling = scaling_config(mode, f, train_len)
            scaled = with_rope_scaling(model, scaling) if scaling else model
            t0 = time.perf_counter()
            ppl = perplexity_at_lengths(
                scaled,
                stream,
                lengths,
                max_tokens=max_tokens,
                tokens_per_batch=tokens_per_batch,
                first_token_mass=first_token_mass,
            )
            entry: dict[str, Any] = {
                "scaling": scaling,
                "ppl": {n: r["ppl"] for n, r in ppl.items()},
                "loss": {n: r["loss"] for n, r in ppl.items()},
                "per_position_loss": bin_curve(ppl[lengths[-1]]["per_position_loss"], 64),
            }
            if first_token_mass:
                entry["first_token_mass"] = {
                    n: r["first_token_mass"]["mean"] for n, r in ppl.items()
                }
                entry["first_token_floor"] = {
                    n: r["first_token_mass"]["floor"] for n, r in ppl.items()
                }
            if task is not None:
                entry["retrieval"] = evaluate_retrieval(
                    scaled,
                    task,
                    stream.tokens,
                    lengths,
                    depths,
                    retrieval_examples,
                    seed,
                    stream.bos_id,
                    tokens_per_batch,
                )
            arm_res["scalings"][mode] = entry
            log.info("%s / %s: %.1f s", arm, mode, time.perf_counter() - t0)
        if streaming:
            arm_res["streaming"] = streaming_perplexity(
                model,
                stream,
                lengths[-1],
                window,
                sink_tokens,
                max_tokens=max_tokens,
                tokens_per_batch=tokens_per_batch,
            )
        results["arms"][arm] = arm_res
    results = to_jsonable(results)
    results["verdict"] = verdict(results)
    results["config"]["eval_seconds"] = time.perf_counter() - start
    results["figures"] = [str(p) for p in plot_study(results, out)] if plots else []
    write_report_files(out, report_lines(results, out), results)
    return results


def analyze(run_dir: Path, task: str, cfg: Any) -> dict[str, Any]:
    """Nothing per run: every arm is evaluated together at report time (same token stream)."""
    return {}


def write_report(
    study: Study, scale: str, records: list[RunRecord], out_dir: Path, meta: dict[str, Any]
) -> Path:
    """Evaluate the first seed's finished arms and write ``report.md``, ``results.json`` and
    the figures under ``out_dir``."""
    seed = study.scale(scale).get("seeds", [0])[0]
    runs = {r.arm: Path(r.run_dir) for r in records if r.status == "ok" and r.seed == seed}
    if not runs:
        raise ValueError("no arm of the long-context study finished; nothing to evaluate")
    settings = dict(study.scale(scale).get("analysis", {}))
    if "depths" in settings:
        settings["depths"] = tuple(settings["depths"])
    results = run_long_context_study(runs, out_dir, seed=seed, **settings)
    failed = [r for r in records if r.status != "ok"]
    lines = [*report_lines(results, out_dir), "", *report_footer(failed, meta, "")]
    results["meta"] = meta
    results["runs"] = runs_json(records, drop=())
    return write_report_files(out_dir, lines, results)


def reference_arm(arms: Sequence[str]) -> str:
    """The arm others are compared with: ``baseline`` if present, else the first."""
    return "baseline" if "baseline" in arms else arms[0]


def _length_header(results: dict[str, Any]) -> list[str]:
    cfg = results["config"]
    return ["arm", "scaling", *(f"{m}x ({n})" for m, n in zip(cfg["multipliers"], cfg["lengths"]))]


def ppl_table(results: dict[str, Any]) -> list[str]:
    """Markdown: perplexity at every length and its rise over the in-length (1x) value."""
    lengths = results["config"]["lengths"]
    rows = []
    for arm, res in results["arms"].items():
        for mode, entry in res["scalings"].items():
            base = entry["ppl"].get(str(lengths[0]))
            cells = [arm, mode]
            for n in lengths:
                ppl = entry["ppl"].get(str(n))
                if ppl is None:
                    cells.append("-")
                elif n == lengths[0] or not base:
                    cells.append(fmt(ppl, 2, fixed=True))
                else:
                    cells.append(f"{fmt(ppl, 2, fixed=True)} ({fmt_pct(ppl / base - 1)})")
            rows.append(cells)
    return [
        "Perplexity on the same validation tokens (lower is better); in brackets the change "
        "from the 1x value.",
        "",
        *table(_length_header(results), rows),
    ]


def retrieval_table(results: dict[str, Any]) -> list[str]:
    """Markdown in Table 5's shape: retrieval accuracy (%) per length and its drop from 1x."""
    lengths = results["config"]["lengths"]
    rows = []
    task = None
    for arm, res in results["arms"].items():
        for mode, entry in res["scalings"].items():
            ret = entry.get("retrieval")
            if not ret:
                continue
            task = ret["task"]
            acc = ret["accuracy"]
            base = acc.get(str(lengths[0]), {}).get("mean")
            cells = [arm, mode]
            for n in lengths:
                a = acc.get(str(n), {}).get("mean")
                if a is None:
                    cells.append("-")
                elif n == lengths[0] or base is None:
                    cells.append(f"{a * 100:.1f}")
                else:
                    cells.append(f"{a * 100:.1f} ({(a - base) * 100:+.1f})")
            rows.append(cells)
    if not rows:
        return []
    return [
        f"Retrieval ({task}) exact-match accuracy, % (Table 5 shape); in brackets the change "
        "in points from 1x.",
        "",
        *table(_length_header(results), rows),
    ]


def paper_table() -> list[str]:
    """Markdown of the paper's Table 5 with each row's drop from its first column."""
    rows = []
    for name, vals in PAPER_TABLE5["rows"].items():
        first = vals[0]
        rows.append(
            [name]
            + [
                fmt(v, 2) if i == 0 or v is None else f"{fmt(v, 2)} ({v - first:+.1f})"
                for i, v in enumerate(vals)
            ]
        )
    return [
        PAPER_TABLE5["title"] + "; in brackets the change in points from 4k.",
        "",
        *table(["", *PAPER_TABLE5["columns"]], rows),
    ]


def first_token_table(results: dict[str, Any]) -> list[str]:
    """Markdown: F-Attn (attention on token 0, mean over layers) per length, plain RoPE."""
    lengths = results["config"]["lengths"]
    rows = []
    floor = None
    for arm, res in results["arms"].items():
        entry = res["scalings"].get("none") or next(iter(res["scalings"].values()))
        mass = entry.get("first_token_mass")
        if not mass:
            continue
        floor = entry.get("first_token_floor", floor)
        rows.append([arm, *(fmt(mass.get(str(n)), 3) for n in lengths)])
    if not rows:
        return []
    if floor:
        rows.append(["uniform causal floor", *(fmt(floor.get(str(n)), 3) for n in lengths)])
    return [
        "First-token attention (F-Attn, docs/paper.md section 6: mean over layers, heads and "
        "queries), plain RoPE, streamed chunk by chunk.",
        "",
        *table(["arm", *map(str, lengths)], rows),
    ]


def streaming_table(results: dict[str, Any]) -> list[str]:
    """Markdown of the StreamingLLM test: perplexity after the window fills (tail)."""
    rows = []
    settings: list[str] = []
    info = None
    for arm, res in results["arms"].items():
        st = res.get("streaming")
        if not st:
            continue
        info = st
        settings = settings or [k for k, v in st.items() if isinstance(v, dict)]
        rows.append(
            [arm, *(fmt(st[n]["tail_ppl"], 2, fixed=True) if n in st else "-" for n in settings)]
        )
    if not rows or info is None:
        return []
    return [
        f"StreamingLLM test: perplexity of positions >= {info['window_size']} in "
        f"{info['length']}-token windows with a KV cache of the last {info['window_size']} tokens "
        "(plus N sink tokens); `full` keeps the whole cache.",
        "",
        *table(["arm", *settings], rows),
    ]


def _paper_sentence() -> str:
    rows = PAPER_TABLE5["rows"]
    cols = PAPER_TABLE5["columns"]
    g, b = rows["gated + YaRN"], rows["baseline + YaRN"]
    return (
        f"Paper (Table 5): with YaRN, gated drops {g[0] - g[-1]:.1f} points from {cols[0]} to "
        f"{cols[-1]} vs {b[0] - b[-1]:.1f} for the baseline."
    )


def verdict(results: dict[str, Any]) -> list[str]:
    """Sentences drawn from the numbers: which arm degrades less, per scaling mode."""
    arms = list(results["arms"])
    lengths = [str(n) for n in results["config"]["lengths"]]
    first, last = lengths[0], lengths[-1]
    mult = results["config"]["multipliers"][-1]
    ref = reference_arm(arms)
    lines: list[str] = []
    if len(lengths) < 2:
        return ["Only one length was evaluated; no extrapolation verdict."]
    modes = list(results["arms"][ref]["scalings"])
    for other in (a for a in arms if a != ref):
        wins = ties = total = 0
        for mode in modes:
            try:
                r = results["arms"][ref]["scalings"][mode]["ppl"]
                o = results["arms"][other]["scalings"][mode]["ppl"]
                rise_ref, rise_other = r[last] / r[first], o[last] / o[first]
            except (KeyError, TypeError, ZeroDivisionError):
                continue
            total += 1
            # Rises within 1% of each other count as a tie (noise at small scale).
            if abs(rise_other - rise_ref) <= 0.01 * rise_ref:
                how, ties = "about as much as", ties + 1
            elif rise_other < rise_ref:
                how, wins = "less than", wins + 1
            else:
                how = "more than"
            lines.append(
                f"{mode}: at {mult}x the training length the {other} perplexity is "
                f"{rise_other:.2f}x its in-length value vs {rise_ref:.2f}x for {ref} "
                f"({other} degrades {how} {ref}); ppl {o[last]:.2f} vs {r[last]:.2f}."
            )
        if total:
            losses = total - wins - ties
            lines.append(
                f"Overall: {other} extrapolates better than {ref} under {wins} of {total} "
                f"scaling modes, worse under {losses}, a tie (within 1%) under {ties}"
                f"{'; the paper direction' if wins > losses else ''}. " + _paper_sentence()
            )
    for arm in arms:
        best = None
        for mode, entry in results["arms"][arm]["scalings"].items():
            ppl = entry["ppl"].get(last)
            if ppl is not None and (best is None or ppl < best[1]):
                best = (mode, ppl)
        if best:
            lines.append(f"{arm}: the best scaling at {mult}x is {best[0]} (ppl {best[1]:.2f}).")
    for arm in arms:
        st = results["arms"][arm].get("streaming")
        if not st or "window" not in st:
            continue
        with_sink = [k for k in st if k.startswith("window+")]
        if not with_sink:
            continue
        w, s = st["window"]["tail_ppl"], st[with_sink[0]]["tail_ppl"]
        leans = (
            "the model leans on an attention sink" if w > 1.1 * s else "little reliance on a sink"
        )
        lines.append(
            f"{arm}: with a {st['window_size']}-token cache, evicting the first tokens gives "
            f"perplexity {w:.2f} vs {s:.2f} keeping {st[with_sink[0]]['sink_tokens']} sink tokens "
            f"({fmt_pct(w / s - 1)}; {leans})."
        )
    for arm in arms:
        parts, task = [], None
        for mode, entry in results["arms"][arm]["scalings"].items():
            ret = entry.get("retrieval")
            if not ret:
                continue
            task = ret["task"]
            acc = ret["accuracy"]
            a0, a1 = acc.get(first, {}).get("mean"), acc.get(last, {}).get("mean")
            if a0 is not None and a1 is not None:
                t0 = acc.get(first, {}).get("token_accuracy")
                t1 = acc.get(last, {}).get("token_accuracy")
                digits = (
                    f" (answer tokens {t0 * 100:.0f}% -> {t1 * 100:.0f}%)"
                    if t0 is not None and t1 is not None
                    else ""
                )
                parts.append(f"{mode} {a0 * 100:.0f}% -> {a1 * 100:.0f}%{digits}")
        if parts:
            lines.append(
                f"{arm}: {task} exact-match accuracy at 1x -> {mult}x: " + ", ".join(parts) + "."
            )
    return lines


def report_lines(results: dict[str, Any], out_dir: Path) -> list[str]:
    """The study report: our tables, the paper's Table 5, figures and the verdict."""
    cfg = results["config"]
    lines = [
        "# Long-context study",
        "",
        f"Trained length {cfg['train_len']} tokens; lengths {cfg['lengths']}; scalings "
        f"{', '.join(cfg['scalings'])} (static factor {cfg['factor']}, dynamic NTK factor "
        f"{cfg['dynamic_factor']}); the same {cfg['tokens_per_length']} validation label tokens "
        "at every length.",
        "",
        "## Perplexity vs length",
        "",
        *ppl_table(results),
        "",
    ]
    for title, section in (
        ("Retrieval", retrieval_table(results)),
        ("First-token attention", first_token_table(results)),
        ("Streaming (attention sinks)", streaming_table(results)),
        ("Paper", paper_table()),
    ):
        if section:
            lines += [f"## {title}", "", *section, ""]
    if results.get("figures"):
        lines += ["## Figures", "", *(image(f, out_dir) for f in results["figures"]), ""]
    return [*lines, "## Verdict", "", *(f"- {line}" for line in results.get("verdict", []))]


def plot_study(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """PNG figures: perplexity vs length per scaling mode (one line per arm), per-position loss
    at the longest length, and retrieval accuracy vs length when measured."""
    plain = FuncFormatter(lambda v, _: f"{v:.3g}")
    out: list[Path] = []
    arms = results["arms"]
    lengths = results["config"]["lengths"]
    modes = results["config"]["scalings"]
    train_len = results["config"]["train_len"]

    fig = figure((3.2 * len(modes), 3.2))
    axes = fig.subplots(1, len(modes), squeeze=False)[0]
    for ax, mode in zip(axes, modes):
        for arm, res in arms.items():
            entry = res["scalings"].get(mode)
            if not entry:
                continue
            ys = [entry["ppl"].get(str(n), float("nan")) for n in lengths]
            ax.plot(lengths, ys, marker="o", label=arm)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
        ax.axvline(train_len, color="grey", ls=":", lw=1)
        ax.set_title(mode)
        ax.set_xlabel("context length")
    axes[0].set_ylabel("perplexity")
    axes[0].legend()
    out.append(save_figure(fig, out_dir / "ppl_vs_length.png"))

    fig = figure((6.4, 3.6))
    ax = fig.subplots()
    for arm, res in arms.items():
        for mode in modes:
            entry = res["scalings"].get(mode)
            if not entry or not entry.get("per_position_loss"):
                continue
            curve = entry["per_position_loss"]
            xs = [(i + 0.5) * lengths[-1] / len(curve) for i in range(len(curve))]
            ax.plot(xs, curve, lw=1, label=f"{arm} / {mode}")
    ax.axvline(train_len, color="grey", ls=":", lw=1)
    ax.set_xlabel(f"position in a {lengths[-1]}-token window")
    ax.set_ylabel("mean loss (nats)")
    ax.legend(fontsize=6, ncol=2)
    out.append(save_figure(fig, out_dir / "per_position_loss.png"))

    if any(e.get("retrieval") for r in arms.values() for e in r["scalings"].values()):
        fig = figure((6.4, 3.6))
        ax = fig.subplots()
        for arm, res in arms.items():
            for mode, entry in res["scalings"].items():
                ret = entry.get("retrieval")
                if not ret:
                    continue
                ys = [ret["accuracy"].get(str(n), {}).get("mean", float("nan")) for n in lengths]
                ax.plot(lengths, [y * 100 for y in ys], marker="o", label=f"{arm} / {mode}")
        ax.set_xscale("log", base=2)
        ax.axvline(train_len, color="grey", ls=":", lw=1)
        ax.set_xlabel("context length")
        ax.set_ylabel("exact match (%)")
        ax.legend(fontsize=6, ncol=2)
        out.append(save_figure(fig, out_dir / "retrieval_vs_length.png"))
    return out
