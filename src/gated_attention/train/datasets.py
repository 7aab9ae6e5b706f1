"""Build the batch source a run config names: the default corpus, your files, or the
synthetic bigram-backcopy task. Every source has ``batch(step, batch_size, seed, rank,
world_size)`` (a pure function of its arguments, which makes resume exact) and
``iter_eval_batches(batch_size, max_batches)``.

:func:`check_passes` is the epoch accounting every run does before it trains: how many tokens it
will read and how many passes over its training data that is, and a stop above
``data.max_passes``."""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from gated_attention.data import (
    BigramBackcopyTask,
    MixtureDataset,
    PackedTokenDataset,
    load_tokenizer,
    open_sources,
    prepare_data,
)
from gated_attention.data.errors import EpochLimitError
from gated_attention.data.retrieval import with_retrieval_mix
from gated_attention.train.config import DataConfig

if TYPE_CHECKING:
    from gated_attention.train.config import RunConfig

log = logging.getLogger("gated_attention.train")


class BatchSource(Protocol):
    def batch(
        self, step: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def iter_eval_batches(self, batch_size: int, max_batches: int | None = None) -> Any: ...


@dataclass
class RunData:
    """The training and validation sources, the vocabulary size and provenance."""

    train: BatchSource
    val: BatchSource
    vocab_size: int
    info: dict[str, Any]
    tokenizer_path: Path | None = None
    task: Any = None
    eod_id: int | None = None
    """End-of-document token of the corpus (``None`` for the synthetic tasks)."""


def build_data(cfg: DataConfig) -> RunData:
    if cfg.kind == "backcopy":
        task = BigramBackcopyTask(
            vocab_size=cfg.vocab_size,
            num_triggers=cfg.num_triggers,
            seq_len=cfg.seq_len,
            seed=cfg.task_seed,
        )
        public = {k: v for k, v in asdict(task).items() if not k.startswith("_")}
        info = {"kind": "backcopy", "task": public}
        data = RunData(train=task, val=task, vocab_size=cfg.vocab_size, info=info, task=task)
        return _mix_retrieval(data, cfg, bos_id=task.bos_id)
    if cfg.kind == "files":
        return _mix_retrieval(*_files_data(cfg))
    prepared = prepare_data(
        cache_dir=cfg.cache_dir,
        sources=tuple(cfg.sources),
        vocab_size=cfg.vocab_size,
        tokenizer_path=cfg.tokenizer,
    )
    tokenizer = load_tokenizer(prepared.tokenizer_path)
    bos = tokenizer.bos_token_id if cfg.bos else None
    common = dict(seq_len=cfg.seq_len, val_fraction=cfg.val_fraction, bos_id=bos)
    train = PackedTokenDataset(prepared.tokens_path, split="train", **common)
    val = PackedTokenDataset(prepared.tokens_path, split="val", **common)
    data = RunData(
        train=train,
        val=val,
        vocab_size=len(tokenizer),
        info={
            "kind": cfg.kind,
            "prepared": str(prepared.root),
            "tokenizer": str(prepared.tokenizer_path),
            "manifest": prepared.manifest,
            "train_windows": len(train),
            "val_windows": len(val),
        },
        tokenizer_path=Path(prepared.tokenizer_path),
        eod_id=train.eod_id,
    )
    return _mix_retrieval(data, cfg, bos_id=bos)


# ----------------------------------------------------------------------------- your files


def _files_data(cfg: DataConfig) -> tuple[RunData, DataConfig, int | None]:
    """``data.kind = "files"``: one corpus, or with ``data.weights`` a mixture of sources."""
    entries = [cfg.path] if isinstance(cfg.path, str) else list(cfg.path or [])
    groups = [entries] if cfg.weights is None else [[e] for e in entries]
    names = [", ".join(group) for group in groups]
    sets = open_sources(
        groups,
        tokenizer=cfg.tokenizer,
        vocab_size=cfg.vocab_size,
        text_field=cfg.text_field,
        split=cfg.dataset_split,
        cache_dir=cfg.cache_dir,
        workers=cfg.prepare_workers,
        verify=cfg.verify,
    )
    first = sets[0]
    bos = first.info.bos_id if cfg.bos else None
    common = dict(seq_len=cfg.seq_len, val_fraction=cfg.val_fraction, bos_id=bos)
    trains = [PackedTokenDataset(s, split="train", **common) for s in sets]
    vals = [PackedTokenDataset(s, split="val", **common) for s in sets]
    if cfg.weights is None:
        train, val = trains[0], vals[0]
    else:
        train = MixtureDataset(trains, cfg.weights, names)
        val = MixtureDataset(vals, cfg.weights, names)
    sources = []
    for name, shard_set, t, v in zip(names, sets, trains, vals):
        manifest = shard_set.manifest
        sources.append(
            {
                "path": name,
                "shards": str(shard_set.root),
                "key": manifest.get("key"),
                "num_shards": shard_set.num_shards,
                "tokens": shard_set.num_tokens,
                "documents": shard_set.info.num_documents,
                "train_tokens": t.num_tokens,
                "val_tokens": v.num_tokens,
                "inputs": manifest.get("inputs"),
            }
        )
    if cfg.weights is not None:
        for source, weight in zip(sources, train.weights):
            source["weight"] = weight
    info = {
        "kind": "files",
        "sources": sources,
        "tokenizer": str(first.tokenizer_path),
        "tokenizer_fingerprint": first.info.tokenizer_sha256,
        "vocab_size": first.info.vocab_size,
        "train_windows": sum(t.num_windows for t in trains),
        "val_windows": sum(v.num_windows for v in vals),
    }
    data = RunData(
        train=train,
        val=val,
        vocab_size=first.info.vocab_size,
        info=info,
        tokenizer_path=first.tokenizer_path,
        eod_id=first.info.eod_id,
    )
    return data, cfg, bos


# ----------------------------------------------------------------------------- accounting


def check_passes(data: RunData, cfg: RunConfig, announce: bool = True) -> dict[str, Any]:
    """Log the tokens the run will read and the passes over its training data; stop above
    ``data.max_passes``. Returns the record stored in the run's ``data.json``.

    A pass is one read of the training split (windows drawn / windows in the split); for a
    mixture every source counts on its own. Generated data (``backcopy``) has no limit.

    Raises:
        EpochLimitError: one line with the passes and how to point ``data.path`` at a larger corpus.
    """
    tc, dc = cfg.train, cfg.data
    samples = tc.steps * tc.batch_size
    tokens = samples * dc.seq_len
    shape = f"{tc.steps} steps x {tc.batch_size} sequences x {dc.seq_len} tokens"
    account = getattr(data.train, "data_account", None)
    if account is None:
        if announce:
            log.info("data: this run reads %s tokens (%s) of generated data", f"{tokens:,}", shape)
        return {"tokens": tokens, "samples": samples, "passes": None}
    parts = account(samples)
    worst = max(parts, key=lambda p: p["passes"])
    record = {
        "tokens": tokens,
        "samples": samples,
        "passes": worst["passes"],
        "max_passes": dc.max_passes,
        "parts": parts,
    }
    if announce:
        for part in parts:
            log.info(
                "data: this run reads %s tokens (%s): %.2f passes over the %s-token training "
                "split of %s (limit data.max_passes = %s)",
                f"{round(part['samples'] * dc.seq_len):,}",
                shape,
                part["passes"],
                f"{part['tokens']:,}",
                part["name"],
                dc.max_passes,
            )
    if worst["passes"] > dc.max_passes and not math.isinf(dc.max_passes):
        raise EpochLimitError(
            f"this run would read its training data {worst['passes']:.1f} times ({tokens:,} "
            f"tokens: {shape}; {worst['tokens']:,} training tokens in {worst['name']}), above "
            f"data.max_passes = {dc.max_passes:g}; point data.path at a larger corpus "
            '(data.kind = "files", data.path = a shard set from `gated-attention data prepare` '
            "or your .parquet/.jsonl/.txt files, e.g. --set data.path='/data/corpus/*.parquet'; "
            "README, section Data) or raise data.max_passes"
        )
    return record


def _mix_retrieval(data: RunData, cfg: DataConfig, bos_id: int | None) -> RunData:
    """Wrap the training source (only) with retrieval examples when ``data.retrieval_mix > 0``;
    validation stays the plain corpus."""
    if cfg.retrieval_mix <= 0:
        return data
    data.train, info = with_retrieval_mix(
        data.train,
        cfg.retrieval_task,
        cfg.retrieval_mix,
        data.vocab_size,
        data.tokenizer_path,
        bos_id,
    )
    data.info["retrieval_mix"] = info
    return data
