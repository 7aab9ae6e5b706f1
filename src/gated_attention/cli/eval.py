"""``gated-attention eval``: length extrapolation, retrieval and streaming evaluations.

Examples::

    gated-attention eval runs/gated --kind ppl --scaling yarn --multipliers 1 2 4 8
    gated-attention eval runs/gated --kind passkey --depths 0 0.5 1 --num-examples 32
    gated-attention eval runs/gated --kind streaming --window 64 --sink-tokens 0 4
    gated-attention eval baseline=runs/base gated=runs/gated --kind study --out runs/lc-study

Each kind writes one JSON file (``--out``, default ``RUN/evals/<kind>-<scaling>.json``; the
``study`` kind writes a directory) and prints a short summary.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

KINDS = ("ppl", "passkey", "recall", "streaming", "study")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="a training run directory; for --kind study, NAME=RUN_DIR per arm",
    )
    parser.add_argument("--kind", choices=KINDS, default="ppl", help="what to evaluate")
    parser.add_argument("--out", type=Path, default=None, help="output JSON (study: directory)")
    parser.add_argument(
        "--train-len", type=int, default=None, help="trained length (default: run's seq_len)"
    )
    parser.add_argument(
        "--multipliers", type=int, nargs="+", default=[1, 2, 4, 8], help="lengths / train-len"
    )
    parser.add_argument("--lengths", type=int, nargs="+", default=None, help="explicit lengths")
    parser.add_argument(
        "--scaling",
        nargs="+",
        default=None,
        help="RoPE scaling mode(s) of none linear ntk dynamic yarn (default: none; study: all)",
    )
    parser.add_argument(
        "--factor", type=float, default=None, help="static scaling factor (default: max multiplier)"
    )
    parser.add_argument("--rope-theta", type=float, default=None, help="override the RoPE base")
    parser.add_argument("--max-tokens", type=int, default=None, help="label tokens per length")
    parser.add_argument("--tokens-per-batch", type=int, default=4096)
    parser.add_argument("--first-token-mass", action="store_true", help="also record F-Attn")
    parser.add_argument(
        "--depths", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0], help="needle depths"
    )
    parser.add_argument("--num-examples", type=int, default=16, help="per (length, depth)")
    parser.add_argument(
        "--filler", choices=("stream", "pattern"), default="stream", help="haystack filler"
    )
    parser.add_argument("--window", type=int, default=None, help="streaming: cache window")
    parser.add_argument("--sink-tokens", type=int, nargs="+", default=[0, 4])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")


def _lengths(args: argparse.Namespace, train_len: int) -> list[int]:
    if args.lengths:
        return [int(x) for x in args.lengths]
    return [m * train_len for m in args.multipliers]


def _write(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))
    print(f"wrote {path}")


def _study_runs(paths: list[str]) -> dict[str, Path]:
    runs = {}
    for item in paths:
        if "=" not in item:
            raise ValueError(f"--kind study expects NAME=RUN_DIR arguments, got {item!r}")
        name, path = item.split("=", 1)
        runs[name] = Path(path)
    return runs


def _run_study(args: argparse.Namespace, runs: dict[str, Path]) -> int:
    from gated_attention.evals.scaling import SCALING_MODES
    from gated_attention.experiments.long_context import run_long_context_study

    out = args.out or Path("long-context-study")
    results = run_long_context_study(
        runs,
        out,
        train_len=args.train_len,
        multipliers=args.multipliers,
        scalings=args.scaling or SCALING_MODES,
        factor=args.factor,
        max_tokens=args.max_tokens,
        tokens_per_batch=args.tokens_per_batch,
        depths=args.depths,
        retrieval_examples=args.num_examples,
        sink_tokens=args.sink_tokens,
        streaming_window=args.window,
        seed=args.seed,
        device=args.device,
    )
    for line in results["verdict"]:
        print(line)
    print(f"wrote {out / 'results.json'} and {out / 'report.md'}")
    return 0


def _check_args(args: argparse.Namespace) -> None:
    """Refuse bad numbers, an unavailable device and an unusable ``--out`` before any work."""
    from gated_attention.train.config import resolve_device
    from gated_attention.train.lock import check_writable

    for name in ("train_len", "window", "max_tokens", "tokens_per_batch", "num_examples"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    for name in ("multipliers", "lengths", "sink_tokens"):
        low = 0 if name == "sink_tokens" else 1
        for value in getattr(args, name) or []:
            if value < low:
                raise ValueError(f"--{name.replace('_', '-')} values must be >= {low}, got {value}")
    for depth in args.depths:
        if not 0.0 <= depth <= 1.0:
            raise ValueError(f"--depths values must be in [0, 1], got {depth}")
    if args.factor is not None and args.factor <= 0:
        raise ValueError(f"--factor must be > 0, got {args.factor}")
    if args.rope_theta is not None and args.rope_theta <= 0:
        raise ValueError(f"--rope-theta must be > 0, got {args.rope_theta}")
    resolve_device(args.device, "--device")
    if args.out is not None:
        check_writable(args.out, file=args.kind != "study")


def run(args: argparse.Namespace) -> int:
    from gated_attention.train.lock import RunLock

    _check_args(args)
    if args.kind == "study":
        runs = _study_runs(args.paths)
        with RunLock(args.out or Path("long-context-study")):
            return _run_study(args, runs)
    if len(args.paths) != 1:
        raise ValueError(f"--kind {args.kind} takes one run directory, got {len(args.paths)}")
    out = (
        args.out
        or Path(args.paths[0]) / "evals" / f"{args.kind}-{'+'.join(args.scaling or ['none'])}.json"
    )
    from gated_attention.train.lock import check_writable

    check_writable(out, file=True)
    with RunLock(out.parent):
        return _run_one(args, out)


def _run_one(args: argparse.Namespace, out: Path) -> int:
    from gated_attention.evals.scaling import SCALING_MODES, load_model_with, scaling_config
    from gated_attention.evals.streams import read_run_config, run_stream

    args.scaling = args.scaling or ["none"]
    run_dir = Path(args.paths[0])
    run_cfg = read_run_config(run_dir)
    train_len = int(args.train_len or run_cfg["data"]["seq_len"])
    lengths = _lengths(args, train_len)
    max_tokens = int(args.max_tokens or 16 * max(lengths))
    stream = run_stream(run_dir, num_tokens=max_tokens + 1)
    factor = args.factor or max(max(lengths) / train_len, 1.0)
    overrides: dict[str, Any] = {}
    if args.rope_theta:
        overrides["rope_theta"] = args.rope_theta
    for mode in args.scaling:
        if mode not in SCALING_MODES:
            raise ValueError(
                f"--scaling {mode!r} is not valid; allowed: {', '.join(SCALING_MODES)}"
            )
    report: dict[str, Any] = {
        "run": str(run_dir),
        "kind": args.kind,
        "train_len": train_len,
        "lengths": lengths,
        "factor": factor,
        "results": {},
    }
    for mode in args.scaling:
        scaling = scaling_config(mode, factor, train_len)
        model = load_model_with(
            run_dir, device=args.device, rope_scaling=scaling, **overrides
        ).eval()
        if args.kind == "ppl":
            from gated_attention.evals.perplexity import perplexity_at_lengths

            res = perplexity_at_lengths(
                model,
                stream,
                lengths,
                max_tokens=max_tokens,
                tokens_per_batch=args.tokens_per_batch,
                first_token_mass=args.first_token_mass,
            )
            summary = ", ".join(f"{n}: {r['ppl']:.2f}" for n, r in res.items())
        elif args.kind in ("passkey", "recall"):
            from gated_attention.data.retrieval import make_task, pattern_filler, retrieval_vocab
            from gated_attention.evals.retrieval import evaluate_retrieval

            tok = run_dir / "tokenizer.json"
            tok = tok if tok.is_file() else stream.tokenizer_path
            vocab = retrieval_vocab(stream.vocab_size, tok, stream.bos_id or 0)
            task = make_task(args.kind, vocab)
            filler = (
                stream.tokens
                if args.filler == "stream"
                else pattern_filler(vocab, max(lengths), tok)
            )
            res = evaluate_retrieval(
                model,
                task,
                filler,
                lengths,
                args.depths,
                args.num_examples,
                args.seed,
                stream.bos_id,
                args.tokens_per_batch,
            )
            summary = ", ".join(f"{n}: {a['mean'] * 100:.0f}%" for n, a in res["accuracy"].items())
        else:
            from gated_attention.evals.streaming import streaming_perplexity

            window = args.window or max(1, train_len // 2)
            res = streaming_perplexity(
                model,
                stream,
                max(lengths),
                window,
                args.sink_tokens,
                max_tokens=max_tokens,
                tokens_per_batch=args.tokens_per_batch,
            )
            summary = ", ".join(
                f"{k}: {v['tail_ppl']:.2f}" for k, v in res.items() if isinstance(v, dict)
            )
        report["results"][mode] = {"scaling": scaling, "result": res}
        print(f"{args.kind} [{mode}] {summary}")
    from gated_attention.analysis import to_jsonable

    _write(out, to_jsonable(report))
    return 0
