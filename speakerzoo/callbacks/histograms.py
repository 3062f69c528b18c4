"""Histograms of the model's weights (and optionally gradients) in TensorBoard (seed 002 §7.1).

The histograms are binned on the parameters' own device (``torch.histc``) and written with
``SummaryWriter.add_histogram_raw``: only ``bins`` counts per parameter leave the device, not the
weights, so a 20-million-parameter model costs a fraction of a second per epoch.

Example::

    >>> import torch
    >>> h = histogram(torch.tensor([0.0, 1.0, 1.0, 3.0]), bins=3)
    >>> h["bucket_counts"], h["bucket_limits"], h["min"], h["max"], h["num"]
    ([1.0, 2.0, 1.0], [1.0, 2.0, 3.0], 0.0, 3.0, 4)
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from torch import Tensor

from speakerzoo.callbacks.common import TensorBoardCallback

__all__ = ["WeightHistograms", "histogram"]


def histogram(values: Tensor, bins: int = 64) -> dict[str, Any] | None:
    """The arguments of ``SummaryWriter.add_histogram_raw`` for ``values`` (any shape, any
    float dtype), binned into ``bins`` equal buckets between their minimum and maximum
    (non-finite values left out); ``None`` when no value is finite. ``bucket_limits`` are the
    right edges of the buckets."""
    v = values.detach().flatten().float()
    if v.numel() == 0:
        return None
    lo, hi = v.aminmax()
    lo, hi = float(lo), float(hi)
    if not (math.isfinite(lo) and math.isfinite(hi)):  # NaN or inf somewhere: leave them out
        v = v[torch.isfinite(v)]
        if v.numel() == 0:
            return None
        lo, hi = (float(x) for x in v.aminmax())
    if hi > lo:
        counts = torch.histc(v, bins=bins, min=lo, max=hi).tolist()
        limits = torch.linspace(lo, hi, bins + 1, dtype=torch.float64)[1:].tolist()
    else:  # a constant tensor (e.g. zero-initialised biases): one bucket
        counts, limits = [float(v.numel())], [hi]
    return {
        "min": lo,
        "max": hi,
        "num": int(v.numel()),
        "sum": float(v.sum()),
        "sum_squares": float(torch.dot(v, v)),
        "bucket_limits": limits,
        "bucket_counts": counts,
    }


class WeightHistograms(TensorBoardCallback):
    """``add_histogram`` of every parameter of the model at the end of every ``every_n_epochs``-th
    training epoch, on global rank zero (the parameters it holds: all of them under DDP).

    Tags: the parameter's name (``encoder.blocks.0.conv.weight``, ``head.classifier.weight``, ...),
    with ``prefix`` before it; gradients (``gradients=True``) as ``grad/<name>``: the gradient
    left by the epoch's last optimiser step (after unscaling under mixed precision); parameters
    without one (frozen, or unused) are skipped. Skipped without a TensorBoardLogger (one
    warning).

    Arguments:
        every_n_epochs: write at the end of epochs ``n-1, 2n-1, ...`` (1: every epoch).
        gradients: also write the gradients.
        bins: buckets per histogram.
        prefix: put before each weight tag (e.g. ``"weights/"`` to group them in TensorBoard).
    """

    def __init__(self, every_n_epochs: int = 1, gradients: bool = False, bins: int = 64, prefix: str = ""):
        super().__init__()
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        if bins < 1:
            raise ValueError(f"bins must be >= 1, got {bins}")
        self.every_n_epochs = int(every_n_epochs)
        self.gradients = gradients
        self.bins = int(bins)
        self.prefix = prefix

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        writer = self.writer(trainer)
        if writer is None:
            return
        self.write(writer, pl_module, self.step(trainer))

    def write(self, writer: Any, module: torch.nn.Module, step: int) -> int:
        """Write the histograms of ``module``'s parameters at ``step``; returns how many were written."""
        written = 0
        with torch.no_grad():
            for name, param in module.named_parameters():
                pairs = [(f"{self.prefix}{name}", param)]
                if self.gradients and param.grad is not None:
                    pairs.append((f"grad/{name}", param.grad))
                for tag, tensor in pairs:
                    h = histogram(tensor, self.bins)
                    if h is not None:
                        writer.add_histogram_raw(tag, global_step=step, **h)
                        written += 1
        return written
