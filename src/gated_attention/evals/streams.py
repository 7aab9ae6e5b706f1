"""Evaluation token streams and their re-chunking into windows of any length.

Length evaluations must compare lengths on the *same* tokens: :func:`windows` cuts one flat
token stream into windows of length ``T`` covering the same ``num_tokens`` label tokens for every
``T`` (a multiple of all lengths), so perplexity at 1x..8x differs only in how much context each
prediction had.

Window convention (as :class:`gated_attention.data.PackedTokenDataset`): with ``bos_id`` window
``w`` has input ``[bos] + s[wT : wT + T - 1]`` and labels ``s[wT : wT + T]``; without it, input
``s[wT : wT + T]`` and labels ``s[wT + 1 : wT + T + 1]``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch


@dataclass
class TokenStream:
    """A flat evaluation token stream.

    Attributes:
        tokens: ``(N,)`` int64 token ids.
        bos_id: the BOS id prepended to every window, or ``None``.
        vocab_size: size of the vocabulary the ids come from.
        source: a short description (for reports).
        tokenizer_path: the tokenizer that made the ids, when there is one.
    """

    tokens: torch.Tensor
    bos_id: int | None
    vocab_size: int
    source: str = ""
    tokenizer_path: Path | None = None

    def __len__(self) -> int:
        return int(self.tokens.numel())


def max_label_tokens(stream: TokenStream) -> int:
    """Label tokens available: ``N`` with BOS windows, ``N - 1`` without."""
    return len(stream) - (0 if stream.bos_id is not None else 1)


def common_token_budget(stream: TokenStream, lengths: list[int], max_tokens: int | None) -> int:
    """The largest multiple of every length (their LCM) that fits the stream and ``max_tokens``."""
    if not lengths:
        raise ValueError("lengths must not be empty")
    for length in lengths:
        if isinstance(length, bool) or int(length) != length or length < 2:
            raise ValueError(f"every length must be an integer >= 2, got {length!r}")
    step = int(np.lcm.reduce([int(x) for x in lengths]))
    limit = max_label_tokens(stream)
    if max_tokens is not None:
        limit = min(limit, int(max_tokens))
    budget = (limit // step) * step
    if budget == 0:
        raise ValueError(
            f"the evaluation stream has {max_label_tokens(stream)} label tokens (limit "
            f"max_tokens={max_tokens}) but one window of every length needs {step}; use a larger "
            "stream or fewer/shorter lengths"
        )
    return budget


def windows(
    stream: TokenStream, length: int, num_tokens: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut the first ``num_tokens`` label tokens of the stream into windows of ``length``.

    Returns:
        ``(input_ids, labels)``, each ``(num_tokens // length, length)`` int64, labels already
        aligned with inputs (``labels[:, t]`` is the token after ``input_ids[:, t]``).
    """
    if isinstance(length, bool) or int(length) != length or length < 2:
        raise ValueError(f"length must be an integer >= 2, got {length!r}")
    available = max_label_tokens(stream)
    num_tokens = available if num_tokens is None else int(num_tokens)
    if not 0 < num_tokens <= available:
        raise ValueError(f"num_tokens must be in [1, {available}], got {num_tokens}")
    n = num_tokens // length
    if n == 0:
        raise ValueError(f"num_tokens={num_tokens} holds no window of length {length}")
    tok = stream.tokens
    if stream.bos_id is not None:
        labels = tok[: n * length].view(n, length)
        bos = torch.full((n, 1), stream.bos_id, dtype=tok.dtype)
        inputs = torch.cat((bos, labels[:, :-1]), dim=1)
    else:
        inputs = tok[: n * length].view(n, length)
        labels = tok[1 : n * length + 1].view(n, length)
    return inputs.contiguous(), labels.contiguous()


def stream_from_dataset(
    dataset: Any, source: str = "", num_tokens: int | None = None
) -> TokenStream:
    """The split of a :class:`~gated_attention.data.PackedTokenDataset` (its first
    ``num_tokens`` tokens when given) as a stream."""
    tokens = torch.from_numpy(dataset.split_tokens(0, num_tokens))
    info = dataset.info
    return TokenStream(tokens, dataset.bos_id, info.vocab_size, source or str(info.path))


def backcopy_stream(task: Any, num_tokens: int, seed: int = 0) -> TokenStream:
    """A validation stream of the bigram-backcopy task: eval sequences without their BOS,
    concatenated (BOS is prepended to every window instead)."""
    rows = max(1, -(-num_tokens // task.seq_len))
    batch = next(task.iter_eval_batches(rows, 1, seed=seed))
    full = torch.cat((batch[0][:, :1], batch[1]), dim=1)[:, 1:]  # drop BOS, keep T tokens
    return TokenStream(
        full.reshape(-1)[: max(num_tokens, 1)].contiguous(),
        task.bos_id,
        task.vocab_size,
        f"backcopy(seed={task.seed})",
    )


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    """The run config (``config.json``) of a training run directory."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{run_dir} has no config.json; pass a training run directory (gated-attention train)"
        )
    return json.loads(path.read_text())


def run_stream(run_dir: str | Path, num_tokens: int = 1 << 16, split: str = "val") -> TokenStream:
    """The validation token stream of a training run (built the way training built its data).

    Text runs (``corpus``/``files``) read the run's prepared tokens (cached by ``build_data``;
    nothing is downloaded or tokenised again when the run's cache exists; a mixture reads its
    first source) and keep the run's BOS choice. Backcopy
    runs sample ``num_tokens`` tokens of the task's evaluation stream.
    """
    from gated_attention.train.config import DataConfig

    data_cfg = dict(read_run_config(run_dir)["data"])
    cfg = DataConfig(**data_cfg)
    if cfg.kind == "backcopy":
        from dataclasses import replace

        from gated_attention.data.synthetic import BigramBackcopyTask

        task = BigramBackcopyTask(
            vocab_size=cfg.vocab_size,
            num_triggers=cfg.num_triggers,
            seq_len=cfg.seq_len,
            seed=cfg.task_seed,
        )
        task = replace(task, seq_len=max(cfg.seq_len, min(num_tokens, 4096)))
        return backcopy_stream(task, num_tokens)
    from dataclasses import replace

    from gated_attention.train.datasets import build_data

    data = build_data(replace(cfg, retrieval_mix=0.0))  # the data training built
    dataset = data.val if split == "val" else data.train
    dataset = getattr(dataset, "parts", [dataset])[0]  # a mixture: its first source
    stream = stream_from_dataset(dataset, f"{cfg.kind}:{split}", num_tokens + 1)
    stream.tokenizer_path = data.tokenizer_path
    return stream
