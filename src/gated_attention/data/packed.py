"""A packed token stream on disk and fixed-length training windows over it.

File format: ``tokens.bin`` is a flat little-endian array of token ids (``uint16`` when the
vocabulary fits, else ``uint32``) holding every document followed by the end-of-document token;
``tokens.bin.json`` (the *sidecar*) records dtype, counts, ids and checksums. The raw layout is
what ``np.memmap`` reads directly, so training touches only the pages it samples.

Windows. With ``seq_len = T`` a window yields ``input_ids`` and ``labels`` of shape ``(T,)``
where ``labels[i]`` is the token after ``input_ids[i]``:

* without BOS, window ``w`` reads the ``T + 1`` tokens ``[w*T, w*T + T + 1)``: input is the first
  ``T``, labels the last ``T``;
* with ``bos_id``, window ``w`` reads the ``T`` tokens ``[w*T, w*T + T)``: input is
  ``[bos] + first T-1`` and labels are all ``T`` (position 0 is BOS, the strongest known
  inducer of attention sinks).

Either way consecutive windows advance by ``T`` tokens and tile the split, so each token is a
label once per epoch (except a tail shorter than one window, and without BOS the first token).

Splits. The last ``val_fraction`` (or ``val_tokens``) of the stream is validation and the rest is
training; the boundary is moved back to just after the nearest end-of-document token (by at most
the validation size), so normally no document is split between them. Corpora from
:func:`~gated_attention.data.prepare_corpus` are shuffled at the document level, so the tail is a
mix of all sources.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from gated_attention.data._batching import check_batch_args, rank_rows
from gated_attention.data._io import atomic_writer, read_json, sha256_file, write_json
from gated_attention.data._rng import stable_permutation
from gated_attention.data.errors import DataError
from gated_attention.data.tokenizer import load_tokenizer, tokenizer_fingerprint

if TYPE_CHECKING:  # transformers takes ~0.5 s to import; only the functions need it
    from transformers import PreTrainedTokenizerFast

logger = logging.getLogger(__name__)

TOKEN_FILE_FORMAT_VERSION = 1
SPLITS = ("train", "val")
# Largest chunk scanned at once when looking for the document boundary near the split point.
_SCAN_CHUNK = 1 << 20
# Epoch permutations kept per dataset: the current one and the next (a batch may span both).
_PERMUTATION_CACHE = 2


@dataclass(frozen=True)
class TokenFileInfo:
    """What the sidecar of a token file records.

    Attributes:
        path: the token file.
        dtype: ``"uint16"`` or ``"uint32"`` (stored little-endian).
        num_tokens: tokens in the file, end-of-document tokens included.
        num_documents: documents packed (one end-of-document token each).
        vocab_size: ``len(tokenizer)``, added tokens included.
        eod_id: end-of-document token id, appended after every document.
        bos_id: the tokenizer's BOS id (not in the stream; datasets may prepend it).
        pad_id: the tokenizer's pad id.
        sha256: SHA-256 of the token file's bytes.
        tokenizer_sha256: :func:`~gated_attention.data.tokenizer.tokenizer_fingerprint`.
    """

    path: Path
    dtype: str
    num_tokens: int
    num_documents: int
    vocab_size: int
    eod_id: int
    bos_id: int | None
    pad_id: int | None
    sha256: str
    tokenizer_sha256: str

    @property
    def meta_path(self) -> Path:
        """The sidecar path, ``<token file>.json``."""
        return sidecar_path(self.path)

    def to_json(self) -> dict[str, Any]:
        """The sidecar content (paths as file names so the pair can be moved together)."""
        data = asdict(self)
        data["path"] = self.path.name
        data["format_version"] = TOKEN_FILE_FORMAT_VERSION
        data["byte_order"] = "little"
        return data


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """``<path>.json``: the sidecar of a token file."""
    p = Path(path)
    return p.with_name(p.name + ".json")


def token_dtype(vocab_size: int) -> np.dtype:
    """Smallest little-endian unsigned dtype holding ids ``< vocab_size`` (uint16 or uint32)."""
    return np.dtype("<u2") if vocab_size <= 2**16 else np.dtype("<u4")


def _as_tokenizer(tokenizer: PreTrainedTokenizerFast | str | os.PathLike[str]):
    if isinstance(tokenizer, (str, os.PathLike)):
        return load_tokenizer(tokenizer)
    return tokenizer


def _batched(items: Iterable[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def build_token_file(
    documents: Iterable[str],
    tokenizer: PreTrainedTokenizerFast | str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    batch_size: int = 1024,
) -> TokenFileInfo:
    """Tokenise ``documents`` once and write the packed token file and its sidecar.

    Each document is encoded without special tokens and followed by the tokenizer's EOS
    (end-of-document) token. Both files are written atomically, the sidecar last.

    Args:
        documents: texts, packed in the given order.
        tokenizer: a fast tokenizer or a path accepted by :func:`load_tokenizer`.
        out_path: the token file to write (e.g. ``tokens.bin``); the sidecar is
            ``<out_path>.json``.
        batch_size: documents per batched encoding call.
    """
    tok = _as_tokenizer(tokenizer)
    eod_id = tok.eos_token_id
    if eod_id is None:
        raise DataError("tokenizer has no eos_token (needed as the end-of-document token)")
    vocab_size = len(tok)
    dtype = token_dtype(vocab_size)
    backend = tok.backend_tokenizer
    # encode_batch_fast skips offset tracking, which we do not need (tokenizers >= 0.20).
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
    eod = np.array([eod_id], dtype=dtype)

    start = time.perf_counter()
    out = Path(out_path)
    digest = hashlib.sha256()
    num_tokens = num_docs = 0
    with atomic_writer(out, "wb") as handle:
        for batch in _batched(documents, batch_size):
            parts = []
            for encoding in encode(batch, add_special_tokens=False):
                parts.append(np.asarray(encoding.ids, dtype=dtype))
                parts.append(eod)
            chunk = np.concatenate(parts).tobytes()
            digest.update(chunk)
            handle.write(chunk)
            num_tokens += len(chunk) // dtype.itemsize
            num_docs += len(batch)
    if num_docs == 0:
        out.unlink(missing_ok=True)
        raise DataError("cannot build a token file from zero documents")
    info = TokenFileInfo(
        path=out,
        dtype=dtype.name,
        num_tokens=num_tokens,
        num_documents=num_docs,
        vocab_size=vocab_size,
        eod_id=int(eod_id),
        bos_id=tok.bos_token_id,
        pad_id=tok.pad_token_id,
        sha256=digest.hexdigest(),
        tokenizer_sha256=tokenizer_fingerprint(tok),
    )
    write_json(info.meta_path, info.to_json())
    logger.info(
        "packed %d documents into %d tokens (%s) in %.1f s -> %s",
        num_docs,
        num_tokens,
        dtype.name,
        time.perf_counter() - start,
        out,
    )
    return info


def read_token_file_info(path: str | os.PathLike[str]) -> TokenFileInfo:
    """Read the sidecar of a token file and check that the file has the recorded size."""
    p = Path(path)
    meta = sidecar_path(p)
    if not p.is_file():
        raise DataError(
            f"token file {p} does not exist; build it with build_token_file() or prepare_data()"
        )
    if not meta.is_file():
        raise DataError(f"token file {p} has no sidecar {meta.name}; rebuild it")
    data = read_json(meta)
    fields = set(TokenFileInfo.__dataclass_fields__) - {"path"}
    missing = sorted(fields - set(data))
    if missing:
        raise DataError(f"sidecar {meta} lacks {missing}; rebuild the token file")
    info = TokenFileInfo(**{k: data[k] for k in fields}, path=p)
    if info.dtype not in ("uint16", "uint32"):
        raise DataError(f"{meta} has dtype {info.dtype!r}; expected 'uint16' or 'uint32'")
    expected = info.num_tokens * np.dtype(info.dtype).itemsize
    actual = p.stat().st_size
    if actual != expected:
        raise DataError(
            f"token file {p} has {actual} bytes but its sidecar records {info.num_tokens} "
            f"{info.dtype} tokens ({expected} bytes); the file is truncated or stale, rebuild it"
        )
    return info


def verify_token_file(path: str | os.PathLike[str]) -> TokenFileInfo:
    """Like :func:`read_token_file_info`, and also check the SHA-256 of the whole file."""
    info = read_token_file_info(path)
    actual = sha256_file(info.path)
    if actual != info.sha256:
        raise DataError(
            f"token file {info.path} has sha256 {actual[:12]}..., sidecar says "
            f"{info.sha256[:12]}...; the file is corrupt or stale, rebuild it"
        )
    return info


class PackedTokenDataset:
    """Fixed-length next-token windows over one split of a packed token file.

    Args:
        path: token file written by :func:`build_token_file`.
        seq_len: model sequence length ``T``.
        split: ``"train"`` or ``"val"`` (see the module docstring for the split rule).
        val_fraction: share of the stream used for validation, in ``[0, 1)``.
        val_tokens: validation size in tokens; overrides ``val_fraction`` when given.
        bos_id: if given, every window starts with this token (see the module docstring).

    ``batch(step, ...)`` is a pure function of ``(seed, step)``: windows are drawn without
    replacement within an epoch from a permutation seeded by ``(seed, epoch)``, so a resumed or
    re-sharded run sees exactly the same data.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        seq_len: int,
        split: str = "train",
        *,
        val_fraction: float = 0.05,
        val_tokens: int | None = None,
        bos_id: int | None = None,
    ) -> None:
        if int(seq_len) != seq_len or seq_len < 2:
            raise DataError(f"seq_len must be an integer >= 2, got {seq_len!r}")
        if split not in SPLITS:
            raise DataError(f"split must be one of {SPLITS}, got {split!r}")
        if not 0.0 <= val_fraction < 1.0:
            raise DataError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
        info = read_token_file_info(path)
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

        self.info = info
        self.seq_len = int(seq_len)
        self.split = split
        self.bos_id = None if bos_id is None else int(bos_id)
        self._tokens = np.memmap(info.path, dtype=np.dtype(info.dtype).newbyteorder("<"), mode="r")

        n_val = int(val_tokens) if val_tokens is not None else round(info.num_tokens * val_fraction)
        self.split_point = (
            self._document_boundary(info.num_tokens - n_val, n_val) if n_val else info.num_tokens
        )
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
        self._perms: dict[tuple[int, int], np.ndarray] = {}

    def _document_boundary(self, point: int, max_shift: int) -> int:
        """Index just after the last end-of-document token in ``[point - max_shift, point)``.

        Returns ``point`` itself when there is none: capping the shift at the validation size
        keeps one long final document from swallowing the training split (validation then at
        most doubles; otherwise that one document is split between train and val).
        """
        eod = self.info.eod_id
        floor = max(0, point - max_shift)
        end = point
        while end > floor:
            begin = max(floor, end - _SCAN_CHUNK)
            hits = np.flatnonzero(self._tokens[begin:end] == eod)
            if hits.size:
                return begin + int(hits[-1]) + 1
            end = begin
        return point

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

    def _windows(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """``(input_ids, labels)``, each ``(len(indices), T)`` int64, for window indices."""
        starts = self._offset + indices.astype(np.int64) * self.seq_len
        rows = self._tokens[starts[:, None] + np.arange(self._span)].astype(np.int64)
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

    def _permutation(self, seed: int, epoch: int) -> np.ndarray:
        key = (seed, epoch)
        perm = self._perms.get(key)
        if perm is None:
            perm = stable_permutation([seed, epoch], self.num_windows)
            if len(self._perms) >= _PERMUTATION_CACHE:
                self._perms.pop(next(iter(self._perms)))
            self._perms[key] = perm
        return perm

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
        samples = np.arange(rows.start, rows.stop, dtype=np.int64)
        epochs, positions = np.divmod(samples, self.num_windows)
        out = np.empty_like(samples)
        for epoch in np.unique(epochs):
            mask = epochs == epoch
            out[mask] = self._permutation(int(seed), int(epoch))[positions[mask]]
        return out

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

    def __repr__(self) -> str:
        return (
            f"PackedTokenDataset({self.info.path.name!r}, split={self.split!r}, "
            f"seq_len={self.seq_len}, bos_id={self.bos_id}, tokens={self.num_tokens}, "
            f"windows={self.num_windows})"
        )
