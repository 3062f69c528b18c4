"""Lightning callbacks of speakerzoo: TensorBoard metrics, figures, histograms and projections
for every zoo model (seed 002 §4.5, §7).

The per-batch loss, accuracy and learning rate (``train/loss``, ``train/acc``, ``train/lr``) and
the per-epoch verification metrics (``val/eer``, ``val/mindcf``, ``val/ident_acc``) are logged
by the models' base class itself; these callbacks add, each one job:

* :class:`ClassificationMetrics`: per-epoch macro precision, recall and F1, per-class metrics
  (table, and scalars for few classes) and the confusion matrix of the classification head, for
  the training batches and (closed-set ``split: utterance`` only) validation and test;
* :class:`WeightHistograms`: histograms of every parameter (and optionally its gradient);
* :class:`VerificationPlots`: the DET curve of each validation / test epoch, EER marked;
* :class:`EmbeddingProjector`: a stratified sample of validation embeddings in TensorBoard's
  projector, labelled by speaker.

They only need what every :class:`~speakerzoo.zoo.base.SpeakerEmbeddingModule` and the
:class:`~speakerzoo.datamodules.SpeakerDataModule` provide (read by duck typing: this package
imports neither): step outputs (``training_step`` ``{"loss", "logits", "targets"}``,
``validation_step`` / ``test_step`` ``{"index", "embedding"}``), ``pl_module.classify``,
``pl_module.evaluated``, ``trainer.datamodule.classes``, ``.speaker_names`` and
``.speakers_of``; with a piece missing they say so once and skip it. Figures, tables,
histograms and projections are written by global rank zero only, never during the sanity check,
and only to a :class:`~lightning.pytorch.loggers.TensorBoardLogger` (with another logger, one
warning each; the scalars of :class:`ClassificationMetrics` still reach every logger).

In a LightningCLI config (``speakerzoo fit -c configs/ecapa_small.yaml -c this.yaml``)::

    trainer:
      callbacks:
        - class_path: speakerzoo.callbacks.ClassificationMetrics
          init_args:
            max_per_class_scalars: 32
            max_classes_drawn: 50
        - class_path: speakerzoo.callbacks.WeightHistograms
          init_args:
            every_n_epochs: 1
            gradients: false
        - class_path: speakerzoo.callbacks.VerificationPlots
        - class_path: speakerzoo.callbacks.EmbeddingProjector
          init_args:
            max_samples: 1000

or in Python: ``Trainer(callbacks=[ClassificationMetrics(), WeightHistograms(), ...])``.
"""

from speakerzoo.callbacks.classification import (
    ClassificationMetrics,
    ClassificationResult,
    ClosedSetMetrics,
    per_class_table,
)
from speakerzoo.callbacks.common import TensorBoardCallback, render, tensorboard_writer
from speakerzoo.callbacks.confusion import confusion_figure, most_confused
from speakerzoo.callbacks.histograms import WeightHistograms, histogram
from speakerzoo.callbacks.images import InputImages
from speakerzoo.callbacks.projector import EmbeddingProjector, stratified_sample
from speakerzoo.callbacks.verification import VerificationPlots, det_figure

__all__ = [
    "ClassificationMetrics",
    "ClassificationResult",
    "ClosedSetMetrics",
    "EmbeddingProjector",
    "InputImages",
    "TensorBoardCallback",
    "VerificationPlots",
    "WeightHistograms",
    "confusion_figure",
    "det_figure",
    "histogram",
    "most_confused",
    "per_class_table",
    "render",
    "stratified_sample",
    "tensorboard_writer",
]
