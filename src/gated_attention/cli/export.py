"""``gated-attention export RUN_DIR OUT``: a training run (or one of its checkpoints) as a
``transformers`` model directory.

``RUN_DIR`` is a run directory (its ``final/`` export, else its latest valid checkpoint), a
``final/`` directory or a ``checkpoints/step_*`` directory. ``OUT`` receives the weights,
``config.json``, ``generation_config.json`` and the run's tokenizer
(``gated_attention.hf.export.export_model``); ``--to`` converts to another format on the way.

Examples::

    gated-attention export runs/quick/lm/gated-elementwise/seed0 runs/model
    gated-attention export runs/tiny/checkpoints/step_0000200 runs/tiny-hf --to qwen3-next
"""

from __future__ import annotations

import argparse
from pathlib import Path

EXPORT_FORMATS = ("ours", "paper", "qwen3", "qwen3-moe", "qwen3-next")
"""Kept in sync with ``gated_attention.hf.export.EXPORT_FORMATS`` by a test (``--help`` does not
import ``transformers``)."""
TOKENIZER_FILE = "tokenizer.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN_DIR", help="run directory, final/ or a checkpoint")
    parser.add_argument("out", metavar="OUT", help="destination directory (created; must be empty)")
    parser.add_argument(
        "--to",
        choices=EXPORT_FORMATS,
        default="ours",
        metavar="FORMAT",
        help=f"model format ({', '.join(EXPORT_FORMATS)}; default: ours)",
    )
    parser.add_argument(
        "--tokenizer",
        default=None,
        metavar="PATH",
        help="tokenizer.json (or its directory) to ship; default: the run's own",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT")


def run_tokenizer(path: Path) -> Path | None:
    """The ``tokenizer.json`` of the run that ``path`` (run, ``final/`` or checkpoint
    directory) belongs to, or ``None`` (a synthetic-task run has none)."""
    candidates = [path]
    if path.name == "final":
        candidates.append(path.parent)
    if path.parent.name == "checkpoints":
        candidates.append(path.parent.parent)
    return next((p / TOKENIZER_FILE for p in candidates if (p / TOKENIZER_FILE).is_file()), None)


def run(args: argparse.Namespace) -> int:
    # Imported here: --help should not pay for torch and transformers.
    from gated_attention.data.tokenizer import load_tokenizer
    from gated_attention.hf.export import export_model
    from gated_attention.train.checkpoint import load_model
    from gated_attention.train.lock import check_writable

    path = Path(args.run)
    check_writable(args.out, "OUT")
    out = Path(args.out).resolve()
    if out == path.resolve() or out in path.resolve().parents:
        raise ValueError(f"OUT {args.out} would overwrite the source {path}; choose another")
    model = load_model(path)
    tokenizer_path = Path(args.tokenizer) if args.tokenizer else run_tokenizer(path)
    tokenizer = load_tokenizer(tokenizer_path) if tokenizer_path is not None else None
    export_model(model, args.out, to=args.to, tokenizer=tokenizer, overwrite=args.overwrite)
    shipped = (
        f"tokenizer {tokenizer_path}" if tokenizer is not None else "no tokenizer (none found)"
    )
    print(f"exported {path} -> {args.out} ({args.to}; {shipped})")
    return 0
