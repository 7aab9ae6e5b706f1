"""Tokenise a streamed corpus into fixed-size shards, in parallel worker processes, resumably.

:func:`prepare_shards` reads documents with :func:`~gated_attention.data.documents.iter_stream`
(memory bounded by a few chunks of text, never the corpus), sends chunks of about
``chunk_chars`` characters to ``workers`` processes that encode them with the fast tokenizer's
batch encoding (single-threaded each, so ``N`` workers use ``N`` cores), and writes the results in
input order into shards of exactly ``shard_tokens`` tokens (the last one shorter) with their
sidecars and, at the end, the manifest (format: :mod:`gated_attention.data.shards`).

Resuming. Each finished shard is renamed into place and then gets its sidecar, which records the
stream position where the next shard starts. A rerun of the same preparation keeps every shard
whose sidecar and checksum are intact, restarts the input at the recorded position (re-reading
the inputs up to it without tokenising them) and writes the rest: the finished set is
byte-identical to an uninterrupted run whatever the number of workers, because chunks are
written in input order and shard cuts depend only on the token stream.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import logging
import multiprocessing
import os
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gated_attention.data._io import (
    atomic_writer,
    file_lock,
    read_json,
    sha256_file,
    short_hash,
    write_json,
)
from gated_attention.data.corpus import resolve_cache_dir
from gated_attention.data.documents import (
    DocumentSpec,
    InputFile,
    expand_path,
    iter_stream,
    resolve_inputs,
)
from gated_attention.data.errors import DataError
from gated_attention.data.shards import (
    DOCS_DTYPE,
    MANIFEST_FILE,
    PLAN_FILE,
    SHARD_FORMAT,
    SHARD_FORMAT_VERSION,
    TOKENIZER_DIR,
    ShardSet,
    _hash_and_max,
    is_shard_set,
    shard_name,
)
from gated_attention.data.tokenfile import token_dtype
from gated_attention.data.tokenizer import load_tokenizer, tokenizer_file, tokenizer_fingerprint

logger = logging.getLogger(__name__)

DEFAULT_SHARD_TOKENS = 1 << 27
"""134,217,728 tokens per shard: 256 MiB as uint16, 512 MiB as uint32."""
DEFAULT_CHUNK_CHARS = 1 << 20
_TOKENIZER_SIDE_FILES = ("tokenizer_config.json", "special_tokens_map.json")
_PROGRESS_EVERY_S = 30.0


def default_workers() -> int:
    """All cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


# --------------------------------------------------------------------------- the encoder


