"""One call from raw text to a packed token file: corpus -> tokenizer -> tokens, cached.

Layout of one prepared entry::

    <cache_dir>/prepared/<key>/tokenizer/tokenizer.json   (+ tokenizer_config.json)
    <cache_dir>/prepared/<key>/tokens.bin                 packed token ids
    <cache_dir>/prepared/<key>/tokens.bin.json            token file sidecar
    <cache_dir>/prepared/<key>/prepared.json              manifest, written last

``<key>`` hashes the corpus identity (source names and versions, or the SHA-256 of the given
documents) and the tokenizer identity (vocabulary size of a trained tokenizer, which training
makes a pure function of the corpus, or the fingerprint of a given tokenizer). An existing
``prepared.json`` marks a finished entry, so a second call only reads two small JSON files.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gated_attention.data._io import atomic_writer, file_lock, read_json, short_hash, write_json
from gated_attention.data.corpus import prepare_corpus, read_corpus_manifest, resolve_cache_dir
from gated_attention.data.documents import DocumentSpec, load_documents
from gated_attention.data.errors import DataError
from gated_attention.data.packed import PackedTokenDataset, build_token_file, read_token_file_info
from gated_attention.data.sources import DEFAULT_SOURCES
from gated_attention.data.tokenizer import (
    MAX_VOCAB_SIZE,
    MIN_VOCAB_SIZE,
    load_tokenizer,
    tokenizer_file,
    tokenizer_fingerprint,
    train_tokenizer,
)

if TYPE_CHECKING:  # transformers takes ~0.5 s to import; only the functions need it
    from transformers import PreTrainedTokenizerFast

logger = logging.getLogger(__name__)

PREPARED_FORMAT_VERSION = 1
MANIFEST_FILE = "prepared.json"
TOKENS_FILE = "tokens.bin"
TOKENIZER_DIR = "tokenizer"
# Files copied next to a given tokenizer.json so the prepared entry is self-contained.
_TOKENIZER_SIDE_FILES = ("tokenizer_config.json", "special_tokens_map.json")


@dataclass(frozen=True)
class PreparedData:
    """A finished prepared-data entry.

    Attributes:
        root: the entry directory.
        tokenizer_path: its ``tokenizer.json``.
        tokens_path: its packed token file.
        manifest: the content of ``prepared.json`` (corpus, tokenizer and token file records).
    """

    root: Path
    tokenizer_path: Path
    tokens_path: Path
    manifest: dict[str, Any] = field(compare=False)

    @property
    def vocab_size(self) -> int:
        """Vocabulary size of the tokenizer (``len(tokenizer)``)."""
        return int(self.manifest["tokens"]["vocab_size"])

    @property
    def bos_id(self) -> int | None:
        """The tokenizer's BOS id (pass it as ``bos_id`` to get BOS-prefixed windows)."""
        return self.manifest["tokens"]["bos_id"]

    @property
    def eod_id(self) -> int:
        """The end-of-document id that separates documents in the token file."""
        return int(self.manifest["tokens"]["eod_id"])

    def load_tokenizer(self) -> PreTrainedTokenizerFast:
        """The tokenizer, with bos/eos/pad set (see :func:`~gated_attention.data.load_tokenizer`)."""
        return load_tokenizer(self.tokenizer_path)

    def dataset(
        self,
        seq_len: int,
        split: str = "train",
        *,
        bos: bool = False,
        val_fraction: float = 0.05,
        val_tokens: int | None = None,
    ) -> PackedTokenDataset:
        """A :class:`PackedTokenDataset` over the token file; ``bos=True`` prepends BOS."""
        return PackedTokenDataset(
            self.tokens_path,
            seq_len,
            split,
            val_fraction=val_fraction,
            val_tokens=val_tokens,
            bos_id=self.bos_id if bos else None,
        )


