"""Synthetic retrieval in long haystacks: passkey retrieval and multi-query associative recall.

Nothing is downloaded and small models can learn both tasks when they are mixed into training
(:class:`RetrievalMixSource`). Layouts (``|`` separates parts, ``[bos]`` only when the model's
windows start with BOS)::

    passkey:  [bos] | filler[:i] | KEY key | filler[i:] | QUERY key
    recall:   [bos] | filler[:i] | KEY k1 v1 ... KEY kn vn | filler[i:] | QUERY ka va QUERY kb vb ...

``key`` is ``key_len`` random digits, ``k*`` distinct key tokens, ``v*`` ``value_len`` random
digits; the haystack position ``i`` is ``depth`` (0 = start, 1 = end) of the filler. The answers
are the tokens after each ``QUERY [key]``. Examples are a pure function of
``(seed, length, depth, index)`` and the filler stream.

Vocabulary (:class:`RetrievalVocab`). With a real tokenizer the digits are the single-character
tokens ``"0"``-``"9"``, the recall keys the letters ``"A"``-``"P"``, and the markers are the
phrases ``" pass key:"`` (KEY) and ``" pass key?"`` (QUERY), short so they fit short windows;
multi-token phrases do not occur in ordinary filler by chance, so the filler is used unchanged.
With a synthetic vocabulary (no tokenizer, e.g. the backcopy task) ids are *reserved* from the top
of the vocabulary (10 digits, ``num_keys`` keys, one KEY and one QUERY id) and every reserved id in
the filler is replaced by an unreserved one, so a marker can only mean a marker.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gated_attention.data._batching import check_batch_args, rank_rows
from gated_attention.data._rng import stable_uniform
from gated_attention.data.tokenizer import load_tokenizer

RETRIEVAL_TASKS = ("passkey", "recall")

KEY_PHRASE = " pass key:"
QUERY_PHRASE = " pass key?"
PATTERN_TEXT = (
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
)

# Random stream tags (independent of the data sources' own streams).
_EVAL_STREAM = 101
_MIX_STREAM = 102
_PATTERN_STREAM = 103


@dataclass(frozen=True)
class RetrievalVocab:
    """Token ids the retrieval tasks use.

    Attributes:
        values: the answer alphabet (digits), 10 ids.
        keys: the recall key alphabet.
        key_marker: ids that introduce the passkey / a key-value pair in the haystack.
        query_marker: ids that precede each question at the end.
        reserved: ids that must not occur in the filler (replaced by :meth:`sanitize`).
        vocab_size: size of the vocabulary.
        kind: ``tokenizer`` or ``reserved``.
    """

    values: tuple[int, ...]
    keys: tuple[int, ...]
    key_marker: tuple[int, ...]
    query_marker: tuple[int, ...]
    reserved: tuple[int, ...] = ()
    vocab_size: int = 0
    kind: str = "tokenizer"
    _lookup: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("values", "keys", "key_marker", "query_marker"):
            ids = getattr(self, name)
            if not ids:
                raise ValueError(f"RetrievalVocab.{name} must not be empty")
            if any(not 0 <= i < self.vocab_size for i in ids):
                raise ValueError(
                    f"RetrievalVocab.{name} has ids outside [0, vocab_size={self.vocab_size})"
                )
        if len(set(self.values)) != len(self.values) or len(set(self.keys)) != len(self.keys):
            raise ValueError("RetrievalVocab.values and .keys must not repeat an id")
        lookup = np.arange(self.vocab_size, dtype=np.int64)
        if self.reserved:
            reserved = np.array(sorted(set(self.reserved)), dtype=np.int64)
            free = np.setdiff1d(lookup, reserved)
            if free.size == 0:
                raise ValueError("RetrievalVocab reserves every id; nothing is left for filler")
            lookup[reserved] = free[reserved % free.size]
        object.__setattr__(self, "_lookup", lookup)

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, num_keys: int = 16) -> RetrievalVocab:
        """Digits, capital letters and two marker phrases from a (byte-level) tokenizer."""
        if isinstance(tokenizer, (str, Path)):
            tokenizer = load_tokenizer(tokenizer)

        def single(ch: str) -> int:
            ids = tokenizer.encode(ch, add_special_tokens=False)
            if len(ids) != 1:
                raise ValueError(f"the tokenizer has no single token for {ch!r}")
            return int(ids[0])

        letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
        if not 1 <= num_keys <= len(letters):
            raise ValueError(f"num_keys must be in [1, 26] with a tokenizer, got {num_keys}")
        return cls(
            values=tuple(single(str(d)) for d in range(10)),
            keys=tuple(single(c) for c in letters[:num_keys]),
            key_marker=tuple(tokenizer.encode(KEY_PHRASE, add_special_tokens=False)),
            query_marker=tuple(tokenizer.encode(QUERY_PHRASE, add_special_tokens=False)),
            vocab_size=len(tokenizer),
            kind="tokenizer",
        )

    @classmethod
    def reserved_ids(
        cls, vocab_size: int, bos_id: int | None = 0, num_keys: int = 8
    ) -> RetrievalVocab:
        """Reserve ``12 + num_keys`` ids from the top of a synthetic vocabulary (never BOS)."""
        need = 10 + num_keys + 2
        ids = [i for i in range(vocab_size - 1, -1, -1) if i != bos_id][:need]
        if len(ids) < need or vocab_size - need - (bos_id is not None) < 2:
            raise ValueError(
                f"vocab_size={vocab_size} is too small to reserve {need} retrieval ids "
                f"(10 digits, {num_keys} keys, 2 markers) and keep filler ids; use a larger "
                "vocabulary or fewer keys"
            )
        ids = ids[::-1]
        return cls(
            values=tuple(ids[:10]),
            keys=tuple(ids[10 : 10 + num_keys]),
            key_marker=(ids[-2],),
            query_marker=(ids[-1],),
            reserved=tuple(ids),
            vocab_size=vocab_size,
            kind="reserved",
        )

    def sanitize(self, filler: torch.Tensor) -> torch.Tensor:
        """Replace reserved ids in ``filler`` (any shape) by fixed unreserved ids."""
        if not self.reserved:
            return filler
        lookup = torch.from_numpy(self._lookup).to(filler.device)
        return lookup[filler.long().clamp(0, self.vocab_size - 1)]

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if not k.startswith("_")}


@dataclass
class RetrievalBatch:
    """Generated examples of one (length, depth).

    Attributes:
        tokens: ``(n, length)`` full sequences (prompt and answers).
        spans: per example, ``[start, end)`` of each answer in ``tokens``.
        length, depth: the setting they were generated for.
    """

    tokens: torch.Tensor
    spans: list[list[tuple[int, int]]]
    length: int
    depth: float


@dataclass(frozen=True)
class PasskeyTask:
    """Passkey retrieval: a ``key_len``-digit key hidden in filler, asked for at the end."""

    vocab: RetrievalVocab
    key_len: int = 4
    name: str = "passkey"

    def __post_init__(self) -> None:
        if self.key_len < 1:
            raise ValueError(f"PasskeyTask.key_len must be >= 1, got {self.key_len}")

    @property
    def num_random(self) -> int:
        return self.key_len

    def overhead(self) -> int:
        """Tokens besides filler and BOS."""
        v = self.vocab
        return len(v.key_marker) + len(v.query_marker) + 2 * self.key_len

    def build(
        self, filler: torch.Tensor, length: int, depth: float, u: np.ndarray, bos_id: int | None
    ) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """One example of exactly ``length`` tokens; ``u`` holds ``num_random`` uniforms."""
        v = self.vocab
        key = [v.values[int(x * len(v.values))] for x in u[: self.key_len]]
        needle = [*v.key_marker, *key]
        tail = [*v.query_marker, *key]
        return _assemble(
            filler, length, depth, bos_id, needle, tail, [(len(tail) - self.key_len, len(tail))]
        )


@dataclass(frozen=True)
class AssociativeRecallTask:
    """Multi-query associative recall: ``num_pairs`` key-value pairs, ``num_queries`` questions."""

    vocab: RetrievalVocab
    num_pairs: int = 4
    num_queries: int = 2
    value_len: int = 2
    name: str = "recall"

    def __post_init__(self) -> None:
        if not 1 <= self.num_queries <= self.num_pairs:
            raise ValueError(
                f"AssociativeRecallTask needs 1 <= num_queries <= num_pairs, got "
                f"num_queries={self.num_queries}, num_pairs={self.num_pairs}"
            )
        if self.num_pairs > len(self.vocab.keys):
            raise ValueError(
                f"AssociativeRecallTask.num_pairs={self.num_pairs} exceeds the "
                f"{len(self.vocab.keys)} key tokens of the vocabulary"
            )
        if self.value_len < 1:
            raise ValueError(f"AssociativeRecallTask.value_len must be >= 1, got {self.value_len}")

    @property
    def num_random(self) -> int:
        return len(self.vocab.keys) + self.num_pairs * (self.value_len + 1)

    def overhead(self) -> int:
        v = self.vocab
        pair = len(v.key_marker) + 1 + self.value_len
        query = len(v.query_marker) + 1 + self.value_len
        return self.num_pairs * pair + self.num_queries * query

    def build(
        self, filler: torch.Tensor, length: int, depth: float, u: np.ndarray, bos_id: int | None
    ) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        v = self.vocab
        nk = len(v.keys)
        keys = [v.keys[i] for i in np.argsort(u[:nk], kind="stable")[: self.num_pairs]]
        rest = u[nk:]
        vals = [
            [
                v.values[int(x * len(v.values))]
                for x in rest[i * self.value_len : (i + 1) * self.value_len]
            ]
            for i in range(self.num_pairs)
        ]
        order = np.argsort(rest[self.num_pairs * self.value_len :], kind="stable")[
            : self.num_queries
        ]
        needle: list[int] = []
        for k, val in zip(keys, vals):
            needle += [*v.key_marker, k, *val]
        tail: list[int] = []
        answers = []
        for q in order.tolist():
            tail += [*v.query_marker, keys[q]]
            answers.append((len(tail), len(tail) + self.value_len))
            tail += vals[q]
        return _assemble(filler, length, depth, bos_id, needle, tail, answers)


RetrievalTask = PasskeyTask | AssociativeRecallTask


def _assemble(
    filler: torch.Tensor,
    length: int,
    depth: float,
    bos_id: int | None,
    needle: list[int],
    tail: list[int],
    tail_answers: list[tuple[int, int]],
) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    prefix = [] if bos_id is None else [int(bos_id)]
    n_fill = length - len(prefix) - len(needle) - len(tail)
    if n_fill < 0:
        raise ValueError(
            f"length={length} is too short for this retrieval task: it needs at least "
            f"{length - n_fill} tokens (markers, keys and answers)"
        )
    if filler.numel() < n_fill:
        raise ValueError(f"the filler has {filler.numel()} tokens but {n_fill} are needed")
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    at = round(depth * n_fill)
    fill = filler[:n_fill].long()
    tokens = torch.cat(
        (
            torch.tensor(prefix, dtype=torch.long),
            fill[:at],
            torch.tensor(needle, dtype=torch.long),
            fill[at:],
            torch.tensor(tail, dtype=torch.long),
        )
    )
    start = length - len(tail)
    return tokens, [(start + a, start + b) for a, b in tail_answers]


def make_task(name: str, vocab: RetrievalVocab, **kwargs: Any) -> RetrievalTask:
    """A task by name (:data:`RETRIEVAL_TASKS`)."""
    if name == "passkey":
        return PasskeyTask(vocab, **kwargs)
    if name == "recall":
        return AssociativeRecallTask(vocab, **kwargs)
    raise ValueError(
        f"retrieval task {name!r} is not valid; allowed: {', '.join(RETRIEVAL_TASKS)}."
    )


def pattern_filler(vocab: RetrievalVocab, num_tokens: int, tokenizer: Any = None) -> torch.Tensor:
    """A fixed filler: the classic repeated sentences (with a tokenizer) or a fixed pseudo-random
    cycle of 64 unreserved ids (synthetic vocabulary); ``(num_tokens,)`` int64."""
    if tokenizer is not None:
        if isinstance(tokenizer, (str, Path)):
            tokenizer = load_tokenizer(tokenizer)
        unit = torch.tensor(tokenizer.encode(PATTERN_TEXT, add_special_tokens=False))
    else:
        u = stable_uniform([_PATTERN_STREAM], 64)
        unit = vocab.sanitize(torch.from_numpy((u * vocab.vocab_size).astype(np.int64)))
    reps = -(-num_tokens // unit.numel())
    return unit.repeat(reps)[:num_tokens].long()


def make_batch(
    task: RetrievalTask,
    filler: torch.Tensor,
    length: int,
    depth: float,
    num_examples: int,
    seed: int = 0,
    bos_id: int | None = None,
) -> RetrievalBatch:
    """``num_examples`` examples at one (length, depth), deterministic per ``seed``.

    Example ``i`` reads its filler from a random offset of the flat ``filler`` stream
    (sanitised) and its keys from ``stable_uniform([seed, length, depth, i])``.
    """
    if isinstance(num_examples, bool) or int(num_examples) != num_examples or num_examples < 1:
        raise ValueError(f"num_examples must be an integer >= 1, got {num_examples!r}")
    filler = filler.reshape(-1)
    n_fill = length - (bos_id is not None) - task.overhead()
    if n_fill < 0:
        raise ValueError(
            f"length={length} is too short for the {task.name} task, which needs "
            f"{length - n_fill} tokens"
        )
    if filler.numel() < n_fill:
        raise ValueError(f"the filler stream has {filler.numel()} tokens but {n_fill} are needed")
    rows, spans = [], []
    for i in range(num_examples):
        u = stable_uniform(
            [int(seed), _EVAL_STREAM, int(length), round(depth * 1e6), i], task.num_random + 1
        )
        offset = int(u[-1] * (filler.numel() - n_fill + 1))
        fill = task.vocab.sanitize(filler[offset : offset + n_fill])
        tokens, sp = task.build(fill, length, depth, u[:-1], bos_id)
        rows.append(tokens)
        spans.append(sp)
    return RetrievalBatch(torch.stack(rows), spans, int(length), float(depth))


class RetrievalMixSource:
    """A batch source that replaces some training sequences by retrieval examples.

    Each row of the global batch of ``step`` becomes a retrieval example with probability
    ``prob``, decided (with its depth, keys and the rest) by ``stable_uniform([seed, g])`` of its
    global sample index ``g``: a pure function of ``(seed, step)`` like every batch source, so
    resume and re-sharding stay exact. The example's filler is the corpus row itself (sanitised),
    its first token (BOS when the source adds one) is kept, and its length is the training
    length. Evaluation batches are the base source's, unchanged.

    Args:
        base: the wrapped batch source.
        task: a :class:`PasskeyTask` or :class:`AssociativeRecallTask`.
        prob: share of rows replaced, in ``[0, 1]``.
        bos_id: the BOS id the base source puts at position 0 (kept as the example's first
            token), or ``None``.
    """

    def __init__(self, base: Any, task: RetrievalTask, prob: float, bos_id: int | None) -> None:
        if not 0.0 <= prob <= 1.0 or math.isnan(prob):
            raise ValueError(f"data.retrieval_mix must be in [0, 1], got {prob}")
        self.base = base
        self.task = task
        self.prob = float(prob)
        self.bos_id = bos_id

    def batch(
        self, step: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The base batch with some rows replaced; ``(input_ids, labels)`` ``(b, T)``."""
        check_batch_args(step, batch_size, seed, rank, world_size)
        ids, labels = self.base.batch(step, batch_size, seed, rank, world_size)
        full = torch.cat((ids[:, :1], labels), dim=1)
        length = full.shape[1]
        for r, g in enumerate(rank_rows(step, batch_size, rank, world_size)):
            u = stable_uniform([int(seed), _MIX_STREAM, int(g)], self.task.num_random + 2)
            if u[0] >= self.prob:
                continue
            first = full[r, 0].item()
            bos = first if self.bos_id is not None else None
            body = full[r, 1:] if bos is not None else full[r]
            tokens, _ = self.task.build(
                self.task.vocab.sanitize(body), length, float(u[1]), u[2:], bos
            )
            full[r] = tokens
        return full[:, :-1].contiguous(), full[:, 1:].contiguous()

    def iter_eval_batches(self, batch_size: int, max_batches: int | None = None) -> Any:
        return self.base.iter_eval_batches(batch_size, max_batches)

    def __getattr__(self, name: str) -> Any:
        if name == "base":  # not yet set (e.g. during unpickling)
            raise AttributeError(name)
        return getattr(self.base, name)


