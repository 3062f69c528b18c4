"""Writing one HDF5 file so that readers only ever see it complete (ground floor)."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import h5py


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
    the temporary file and leaves any existing file at ``path`` untouched.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f"{self.path.name}.tmp-{os.getpid()}")
        self._h5 = h5py.File(self.tmp, "w")
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
        return self.path

    def abort(self) -> None:
        """Drop the temporary file; an existing file at ``path`` is left as it was."""
        try:
            self._h5.close()
        finally:
            self.tmp.unlink(missing_ok=True)
            self._finished = True
