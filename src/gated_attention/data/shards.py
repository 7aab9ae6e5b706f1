"""A tokenised corpus on disk as fixed-size shards, and reading it back through memory maps.

Layout of a shard set directory (written by :func:`gated_attention.data.prepare_shards`)::

    plan.json             what is being prepared (inputs, tokenizer, dtype, shard size)
    tokenizer/            copy of the tokenizer (tokenizer.json + its config files)
    shard-00000.bin       token ids, little-endian uint16 (vocabulary <= 65,536) or uint32
    shard-00000.docs      int64 little-endian: end offset (exclusive, within the shard) of
                          every document whose end-of-document token lies in this shard
    shard-00000.json      sidecar: token count, checksums, max token id, stream positions
    ...
    manifest.json         written last: the finished set (inputs, tokenizer, shards, totals)

The shards are one token stream cut every ``shard_tokens`` tokens: every document is encoded
without special tokens and followed by the end-of-document token, and a document may continue
in the next shard, so concatenating the shards in order gives the stream exactly. A sidecar
records where its shard starts and ends in the input (``{"input", "record", "token"}``: input
file, record within it, tokens of that record already written), which is what makes an
interrupted preparation resumable shard by shard.

:class:`ShardSet` opens a finished set (or a single legacy ``tokens.bin`` from
:func:`~gated_attention.data.build_token_file`, as a set of one shard) and reads windows that may
cross shard boundaries; :meth:`ShardSet.verify` checks every checksum and token id.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gated_attention.data._io import read_json, sha256_file
from gated_attention.data.errors import DataError
from gated_attention.data.tokenfile import TokenFileInfo, read_token_file_info

SHARD_FORMAT = "gated-attention-shards"
SHARD_FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
PLAN_FILE = "plan.json"
TOKENIZER_DIR = "tokenizer"
DOCS_DTYPE = np.dtype("<i8")
# Chunk (in tokens) read at once when hashing or scanning a shard.
_SCAN_CHUNK = 1 << 22


def shard_name(index: int) -> str:
    """``shard-00042``: the stem of shard ``index``'s files."""
    return f"shard-{index:05d}"


