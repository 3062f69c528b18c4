"""Real Speech Commands recordings for model tests, trimmed to different lengths."""

from __future__ import annotations

import soundfile as sf
import torch


def trimmed_clips(root, n: int = 4, step: int = 1700) -> list[torch.Tensor]:
    """``n`` one-second clips of the word "yes" (any clips if there is no such folder), clip ``k``
    shortened by ``k * step`` samples, so that a batch of them needs padding."""
    files = sorted((root / "yes").glob("*.wav"))[:n] if (root / "yes").is_dir() else sorted(root.rglob("*.wav"))[:n]
    waves = [torch.from_numpy(sf.read(f, dtype="float32")[0]) for f in files]
    return [w[: len(w) - step * k] for k, w in enumerate(waves)]