@dataclass
class _Encoder:
    """Encodes a list of documents into one token array (each document + end-of-document)."""

    tokenizer_json: str
    eod_id: int
    dtype: str
    _backend: Any = field(default=None, repr=False)

    def __call__(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(tokens, lengths)``: concatenated ids, and each document's token count (+1 EOD)."""
        if self._backend is None:
            from tokenizers import Tokenizer

            backend = Tokenizer.from_file(self.tokenizer_json)
            backend.no_truncation()
            backend.no_padding()
            self._backend = backend
        backend = self._backend
        encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
        dtype = np.dtype(self.dtype)
        encodings = encode(texts, add_special_tokens=False)
        lengths = np.fromiter((len(e.ids) + 1 for e in encodings), np.int64, len(encodings))
        tokens = np.empty(int(lengths.sum()), dtype=dtype)
        ends = np.cumsum(lengths)
        pos = 0
        for encoding, end in zip(encodings, ends.tolist()):
            tokens[pos : end - 1] = encoding.ids
            pos = end
        tokens[ends - 1] = self.eod_id
        return tokens, lengths


_WORKER_ENCODER: _Encoder | None = None


def _worker_init(encoder: _Encoder) -> None:
    """Pool initializer: one single-threaded tokenizer per worker; die with the parent."""
    global _WORKER_ENCODER
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    if sys.platform.startswith("linux"):  # a SIGKILLed parent must not leave workers behind
        with contextlib.suppress(Exception):
            import ctypes
            import signal

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    _WORKER_ENCODER = encoder


def _worker_encode(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    assert _WORKER_ENCODER is not None
    return _WORKER_ENCODER(texts)


@contextlib.contextmanager
def _pool(workers: int, encoder: _Encoder) -> Iterator[Any]:
    """A process pool whose workers encode; ``None`` for ``workers == 1`` (encode in-process).

    The tokenizer runs single-threaded everywhere (``TOKENIZERS_PARALLELISM=false``, set in
    this process while the pool starts, or while it encodes itself), so ``workers`` is the
    number of cores used; setting it before the fork also keeps ``tokenizers`` from warning
    that its thread pool was used before forking.
    """
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    pool = None
    try:
        if workers > 1:
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            ctx = multiprocessing.get_context(method)
            pool = ctx.Pool(workers, initializer=_worker_init, initargs=(encoder,))
            if before is None:
                os.environ.pop("TOKENIZERS_PARALLELISM", None)
            else:
                os.environ["TOKENIZERS_PARALLELISM"] = before
        yield pool
        if pool is not None:
            pool.close()
            pool.join()
    finally:
        if pool is not None:
            pool.terminate()
        if before is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = before


# --------------------------------------------------------------------------- the writer


class _ShardWriter:
    """Appends encoded chunks to the current shard; cuts a shard every ``shard_tokens`` tokens."""

    def __init__(
        self,
        root: Path,
        dtype: np.dtype,
        shard_tokens: int,
        index: int,
        first_token: int,
        start: dict[str, int],
        num_inputs: int,
    ) -> None:
        self.root = root
        self.dtype = dtype
        self.shard_tokens = shard_tokens
        self.index = index
        self.first_token = first_token
        self.num_inputs = num_inputs
        self.finished: list[dict[str, Any]] = []
        self._open(start)

    def _open(self, start: dict[str, int]) -> None:
        self.start = dict(start)
        self.count = 0
        self.ends: list[np.ndarray] = []
        self.digest = hashlib.sha256()
        self.max_id = -1
        self.input_docs = np.zeros(self.num_inputs, dtype=np.int64)
        self.input_tokens = np.zeros(self.num_inputs, dtype=np.int64)
        self.partial = self.root / f".{shard_name(self.index)}.bin.partial"
        self.handle = open(self.partial, "wb")  # noqa: SIM115 - closed in _finish

    def write(
        self, tokens: np.ndarray, lengths: np.ndarray, positions: np.ndarray, skip: int
    ) -> None:
        """Append one chunk: documents ``lengths`` (tokens incl. EOD) at ``positions``
        ``(n, 2)`` = (input, record); the first ``skip`` tokens were written before."""
        ends = np.cumsum(lengths)  # chunk coordinates
        starts = ends - lengths
        cursor = skip
        while cursor < len(tokens):
            take = min(self.shard_tokens - self.count, len(tokens) - cursor)
            piece = tokens[cursor : cursor + take]
            data = piece.astype(self.dtype, copy=False).tobytes()
            self.handle.write(data)
            self.digest.update(data)
            self.max_id = max(self.max_id, int(piece.max()))
            done = (ends > cursor) & (ends <= cursor + take)
            self.ends.append(ends[done] - cursor + self.count)
            overlap = np.clip(np.minimum(ends, cursor + take) - np.maximum(starts, cursor), 0, None)
            np.add.at(self.input_tokens, positions[:, 0], overlap)
            np.add.at(self.input_docs, positions[done, 0], 1)
            cursor += take
            self.count += take
            if self.count == self.shard_tokens:
                doc = int(np.searchsorted(ends, cursor - 1, side="right"))
                self._finish(
                    {
                        "input": int(positions[doc, 0]),
                        "record": int(positions[doc, 1]),
                        "token": int(cursor - starts[doc]),
                    }
                )

    def _finish(self, end: dict[str, int]) -> None:
        """Close the current shard (rename into place, index, sidecar) and open the next."""
        name = shard_name(self.index)
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()
        os.replace(self.partial, self.root / f"{name}.bin")
        ends = np.concatenate(self.ends) if self.ends else np.zeros(0, dtype=np.int64)
        docs = ends.astype(DOCS_DTYPE).tobytes()
        with atomic_writer(self.root / f"{name}.docs") as handle:
            handle.write(docs)
        sidecar = {
            "format": SHARD_FORMAT,
            "format_version": SHARD_FORMAT_VERSION,
            "name": name,
            "index": self.index,
            "dtype": self.dtype.name,
            "num_tokens": self.count,
            "first_token": self.first_token,
            "num_document_ends": len(ends),
            "sha256": self.digest.hexdigest(),
            "docs_sha256": hashlib.sha256(docs).hexdigest(),
            "max_token_id": self.max_id,
            "start": self.start,
            "end": end,
            "inputs": {
                str(i): {"documents": int(self.input_docs[i]), "tokens": int(self.input_tokens[i])}
                for i in np.flatnonzero(self.input_tokens)
            },
        }
        write_json(self.root / f"{name}.json", sidecar)
        self.finished.append(sidecar)
        self.first_token += self.count
        self.index += 1
        self._open(end)

    def close(self, end: dict[str, int] | None) -> None:
        """Finish the last (short) shard, or drop it when it is empty."""
        if self.count and end is not None:
            self._finish(end)  # opens an empty next shard, dropped below
        self.handle.close()
        self.partial.unlink(missing_ok=True)


# --------------------------------------------------------------------------- preparation


def _chunks(
    records: Iterator[Any], chunk_chars: int, max_docs: int = 16384
) -> Iterator[tuple[list[str], np.ndarray]]:
    """Group records into ``(texts, positions)`` chunks of about ``chunk_chars`` characters."""
    texts: list[str] = []
    positions: list[tuple[int, int]] = []
    size = 0
    for record in records:
        texts.append(record.text)
        positions.append((record.input, record.index))
        size += len(record.text)
        if size >= chunk_chars or len(texts) >= max_docs:
            yield texts, np.array(positions, dtype=np.int64)
            texts, positions, size = [], [], 0
    if texts:
        yield texts, np.array(positions, dtype=np.int64)


def _copy_tokenizer(src: Path, dest_dir: Path) -> Path:
    """Copy ``tokenizer.json`` and its config files into ``dest_dir`` (unless already there)."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    if src.parent.resolve() == dest_dir.resolve():
        return dest_dir / "tokenizer.json"
    for name in (*_TOKENIZER_SIDE_FILES, "tokenizer.json"):
        side = src if name == "tokenizer.json" else src.parent / name
        if side.is_file():
            with atomic_writer(dest_dir / name, "wb") as handle, open(side, "rb") as source:
                shutil.copyfileobj(source, handle)
    return dest_dir / "tokenizer.json"


def _valid_shards(root: Path, dtype: np.dtype) -> list[dict[str, Any]]:
    """Sidecars of the finished shards 0, 1, ... whose files are intact (checksums re-read).

    The first shard that is missing or damaged and everything after it is deleted, together
    with files a killed run left half-written, so the preparation continues from the last good
    shard.
    """
    good: list[dict[str, Any]] = []
    index = 0
    while True:
        name = shard_name(index)
        sidecar = root / f"{name}.json"
        if not sidecar.is_file():
            break
        try:
            meta = read_json(sidecar)
            bin_sha, _ = _hash_and_max(root / f"{name}.bin", dtype)
            docs_sha = sha256_file(root / f"{name}.docs")
        except (OSError, ValueError):
            break
        if bin_sha != meta.get("sha256") or docs_sha != meta.get("docs_sha256"):
            break
        good.append(meta)
        index += 1
    for stale in root.iterdir():
        name = stale.name
        leftover = name.startswith(".") and name.endswith((".partial", ".tmp"))
        stem = name.split(".")[0]
        if leftover or (stem.startswith("shard-") and int(stem[len("shard-") :]) >= index):
            stale.unlink()
    return good


def prepare_shards(
    inputs: DocumentSpec | Sequence[InputFile],
    out_dir: str | os.PathLike[str],
    tokenizer: str | os.PathLike[str],
    *,
    text_field: str = "text",
    split: str = "train",
    workers: int = 0,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    chunk_chars: int = DEFAULT_CHUNK_CHARS,
    force: bool = False,
) -> ShardSet:
    """Tokenise ``inputs`` into a shard set in ``out_dir``; resume or reuse what is there.

    Args:
        inputs: paths, globs or ``hf:`` names (see :mod:`gated_attention.data.documents`), or
            resolved :class:`InputFile` s.
        out_dir: the shard set directory.
        tokenizer: a ``tokenizer.json`` or a directory holding one (any local pretrained
            tokenizer; BOS/EOS/pad from its ``tokenizer_config.json``, see
            :func:`~gated_attention.data.load_tokenizer`). It is copied into ``out_dir``.
        text_field: JSON field / parquet or dataset column holding the text.
        split: split of a ``datasets`` directory or Hub builder.
        workers: tokenising processes; 0 means all cores, 1 encodes in this process.
        shard_tokens: tokens per shard (the last shard holds the rest).
        chunk_chars: characters sent to a worker at once.
        force: delete whatever ``out_dir`` holds and start over.

    Returns:
        The finished :class:`ShardSet`.

    Raises:
        DataError: bad inputs (one line naming the file), or ``out_dir`` holding a different
            preparation (other inputs, tokenizer or shard size) without ``force``.
    """
    if int(shard_tokens) != shard_tokens or shard_tokens < 1:
        raise DataError(f"shard_tokens must be an integer >= 1, got {shard_tokens!r}")
    if int(workers) != workers or workers < 0:
        raise DataError(f"workers must be an integer >= 0 (0: all cores), got {workers!r}")
    resolved = (
        list(inputs)
        if isinstance(inputs, (list, tuple)) and all(isinstance(i, InputFile) for i in inputs)
        else resolve_inputs(inputs)  # type: ignore[arg-type]
    )
    tok_file = tokenizer_file(tokenizer)
    tok = load_tokenizer(tok_file)
    vocab = tok.backend_tokenizer.get_vocab(with_added_tokens=True)
    vocab_size = max(len(tok), max(vocab.values(), default=-1) + 1)
    dtype = token_dtype(vocab_size)
    tokenizer_record = {
        "file": f"{TOKENIZER_DIR}/tokenizer.json",
        "fingerprint": tokenizer_fingerprint(tok),
        "vocab_size": vocab_size,
        "bos_id": tok.bos_token_id,
        "eod_id": tok.eos_token_id,
        "pad_id": tok.pad_token_id,
        "bos_token": tok.bos_token,
        "eos_token": tok.eos_token,
        "pad_token": tok.pad_token,
    }
    plan = {
        "format": SHARD_FORMAT,
        "format_version": SHARD_FORMAT_VERSION,
        "inputs": [i.identity() for i in resolved],
        "text_field": text_field,
        "split": split,
        "tokenizer": tokenizer_record,
        "dtype": dtype.name,
        "shard_tokens": int(shard_tokens),
    }
    key = short_hash(plan)
    root = Path(out_dir).expanduser().absolute()
    root.mkdir(parents=True, exist_ok=True)
    with file_lock(root / ".lock"):
        return _prepare_locked(
            root,
            resolved,
            plan,
            key,
            tok_file,
            force,
            int(workers) or default_workers(),
            int(chunk_chars),
        )


def _prepare_locked(
    root: Path,
    inputs: list[InputFile],
    plan: dict[str, Any],
    key: str,
    tok_file: Path,
    force: bool,
    workers: int,
    chunk_chars: int,
) -> ShardSet:
    manifest_path, plan_path = root / MANIFEST_FILE, root / PLAN_FILE
    old_key = read_json(plan_path).get("key") if plan_path.is_file() else None
    if force or (old_key is not None and old_key != key):
        if old_key is not None and old_key != key and not force:
            raise DataError(
                f"{root} holds shards prepared from other inputs, tokenizer or shard size "
                f"({plan_path.name} differs); remove the directory, pass --force (force=True) "
                "or choose another --out"
            )
        for item in root.iterdir():
            if item.name == ".lock":
                continue
            shutil.rmtree(item) if item.is_dir() else item.unlink()
    elif manifest_path.is_file() and read_json(manifest_path).get("key") == key:
        logger.info("shard set %s is complete", root)
        return ShardSet.open(root)

    _copy_tokenizer(tok_file, root / TOKENIZER_DIR)
    write_json(plan_path, {**plan, "key": key})
    dtype = np.dtype(plan["dtype"]).newbyteorder("<")
    done = _valid_shards(root, dtype)
    start = done[-1]["end"] if done else {"input": 0, "record": 0, "token": 0}
    first_token = sum(s["num_tokens"] for s in done)
    if done:
        logger.info(
            "resuming %s after %d finished shards (%d tokens)", root, len(done), first_token
        )

    writer = _ShardWriter(
        root, dtype, plan["shard_tokens"], len(done), first_token, start, len(inputs)
    )
    encoder = _Encoder(
        str(root / TOKENIZER_DIR / "tokenizer.json"), plan["tokenizer"]["eod_id"], dtype.name
    )
    records = iter_stream(
        inputs,
        text_field=plan["text_field"],
        split=plan["split"],
        start=(start["input"], start["record"]),
    )
    skip = start["token"]
    last: dict[str, int] | None = None
    t0 = last_log = time.perf_counter()
    written = 0
    with _pool(workers, encoder) as pool:
        pending: collections.deque = collections.deque()

        def drain(block: bool) -> None:
            nonlocal skip, last, written, last_log
            while pending and (block or pending[0][0].ready() or len(pending) > 2 * workers):
                result, positions = pending.popleft()
                tokens, lengths = result.get()
                writer.write(tokens, lengths, positions, skip)
                written += len(tokens) - skip
                skip = 0
                last = {
                    "input": int(positions[-1, 0]),
                    "record": int(positions[-1, 1]),
                    "token": int(lengths[-1]),
                }
                now = time.perf_counter()
                if now - last_log > _PROGRESS_EVERY_S:
                    last_log = now
                    logger.info(
                        "%s: %d tokens in %d shards (%.0f tokens/s)",
                        root.name,
                        first_token + written,
                        writer.index,
                        written / (now - t0),
                    )

        for texts, positions in _chunks(records, chunk_chars):
            if pool is None:
                pending.append((_Ready(encoder(texts)), positions))
            else:
                pending.append((pool.apply_async(_worker_encode, (texts,)), positions))
            drain(block=False)
        drain(block=True)
    writer.close(last)
    shards = done + writer.finished
    if not shards:
        raise DataError(f"no non-empty documents found in {', '.join(i.name for i in inputs)}")
    manifest = _manifest(plan, key, inputs, shards)
    write_json(manifest_path, manifest)
    elapsed = time.perf_counter() - t0
    logger.info(
        "prepared %d tokens (%d documents) in %d shards in %s (%.1f s, %.0f tokens/s, %d workers)",
        manifest["num_tokens"],
        manifest["num_documents"],
        len(shards),
        root,
        elapsed,
        written / elapsed if elapsed > 0 else 0.0,
        workers,
    )
    return ShardSet.open(root)


class _Ready:
    """An already computed result with the ``AsyncResult`` interface used above."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def ready(self) -> bool:
        return True

    def get(self) -> Any:
        return self.value


def _manifest(
    plan: dict[str, Any], key: str, inputs: list[InputFile], shards: list[dict[str, Any]]
) -> dict[str, Any]:
    """The finished set's manifest: plan, per-input totals and per-shard records."""
    per_input = [{"documents": 0, "tokens": 0} for _ in inputs]
    for shard in shards:
        for i, counts in shard["inputs"].items():
            per_input[int(i)]["documents"] += counts["documents"]
            per_input[int(i)]["tokens"] += counts["tokens"]
    return {
        **plan,
        "key": key,
        "inputs": [{**i.identity(), **c} for i, c in zip(inputs, per_input)],
        "num_tokens": sum(s["num_tokens"] for s in shards),
        "num_documents": sum(s["num_document_ends"] for s in shards),
        "max_token_id": max(s["max_token_id"] for s in shards),
        "shards": [
            {
                k: s[k]
                for k in (
                    "name",
                    "num_tokens",
                    "num_document_ends",
                    "sha256",
                    "docs_sha256",
                    "max_token_id",
                    "start",
                    "end",
                )
            }
            for s in shards
        ],
    }


# --------------------------------------------------------------------------- sources


def open_sources(
    sources: Sequence[str | Sequence[str]],
    *,
    tokenizer: str | os.PathLike[str] | None = None,
    vocab_size: int = 8192,
    text_field: str = "text",
    split: str = "train",
    cache_dir: str | os.PathLike[str] | None = None,
    workers: int = 0,
    verify: bool = True,
    out_dir: str | os.PathLike[str] | None = None,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    force: bool = False,
) -> list[ShardSet]:
    """Every source as a :class:`ShardSet`, tokenising raw inputs on first use.

    A source is a prepared shard set directory, or paths / globs / ``hf:`` names read as one
    corpus in order. Raw sources are prepared (:func:`prepare_shards`) into
    ``<cache_dir>/shards/<key>``, ``key`` hashing the inputs (paths, sizes, mtimes), the text
    field, the split and the tokenizer, so a second call finds them; ``out_dir`` overrides the
    location when there is one source.

    Tokenizer: ``tokenizer`` if given (every prepared source must have been made with it), else
    the tokenizer of the first prepared source, else our BPE of ``vocab_size`` tokens trained on
    all raw sources (cached in ``<cache_dir>/tokenizers/<key>``).

    Raises:
        DataError: bad inputs, or sources made with different tokenizers (one line each).
    """
    groups = [[s] if isinstance(s, (str, os.PathLike)) else list(s) for s in sources]
    if not groups or any(not g for g in groups):
        raise DataError("open_sources needs at least one source, each with at least one path")
    if out_dir is not None and len(groups) != 1:
        raise DataError("out_dir works with exactly one source")
    cache = resolve_cache_dir(cache_dir)
    opened: dict[int, ShardSet] = {}
    raw: dict[int, list[InputFile]] = {}
    for i, group in enumerate(groups):
        one = Path(expand_path(group[0])) if len(group) == 1 else None
        if one is not None and (is_shard_set(one) or (one / PLAN_FILE).is_file()):
            opened[i] = ShardSet.open(one, verify=verify)  # an unfinished set: says so
        else:
            raw[i] = resolve_inputs(group)
    ident = {"text_field": text_field, "split": split}
    if tokenizer is not None:
        tok_path = tokenizer_file(expand_path(tokenizer))
        where = f"the tokenizer {tok_path}"
    elif opened:
        first = next(iter(opened.values()))
        tok_path, where = first.tokenizer_path, f"the tokenizer of {first.root}"
    else:
        key = short_hash(
            {
                "inputs": [[x.identity() for x in g] for g in raw.values()],
                **ident,
                "vocab_size": vocab_size,
            }
        )
        logger.info(
            "training a %d-token BPE tokenizer on %d inputs",
            vocab_size,
            sum(len(g) for g in raw.values()),
        )
        docs = (r.text for g in raw.values() for r in iter_stream(g, **ident))
        out = cache / "tokenizers" / key
        with file_lock(cache / "tokenizers" / f".{key}.lock"):
            if not (out / "tokenizer.json").is_file():
                from gated_attention.data.tokenizer import train_tokenizer

                train_tokenizer(docs, vocab_size, out_dir=out)
        tok_path, where = out / "tokenizer.json", "the trained tokenizer"
    tok = load_tokenizer(tok_path)
    fingerprint = tokenizer_fingerprint(tok)
    for shard_set in opened.values():
        shard_set.check_tokenizer(fingerprint, len(tok), where)
    for i, inputs in raw.items():
        key = short_hash(
            {"inputs": [x.identity() for x in inputs], **ident, "tokenizer": fingerprint}
        )
        target = Path(out_dir) if out_dir is not None else cache / "shards" / key
        opened[i] = prepare_shards(
            inputs,
            target,
            tok_path,
            text_field=text_field,
            split=split,
            workers=workers,
            shard_tokens=shard_tokens,
            force=force,
        )
        if verify:
            opened[i].verify()
    return [opened[i] for i in range(len(groups))]
