"""What every TensorBoard callback of :mod:`speakerzoo.callbacks` shares.

* :func:`tensorboard_writer`: the ``SummaryWriter`` of the trainer's first
  :class:`~lightning.pytorch.loggers.TensorBoardLogger`, or ``None``;
* :class:`TensorBoardCallback`: a :class:`~lightning.pytorch.callbacks.Callback` base whose
  :meth:`~TensorBoardCallback.writer` answers ``None`` (so the caller draws nothing) during the
  sanity check, on every process but global rank zero, and when there is no TensorBoard logger
  (saying so once, as a warning); plus one-time info messages;
* :func:`render`: a matplotlib figure as an ``[H, W, 3]`` ``uint8`` image for
  ``SummaryWriter.add_image(..., dataformats="HWC")``.

Figures are made as :class:`matplotlib.figure.Figure` on the Agg canvas, never through
``pyplot``: no GUI backend is touched, no global figure registry holds them, and
:func:`render` clears each figure after drawing it, so none outlives its epoch.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

__all__ = ["TensorBoardCallback", "render", "tensorboard_writer"]


def tensorboard_writer(trainer: L.Trainer) -> Any | None:
    """The ``SummaryWriter`` (``logger.experiment``) of the first
    :class:`~lightning.pytorch.loggers.TensorBoardLogger` in ``trainer.loggers``, or ``None``.

    Call it on global rank zero only: elsewhere Lightning hands out a dummy experiment.
    """
    for logger in getattr(trainer, "loggers", None) or []:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


def render(figure: Any) -> np.ndarray:
    """Draw a :class:`matplotlib.figure.Figure` on the Agg canvas and return it as an
    ``[H, W, 3]`` ``uint8`` array; the figure is cleared afterwards (it is not reusable)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    image = np.array(canvas.buffer_rgba())[..., :3]  # a copy: the buffer dies with the figure
    figure.clear()
    return image


class TensorBoardCallback(L.Callback):
    """Base of the callbacks that draw into TensorBoard.

    Subclasses ask :meth:`writer` for the ``SummaryWriter`` before drawing and draw nothing
    when it answers ``None``: during the sanity check, on processes other than global rank zero,
    and when the trainer has no :class:`~lightning.pytorch.loggers.TensorBoardLogger` (one
    warning per callback says so). :meth:`info_once` prints a message once per callback.
    """

    def __init__(self) -> None:
        super().__init__()
        self._said: set[str] = set()

    def info_once(self, key: str, message: str) -> None:
        """``rank_zero_info(message)`` the first time ``key`` is seen by this callback."""
        if key not in self._said:
            self._said.add(key)
            rank_zero_info(f"{type(self).__name__}: {message}")

    def warn_once(self, key: str, message: str) -> None:
        """``rank_zero_warn(message)`` the first time ``key`` is seen by this callback."""
        if key not in self._said:
            self._said.add(key)
            rank_zero_warn(f"{type(self).__name__}: {message}")

    def writer(self, trainer: L.Trainer) -> Any | None:
        """The TensorBoard ``SummaryWriter`` to draw into now, or ``None`` (draw nothing)."""
        if trainer.sanity_checking or not trainer.is_global_zero:
            return None
        writer = tensorboard_writer(trainer)
        if writer is None:
            self.warn_once(
                "no-tensorboard",
                "the trainer has no TensorBoardLogger (trainer.logger); its figures, tables, histograms and "
                "embeddings are not written",
            )
        return writer

    @staticmethod
    def step(trainer: L.Trainer) -> int:
        """The step that images and tables are written at: the trainer's ``global_step``."""
        return int(trainer.global_step)
