"""Writing one HDF5 file so that readers only ever see it complete (ground floor)."""

from __future__ import annotations

import datetime
import hashlib
import os
import re
import warnings
import zlib
from pathlib import Path

import h5py
import numpy as np

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


def remove_stale_lock(path: Path) -> bool:
    """Remove the lock file of ``path`` when no process holds it: a writer killed between the
    rename of its finished file and the removal of its lock leaves one behind (harmless, as the
    kernel released the lock, but clutter). Returns whether one was removed."""
    lock_path = path.with_name(f".{path.name}.lock")
    if fcntl is None or not lock_path.exists():
        return False
    try:
        handle = open(lock_path, "a+")
    except OSError:
        return False
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # a live writer holds it
        handle.close()
        return False
    try:
        if os.stat(lock_path).st_ino == os.fstat(handle.fileno()).st_ino:
            lock_path.unlink()
            return True
        return False
    except FileNotFoundError:
        return False
    finally:
        handle.close()


def text_digest(values) -> str:
    """sha256 of a list of strings (each ended by a NUL): the checksum of a string dataset, which
    HDF5's chunk checksums cannot cover."""
    digest = hashlib.sha256()
    for value in values:
        digest.update((value.decode() if isinstance(value, bytes) else str(value)).encode("utf-8") + b"\0")
    return digest.hexdigest()


class ChecksumMismatch(ValueError):
    """Data read back from an HDF5 file is not what was written (the file is damaged)."""


def array_digest(values: np.ndarray) -> str:
    """sha256 of an array's bytes: the ``sha256`` attribute of a dataset written whole."""
    return hashlib.sha256(np.ascontiguousarray(values).tobytes()).hexdigest()


def read_texts_checked(dataset: h5py.Dataset) -> list[str]:
    """The strings of a text dataset, checked against its ``sha256`` attribute (:func:`text_digest`)
    where it has one."""
    values = [s.decode() if isinstance(s, bytes) else str(s) for s in dataset[:]]
    stored = dataset.attrs.get("sha256")
    if stored is not None and text_digest(values) != stored:
        raise ChecksumMismatch(f"{dataset.name} fails its checksum")
    return values


def read_checked(dataset: h5py.Dataset) -> np.ndarray:
    """The whole of ``dataset``, checked against its ``sha256`` attribute where it has one."""
    values = dataset[()]
    stored = dataset.attrs.get("sha256")
    if stored is not None and array_digest(values) != stored:
        raise ChecksumMismatch(f"{dataset.name} fails its checksum")
    return values


class BlockChecksums:
    """CRC-32 of every ``block`` rows of an array written in pieces of any length, so that a
    later read of any rows can be checked by reading the whole blocks around them.

    >>> import numpy as np
    >>> data = np.arange(10, dtype=np.int16)
    >>> sums = BlockChecksums(4)
    >>> sums.update(data[:3]); sums.update(data[3:])
    >>> crcs = sums.finish()
    >>> len(crcs), read_blocks_checked(data, crcs, 4, 5, 9).tolist()
    (3, [5, 6, 7, 8])
    """

    def __init__(self, block: int):
        self.block = int(block)
        self._crcs: list[int] = []
        self._crc = 0
        self._fill = 0

    def update(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows)
        i = 0
        while i < len(rows):
            take = min(self.block - self._fill, len(rows) - i)
            self._crc = zlib.crc32(rows[i:i + take].tobytes(), self._crc)
            self._fill += take
            i += take
            if self._fill == self.block:
                self._crcs.append(self._crc)
                self._crc, self._fill = 0, 0

    def finish(self) -> np.ndarray:
        crcs = self._crcs + ([self._crc] if self._fill else [])
        return np.asarray(crcs, dtype=np.uint32)


def read_blocks_checked(source, crcs, block: int, start: int, stop: int) -> np.ndarray:
    """Rows ``[start:stop]`` of ``source`` (a dataset or an array), after checking the CRC-32 of
    every block of ``block`` rows they touch (:class:`BlockChecksums`); HDF5 reads whole chunks
    anyway, so the wider read costs no more I/O when blocks are chunks. ``crcs`` is an array or the
    dataset that holds them (only the checksums of the blocks read are then read)."""
    if stop <= start:
        return source[start:stop]
    first, last = start // block, (stop - 1) // block
    lo, hi = first * block, min((last + 1) * block, len(source))
    rows = np.ascontiguousarray(source[lo:hi])
    sums = crcs[first:last + 1]  # one read where ``crcs`` is a dataset
    for k in range(first, last + 1):
        piece = rows[(k - first) * block:(k - first + 1) * block]
        if zlib.crc32(piece.tobytes()) != int(sums[k - first]):
            raise ChecksumMismatch(f"rows {k * block}-{k * block + len(piece) - 1} fail their checksum")
    return rows[start - lo:stop - lo]


def is_checksum_failure(error: BaseException) -> bool:
    """Whether a read error says the data is damaged: our checksums, or HDF5's report that a
    chunk failed its Fletcher-32 checksum."""
    return isinstance(error, ChecksumMismatch) or (isinstance(error, OSError) and "filter returned failure" in str(error))


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

    def dataset(self, name: str, data: np.ndarray | None = None, **kwargs) -> h5py.Dataset:
        """``create_dataset`` for numbers, with checks that reading them back makes.

        HDF5's Fletcher-32 checksum on every chunk catches damage inside a chunk. A dataset
        written whole (``data``) also gets the sha256 of its bytes as the attribute ``sha256``
        (see :func:`read_checked`): damage to the file's chunk index makes HDF5 return zeros for
        the chunks it lost, without an error. Arrays that grow (audio, features) carry
        :class:`BlockChecksums` instead. Variable-length strings cannot be filtered; see
        :func:`text_digest`."""
        dataset = self._h5.create_dataset(name, data=data, fletcher32=True, **kwargs)
        if data is not None:
            dataset.attrs["sha256"] = array_digest(dataset[()])
        return dataset

    def text_dataset(self, name: str, values) -> h5py.Dataset:
        """A dataset of strings with the :func:`text_digest` of its values as the attribute
        ``sha256`` (read back with :func:`read_texts_checked`)."""
        values = [str(v) for v in values]
        dataset = self._h5.create_dataset(name, data=np.asarray(values, dtype=object), dtype=h5py.string_dtype())
        dataset.attrs["sha256"] = text_digest(values)
        return dataset

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