def is_shard_set(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a finished shard set directory (has a shard-set ``manifest.json``)."""
    manifest = Path(path) / MANIFEST_FILE
    if not manifest.is_file():
        return False
    try:
        return read_json(manifest).get("format") == SHARD_FORMAT
    except (OSError, ValueError):
        return False


def _hash_and_max(path: Path, dtype: np.dtype) -> tuple[str, int]:
    """SHA-256 of a token file and its largest token id (-1 when empty), in one pass."""
    digest = hashlib.sha256()
    top = -1
    chunk_bytes = _SCAN_CHUNK * dtype.itemsize
    with open(path, "rb") as handle:
        while block := handle.read(chunk_bytes):
            digest.update(block)
            if len(block) % dtype.itemsize == 0 and block:
                top = max(top, int(np.frombuffer(block, dtype=dtype).max()))
    return digest.hexdigest(), top


@dataclass(frozen=True)
class _Shard:
    """One shard as opened: its files, its place in the stream and its memory maps."""

    name: str
    bin_path: Path
    docs_path: Path | None
    num_tokens: int
    sha256: str | None
    docs_sha256: str | None
    max_token_id: int | None
    tokens: np.ndarray
    ends: np.ndarray | None
    """Document end offsets within the shard (int64), or ``None`` for a legacy token file."""


class ShardSet:
    """A token stream stored as shards (or one legacy token file), read through memory maps.

    Open with :meth:`open` (a shard set directory or a ``tokens.bin``). Global token positions
    run over the concatenation of the shards.

    Attributes:
        root: the shard set directory (the token file itself for a legacy file).
        manifest: the manifest (a synthetic one for a legacy file).
        info: a :class:`~gated_attention.data.packed.TokenFileInfo` summary (``path`` is
            ``root``, ``sha256`` hashes the shard checksums).
        offsets: ``(num_shards + 1,)`` int64, global position of each shard's first token.
    """

    def __init__(self, root: Path, manifest: dict[str, Any], shards: list[_Shard]) -> None:
        self.root = root
        self.manifest = manifest
        self._shards = shards
        self.offsets = np.concatenate([[0], np.cumsum([s.num_tokens for s in shards])]).astype(
            np.int64
        )
        tok = manifest["tokenizer"]
        content = hashlib.sha256(
            "".join(s.sha256 or "" for s in shards).encode("ascii")
        ).hexdigest()
        self.info = TokenFileInfo(
            path=root,
            dtype=manifest["dtype"],
            num_tokens=int(self.offsets[-1]),
            num_documents=int(manifest["num_documents"]),
            vocab_size=int(tok["vocab_size"]),
            eod_id=int(tok["eod_id"]),
            bos_id=tok.get("bos_id"),
            pad_id=tok.get("pad_id"),
            sha256=shards[0].sha256 if manifest.get("legacy") else content,
            tokenizer_sha256=tok["fingerprint"],
        )

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path: str | os.PathLike[str], *, verify: bool = False) -> ShardSet:
        """Open a shard set directory or a legacy token file; ``verify`` runs :meth:`verify`.

        Cheap checks always run: the manifest and every sidecar exist, every file has the size
        they record, and recorded token ids are below the vocabulary size.

        Raises:
            DataError: one line naming the file that is missing, truncated or inconsistent.
        """
        p = Path(path).expanduser()
        if p.is_file():
            out = cls._open_token_file(p)
        elif p.is_dir():
            out = cls._open_dir(p)
        else:
            raise DataError(
                f"shard set {p} does not exist; prepare it with `gated-attention data "
                "prepare --input ... --out DIR`"
            )
        if verify:
            out.verify()
        return out

    @classmethod
    def _open_token_file(cls, path: Path) -> ShardSet:
        info = read_token_file_info(path)
        dtype = np.dtype(info.dtype).newbyteorder("<")
        tokens = np.memmap(path, dtype=dtype, mode="r") if info.num_tokens else np.zeros(0, dtype)
        shard = _Shard(
            path.name, path, None, info.num_tokens, info.sha256, None, None, tokens, None
        )
        manifest = {
            "format": SHARD_FORMAT,
            "legacy": path.name,
            "dtype": info.dtype,
            "num_documents": info.num_documents,
            "num_tokens": info.num_tokens,
            "tokenizer": {
                "vocab_size": info.vocab_size,
                "eod_id": info.eod_id,
                "bos_id": info.bos_id,
                "pad_id": info.pad_id,
                "fingerprint": info.tokenizer_sha256,
            },
        }
        return cls(path, manifest, [shard])

    @classmethod
    def _open_dir(cls, root: Path) -> ShardSet:
        manifest_path = root / MANIFEST_FILE
        if not manifest_path.is_file():
            hint = (
                "an unfinished preparation: rerun the same `data prepare` command to resume it"
                if (root / PLAN_FILE).is_file()
                else "prepare it with `gated-attention data prepare --input ... --out DIR`"
            )
            raise DataError(f"{root} is not a finished shard set (no {MANIFEST_FILE}); {hint}")
        manifest = read_json(manifest_path)
        if manifest.get("format") != SHARD_FORMAT:
            raise DataError(f"{manifest_path} is not a shard set manifest")
        if manifest.get("format_version") != SHARD_FORMAT_VERSION:
            raise DataError(
                f"{manifest_path} has shard format version {manifest.get('format_version')}; "
                f"this version reads {SHARD_FORMAT_VERSION}: prepare the shards again"
            )
        dtype = np.dtype(manifest["dtype"]).newbyteorder("<")
        vocab = int(manifest["tokenizer"]["vocab_size"])
        shards = []
        for entry in manifest["shards"]:
            name = entry["name"]
            bin_path, docs_path = root / f"{name}.bin", root / f"{name}.docs"
            for file, count, item in (
                (bin_path, entry["num_tokens"], dtype.itemsize),
                (docs_path, entry["num_document_ends"], DOCS_DTYPE.itemsize),
            ):
                if not file.is_file():
                    raise DataError(f"shard file {file} is missing; prepare the shards again")
                if file.stat().st_size != count * item:
                    raise DataError(
                        f"shard file {file} has {file.stat().st_size} bytes but the manifest "
                        f"records {count * item}; the file is truncated or stale, prepare the "
                        "shards again"
                    )
            top = entry.get("max_token_id")
            if top is not None and top >= vocab:
                raise DataError(
                    f"shard file {bin_path} holds token id {top}, out of range for the "
                    f"vocabulary of {vocab} tokens in {manifest_path.name}"
                )
            tokens = (
                np.memmap(bin_path, dtype=dtype, mode="r")
                if entry["num_tokens"]
                else (np.zeros(0, dtype))
            )
            ends = (
                np.memmap(docs_path, dtype=DOCS_DTYPE, mode="r")
                if entry["num_document_ends"]
                else np.zeros(0, DOCS_DTYPE)
            )
            shards.append(
                _Shard(
                    name,
                    bin_path,
                    docs_path,
                    int(entry["num_tokens"]),
                    entry["sha256"],
                    entry["docs_sha256"],
                    top,
                    tokens,
                    ends,
                )
            )
        if not shards:
            raise DataError(f"{manifest_path} lists no shards; the input held no documents")
        return cls(root, manifest, shards)

    # ------------------------------------------------------------------ checks
    def verify(self) -> None:
        """Check every shard's SHA-256 and that every token id is below the vocabulary size.

        Reads every byte once (sequentially). Raises :class:`DataError` naming the first shard
        file that fails.
        """
        vocab = self.info.vocab_size
        dtype = np.dtype(self.info.dtype).newbyteorder("<")
        for shard in self._shards:
            digest, top = _hash_and_max(shard.bin_path, dtype)
            if shard.sha256 is not None and digest != shard.sha256:
                raise DataError(
                    f"shard file {shard.bin_path} has sha256 {digest[:12]}..., its manifest "
                    f"records {shard.sha256[:12]}...; the file is corrupt, prepare the shards "
                    "again"
                )
            if top >= vocab:
                raise DataError(
                    f"shard file {shard.bin_path} holds token id {top}, out of range for the "
                    f"vocabulary of {vocab} tokens"
                )
            if shard.docs_path is not None:
                docs_digest = sha256_file(shard.docs_path)
                if docs_digest != shard.docs_sha256:
                    raise DataError(
                        f"document index {shard.docs_path} has sha256 {docs_digest[:12]}..., "
                        f"its manifest records {str(shard.docs_sha256)[:12]}...; the file is "
                        "corrupt, prepare the shards again"
                    )

    def check_tokenizer(self, fingerprint: str, vocab_size: int, where: str) -> None:
        """Raise unless the shards were made by the tokenizer with this ``fingerprint``."""
        if fingerprint != self.info.tokenizer_sha256:
            raise DataError(
                f"{self.root} was tokenized with a different tokenizer (vocabulary "
                f"{self.info.vocab_size}, fingerprint {self.info.tokenizer_sha256[:12]}) than "
                f"{where} (vocabulary {vocab_size}, fingerprint {fingerprint[:12]}); drop "
                "data.tokenizer to use the shards' own, or prepare the shards with this tokenizer"
            )

    # ------------------------------------------------------------------ properties
    @property
    def num_tokens(self) -> int:
        """Tokens in the whole stream."""
        return int(self.offsets[-1])

    @property
    def num_shards(self) -> int:
        return len(self._shards)

    @property
    def has_document_index(self) -> bool:
        """Whether document ends are stored (shard sets) rather than inferred from
        end-of-document tokens (legacy token files)."""
        return self._shards[0].ends is not None

    @property
    def tokenizer_path(self) -> Path | None:
        """The shard set's own ``tokenizer.json`` (``None`` for a legacy token file)."""
        if self.manifest.get("legacy") is not None:
            return None
        return self.root / TOKENIZER_DIR / "tokenizer.json"

    @property
    def shard_files(self) -> list[Path]:
        """The token files, in stream order."""
        return [s.bin_path for s in self._shards]

    # ------------------------------------------------------------------ reading
    def read(self, starts: np.ndarray, span: int) -> np.ndarray:
        """Tokens ``[s, s + span)`` for each start ``s``: ``(len(starts), span)`` int64.

        Windows may cross shard boundaries; positions must lie in ``[0, num_tokens)``.
        """
        starts = np.asarray(starts, dtype=np.int64)
        if len(self._shards) == 1:
            tokens = self._shards[0].tokens
            return tokens[starts[:, None] + np.arange(span)].astype(np.int64)
        out = np.empty((len(starts), span), dtype=np.int64)
        for row, start in enumerate(starts.tolist()):
            out[row] = self.read_range(start, start + span)
        return out

    def read_range(self, lo: int, hi: int) -> np.ndarray:
        """Tokens ``[lo, hi)`` of the stream as int64, ``(hi - lo,)``."""
        if not 0 <= lo <= hi <= self.num_tokens:
            raise IndexError(f"token range [{lo}, {hi}) outside [0, {self.num_tokens})")
        out = np.empty(hi - lo, dtype=np.int64)
        first = int(np.searchsorted(self.offsets, lo, side="right")) - 1
        pos = lo
        for s in range(max(first, 0), len(self._shards)):
            if pos >= hi:
                break
            base = int(self.offsets[s])
            stop = min(hi, int(self.offsets[s + 1]))
            out[pos - lo : stop - lo] = self._shards[s].tokens[pos - base : stop - base]
            pos = stop
        return out

    def document_ends(self, lo: int, hi: int) -> np.ndarray:
        """Global positions ``e`` with ``lo < e <= hi`` where a document ends (the token at
        ``e - 1`` is its end-of-document token), sorted int64."""
        found = []
        first = max(int(np.searchsorted(self.offsets, lo, side="right")) - 1, 0)
        for s in range(first, len(self._shards)):
            base = int(self.offsets[s])
            if base >= hi:
                break
            shard = self._shards[s]
            if shard.ends is not None:
                ends = np.asarray(shard.ends)
                a = np.searchsorted(ends, lo - base, side="right")
                b = np.searchsorted(ends, hi - base, side="right")
                found.append(ends[a:b].astype(np.int64) + base)
            else:  # legacy: every end-of-document token ends a document
                a, b = max(lo, base), min(hi, int(self.offsets[s + 1]))
                hits = np.flatnonzero(shard.tokens[a - base : b - base] == self.info.eod_id)
                found.append(hits.astype(np.int64) + a + 1)
        return np.concatenate(found) if found else np.zeros(0, dtype=np.int64)

    def last_document_end(self, point: int, floor: int = 0) -> int | None:
        """The largest document end ``e`` with ``floor < e <= point``, or ``None``.

        Searches backwards chunk by chunk, so it is cheap near ``point`` whatever the size.
        """
        chunk = 1 << 20
        hi = point
        while hi > floor:
            lo = max(floor, hi - chunk)
            ends = self.document_ends(lo, hi)
            if ends.size:
                return int(ends[-1])
            hi = lo
        return None

    def __repr__(self) -> str:
        return (
            f"ShardSet({str(self.root)!r}, shards={self.num_shards}, tokens={self.num_tokens}, "
            f"dtype={self.info.dtype}, vocab_size={self.info.vocab_size})"
        )
