"""Build the batch source a run config names: the default corpus, your files, or the
synthetic bigram-backcopy task. Every source has ``batch(step, batch_size, seed, rank,
world_size)`` (a pure function of its arguments, which makes resume exact) and
``iter_eval_batches(batch_size, max_batches)``."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from gated_attention.data import (
    BigramBackcopyTask,
    PackedTokenDataset,
    load_tokenizer,
    prepare_data,
)
from gated_attention.data.retrieval import with_retrieval_mix
from gated_attention.train.config import DataConfig


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
    documents = cfg.path if cfg.kind == "files" else None
    prepared = prepare_data(
        cache_dir=cfg.cache_dir,
        sources=tuple(cfg.sources),
        vocab_size=cfg.vocab_size,
        tokenizer_path=cfg.tokenizer,
        documents=documents,
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
    )
    return _mix_retrieval(data, cfg, bos_id=bos)


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
