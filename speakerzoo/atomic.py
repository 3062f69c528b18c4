"""Writing a file so that readers only ever see it complete (ground floor; HDF5 files have
:class:`speakerzoo.h5file.AtomicH5Writer`)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterable, Iterator


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


def same_file_among(output: str | Path, inputs: Iterable[str | Path]) -> Path | None:
    """The first of ``inputs`` that is the file at ``output`` (same device and inode, so a link or
    another spelling of the path counts), or ``None``: writing ``output`` would replace that input.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> for name in ("a.wav", "b.wav"):
    ...     _ = (folder / name).write_bytes(b"x")
    >>> (folder / "link.wav").symlink_to(folder / "a.wav")
    >>> same_file_among(folder / "link.wav", [folder / "b.wav", folder / "." / "a.wav"]) == folder / "a.wav"
    True
    >>> same_file_among(folder / "new.h5", [folder / "a.wav"]) is None
    True
    """
    try:
        target = os.stat(output)
    except OSError:  # nothing there yet: no input can be it
        return None
    for candidate in inputs:
        try:
            info = os.stat(candidate)
        except OSError:
            continue
        if (info.st_dev, info.st_ino) == (target.st_dev, target.st_ino):
            return Path(candidate)
    return None