def load_prepared(root: str | os.PathLike[str]) -> PreparedData:
    """Open a prepared-data entry made by :func:`prepare_data`."""
    path = Path(root).expanduser()
    manifest_path = path / MANIFEST_FILE
    if not manifest_path.is_file():
        raise DataError(f"{path} is not a prepared data directory (no {MANIFEST_FILE})")
    try:
        manifest = read_json(manifest_path)
        manifest["tokens"]["vocab_size"]
    except (ValueError, KeyError, TypeError) as err:
        raise DataError(
            f"{manifest_path} is corrupt ({type(err).__name__}: {err}); delete {path} to "
            "prepare it again"
        ) from None
    return PreparedData(
        root=path,
        tokenizer_path=path / TOKENIZER_DIR / "tokenizer.json",
        tokens_path=path / TOKENS_FILE,
        manifest=manifest,
    )


def _is_complete(root: Path) -> bool:
    if (
        not (root / MANIFEST_FILE).is_file()
        or not (root / TOKENIZER_DIR / "tokenizer.json").is_file()
    ):
        return False
    try:
        load_prepared(root)
        read_token_file_info(root / TOKENS_FILE)
    except (DataError, OSError, ValueError) as err:
        logger.warning(
            "prepared entry %s is incomplete or corrupt (%s); preparing it again", root, err
        )
        return False
    return True


_VERIFIED: set[tuple[str, int, int]] = set()
"""Token files whose checksum this process checked: (path, size, mtime_ns)."""


def _verified(root: Path) -> bool:
    """Check the entry's token file against its sidecar's SHA-256 and its token ids against the
    vocabulary, once per process per file version (one sequential read: about 0.9 s per GB,
    SHA-256 at ~1.2 GB/s plus the id scan). False, with a warning naming the file, when it
    differs."""
    tokens = root / TOKENS_FILE
    st = tokens.stat()
    key = (str(tokens.resolve()), st.st_size, st.st_mtime_ns)
    if key in _VERIFIED:
        return True
    import numpy as np

    from gated_attention.data.shards import _hash_and_max

    info = read_token_file_info(tokens)
    digest, top = _hash_and_max(tokens, np.dtype(info.dtype))
    if digest != info.sha256:
        logger.warning(
            "token file %s does not match its recorded sha256 (altered or corrupt); rebuilding it",
            tokens,
        )
        return False
    if top >= info.vocab_size:
        logger.warning(
            "token file %s holds id %d >= its vocabulary of %d; rebuilding it",
            tokens,
            top,
            info.vocab_size,
        )
        return False
    _VERIFIED.add(key)
    return True


def _documents_sha256(docs: list[str]) -> str:
    digest = hashlib.sha256()
    for doc in docs:
        digest.update(doc.encode("utf-8"))
        digest.update(b"\0")  # separator, so ["ab"] and ["a", "b"] differ
    return digest.hexdigest()


def _copy_tokenizer(src: Path, dest_dir: Path) -> None:
    """Copy a tokenizer.json (and its config files, if beside it) into ``dest_dir``."""
    for name in _TOKENIZER_SIDE_FILES:
        side = src.parent / name
        if side.is_file():
            with atomic_writer(dest_dir / name, "wb") as handle, open(side, "rb") as source:
                shutil.copyfileobj(source, handle)
    with atomic_writer(dest_dir / "tokenizer.json", "wb") as handle, open(src, "rb") as source:
        shutil.copyfileobj(source, handle)


