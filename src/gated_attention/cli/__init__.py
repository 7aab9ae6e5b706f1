"""The ``gated-attention`` command (also ``python -m gated_attention``).

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``;
they are imported lazily so ``--help`` stays fast.

One error policy, here and only here: a user error (a bad config value or argument, a missing or
unwritable file, an unavailable device, a full disk; ``ValueError`` and the library's error types,
which derive from it, and ``OSError``) prints ONE line ``gated-attention CMD: error: ...`` naming
the file or key and the fix, and exits 2. An interrupted training run (Ctrl-C, SIGTERM) saves a
checkpoint and exits 128 + the signal number (130, 143). Anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import signal
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


class _Parser(argparse.ArgumentParser):
    """argparse with the one-line error policy: a bad argument prints one line (no usage
    block) and exits 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; only the chosen subcommand's module is imported (so ``--help`` and light
    commands do not pay for heavy imports such as ``transformers``)."""
    parser = _Parser(
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
    except KeyboardInterrupt as err:  # train.trainer.TrainingInterrupted carries its signal
        print(f"gated-attention {args.command}: {err or 'interrupted'}", file=sys.stderr)
        return 128 + int(getattr(err, "signum", signal.SIGINT))
    except BaseException as err:
        code = _exit_code(err)
        if code is None:
            raise
        print(f"gated-attention {args.command}: error: {user_message(err)}", file=sys.stderr)
        return code


def _exit_code(err: BaseException) -> int | None:
    """The exit status of a user error or interruption; None for a bug (re-raised)."""
    if isinstance(err, (ValueError, OSError)):
        return 2
    if type(err).__name__ in ("SafetensorError", "OutOfMemoryError") or isinstance(
        err, MemoryError
    ):
        return 2
    return None


_OS_FIXES = {
    errno.ENOSPC: "free some space or choose another --out",
    errno.EFBIG: "the file size limit was reached; free space or raise the limit",
    errno.EDQUOT: "the disk quota is exhausted; free space or choose another --out",
    errno.EROFS: "the file system is read-only; choose another --out",
    errno.EACCES: "check its permissions or choose another path",
    errno.EPERM: "check its permissions or choose another path",
    errno.ENOENT: "check the path",
    errno.EISDIR: "give a file, not a directory",
    errno.ENOTDIR: "a parent of the path is a file; check the path",
}


def user_message(err: BaseException) -> str:
    """One line for a user error: the error's own text (which names the file or key), or for an
    ``OSError`` its reason, file and fix."""
    if isinstance(err, OSError) and err.errno is not None and err.strerror:
        where = f" {err.filename}" if err.filename else ""
        fix = _OS_FIXES.get(err.errno)
        text = f"{err.strerror}:{where}" + (f"; {fix}" if fix else "")
    else:
        text = str(err) or type(err).__name__
        if type(err).__name__ == "OutOfMemoryError" or isinstance(err, MemoryError):
            first = text.splitlines()[0] if text.strip() else "out of memory"
            text = (
                f"out of memory ({first}); lower train.batch_size or data.seq_len, raise "
                "train.grad_accum, or use a smaller model"
            )
        if type(err).__name__ == "SafetensorError":
            text = (
                f"a .safetensors file is truncated or corrupt ({text}); re-create or re-download it"
            )
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
