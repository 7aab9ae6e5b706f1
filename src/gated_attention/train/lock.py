"""Output directories: checked before any work starts, and locked while a process writes them.

:func:`check_writable` refuses an output that cannot be written (a file, a path under a file, a
read-only or unwritable directory) with one line naming it. :class:`RunLock` holds an exclusive
``fcntl.flock`` on ``DIR/.lock`` (which also records the holder's PID), so a second writer of the
same directory fails at once, naming the holder. The kernel drops a flock when its process dies,
however it dies, so a lock left by a dead process is taken over without any PID guessing (the
recorded PID is only for the message); this is why the standard ``flock`` is used rather than a
hand-written PID file protocol.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from types import TracebackType
from typing import ClassVar

LOCK_FILE = ".lock"


class OutputError(ValueError):
    """An output path cannot be used (one line naming the path and the fix)."""


def check_writable(
    path: str | os.PathLike[str], what: str = "--out", *, file: bool = False
) -> Path:
    """Raise :class:`OutputError` unless ``path`` can be created and written as a directory
    (or, with ``file=True``, as a file). Nothing is created."""
    path = Path(path).expanduser()
    target = path.parent if file else path
    if file and path.is_dir():
        raise OutputError(f"{what} {path} is a directory; give a file path")
    if target.exists() and not target.is_dir():
        raise OutputError(f"{what} {target} is a file, not a directory; choose another {what}")
    probe = target
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise OutputError(f"{what} {path} is under {probe}, which is a file; choose another {what}")
    try:
        read_only = bool(os.statvfs(probe).f_flag & os.ST_RDONLY)
    except OSError:  # pragma: no cover - exotic file systems
        read_only = False
    if read_only:
        raise OutputError(f"{what} {path} is on a read-only file system; choose another {what}")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputError(
            f"{what} {path}: {probe} is not writable (permissions); choose another {what}"
        )
    return path


class RunLock:
    """``with RunLock(out_dir):`` hold the write lock of ``out_dir`` (created if needed).

    Raises :class:`OutputError` naming the holder's PID when another live process holds it.
    Re-entrant within one process for the same directory (a study locks its directory and the
    trainer its run directory; nested locks of the same path are counted).
    """

    _held: ClassVar[dict[Path, tuple[int, int]]] = {}  # resolved dir -> (fd, depth)

    def __init__(self, out_dir: str | os.PathLike[str], what: str = "--out") -> None:
        self.dir = Path(out_dir).expanduser()
        self.what = what

    def acquire(self) -> RunLock:
        import fcntl

        check_writable(self.dir, self.what)
        self.dir.mkdir(parents=True, exist_ok=True)
        key = self.dir.resolve()
        if key in RunLock._held:
            fd, depth = RunLock._held[key]
            RunLock._held[key] = (fd, depth + 1)
            return self
        path = self.dir / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise OutputError(
                    f"{self.dir} is in use by process {holder} (lock {path}); wait for it to "
                    f"finish or choose another {self.what}"
                ) from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        RunLock._held[key] = (fd, 1)
        self._key = key
        return self

    def release(self) -> None:
        key = getattr(self, "_key", None) or self.dir.resolve()
        if key not in RunLock._held:
            return
        fd, depth = RunLock._held[key]
        if depth > 1:
            RunLock._held[key] = (fd, depth - 1)
            return
        del RunLock._held[key]
        os.close(fd)  # closing the descriptor drops the flock

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def holder_pid(out_dir: str | os.PathLike[str]) -> int | None:
    """The PID recorded in ``out_dir``'s lock file (whether or not it still holds it)."""
    try:
        return int((Path(out_dir) / LOCK_FILE).read_text().strip())
    except (OSError, ValueError):
        return None
