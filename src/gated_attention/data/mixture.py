"""A weighted mixture of packed token datasets, deterministic per (seed, step), with provenance.

Global sample ``g`` (``g = step * batch_size + row``, as in every batch source) is assigned to a
part in blocks of ``block`` samples: each block holds exactly ``c_s`` samples of part ``s``
(``c`` = the weights times ``block``, rounded by largest remainder so they sum to ``block``), in
an order drawn from ``(seed, block index)``. Part ``s``'s samples are numbered
``i = block_index * c_s + (rank among the block's slots of s)``, and part ``s`` turns ``i`` into a
window with its own epoch permutation (salted with ``s``), so every part is read without
replacement pass after pass, independently of the others. Everything is a pure function of
``(seed, g)``: resume and re-sharding stay exact, and the share of part ``s`` in any ``block``
consecutive samples is exactly ``c_s / block`` (within ``1 / block`` of its weight).
:meth:`MixtureDataset.sources` names the part of every row.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from gated_attention.data._batching import check_batch_args, rank_rows
from gated_attention.data._rng import stable_permutation
from gated_attention.data.errors import DataError
from gated_attention.data.packed import PackedTokenDataset

# Seed-stream tag of the block layouts (keeps them independent of window permutations).
_MIX_STREAM = 7
_BLOCK_CACHE = 4


def largest_remainder(weights: Sequence[float], total: int) -> np.ndarray:
    """Integer counts summing to ``total`` proportional to ``weights`` (Hamilton's method;
    ties go to the earlier part)."""
    w = np.asarray(weights, dtype=np.float64)
    exact = w / w.sum() * total
    counts = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: total - int(counts.sum())]] += 1
    return counts


class MixtureDataset:
    """Training windows drawn from several :class:`PackedTokenDataset` parts by weight.

    Args:
        parts: datasets of the same split, ``seq_len``, BOS choice and tokenizer.
        weights: sampling weight per part (positive; normalised).
        names: a label per part (recorded as provenance).
        block: samples per stratification block (see the module docstring).
    """

    def __init__(
        self,
        parts: Sequence[PackedTokenDataset],
        weights: Sequence[float],
        names: Sequence[str] | None = None,
        *,
        block: int = 4096,
    ) -> None:
        if not parts:
            raise DataError("a mixture needs at least one part")
        if len(weights) != len(parts):
            raise DataError(f"got {len(weights)} weights for {len(parts)} mixture parts")
        if any(not (w > 0) for w in weights):
            raise DataError(f"mixture weights must be > 0, got {list(weights)}")
        first = parts[0]
        for part in parts[1:]:
            for attr in ("seq_len", "bos_id", "split"):
                if getattr(part, attr) != getattr(first, attr):
                    raise DataError(
                        f"mixture parts differ in {attr}: {first.info.path} has "
                        f"{getattr(first, attr)!r}, {part.info.path} has {getattr(part, attr)!r}"
                    )
            if part.info.tokenizer_sha256 != first.info.tokenizer_sha256:
                raise DataError(
                    f"mixture parts {first.info.path} and {part.info.path} were tokenized with "
                    "different tokenizers; prepare every source with the same data.tokenizer"
                )
        self.parts = list(parts)
        self.names = list(names) if names is not None else [str(p.info.path) for p in parts]
        total = float(sum(weights))
        self.weights = [float(w) / total for w in weights]
        self.block = int(block)
        self.counts = largest_remainder(self.weights, self.block)
        if (self.counts == 0).any():
            raise DataError(
                f"mixture weights {self.weights} give a part no sample in a block of "
                f"{self.block}; raise its weight"
            )
        self._layout = np.repeat(np.arange(len(parts)), self.counts)
        self._blocks: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        self.seq_len = first.seq_len
        self.bos_id = first.bos_id
        self.split = first.split
        self.info = first.info

    @property
    def vocab_size(self) -> int:
        return self.parts[0].vocab_size

    def _block_layout(self, seed: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        """``(part, index within part)`` of every slot of block ``b``, each ``(block,)``."""
        key = (seed, b)
        cached = self._blocks.get(key)
        if cached is None:
            labels = self._layout[stable_permutation([seed, _MIX_STREAM, b], self.block)]
            within = np.empty(self.block, dtype=np.int64)
            for s, count in enumerate(self.counts.tolist()):
                within[labels == s] = b * count + np.arange(count)
            cached = (labels, within)
            if len(self._blocks) >= _BLOCK_CACHE:
                self._blocks.pop(next(iter(self._blocks)))
            self._blocks[key] = cached
        return cached

    def _assign(self, samples: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
        parts = np.empty_like(samples)
        within = np.empty_like(samples)
        blocks, slots = np.divmod(samples, self.block)
        for b in np.unique(blocks).tolist():
            mask = blocks == b
            labels, idx = self._block_layout(int(seed), b)
            parts[mask] = labels[slots[mask]]
            within[mask] = idx[slots[mask]]
        return parts, within

    def sources(
        self, step: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1
    ) -> np.ndarray:
        """Part index of each of ``rank``'s rows of the batch of ``step``, ``(b,)`` int64."""
        check_batch_args(step, batch_size, seed, rank, world_size)
        rows = rank_rows(step, batch_size, rank, world_size)
        return self._assign(np.arange(rows.start, rows.stop, dtype=np.int64), seed)[0]

    def batch(
        self, step: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(input_ids, labels)``, each ``(batch_size // world_size, seq_len)`` int64."""
        check_batch_args(step, batch_size, seed, rank, world_size)
        rows = rank_rows(step, batch_size, rank, world_size)
        samples = np.arange(rows.start, rows.stop, dtype=np.int64)
        parts, within = self._assign(samples, seed)
        inputs = torch.empty((len(samples), self.seq_len), dtype=torch.int64)
        labels = torch.empty_like(inputs)
        for s in np.unique(parts).tolist():
            mask = parts == s
            part = self.parts[s]
            windows = part.sample_windows(within[mask], seed, salt=(_MIX_STREAM, s))
            x, y = part._windows(windows)
            inputs[torch.from_numpy(mask)] = x
            labels[torch.from_numpy(mask)] = y
        return inputs, labels

    def iter_eval_batches(
        self, batch_size: int, max_batches: int | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches whose rows come from the parts by weight (largest remainder per batch),
        each part's windows in stream order, a part that runs out starting over; as many
        batches as the parts' windows fill (``max_batches`` at most)."""
        if int(batch_size) != batch_size or batch_size < 1:
            raise DataError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        rows = largest_remainder(self.weights, int(batch_size))
        total = sum(p.num_windows for p in self.parts)
        num = -(-total // batch_size)
        if max_batches is not None:
            num = min(num, int(max_batches))
        for b in range(num):
            xs, ys = [], []
            for part, count in zip(self.parts, rows.tolist()):
                if count:
                    idx = np.arange(b * count, (b + 1) * count) % part.num_windows
                    x, y = part._windows(idx)
                    xs.append(x)
                    ys.append(y)
            yield torch.cat(xs), torch.cat(ys)

    def data_account(self, num_samples: int) -> list[dict[str, Any]]:
        """Per part: tokens, windows, expected samples and passes for ``num_samples`` samples."""
        out = []
        for name, part, count in zip(self.names, self.parts, self.counts.tolist()):
            samples = num_samples * count / self.block
            out.append(
                {
                    "name": name,
                    "tokens": part.num_tokens,
                    "windows": part.num_windows,
                    "weight": count / self.block,
                    "samples": samples,
                    "passes": samples / part.num_windows,
                }
            )
        return out

    def __repr__(self) -> str:
        parts = ", ".join(f"{n}: {w:.3f}" for n, w in zip(self.names, self.weights))
        return f"MixtureDataset({parts}; split={self.split!r}, seq_len={self.seq_len})"