def retrieval_vocab(
    vocab_size: int, tokenizer_path: str | Path | None = None, bos_id: int | None = 0
) -> RetrievalVocab:
    """The vocabulary choice documented above: tokenizer tokens when there is a tokenizer,
    reserved ids otherwise."""
    if tokenizer_path is not None:
        return RetrievalVocab.from_tokenizer(tokenizer_path)
    return RetrievalVocab.reserved_ids(vocab_size, bos_id)


def with_retrieval_mix(
    source: Any,
    task_name: str,
    prob: float,
    vocab_size: int,
    tokenizer_path: str | Path | None = None,
    bos_id: int | None = None,
) -> tuple[RetrievalMixSource, dict[str, Any]]:
    """Wrap a training source for ``data.retrieval_mix``; returns the source and a record for
    the run's ``data.json``. ``bos_id`` is the BOS the source puts at position 0, if any."""
    vocab = retrieval_vocab(vocab_size, tokenizer_path, 0 if bos_id is None else bos_id)
    task = make_task(task_name, vocab)
    seq_len = getattr(source, "seq_len", None)
    if seq_len is not None:
        need = task.overhead() + (bos_id is not None)
        if seq_len + 1 < need:
            raise ValueError(
                f"data.seq_len={seq_len} is too short for data.retrieval_task={task_name!r}, "
                f"which needs {need - 1} tokens; raise data.seq_len or use another task"
            )
    info = {"task": task_name, "prob": prob, "vocab": vocab.to_dict()}
    return RetrievalMixSource(source, task, prob, bos_id), info
