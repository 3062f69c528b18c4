"""Reading a checkpoint file safely: the one place where speakerzoo calls ``torch.load``.

A ``.ckpt`` file is a pickle, and unpickling can run any code the file names. Every
checkpoint speakerzoo reads (``from_pretrained``, ``init_from``, ``fit/test --ckpt_path``,
the registry) goes through :func:`read_checkpoint_file`, which loads plain data and tensors
only (``torch.load(weights_only=True)``) and explains a refusal in speakerzoo's words:
torch's own message advises retrying with ``weights_only=False``, which is exactly what
must not be done with a file of unknown origin.
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch


class InvalidCheckpointError(ValueError):
    """A file that speakerzoo cannot, or will not, load as a checkpoint; the message names it."""


def is_remote(source: str | Path) -> bool:
    """Whether ``source`` is a URL (``http://``, ``s3://``, ...) rather than a local path."""
    return re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", str(source)) is not None


def read_checkpoint_file(path: str | Path, map_location: str | torch.device = "cpu") -> Mapping[str, Any]:
    """The checkpoint at ``path`` as plain data and tensors, or :class:`InvalidCheckpointError`.

    Refused, each with the reason: a URL (download it and check it first), a missing file or a
    folder, a file that is no PyTorch archive (truncated, random bytes, another format), an archive
    that references code (a class or function other than plain containers and tensors), and a
    file that holds something other than a dictionary.
    """
    if is_remote(path):
        raise InvalidCheckpointError(
            f"{path}: speakerzoo loads checkpoints from local files only (Lightning would unpickle a "
            "remote one with weights_only=False, which runs any code it holds). Download it, check "
            "its digest, and pass the local path."
        )
    path = Path(path)
    if not path.exists():
        raise InvalidCheckpointError(f"{path}: no such checkpoint file")
    if not path.is_file():
        raise InvalidCheckpointError(f"{path} is not a regular file; a checkpoint is one .ckpt file")
    if not zipfile.is_zipfile(path):
        raise InvalidCheckpointError(
            f"{path} is not a PyTorch checkpoint: torch.save writes a zip archive and this file is none "
            "(truncated, corrupt, or another kind of file). Use the .ckpt file that training wrote."
        )
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises several types for bad files
        text = str(error)
        reference = re.search(r"GLOBAL ([\w.]+)", text)
        if reference or "Weights only load failed" in text:
            what = f"the {reference.group(1)} it references" if reference else "objects other than plain data"
            raise InvalidCheckpointError(
                f"{path}: refusing to load it: the file holds {what}, and unpickling that could run code. "
                "A checkpoint that speakerzoo wrote holds only plain data and tensors; do not load this "
                "file with weights_only=False unless you made it yourself."
            ) from None
        first_line = text.strip().splitlines()[0] if text.strip() else ""
        raise InvalidCheckpointError(
            f"{path} is not a readable PyTorch checkpoint (truncated or corrupt): "
            f"{type(error).__name__}: {first_line}"
        ) from None
    if not isinstance(checkpoint, Mapping):
        raise InvalidCheckpointError(
            f"{path} is a PyTorch file but holds a {type(checkpoint).__name__}, not a checkpoint dictionary"
        )
    return checkpoint
