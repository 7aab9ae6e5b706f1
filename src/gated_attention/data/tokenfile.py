"""The single-file token format: one packed token stream and its JSON sidecar.

``tokens.bin`` is a flat little-endian array of token ids (``uint16`` when the vocabulary fits,
else ``uint32``) holding every document followed by the end-of-document token;
``tokens.bin.json`` (the *sidecar*) records dtype, counts, ids and checksums. The raw layout is
what ``np.memmap`` reads directly. :func:`~gated_attention.data.prepare_data` writes this format
for the default corpus; large corpora are written as shards by
:func:`~gated_attention.data.prepare_shards` (:mod:`gated_attention.data.shards`), and
:class:`~gated_attention.data.PackedTokenDataset` reads both.
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

from gated_attention.data._io import atomic_writer, read_json, sha256_file, write_json
from gated_attention.data.errors import DataError
from gated_attention.data.tokenizer import load_tokenizer, tokenizer_fingerprint

if TYPE_CHECKING:  # transformers takes ~0.5 s to import; only the functions need it
    from transformers import PreTrainedTokenizerFast

logger = logging.getLogger(__name__)

TOKEN_FILE_FORMAT_VERSION = 1


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