def prepare_data(
    cache_dir: str | os.PathLike[str] | None = None,
    sources: str | tuple[str, ...] | list[str] = DEFAULT_SOURCES,
    vocab_size: int = 8192,
    tokenizer_path: str | os.PathLike[str] | None = None,
    documents: DocumentSpec | None = None,
    force: bool = False,
    *,
    text_field: str = "text",
) -> PreparedData:
    """Build (or reuse) corpus, tokenizer and packed token file; return the finished entry.

    Args:
        cache_dir: cache root; ``None`` means :func:`~gated_attention.data.default_cache_dir`.
        sources: corpus source names, used when ``documents`` is ``None``.
        vocab_size: size of the BPE tokenizer to train; ignored with ``tokenizer_path``.
        tokenizer_path: an existing ``tokenizer.json`` (or its directory) to use instead of
            training one; it is copied into the entry.
        documents: your own text instead of the registry corpus: any spec accepted by
            :func:`~gated_attention.data.load_documents` (a path or a list of strings), packed
            in the given order.
        force: rebuild everything, including the corpus download.
        text_field: JSON field / dataset column holding the text of ``documents``.
    """
    start = time.perf_counter()
    cache = resolve_cache_dir(cache_dir)

    # Corpus identity. Registry corpora are identified by their manifest, so a cached entry is
    # found without reading the documents; given documents are hashed by content.
    docs: list[str] | None = None
    if documents is None:
        corpus_dir = prepare_corpus(cache, sources, force=force)
        corpus_manifest = read_corpus_manifest(corpus_dir)
        corpus_id: dict[str, Any] = {
            "kind": "sources",
            "key": corpus_manifest["key"],
            "documents_sha256": corpus_manifest["documents_sha256"],
        }
        corpus_record: dict[str, Any] = {**corpus_id, "path": str(corpus_dir), **corpus_manifest}
    else:
        docs = load_documents(documents, text_field=text_field)
        corpus_id = {"kind": "documents", "documents_sha256": _documents_sha256(docs)}
        where = (
            str(Path(documents).expanduser().absolute())
            if isinstance(documents, (str, os.PathLike))
            else f"{len(docs)} in-memory documents"
        )
        corpus_record = {
            **corpus_id,
            "spec": where,
            "documents": len(docs),
            "characters": sum(len(d) for d in docs),
        }

    given_tokenizer = None
    if tokenizer_path is not None:
        given_tokenizer = load_tokenizer(tokenizer_path)
        tokenizer_id: dict[str, Any] = {
            "kind": "given",
            "fingerprint": tokenizer_fingerprint(given_tokenizer),
        }
    else:
        if int(vocab_size) != vocab_size or not MIN_VOCAB_SIZE <= vocab_size <= MAX_VOCAB_SIZE:
            raise DataError(
                f"vocab_size must be an integer in [{MIN_VOCAB_SIZE}, {MAX_VOCAB_SIZE}], "
                f"got {vocab_size!r}"
            )
        tokenizer_id = {"kind": "trained", "vocab_size": int(vocab_size)}

    key = short_hash(
        {"format": PREPARED_FORMAT_VERSION, "corpus": corpus_id, "tokenizer": tokenizer_id}
    )
    root = cache / "prepared" / key
    if not force and _is_complete(root) and _verified(root):
        logger.info("prepared data found in %s", root)
        return load_prepared(root)

    with file_lock(cache / "prepared" / f".{key}.lock"):
        if not force and _is_complete(root) and _verified(root):
            return load_prepared(root)
        if docs is None:
            docs = load_documents(corpus_dir)
        (root / MANIFEST_FILE).unlink(missing_ok=True)  # the entry is incomplete until rewritten
        tok_dir = root / TOKENIZER_DIR
        if given_tokenizer is not None:
            _copy_tokenizer(tokenizer_file(tokenizer_path), tok_dir)
        else:
            logger.info("training a %d-token tokenizer on %d documents", vocab_size, len(docs))
            train_tokenizer(docs, vocab_size, out_dir=tok_dir)
        tokenizer = load_tokenizer(tok_dir)
        logger.info("tokenising %d documents", len(docs))
        info = build_token_file(docs, tokenizer, root / TOKENS_FILE)
        manifest = {
            "format_version": PREPARED_FORMAT_VERSION,
            "key": key,
            "corpus": corpus_record,
            "tokenizer": {
                "kind": tokenizer_id["kind"],
                "requested_vocab_size": tokenizer_id.get("vocab_size"),
                "fingerprint": info.tokenizer_sha256,
                "vocab_size": len(tokenizer),
                "bos_token": tokenizer.bos_token,
                "eos_token": tokenizer.eos_token,
                "pad_token": tokenizer.pad_token,
                "file": f"{TOKENIZER_DIR}/tokenizer.json",
            },
            "tokens": info.to_json(),
        }
        write_json(root / MANIFEST_FILE, manifest)
        st = (root / TOKENS_FILE).stat()  # just written from the hashed bytes
        _VERIFIED.add((str((root / TOKENS_FILE).resolve()), st.st_size, st.st_mtime_ns))
    logger.info(
        "prepared %d tokens (%d documents) in %s (%.1f s)",
        info.num_tokens,
        info.num_documents,
        root,
        time.perf_counter() - start,
    )
    return load_prepared(root)
