"""The long-context study (PAPER.md section 7, Table 5 at small scale).

:func:`run_long_context_study` takes already-trained runs (the arms, e.g. a baseline and a gated
model trained identically) and evaluates each under every RoPE scaling mode at 1x..8x the
training length: perplexity on the same validation tokens (with per-position loss and the
first-token attention mass), passkey / recall accuracy when the run was trained with the
retrieval mix, and the StreamingLLM test. It writes ``results.json``, ``report.md`` (tables in
Table 5's shape beside the paper's numbers, and a verdict computed from the numbers) and PNG
figures.

:func:`train_and_evaluate_long_context` trains the two arms at a named scale and runs the study.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from gated_attention.data.retrieval import make_task, retrieval_vocab
from gated_attention.evals.perplexity import bin_curve, perplexity_at_lengths
from gated_attention.evals.report import (
    PAPER_TABLE5,
    jsonable,
    plot_study,
    verdict,
    write_markdown,
)
from gated_attention.evals.retrieval import DEFAULT_DEPTHS, evaluate_retrieval
from gated_attention.evals.scaling import SCALING_MODES, scaling_config, with_rope_scaling
from gated_attention.evals.streaming import streaming_perplexity
from gated_attention.evals.streams import (
    TokenStream,
    common_token_budget,
    read_run_config,
    run_stream,
)

log = logging.getLogger("gated_attention.evals")

DEFAULT_ARMS = {"baseline": "none", "gated": "sdpa-elementwise"}
"""Arm name -> gate variant trained by :func:`train_and_evaluate_long_context`."""

SCALES: dict[str, dict[str, Any]] = {
    # Seconds: wiring check on the tiny preset.
    "smoke": {
        "model": {"preset": "tiny"},
        "data": {"seq_len": 32, "retrieval_mix": 0.25},
        "train": {"steps": 30, "batch_size": 8, "lr": 3e-3, "warmup_steps": 5},
        "study": {"max_tokens": 2048, "retrieval_examples": 4, "depths": (0.0, 0.5, 1.0)},
    },
    # Under 25 minutes on 2 CPU cores for both arms and the study: measured at about 21
    # CPU-minutes in total on a single core (about 0.45 s per step, 2 x 1200 steps, and about
    # 2 minutes for the study).
    "quick": {
        "model": {"preset": "small", "num_hidden_layers": 2},
        "data": {"seq_len": 128, "retrieval_mix": 0.25},
        "train": {"steps": 1200, "batch_size": 16, "lr": 3e-3, "warmup_steps": 50},
        "study": {"max_tokens": 16384, "retrieval_examples": 8, "depths": DEFAULT_DEPTHS},
    },
}


def _load_arm(path: Path, device: str | torch.device) -> Any:
    from gated_attention.train import load_model

    return load_model(path, device=device)


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
        model = _load_arm(run_dir, device).eval()
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
    results = jsonable(results)
    results["verdict"] = verdict(results)
    results["config"]["eval_seconds"] = time.perf_counter() - start
    figures = [str(p) for p in plot_study(results, out)] if plots else []
    results["figures"] = figures
    (out / "results.json").write_text(json.dumps(results, indent=1))
    write_markdown(results, out / "report.md", figures)
    return results


def train_and_evaluate_long_context(
    scale: str,
    out_dir: str | Path,
    data: dict[str, Any] | None = None,
    arms: dict[str, str] | None = None,
    seed: int = 0,
    model: dict[str, Any] | None = None,
    train: dict[str, Any] | None = None,
    **study_kwargs: Any,
) -> dict[str, Any]:
    """Train baseline and gated models at ``scale`` and run the long-context study on them.

    Args:
        scale: ``smoke`` (seconds: tiny preset, 32 tokens, 30 steps) or ``quick`` (under 25
            minutes on 2 CPU cores: a 2-layer ``small`` model, 128 tokens, 1200 steps per arm).
        out_dir: runs go to ``out_dir/<arm>``, the study to ``out_dir/study``.
        data: ``[data]`` overrides (default: the default corpus, ``kind = "corpus"``; tests pass
            ``{"kind": "files", "path": ...}`` to stay offline).
        arms: arm name -> gate variant (default :data:`DEFAULT_ARMS`).
        model, train: ``[model]`` / ``[train]`` overrides over the scale's settings.
        study_kwargs: passed to :func:`run_long_context_study` (over the scale's defaults).

    Returns:
        The study results, plus ``"training"``: each arm's :class:`TrainResult` as a dict.
    """
    from gated_attention.train import RunConfig
    from gated_attention.train import train as run_training

    if scale not in SCALES:
        raise ValueError(f"scale {scale!r} is not valid; allowed: {', '.join(SCALES)}.")
    preset = SCALES[scale]
    out = Path(out_dir)
    runs: dict[str, Path] = {}
    training: dict[str, Any] = {}
    for arm, gate in (arms or DEFAULT_ARMS).items():
        run_dir = out / arm
        train_cfg = {
            "eval_every": 0,
            "eval_batches": 4,
            "ckpt_every": 0,
            "progress": False,
            **preset["train"],
            **(train or {}),
        }
        cfg = RunConfig(
            seed=seed,
            out_dir=str(run_dir),
            model={**preset["model"], **(model or {}), "gate": gate},
            data={**preset["data"], **(data or {})},
            train=train_cfg,
        )
        if (run_dir / "final").is_dir() and (run_dir / "result.json").is_file():
            log.info("%s: reusing the finished run in %s", arm, run_dir)
            training[arm] = json.loads((run_dir / "result.json").read_text())
        else:
            training[arm] = run_training(cfg).to_dict()
        runs[arm] = run_dir
    kwargs = {**preset["study"], "seed": seed, **study_kwargs}
    results = run_long_context_study(runs, out / "study", **kwargs)
    results["training"] = jsonable(training)
    (out / "study" / "results.json").write_text(json.dumps(results, indent=1))
    return results
