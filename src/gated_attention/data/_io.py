"""Small file helpers shared by the data modules: atomic writes, hashing and a lock file.

Every cache file is written to a temporary sibling and moved into place with
:func:`os.replace`, so a crash or a concurrent reader never sees a half-written file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

_CHUNK = 1 << 20


@contextlib.contextmanager
def atomic_writer(path: Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path``; on success move it over ``path``.

    The temporary file lives in the same directory so that :func:`os.replace` is a rename on one
    filesystem (atomic on POSIX and Windows). On an exception it is removed and ``path`` is left
    untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        encoding = None if "b" in mode else "utf-8"
        with open(fd, mode, encoding=encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON (stable bytes for equal content), atomically."""
    with atomic_writer(path, "w") as handle:
        json.dump(obj, handle, indent=2, sort_keys=True, ensure_ascii=False)
        handle.write("\n")


def read_json(path: Path) -> Any:
    """Read a JSON file written by :func:`write_json`."""
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_tree(root: Path, pattern: str) -> str:
    """Hex SHA-256 over the relative paths and bytes of the files under ``root`` matching ``pattern``.

    Used for sources that are a directory rather than one archive (an installed Debian package).
    """
    digest = hashlib.sha256()
    for file in sorted(p for p in root.glob(pattern) if p.is_file()):
        digest.update(file.relative_to(root).as_posix().encode("utf-8") + b"\0")
        digest.update(sha256_file(file).encode("ascii"))
    return digest.hexdigest()


def short_hash(obj: Any, length: int = 16) -> str:
    """A short, stable hex digest of a JSON-serialisable object (used for cache keys)."""
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("ascii")).hexdigest()[:length]


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` while preparing a cache entry.

    Several processes (for example the ranks of one distributed run) may prepare the same entry at
    once; the lock makes all but the first wait and then find the finished entry instead of
    repeating the work. Where ``fcntl`` is unavailable (Windows) this is a no-op: the atomic
    writes still keep the cache consistent, only the work may be done twice.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
