"""The ``gated-attention`` command (also ``python -m gated_attention``).

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``;
they are imported lazily so ``--help`` stays fast. User errors (``ValueError`` and the library's
own error types) print one line and exit non-zero, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# (name, module, one-line help)
COMMANDS: list[tuple[str, str, str]] = [
    ("data", "gated_attention.cli.data", "prepare the default corpus or your own (shards)"),
    ("train", "gated_attention.cli.train", "train a model from a TOML config"),
    ("analyze", "gated_attention.cli.analyze", "measure sinks, activations and gates"),
    ("reproduce", "gated_attention.cli.reproduce", "run a study and write its report"),
    ("eval", "gated_attention.cli.eval", "length extrapolation and retrieval evals"),
    ("convert", "gated_attention.cli.convert", "convert checkpoints from/to HF formats"),
    ("export", "gated_attention.cli.export", "write a run as a transformers model"),
    ("lm-eval", "gated_attention.cli.lm_eval", "run lm-evaluation-harness on a model"),
]


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; only the chosen subcommand's module is imported (so ``--help`` and light
    commands do not pay for heavy imports such as ``transformers``)."""
    parser = argparse.ArgumentParser(
        prog="gated-attention",
        description="Gated attention for LLMs: train, analyse and reproduce (Qiu et al. 2025).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    argv = sys.argv[1:] if argv is None else argv
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, module_name, help_text in COMMANDS:
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name != chosen:
            continue
        module = importlib.import_module(module_name)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError) as err:
        print(f"gated-attention {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
