"""Writing one HDF5 file so that readers only ever see it complete (ground floor)."""

from __future__ import annotations

import datetime
import os
import re
import warnings
from pathlib import Path

import h5py

try:  # POSIX; elsewhere outputs are written without a lock
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None


class OutputInUseError(OSError):
    """Another process is writing the same output file right now."""


def _take_lock(path: Path):
    """An exclusive lock on ``.NAME.lock`` beside ``path`` (open file, or ``None`` without fcntl).

    The lock is the kernel's (``flock``), so it ends with the process that holds it, however that
    process ends: a run killed with ``kill -9`` never leaves a stale lock behind.
    """
    if fcntl is None:
        return None
    lock_path = path.with_name(f".{path.name}.lock")
    while True:
        handle = open(lock_path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise OutputInUseError(
                f"{path}: another speakerzoo run (pid {holder}) is writing this file now; wait for it to "
                "finish, or write to another file"
            ) from None
        try:  # the holder before us may have removed the file between our open and our lock
            if os.stat(lock_path).st_ino == os.fstat(handle.fileno()).st_ino:
                break
        except FileNotFoundError:
            pass
        handle.close()
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temporaries(path: Path) -> list[tuple[Path, int]]:
    """Remove the temporary files ``NAME.tmp-PID`` that runs which died unfinished (``kill -9``,
    a power cut) left beside ``path``; returns each with its size. A file whose process still
    lives is left alone."""
    removed = []
    pattern = re.compile(re.escape(path.name) + r"\.tmp-(\d+)$")
    for candidate in path.parent.glob(f"{path.name}.tmp-*"):
        match = pattern.match(candidate.name)
        if match is None or int(match.group(1)) == os.getpid() or _alive(int(match.group(1))):
            continue
        try:
            size = candidate.stat().st_size
            candidate.unlink()
        except OSError:
            continue
        removed.append((candidate, size))
    return removed


def created_timestamp() -> str:
    """UTC time for a file's ``created`` attribute; ``SOURCE_DATE_EPOCH`` fixes it for reproducible files."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = (datetime.datetime.fromtimestamp(int(epoch), datetime.timezone.utc) if epoch
            else datetime.datetime.now(datetime.timezone.utc))
    return when.isoformat(timespec="seconds")


class AtomicH5Writer:
    """Base of the writers of one HDF5 file: corpora, embeddings.

    The file is written under a temporary name beside ``path`` and renamed into place by
    :meth:`_commit`. Leaving a ``with`` block without committing (an error, Ctrl-C) removes
    the temporary file and leaves any existing file at ``path`` untouched. While it writes, the
    writer holds a lock on ``path``: a second writer of the same file fails at once with
    :class:`OutputInUseError` instead of both finishing and one result being lost. Temporary
    files of earlier writers that were killed are removed, with a warning.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = _take_lock(self.path)
        for stale, size in remove_stale_temporaries(self.path):
            warnings.warn(f"removed {stale} ({size / 1e6:.1f} MB), the unfinished file of an earlier run that "
                          "was killed before it could clean up", stacklevel=3)
        self.tmp = self.path.with_name(f"{self.path.name}.tmp-{os.getpid()}")
        try:
            self._h5 = h5py.File(self.tmp, "w")
        except BaseException:
            self._release()
            raise
        self._finished = False

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._finished:
            self.abort()

    def _commit(self) -> Path:
        """Close the temporary file and rename it to ``path`` (atomic on one file system)."""
        self._h5.close()
        os.replace(self.tmp, self.path)
        self._finished = True
        self._release()
        return self.path

    def _release(self) -> None:
        if self._lock is not None:
            Path(self._lock.name).unlink(missing_ok=True)
            self._lock.close()
            self._lock = None

    def abort(self) -> None:
        """Drop the temporary file; an existing file at ``path`` is left as it was."""
        try:
            self._h5.close()
        finally:
            self.tmp.unlink(missing_ok=True)
            self._finished = True
            self._release()
