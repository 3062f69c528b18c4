"""The frame classifier of Bird et al. (seed 000 §III-C): one MFCC frame in, its speaker class out.

A dense network of three hidden layers of 30, 7 and 29 ReLU units (found by an earlier genetic
search over topologies for MFCC phoneme classification), trained with Adam on single 26-MFCC
frames, with the errors weighted by class prominence. The paper trains without an epoch limit
until 25 epochs bring no improvement and restores the best weights before the final scores; in
Lightning that is ``EarlyStopping(patience=25)`` plus a ``ModelCheckpoint`` on the same
validation loss and ``trainer.test(ckpt_path="best")`` (see ``configs/frame_dnn.yaml``).

Transfer learning (§III-C, Fig. 2) is ``init_from``: the weights of a FrameDNN trained on
synthetic frames become the initial weights of one trained on the real task; the baseline is the
same network from random initialisation on the same data.

Batches are ``(frames [B, dim], labels [B])`` (:class:`~speakerzoo.datamodules.frames.FrameDataModule`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import lightning
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score, MulticlassPrecision, MulticlassRecall

from speakerzoo.features import Frontend
from speakerzoo.zoo.checkpoint import LoadReport, load_weights, read_checkpoint_file

__all__ = ["FrameDNN", "frame_metrics"]


def frame_metrics(num_classes: int) -> MetricCollection:
    """Accuracy and the weighted-average F1, precision and recall the paper reports (Weka's
    averages: each class's score weighted by its share of the frames), plus the macro F1, which
    the large background class cannot dominate."""
    return MetricCollection({
        "acc": MulticlassAccuracy(num_classes, average="micro"),
        "f1": MulticlassF1Score(num_classes, average="weighted"),
        "precision": MulticlassPrecision(num_classes, average="weighted"),
        "recall": MulticlassRecall(num_classes, average="weighted"),
        "f1_macro": MulticlassF1Score(num_classes, average="macro"),
    })


class FrameDNN(lightning.LightningModule):
    """Dense frame classifier ``dim -> 30 -> 7 -> 29 -> classes`` (ReLU), Adam, weighted errors.

    Arguments:
        num_speakers: number of classes (2 in the subject-against-background task; linked
            from the DataModule by the CLI).
        sample_rate, frontend: the audio the frames come from and their feature preset
            (``mfcc26``: 26 MFCCs, 25 ms window, 10 ms step); the input size is its dimension,
            and :meth:`classify_audio` computes it from raw audio.
        speaker_names: class names (kept in the checkpoint).
        hidden: sizes of the hidden layers.
        class_weights: ``"balanced"`` (errors weighted by class prominence, from the
            DataModule's ``class_weights()`` when fitting starts), a list (one per class), or
            ``None`` (unweighted).
        lr: Adam's learning rate (Keras's default).
        init_from: a FrameDNN checkpoint whose weights start this model's training (transfer
            learning). The output layer is taken only when its size fits; every hidden layer
            must fit exactly (:meth:`init_weights_from`). A resumed run (``--ckpt_path``) restores its own weights after this.
    """

    def __init__(self, num_speakers: int = 2, sample_rate: int = 16000, frontend: str | dict = "mfcc26",
                 speaker_names: list[str] | None = None, hidden: Sequence[int] = (30, 7, 29),
                 class_weights: str | list[float] | None = "balanced", lr: float = 1e-3,
                 init_from: str | None = None):
        super().__init__()
        self.save_hyperparameters()
        if num_speakers < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got num_speakers={num_speakers}")
        if speaker_names is not None and len(speaker_names) != num_speakers:
            raise ValueError(f"num_speakers={num_speakers} but {len(speaker_names)} speaker_names were given")
        if isinstance(class_weights, str) and class_weights != "balanced":
            raise ValueError(f"class_weights must be 'balanced', a list or null, not {class_weights!r}")
        if isinstance(class_weights, (list, tuple)) and len(class_weights) != num_speakers:
            raise ValueError(f"{len(class_weights)} class_weights for {num_speakers} classes")
        self.num_speakers = int(num_speakers)
        self.speaker_names = None if speaker_names is None else [str(n) for n in speaker_names]
        self.frontend = Frontend(frontend, sample_rate)
        if self.frontend.config.dim is None:
            raise ValueError("FrameDNN classifies feature frames; a waveform frontend has none")
        sizes = [self.frontend.config.dim, *[int(h) for h in hidden]]
        layers: list[nn.Module] = []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
        self.net = nn.Sequential(*layers)  # the hidden layers
        self.head = nn.Linear(sizes[-1], self.num_speakers)  # the output layer (``head.*``, as in the zoo)
        weights = class_weights if isinstance(class_weights, (list, tuple)) else [1.0] * self.num_speakers
        self.register_buffer("class_weight", torch.tensor(weights, dtype=torch.float32))
        self.lr = lr
        self.init_from = init_from
        #: What ``init_from`` loaded (``None`` until then).
        self.init_report: LoadReport | None = None
        self._train_loss = MeanMetric()
        self._eval_loss = MeanMetric()
        self.val_metrics = frame_metrics(self.num_speakers).clone(prefix="val/")
        self.test_metrics = frame_metrics(self.num_speakers).clone(prefix="test/")

    # -- the network ----------------------------------------------------------------------------
    def forward(self, frames: Tensor) -> Tensor:
        """Logits ``[..., classes]`` of frames ``[..., dim]``."""
        return self.head(self.net(frames))

    @torch.no_grad()
    def classify_audio(self, waveform: Tensor) -> Tensor:
        """Class probabilities of one mono waveform ``[T]`` at ``sample_rate``: the mean of its
        frames' probabilities (``[classes]``)."""
        feats, lengths = self.frontend(waveform.reshape(1, -1), torch.tensor([waveform.numel()]))
        frames = feats[0, : int(lengths[0])]
        if not len(frames):
            raise ValueError(f"a waveform of {waveform.numel()} samples is shorter than one analysis window")
        return self(frames).softmax(-1).mean(0)

    def loss(self, logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """``(weighted mean cross-entropy, sum of the batch's weights)``; the sum weighs the batch in
        the epoch's mean."""
        return F.cross_entropy(logits, labels, weight=self.class_weight), self.class_weight[labels].sum()

    # -- transfer learning -------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if stage != "fit":
            return
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if self.hparams.class_weights == "balanced" and hasattr(datamodule, "class_weights"):
            self.class_weight.copy_(torch.as_tensor(datamodule.class_weights(), dtype=torch.float32))
        if self.init_from is not None and self.init_report is None:
            self.init_report = self.init_weights_from(self.init_from)

    def init_weights_from(self, path: str | Path) -> LoadReport:
        """Copy a FrameDNN checkpoint's weights into this model (the shared loader of the zoo): the
        output layer only when its shape fits, everything else exactly; this model's class
        weights stay its own."""
        checkpoint = read_checkpoint_file(path)
        state = {k: v for k, v in checkpoint.get("state_dict", {}).items() if k != "class_weight"}
        state["class_weight"] = self.class_weight
        return load_weights(self, state, str(path), "speakerzoo.zoo.FrameDNN", head="fit",
                             what="this FrameDNN (init_from needs the same features and hidden layers)")

    # -- steps ------------------------------------------------------------------------------------
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        frames, labels = batch
        loss, total = self.loss(self(frames), labels)
        self._train_loss.update(loss, total)
        return loss

    def on_train_epoch_end(self) -> None:
        self.log("train/loss", self._train_loss.compute(), prog_bar=True)
        self._train_loss.reset()

    def _eval_step(self, batch: tuple[Tensor, Tensor], metrics: MetricCollection) -> None:
        frames, labels = batch
        logits = self(frames)
        loss, total = self.loss(logits, labels)
        self._eval_loss.update(loss, total)
        metrics.update(logits, labels)

    def _eval_epoch_end(self, stage: str, metrics: MetricCollection) -> None:
        self.log(f"{stage}/loss", self._eval_loss.compute(), prog_bar=True)
        self.log_dict(metrics.compute(), prog_bar=stage == "val")
        self._eval_loss.reset()
        metrics.reset()

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, self.val_metrics)

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val", self.val_metrics)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, self.test_metrics)

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test", self.test_metrics)

    def predict_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self(batch[0]).softmax(-1)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)
