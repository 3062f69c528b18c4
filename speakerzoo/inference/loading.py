"""Loading a trained model for inference: a checkpoint file or a registered name, on a device."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from speakerzoo.embeddings import EmbeddingError

__all__ = ["device_from_name", "load_model", "model_class_path"]


def device_from_name(name: str | torch.device = "auto") -> torch.device:
    """``"auto"`` (CUDA when available, else the CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...;
    :class:`~speakerzoo.embeddings.EmbeddingError` when CUDA is asked for but missing."""
    if isinstance(name, torch.device):
        name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EmbeddingError(f"--device {name}: CUDA is not available on this machine")
    return device


def load_model(checkpoint: str | Path, device: str | torch.device = "auto") -> Any:
    """The model of a checkpoint file or registered checkpoint name, in eval mode on ``device``.

    Read by :meth:`~speakerzoo.zoo.base.SpeakerEmbeddingModule.from_pretrained` (weights only,
    the class checked, a registered file's digest checked); ``model.checkpoint_path`` is the file.
    """
    from speakerzoo.zoo.base import SpeakerEmbeddingModule

    model = SpeakerEmbeddingModule.from_pretrained(str(checkpoint), map_location="cpu")
    return model.to(device_from_name(device)).eval()


def model_class_path(model: torch.nn.Module) -> str:
    """The ``model_class`` attribute an embeddings file records for ``model``."""
    return f"{type(model).__module__}.{type(model).__qualname__}"
