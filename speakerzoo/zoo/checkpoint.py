"""Reading a checkpoint file safely: the one place where speakerzoo calls ``torch.load``.

A ``.ckpt`` file is a pickle, and unpickling can run any code the file names. Every
checkpoint speakerzoo reads (``from_pretrained``, ``init_from``, ``fit/test --ckpt_path``,
the registry) goes through :func:`read_checkpoint_file`, which loads plain data and tensors
only (``torch.load(weights_only=True)``) and explains a refusal in speakerzoo's words:
torch's own message advises retrying with ``weights_only`` off, which is exactly what
must not be done with a file of unknown origin.
"""

from __future__ import annotations

import hashlib
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
            "remote one with weights_only off, which runs any code it holds). Download it, check "
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
                "file with weights_only off unless you made it yourself."
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
    check_tensor_digests(checkpoint, path)
    return checkpoint


def tensor_digest(tensor: torch.Tensor) -> str:
    """sha256 of a tensor's bytes (dtype and shape are checked when the weights are loaded)."""
    data = tensor.detach().to("cpu").contiguous().reshape(-1)
    return hashlib.sha256(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"").hexdigest()


def tensor_digests(state_dict: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """The :func:`tensor_digest` of every tensor of ``state_dict``, stored in a checkpoint's
    ``speakerzoo`` entry as ``tensor_sha256``: a weight changed in the file after it was written (a
    bad disk or copy) is then an error at loading, not a model that scores differently."""
    return {key: tensor_digest(value) for key, value in state_dict.items() if isinstance(value, torch.Tensor)}


def check_tensor_digests(checkpoint: Mapping[str, Any], source: str | Path) -> None:
    """Refuse a checkpoint whose tensors differ from the digests it records (files without digests,
    of older versions or other programs, are not checked)."""
    meta = checkpoint.get("speakerzoo")
    stored = meta.get("tensor_sha256") if isinstance(meta, Mapping) else None
    state = checkpoint.get("state_dict")
    if not isinstance(stored, Mapping) or not isinstance(state, Mapping):
        return
    damaged = sorted(key for key, digest in stored.items()
                     if key not in state or not isinstance(state[key], torch.Tensor) or tensor_digest(state[key]) != digest)
    if damaged:
        shown = ", ".join(damaged[:5]) + (f" and {len(damaged) - 5} more" if len(damaged) > 5 else "")
        raise InvalidCheckpointError(
            f"{source} is damaged: {len(damaged)} weight tensor(s) differ from the digests written with them "
            f"({shown}). Copy the file again, or use another checkpoint of the run."
        )
