"""Closed-set classification metrics per epoch: macro and per-class precision, recall, F1,
support, and the confusion matrix (seed 002 §4.5, §7).

:class:`ClosedSetMetrics` holds the torchmetrics (``MulticlassPrecision``, ``MulticlassRecall``,
``MulticlassF1Score`` with ``average="macro"`` and ``average=None``, and
``MulticlassConfusionMatrix``); their states are summed across processes when computed, so
the numbers are those of all ranks' predictions (DDP-safe). :class:`ClassificationMetrics` is
the callback that feeds them from training and evaluation batches and logs them.

Macro averages follow torchmetrics: the mean over the classes that occur in the epoch's targets
or predictions (a class absent from both counts in neither), so a training epoch that samples
only some speakers is averaged over those.

Example::

    >>> import torch
    >>> metrics = ClosedSetMetrics(num_classes=3)
    >>> metrics.update(torch.tensor([[2.0, 0.1, 0.0], [0.3, 1.0, 0.0], [0.9, 0.2, 0.0]]), torch.tensor([0, 1, 1]))
    >>> result = metrics.compute()
    >>> result.support.tolist(), result.recall.tolist()
    ([1, 2, 0], [1.0, 0.5, 0.0])
    >>> round(result.macro_f1, 4)  # class 2 occurs nowhere: mean of F1 2/3 and 2/3
    0.6667
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import lightning as L
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)

from speakerzoo.callbacks.common import TensorBoardCallback, render
from speakerzoo.callbacks.confusion import confusion_figure

__all__ = ["ClassificationMetrics", "ClassificationResult", "ClosedSetMetrics", "per_class_table"]

PARTS = ("train", "val", "test")


@dataclass
class ClassificationResult:
    """Closed-set metrics of one epoch (all processes together).

    Attributes:
        confusion: ``[C, C]`` int64 counts, rows = true class, columns = predicted class.
        precision, recall, f1: ``[C]`` per-class values (0 where undefined, as torchmetrics).
        macro_precision, macro_recall, macro_f1: torchmetrics' macro averages (over the classes
            that occur in the targets or the predictions).
    """

    confusion: Tensor
    precision: Tensor
    recall: Tensor
    f1: Tensor
    macro_precision: float
    macro_recall: float
    macro_f1: float

    @property
    def support(self) -> Tensor:
        """``[C]`` utterances of each true class."""
        return self.confusion.sum(1)

    @property
    def predicted(self) -> Tensor:
        """``[C]`` utterances predicted as each class."""
        return self.confusion.sum(0)

    @property
    def total(self) -> int:
        """Utterances counted."""
        return int(self.confusion.sum())

    @property
    def accuracy(self) -> float:
        """Share of utterances predicted as their own class (micro accuracy)."""
        return float(self.confusion.diagonal().sum()) / max(self.total, 1)


class ClosedSetMetrics(nn.Module):
    """Macro and per-class precision / recall / F1 and the confusion matrix, as torchmetrics.

    Arguments:
        num_classes: number of classes ``C`` (width of the logits).

    ``update(logits [B, C] or predicted classes [B], targets [B])`` adds a batch (targets must
    be in ``0..C-1``); ``compute()`` returns a :class:`ClassificationResult` of everything added
    since the last ``reset()``, summed over all processes when ``torch.distributed`` is
    initialised (every process must call it then). It is an ``nn.Module``: move it with ``.to``.
    """

    def __init__(self, num_classes: int):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        c = self.num_classes
        # One compute group: the six metrics share their true/false positive/negative states.
        self.scores = MetricCollection(
            {
                "macro_precision": MulticlassPrecision(c, average="macro"),
                "macro_recall": MulticlassRecall(c, average="macro"),
                "macro_f1": MulticlassF1Score(c, average="macro"),
                "precision": MulticlassPrecision(c, average=None),
                "recall": MulticlassRecall(c, average=None),
                "f1": MulticlassF1Score(c, average=None),
            },
            compute_groups=[["macro_precision", "macro_recall", "macro_f1", "precision", "recall", "f1"]],
        )
        self.confusion = MulticlassConfusionMatrix(c)

    def update(self, logits: Tensor, targets: Tensor) -> None:
        predicted = logits.argmax(-1) if logits.ndim == 2 else logits
        predicted, targets = predicted.long(), targets.long().to(predicted.device)
        self.scores.update(predicted, targets)
        self.confusion.update(predicted, targets)

    def compute(self) -> ClassificationResult:
        with warnings.catch_warnings():
            # A process that saw no batch still takes part in the sync; torchmetrics warns about it.
            warnings.filterwarnings("ignore", message=".*compute.*called before.*update.*")
            values = self.scores.compute()
            confusion = self.confusion.compute()
        return ClassificationResult(
            confusion=confusion.detach().long().cpu(),
            precision=values["precision"].detach().float().cpu(),
            recall=values["recall"].detach().float().cpu(),
            f1=values["f1"].detach().float().cpu(),
            macro_precision=float(values["macro_precision"]),
            macro_recall=float(values["macro_recall"]),
            macro_f1=float(values["macro_f1"]),
        )

    def reset(self) -> None:
        self.scores.reset()
        self.confusion.reset()


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def per_class_table(result: ClassificationResult, names: list[str] | None = None, heading: str = "") -> str:
    """Markdown (TensorBoard's text tab renders it): a summary line, then one row per class
    with precision, recall, F1, support (true utterances) and predicted count; ``-`` where a
    class has neither support nor predictions."""
    num = result.confusion.shape[0]
    names = [str(i) for i in range(num)] if names is None or len(names) != num else list(names)
    support, predicted = result.support.tolist(), result.predicted.tolist()
    lines = [
        f"{heading}{result.total:,} utterances, accuracy {result.accuracy:.4f}; macro precision "
        f"{result.macro_precision:.4f}, recall {result.macro_recall:.4f}, F1 {result.macro_f1:.4f}",
        "",
        "| class | speaker | precision | recall | F1 | support | predicted |",
        "|---:|:---|---:|---:|---:|---:|---:|",
    ]
    for c in range(num):
        if support[c] == 0 and predicted[c] == 0:
            p = r = f = "-"
        else:
            p, r, f = (f"{float(v[c]):.4f}" for v in (result.precision, result.recall, result.f1))
        lines.append(f"| {c} | {_cell(names[c])} | {p} | {r} | {f} | {support[c]} | {predicted[c]} |")
    return "\n".join(lines)


class ClassificationMetrics(TensorBoardCallback):
    """Per-epoch closed-set metrics of the classification head, for training and evaluation.

    **Training** (``train/*``): the predictions the model made on its training batches (the
    head's logits without margin and the targets, from the ``training_step`` output
    ``{"loss", "logits", "targets"}``), over the whole epoch.

    **Validation / test** (``val/*``, ``test/*``): each batch's embeddings (the
    ``validation_step`` / ``test_step`` output ``{"index", "embedding"}``) are classified by
    ``pl_module.classify(embeddings)``, for the utterances whose speaker is a training class
    (``trainer.datamodule.classes(index) >= 0``): a closed-set split (``split: utterance``).
    With the open-set speaker split no evaluation utterance is a training class and nothing
    ``val/*`` or ``test/*`` is logged (an info message says so once); likewise, with a message,
    for a model whose ``classify`` returns ``None`` or a datamodule without ``classes``.

    Logged every epoch through ``pl_module.log`` (so every logger gets them, and
    ModelCheckpoint / EarlyStopping can monitor them), for ``P`` in ``train``, ``val``, ``test``:
    ``P/macro_precision``, ``P/macro_recall``, ``P/macro_f1``; ``val/acc`` and ``test/acc``
    (closed-set accuracy; ``train/acc`` is the model's own); and, when there are at most
    ``max_per_class_scalars`` classes, ``P/f1_per_class/<speaker name>``. Written to TensorBoard
    on global rank zero (skipped without a TensorBoardLogger, with one warning): the text
    ``P/per_class`` (a markdown table of precision, recall, F1, support and predictions of every
    class) and the image ``P/confusion_matrix`` (normalised per true class; at most
    ``max_classes_drawn`` classes, the most confused ones, see
    :func:`~speakerzoo.callbacks.confusion.confusion_figure`). Nothing is logged during the
    sanity check.

    Arguments:
        train: metrics of the training batches.
        val: metrics of validation (closed-set only).
        test: metrics of test (closed-set only).
        max_per_class_scalars: log per-class F1 scalars only for at most this many classes
            (the table always lists every class).
        max_classes_drawn: classes drawn in the confusion-matrix image at most.
        figures: write the confusion-matrix images.
        tables: write the per-class tables.

    After each epoch :attr:`results` holds the last :class:`ClassificationResult` of each part.
    """

    def __init__(
        self,
        train: bool = True,
        val: bool = True,
        test: bool = True,
        max_per_class_scalars: int = 32,
        max_classes_drawn: int = 50,
        figures: bool = True,
        tables: bool = True,
    ):
        super().__init__()
        self.parts = {"train": train, "val": val, "test": test}
        self.max_per_class_scalars = int(max_per_class_scalars)
        self.max_classes_drawn = int(max_classes_drawn)
        self.figures = figures
        self.tables = tables
        self.results: dict[str, ClassificationResult] = {}
        self._metrics: dict[str, ClosedSetMetrics] = {}

    # ------------------------------------------------------------------ helpers

    def _num_classes(self, trainer: L.Trainer, pl_module: L.LightningModule) -> int:
        num = getattr(pl_module, "num_speakers", None)
        if not num:
            names = getattr(getattr(trainer, "datamodule", None), "speaker_names", None)
            num = len(names) if names else 0
        return int(num or 0)

    def _names(self, trainer: L.Trainer, pl_module: L.LightningModule, num: int) -> list[str]:
        for source in (getattr(trainer, "datamodule", None), pl_module):
            names = getattr(source, "speaker_names", None)
            if names is not None and len(names) == num:
                return [str(n) for n in names]
        return [str(i) for i in range(num)]

    def _start(self, part: str, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Reset (and create, on the module's device) the metrics of ``part`` for a new epoch."""
        if not self.parts[part] or trainer.sanity_checking:
            return
        num = self._num_classes(trainer, pl_module)
        if num < 1:
            self.info_once("no-classes", "the model has no classes (num_speakers is 0): no metrics are logged")
            self._metrics.pop(part, None)
            return
        metrics = self._metrics.get(part)
        if metrics is None or metrics.num_classes != num:
            metrics = self._metrics[part] = ClosedSetMetrics(num)
        metrics.to(pl_module.device)
        metrics.reset()

    def _update(self, part: str, logits: Tensor, targets: Tensor) -> None:
        metrics = self._metrics.get(part)
        if metrics is None:
            return
        if logits.shape[-1] != metrics.num_classes:
            raise ValueError(
                f"ClassificationMetrics: the model gives {logits.shape[-1]} logits but has "
                f"{metrics.num_classes} classes (num_speakers)"
            )
        metrics.update(logits.detach(), targets.detach())

    def _finish(self, part: str, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Compute (all processes), log and draw the epoch's metrics of ``part``."""
        metrics = self._metrics.get(part)
        if metrics is None or not self.parts[part] or trainer.sanity_checking:
            return
        result = metrics.compute()  # identical on every rank: the decisions below agree
        metrics.reset()
        if result.total == 0:
            if part != "train":
                self.info_once(
                    f"{part}-open-set",
                    f"no {part} utterance belongs to a training class (an open-set split by speaker?): "
                    f"{part}/macro_precision, {part}/macro_recall, {part}/macro_f1 are not logged",
                )
            return
        self.results[part] = result
        names = self._names(trainer, pl_module, metrics.num_classes)
        values = {
            f"{part}/macro_precision": result.macro_precision,
            f"{part}/macro_recall": result.macro_recall,
            f"{part}/macro_f1": result.macro_f1,
        }
        if part != "train":
            values[f"{part}/acc"] = result.accuracy
        if metrics.num_classes <= self.max_per_class_scalars:
            for c, name in enumerate(names):
                values[f"{part}/f1_per_class/{name.replace(' ', '_')}"] = float(result.f1[c])
        # Equal on every rank already; sync_dist only averages equal numbers (and keeps Lightning quiet).
        pl_module.log_dict(values, on_step=False, on_epoch=True, sync_dist=True)

        writer = self.writer(trainer)
        if writer is None:
            return
        step = self.step(trainer)
        heading = f"{part}, epoch {trainer.current_epoch}: "
        if self.tables:
            writer.add_text(f"{part}/per_class", per_class_table(result, names, heading), step)
        if self.figures:
            figure = confusion_figure(result.confusion, names, self.max_classes_drawn,
                                      title=f"{part}, epoch {trainer.current_epoch}")
            writer.add_image(f"{part}/confusion_matrix", render(figure), step, dataformats="HWC")

    def _eval_batch(self, part: str, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any) -> None:
        if trainer.sanity_checking or part not in self._metrics:
            return
        if not isinstance(outputs, dict) or "index" not in outputs or "embedding" not in outputs:
            self.info_once(f"{part}-outputs", f"{part}_step returns no {{'index', 'embedding'}}: no {part} metrics")
            return
        classes = getattr(getattr(trainer, "datamodule", None), "classes", None)
        if not callable(classes):
            self.info_once(f"{part}-classes", f"the datamodule has no classes(index): no {part} metrics")
            return
        targets = classes(outputs["index"])
        known = targets >= 0
        if not bool(known.any()):
            return
        classify = getattr(pl_module, "classify", None)
        logits = classify(outputs["embedding"][known]) if callable(classify) else None
        if logits is None:
            self.info_once(f"{part}-classify", f"the model has no classify(embeddings) head: no {part} metrics")
            return
        self._update(part, logits, targets[known])

    # ------------------------------------------------------------------ hooks

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start("train", trainer, pl_module)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if "train" not in self._metrics:
            return
        if not isinstance(outputs, dict) or outputs.get("logits") is None or outputs.get("targets") is None:
            self.info_once("train-outputs", "training_step returns no {'logits', 'targets'}: no train metrics")
            return
        self._update("train", outputs["logits"], outputs["targets"])

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._finish("train", trainer, pl_module)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start("val", trainer, pl_module)

    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._eval_batch("val", trainer, pl_module, outputs)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._finish("val", trainer, pl_module)

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start("test", trainer, pl_module)

    def on_test_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._eval_batch("test", trainer, pl_module, outputs)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._finish("test", trainer, pl_module)
