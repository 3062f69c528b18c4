"""Writing a file so that readers only ever see it complete (ground floor; HDF5 files have
:class:`speakerzoo.h5file.AtomicH5Writer`)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def replaced_on_success(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to. It is renamed to ``path`` when the block
    ends without an error and removed otherwise, so an existing file is never half-overwritten.

    Example::

        >>> import tempfile
        >>> target = Path(tempfile.mkdtemp()) / "report.json"
        >>> with replaced_on_success(target) as tmp:
        ...     _ = tmp.write_text("{}")
        >>> target.read_text(), sorted(p.name for p in target.parent.iterdir())
        ('{}', ['report.json'])
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
