"""DET curves of each validation and test epoch in TensorBoard, with the EER marked.

:func:`det_figure` draws a DET curve on normal-deviate axes from trial scores and labels
(the curve from :func:`speakerzoo.scoring.det_plot_data`), the EER point marked and written
on it.
:class:`VerificationPlots` draws it from the scores the model kept of its last evaluation
epoch (``pl_module.evaluated``).

Example::

    >>> import torch
    >>> scores = torch.tensor([0.9, 0.8, 0.3, 0.7, 0.2, 0.1], dtype=torch.float64)
    >>> labels = torch.tensor([1, 1, 1, 0, 0, 0])
    >>> fig, eer = det_figure(scores, labels, title="val, epoch 0")
    >>> round(eer, 4)
    0.3333
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor

from speakerzoo.callbacks.common import TensorBoardCallback, render
from speakerzoo import plots
from speakerzoo.plots import Mark
from speakerzoo.scoring import det_plot_data

__all__ = ["VerificationPlots", "det_figure"]

def det_figure(scores: Tensor, labels: Tensor, title: str = "") -> tuple[Any, float]:
    """``(figure, eer)``: a :class:`matplotlib.figure.Figure` of the DET curve of ``scores``
    (``[N]``, higher = same speaker) and ``labels`` (``[N]``, 1 target, 0 non-target; both kinds
    needed), drawn by :func:`speakerzoo.plots.det_figure` with the EER operating point marked,
    and the EER as a fraction. Never registered with ``pyplot``; draw it with
    :func:`~speakerzoo.callbacks.common.render`.
    """
    scores = torch.as_tensor(scores).detach().cpu()
    labels = torch.as_tensor(labels).detach().cpu()
    x, y = det_plot_data(scores, labels)
    # The probit is increasing, so the EER point (min over thresholds of max(P_fa, P_miss)) is
    # where max(x, y) is least, and the EER is the normal CDF there.
    worst = torch.maximum(x, y)
    i = int(torch.argmin(worst))
    eer = float(torch.special.ndtr(worst[i]))
    p_fa, p_miss = float(torch.special.ndtr(x[i])), float(torch.special.ndtr(y[i]))
    targets = int((labels == 1).sum())
    heading = f"{title}\n" if title else ""
    mark = Mark(p_fa, p_miss, "o", "tab:red", f"EER {100 * eer:.2f} %", annotate=True)
    fig = plots.det_figure(scores, labels, [mark], title=f"{heading}{labels.numel():,} trials ({targets:,} target)")
    return fig, eer


class VerificationPlots(TensorBoardCallback):
    """The DET curve of every validation (and test) epoch as a TensorBoard image, EER marked.

    The scores are those the model kept of the epoch: ``pl_module.evaluated[part]["scores"]`` and
    ``["labels"]``, every scorable verification pair of the epoch (the base class sets them at
    the end of the epoch, identical on every rank; the EER itself is logged as ``val/eer`` by the
    model). Written on global rank zero as the image ``val/det_curve`` (``test/det_curve``) at
    the trainer's global step; skipped during the sanity check, without a TensorBoardLogger
    (one warning), and when the epoch has no scores or only one kind of trial (one info message).

    Arguments:
        every_n_epochs: draw after the validations of epochs ``n-1, 2n-1, ...`` (1: every one).
            Test runs and standalone validation (``trainer.validate``) are always drawn.
        test: also draw test epochs.
    """

    def __init__(self, every_n_epochs: int = 1, test: bool = True):
        super().__init__()
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        self.every_n_epochs = int(every_n_epochs)
        self.test = test
        #: EER of the last figure drawn, per part.
        self.last_eer: dict[str, float] = {}

    def draw(self, trainer: L.Trainer, pl_module: L.LightningModule, part: str) -> None:
        """Draw ``part``'s DET curve from ``pl_module.evaluated`` (rank zero, TensorBoard only)."""
        writer = self.writer(trainer)
        if writer is None:
            return
        kept = (getattr(pl_module, "evaluated", None) or {}).get(part)
        if not kept or kept.get("scores") is None or kept.get("labels") is None:
            self.info_once(f"{part}-none", f"the model kept no {part} trial scores (pl_module.evaluated): "
                                           f"no {part}/det_curve")
            return
        scores, labels = kept["scores"].detach().cpu(), kept["labels"].detach().cpu()
        targets = int((labels == 1).sum())
        if targets == 0 or targets == labels.numel():
            self.info_once(f"{part}-one-kind", f"{part}: the trials need target and non-target pairs for a DET curve")
            return
        figure, eer = det_figure(scores, labels, title=f"{part}, epoch {trainer.current_epoch}")
        writer.add_image(f"{part}/det_curve", render(figure), self.step(trainer), dataformats="HWC")
        self.last_eer[part] = eer

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        fitting = trainer.state.fn == "fit"
        if fitting and (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        self.draw(trainer, pl_module, "val")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.test:
            self.draw(trainer, pl_module, "test")
