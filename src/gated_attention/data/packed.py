"""Fixed-length next-token windows over a packed token stream, deterministic per (seed, step).

The stream is a :class:`~gated_attention.data.shards.ShardSet`: a shard set directory from
:func:`~gated_attention.data.prepare_shards`, or one legacy ``tokens.bin`` from
:func:`~gated_attention.data.build_token_file` (:mod:`gated_attention.data.tokenfile`), both
read through memory maps, so training touches only the pages it samples.

Windows. With ``seq_len = T`` a window yields ``input_ids`` and ``labels`` of shape ``(T,)``
where ``labels[i]`` is the token after ``input_ids[i]``:

* without BOS, window ``w`` reads the ``T + 1`` tokens ``[w*T, w*T + T + 1)``: input is the first
  ``T``, labels the last ``T``;
* with ``bos_id``, window ``w`` reads the ``T`` tokens ``[w*T, w*T + T)``: input is
  ``[bos] + first T-1`` and labels are all ``T`` (position 0 is BOS, the strongest known
  inducer of attention sinks).

Either way consecutive windows advance by ``T`` tokens and tile the split, so each token is a
label once per epoch (except a tail shorter than one window, and without BOS the first token).
Windows cross document (and shard) boundaries; :meth:`PackedTokenDataset.document_ids` says
which document each input position belongs to, for document masking.

Splits. The last ``val_fraction`` (or ``val_tokens``) of the stream is validation and the rest is
training, cut at a document end:

* shard sets store every document end, and the cut is the last document end at or before
  ``num_tokens - val_tokens``, however far back: no document is ever split between train and
  validation (a set whose only document end is the last token cannot be split, an error);
* legacy token files infer document ends from end-of-document tokens and move the cut back by at
  most the validation size, keeping the point itself when no end lies within reach (one long
  final document would otherwise swallow the training split).

Corpora from :func:`~gated_attention.data.prepare_corpus` are shuffled at the document level, so
the tail is a mix of all sources; for your own corpus the tail is its last documents in input
order.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from gated_attention.data._batching import check_batch_args, rank_rows
from gated_attention.data._rng import stable_permutation
from gated_attention.data.errors import DataError
from gated_attention.data.shards import ShardSet
from gated_attention.data.tokenfile import (  # re-exported: the token-file API lived here
    TOKEN_FILE_FORMAT_VERSION,
    TokenFileInfo,
    build_token_file,
    read_token_file_info,
    sidecar_path,
    token_dtype,
    verify_token_file,
)

__all__ = [
    "SPLITS",
    "TOKEN_FILE_FORMAT_VERSION",
    "PackedTokenDataset",
    "TokenFileInfo",
    "build_token_file",
    "read_token_file_info",
    "sidecar_path",
    "token_dtype",
    "verify_token_file",
]

SPLITS = ("train", "val")
# Epoch permutations kept per dataset: the current one and the next (a batch may span both).
_PERMUTATION_CACHE = 2


class PackedTokenDataset:
    """Fixed-length next-token windows over one split of a packed token stream.

    Args:
        path: a shard set directory, a legacy token file, or an opened :class:`ShardSet`.
        seq_len: model sequence length ``T``.
        split: ``"train"`` or ``"val"`` (see the module docstring for the split rule).
        val_fraction: share of the stream used for validation, in ``[0, 1)``.
        val_tokens: validation size in tokens; overrides ``val_fraction`` when given.
        bos_id: if given, every window starts with this token (see the module docstring).
        verify: check every shard's checksum and token ids first (:meth:`ShardSet.verify`).

    ``batch(step, ...)`` is a pure function of ``(seed, step)``: windows are drawn without
    replacement within an epoch from a permutation seeded by ``(seed, epoch)``, so a resumed or
    re-sharded run sees exactly the same data.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | ShardSet,
        seq_len: int,
        split: str = "train",
        *,
        val_fraction: float = 0.05,
        val_tokens: int | None = None,
        bos_id: int | None = None,
        verify: bool = False,
    ) -> None:
        if int(seq_len) != seq_len or seq_len < 2:
            raise DataError(f"seq_len must be an integer >= 2, got {seq_len!r}")
        if split not in SPLITS:
            raise DataError(f"split must be one of {SPLITS}, got {split!r}")
        if not 0.0 <= val_fraction < 1.0:
            raise DataError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
        store = path if isinstance(path, ShardSet) else ShardSet.open(path, verify=verify)
        info = store.info
        if info.num_tokens == 0:
            raise DataError(f"token file {info.path} holds no tokens; rebuild it from a corpus")
        if val_tokens is not None and (
            int(val_tokens) != val_tokens or not 0 <= val_tokens < info.num_tokens
        ):
            raise DataError(
                f"val_tokens must be an integer in [0, {info.num_tokens}) (the file's token "
                f"count), got {val_tokens!r}"
            )
        if bos_id is not None and not 0 <= bos_id < info.vocab_size:
            raise DataError(f"bos_id must be in [0, vocab_size={info.vocab_size}), got {bos_id}")

        self.store = store
        self.info = info
        self.seq_len = int(seq_len)
        self.split = split
        self.bos_id = None if bos_id is None else int(bos_id)

        n_val = int(val_tokens) if val_tokens is not None else round(info.num_tokens * val_fraction)
        self.split_point = self._split_point(n_val)
        lo, hi = (0, self.split_point) if split == "train" else (self.split_point, info.num_tokens)
        self._offset = lo
        self.num_tokens = hi - lo
        # Corpus tokens read per window: T + 1 (input + shifted label), or T when BOS fills
        # input position 0.
        self._span = self.seq_len if self.bos_id is not None else self.seq_len + 1
        if self.num_tokens < self._span:
            need = "seq_len" if self.bos_id is not None else "seq_len+1"
            raise DataError(
                f"corpus has {self.num_tokens} tokens in the {split} split but {need} = "
                f"{self._span} are needed for one window; use a smaller seq_len or a larger corpus"
            )
        self.num_windows = (self.num_tokens - self._span) // self.seq_len + 1
        self._perms: dict[tuple[int, ...], np.ndarray] = {}

    def _split_point(self, n_val: int) -> int:
        """Where validation starts: a document end near ``num_tokens - n_val`` (module docstring)."""
        total = self.info.num_tokens
        if n_val == 0:
            return total
        point = total - n_val
        if self.store.has_document_index:
            end = self.store.last_document_end(point)
            if end is None:
                raise DataError(
                    f"{self.info.path} has no document end before its last {n_val} tokens "
                    f"({self.info.num_documents} documents, {total} tokens), so no validation "
                    "split can be held out at a document boundary (in a .txt file, two or "
                    "more blank lines end a document); use a larger corpus (each split needs "
                    f"{self.seq_len} tokens or more for one window) or lower data.val_fraction"
                )
            return end
        end = self.store.last_document_end(point, floor=max(0, point - n_val))
        return point if end is None else end

    @property
    def vocab_size(self) -> int:
        """Vocabulary size of the tokenizer that made the file."""
        return self.info.vocab_size

    @property
    def eod_id(self) -> int:
        """End-of-document token id."""
        return self.info.eod_id

    def __len__(self) -> int:
        return self.num_windows

    def _starts(self, indices: np.ndarray) -> np.ndarray:
        return self._offset + np.asarray(indices, dtype=np.int64) * self.seq_len

    def _windows(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """``(input_ids, labels)``, each ``(len(indices), T)`` int64, for window indices."""
        rows = self.store.read(self._starts(indices), self._span)
        if self.bos_id is not None:
            bos = np.full((len(indices), 1), self.bos_id, dtype=np.int64)
            inputs = np.concatenate([bos, rows[:, :-1]], axis=1)
            labels = rows
        else:
            inputs, labels = rows[:, :-1], rows[:, 1:]
        return torch.from_numpy(np.ascontiguousarray(inputs)), torch.from_numpy(
            np.ascontiguousarray(labels)
        )

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Window ``index`` in stream order: ``(input_ids, labels)``, each ``(T,)``."""
        if not -self.num_windows <= index < self.num_windows:
            raise IndexError(f"window {index} out of range for {self.num_windows} windows")
        inputs, labels = self._windows(np.array([index % self.num_windows]))
        return inputs[0], labels[0]

    def document_ids(self, indices: np.ndarray | list[int]) -> torch.Tensor:
        """Which document each input position of the given windows belongs to.

        Returns ``(len(indices), T)`` int64: 0 for the window's first document, +1 after every
        end-of-document token (the token after it starts a new document). A BOS at position 0
        counts as part of the first document. Two positions may attend to each other under
        document masking iff their ids are equal (pass them as the model's ``document_ids``).

        Shard sets read the stored document ends, so a document whose text contains the
        end-of-document token's string still counts as one document;
        :func:`gated_attention.ops.attention.separated_document_ids` of the input ids gives
        the same result whenever no text encodes to that token.
        """
        indices = np.asarray(indices, dtype=np.int64)
        out = np.zeros((len(indices), self.seq_len), dtype=np.int64)
        shift = 1 if self.bos_id is not None else 0  # input i reads stream position s + i - shift
        for row, start in enumerate(self._starts(indices).tolist()):
            ends = self.store.document_ends(start, start + self.seq_len - shift)
            marks = np.zeros(self.seq_len + 1, dtype=np.int64)
            np.add.at(marks, ends - start + shift, 1)
            out[row] = np.cumsum(marks[: self.seq_len])
        return torch.from_numpy(out)

    def _permutation(self, seed: int, epoch: int, salt: tuple[int, ...] = ()) -> np.ndarray:
        key = (seed, epoch, *salt)
        perm = self._perms.get(key)
        if perm is None:
            perm = stable_permutation([seed, epoch, *salt], self.num_windows)
            if len(self._perms) >= _PERMUTATION_CACHE:
                self._perms.pop(next(iter(self._perms)))
            self._perms[key] = perm
        return perm

    def sample_windows(
        self, samples: np.ndarray, seed: int, salt: tuple[int, ...] = ()
    ) -> np.ndarray:
        """Window of each sample index: ``perm(seed, epoch, *salt)[g % W]``, ``epoch = g // W``.

        ``salt`` (non-negative integers) gives an independent order, e.g. one per mixture part.
        """
        samples = np.asarray(samples, dtype=np.int64)
        epochs, positions = np.divmod(samples, self.num_windows)
        out = np.empty_like(samples)
        for epoch in np.unique(epochs):
            mask = epochs == epoch
            out[mask] = self._permutation(int(seed), int(epoch), salt)[positions[mask]]
        return out

    def window_indices(
        self, step: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1
    ) -> np.ndarray:
        """Window indices of ``rank``'s rows of the global batch of ``step``, shape ``(B_local,)``.

        Global sample ``g = step * batch_size + row`` is window ``perm(seed, epoch)[g % W]``
        with ``epoch = g // W`` and ``W = num_windows``; rank slicing is contiguous (see
        :func:`gated_attention.data._batching.rank_rows`).
        """
        check_batch_args(step, batch_size, seed, rank, world_size)
        rows = rank_rows(step, batch_size, rank, world_size)
        return self.sample_windows(np.arange(rows.start, rows.stop, dtype=np.int64), seed)

    def batch(
        self, step: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rank ``rank``'s share of the global batch for ``step``.

        Args:
            step: optimizer step (>= 0); the global batch is a pure function of (seed, step).
            batch_size: global batch size, divisible by ``world_size``.
            seed: data-order seed (>= 0).
            rank: this process's rank in ``[0, world_size)``.
            world_size: number of data-parallel processes.

        Returns:
            ``(input_ids, labels)``, each int64 of shape ``(batch_size // world_size, seq_len)``.
        """
        return self._windows(self.window_indices(step, batch_size, seed, rank, world_size))

    def batch_document_ids(
        self, step: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1
    ) -> torch.Tensor:
        """:meth:`document_ids` of the rows of :meth:`batch` (same arguments), ``(b, T)``."""
        return self.document_ids(self.window_indices(step, batch_size, seed, rank, world_size))

    def iter_eval_batches(
        self, batch_size: int, max_batches: int | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Non-overlapping windows in stream order, ``batch_size`` at a time.

        Yields ``(input_ids, labels)``, each ``(b, seq_len)`` with ``b = batch_size`` except
        possibly a smaller last batch; stops after ``max_batches`` batches when given.
        """
        if int(batch_size) != batch_size or batch_size < 1:
            raise DataError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if max_batches is not None and (int(max_batches) != max_batches or max_batches < 0):
            raise DataError(f"max_batches must be None or an integer >= 0, got {max_batches!r}")
        num = -(-self.num_windows // batch_size)
        if max_batches is not None:
            num = min(num, int(max_batches))
        for b in range(num):
            indices = np.arange(b * batch_size, min((b + 1) * batch_size, self.num_windows))
            yield self._windows(indices)

    def split_tokens(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Tokens ``[start, stop)`` of this split (int64); ``stop=None`` means its end."""
        stop = self.num_tokens if stop is None else min(int(stop), self.num_tokens)
        return self.store.read_range(self._offset + start, self._offset + stop)

    def data_account(self, num_samples: int) -> list[dict[str, Any]]:
        """What drawing ``num_samples`` training windows reads: one entry per corpus with its
        tokens, windows, samples and passes (``samples / windows``)."""
        return [
            {
                "name": str(self.info.path),
                "tokens": self.num_tokens,
                "windows": self.num_windows,
                "samples": int(num_samples),
                "passes": num_samples / self.num_windows,
            }
        ]

    def __repr__(self) -> str:
        return (
            f"PackedTokenDataset({self.info.path.name!r}, split={self.split!r}, "
            f"seq_len={self.seq_len}, bos_id={self.bos_id}, tokens={self.num_tokens}, "
            f"windows={self.num_windows})"
        )
