"""The LightningModule base class of every embedding model of the zoo.

:class:`SpeakerEmbeddingModule` owns what all embedding models share: the feature
frontend, ``embed(waveforms, lengths)``, the training step around a classification head,
DDP-safe validation on cosine trials (EER, minDCF, identification accuracy), the default
optimiser, and checkpoints that rebuild themselves with :meth:`~SpeakerEmbeddingModule.from_pretrained`.
"""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from torchmetrics import MeanMetric

from speakerzoo.checks import check_number
from speakerzoo.features import Frontend
from speakerzoo.zoo import registry as _registry
from speakerzoo.zoo.checkpoint import (
    InvalidCheckpointError,
    LoadReport,
    check_tensor_digests,
    init_argument_names,
    init_weights,
    load_pretrained,
    write_metadata,
)
from speakerzoo.zoo.evaluation import Batch, TrialEvaluation
from speakerzoo.zoo.schedules import follow_added_param_groups

# InvalidCheckpointError and LoadReport are re-exported: they are imported from here.
__all__ = ["InvalidCheckpointError", "LoadReport", "SpeakerEmbeddingModule"]


class SpeakerEmbeddingModule(TrialEvaluation, L.LightningModule):
    """Base class of the zoo's embedding models: frontend -> ``encode`` -> embedding (-> head).

    Arguments:
        num_speakers: training speakers, i.e. classes of the head; 0 builds no head
            (an embedding extractor that can validate and predict but not train).
        sample_rate: rate of the waveforms the model receives.
        frontend: feature preset name or :class:`~speakerzoo.features.FeatureConfig` fields
            (see :mod:`speakerzoo.features`); stored in checkpoints in full.
        speaker_names: names of the ``num_speakers`` classes, in label order (optional).
        lr, weight_decay: AdamW parameters of the default :meth:`configure_optimizers`.
        warmup_epochs: linear warm-up (may be fractional) before the cosine decay.
        init_from: fine-tuning: a checkpoint file or registry name (:mod:`speakerzoo.zoo.registry`)
            whose weights initialise this model when training starts (``setup("fit")``; see
            :meth:`init_weights_from`). The classifier head is loaded only when it fits (same
            size and, when both are known, the same speakers); otherwise it starts fresh.
            Everything else must fit exactly. A resumed run (``--ckpt_path``) restores its own
            weights after this, so the resume wins; a model rebuilt by :meth:`from_pretrained`
            or loaded from a checkpoint does not load it again.

    **Writing a model.** Subclass, take your own arguments and ``**kwargs`` for the shared ones
    above, passed on to ``super().__init__`` (LightningCLI lists them with yours and links
    ``num_speakers``, ``sample_rate`` and ``speaker_names`` from the DataModule); name a shared
    argument to give it another default (``frontend="logmel64"``). Set ``self.embedding_dim``,
    build ``self.head`` (e.g. :class:`~speakerzoo.zoo.heads.AAMSoftmax`, or ``None`` when
    ``self.num_speakers == 0``) and implement :meth:`encode`::

        class MyModel(SpeakerEmbeddingModule):
            def __init__(self, embedding_dim=128, frontend="fbank80", **kwargs):
                super().__init__(frontend=frontend, **kwargs)
                self.embedding_dim = embedding_dim
                self.encoder = ...
                self.head = AAMSoftmax(embedding_dim, self.num_speakers) if self.num_speakers else None

            def encode(self, features, frame_lengths):
                return ...  # [B, embedding_dim]

    ``__init__`` records *every* init argument, yours and the shared ones, as hyper-parameters
    (keep them plain: numbers, strings, lists, dicts): :meth:`from_pretrained` rebuilds the model
    from them. A model that fixes a shared argument (its own optimiser, no warm-up) passes it
    explicitly, which keeps it off the command line, and drops it from the record::

        super().__init__(warmup_epochs=0.0, **kwargs)
        self.save_hyperparameters(ignore="warmup_epochs")

    Override :meth:`training_loss` for losses other than ``self.head(emb, speakers)`` and
    :meth:`configure_optimizers` for other optimisers. Set ``self.spec_augment`` (e.g.
    ``speakerzoo.augment.spectral_augment_from(spec_augment)`` from an init argument) for
    SpecAugment / VTLP on the features of training steps.

    **Batches** are dicts. Training: ``waveforms [B, T] float``, ``lengths [B] int64``
    (samples), ``speakers [B] int64``; a DataModule with cached features may give
    ``features [B, frames, dim]`` and ``frame_lengths [B]`` instead of waveforms and lengths,
    and the frontend is skipped. Validation, test and predict batches carry
    ``index [B] int64`` (corpus utterance index) instead of ``speakers``.

    **Validation and test** (:class:`~speakerzoo.zoo.evaluation.TrialEvaluation`). Each step
    embeds its batch and keeps ``(index, embedding)``;
    at the end of the epoch the embeddings of all processes are gathered (duplicates from
    padded distributed shards are dropped), the trials come from
    ``trainer.datamodule.trials("val" | "test")`` (a :class:`~speakerzoo.scoring.Trials`),
    each process scores its share of the trial rows, and torchmetrics combines the shares.
    Logged: ``val/eer`` (fraction in [0, 1], not percent), ``val/mindcf`` (normalised, with
    ``p_target = dcf_p_target``), ``val/ident_acc`` (fraction), and ``test/...`` likewise.
    Trials whose utterances were not all embedded (``limit_val_batches``, the sanity check)
    are left out, with a warning outside the sanity check. Without a datamodule that has
    ``trials()``, validation still runs the model but logs nothing (a one-time warning says so).

    **Training** logs ``train/loss`` and ``train/acc`` (head logits without margin; per step,
    and the epoch mean over all processes) and ``train/lr`` (first parameter group, per step),
    so no ``LearningRateMonitor`` is needed.

    **Resuming** (``--ckpt_path``) continues where the checkpoint left off: Lightning restores
    weights, optimiser, scheduler, epoch and step; the training sampler seeds each epoch by
    its number; and the torch random generator (dropout) is re-seeded at the first batch of
    every epoch after the first from ``(training seed, epoch, rank)``, the training seed (the
    ``seed_everything`` seed, else ``torch.initial_seed()``) being stored in the checkpoint.
    A run resumed from an end-of-epoch checkpoint therefore ends with the same weights as one
    never interrupted. Models that draw random numbers in training should use the torch
    generator to keep that property.

    ``predict_step`` returns ``{"index": [B], "embedding": [B, D]}``.
    """

    #: Set by subclasses: size of the embeddings ``encode`` returns.
    embedding_dim: int
    #: Set by subclasses: classification head ``(embeddings, speakers) -> (loss, logits)``, or None.
    head: nn.Module | None
    #: True where zero padding in a batch changes no embedding in eval mode (within 1e-5, tested for
    #: the class): ``speakerzoo embed`` may then batch utterances of similar lengths, padded
    #: (:func:`speakerzoo.inference.engine.bucket_batches`). False (the default) batches only equal
    #: lengths: speechbrain's ECAPA, for one, reflect-pads its convolutions at the end of a padded batch.
    exact_padding: bool = False

    def __init__(
        self,
        num_speakers: int = 0,
        sample_rate: int = 16000,
        frontend: str | dict = "fbank80",
        speaker_names: list[str] | None = None,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        warmup_epochs: float = 0.0,
        init_from: str | None = None,
    ):
        super().__init__()
        # Before any argument is changed below: the init arguments of this class and of the
        # subclasses (theirs, and the shared ones they pass on through **kwargs).
        self.save_hyperparameters(ignore=_not_init_arguments(type(self)))
        if speaker_names is not None:
            speaker_names = [str(name) for name in speaker_names]
            if num_speakers == 0:
                num_speakers = len(speaker_names)
            elif num_speakers != len(speaker_names):
                raise ValueError(f"num_speakers={num_speakers} but {len(speaker_names)} speaker_names were given")
        if num_speakers < 0:
            raise ValueError(f"num_speakers must be >= 0, got {num_speakers}")
        self.num_speakers = int(num_speakers)
        self.speaker_names = speaker_names
        self.sample_rate = int(sample_rate)
        self.frontend = Frontend(frontend, self.sample_rate)
        self.lr = check_number("lr", lr, low=0, hint="the learning rate, e.g. 0.001; 0 leaves the weights as they are")
        self.weight_decay = check_number("weight_decay", weight_decay, low=0, hint="e.g. 0.0001, or 0 for none")
        self.warmup_epochs = check_number("warmup_epochs", warmup_epochs, low=0, hint="0 for no warm-up")
        self.init_from = None if init_from is None else str(init_from)
        #: What :meth:`init_weights_from` loaded for ``init_from`` (``None`` until applied).
        self.init_report: LoadReport | None = None
        self._init_from_done = False  # applied, or the weights came from a checkpoint
        self._init_from_error: Exception | None = None
        self._restored = False  # on_load_checkpoint ran (a resume, or load_from_checkpoint)
        self._train_seed: int | None = None
        self.head = None
        self._train_loss = MeanMetric()
        self._train_acc = MeanMetric()
        self.init_trial_evaluation()  # trial_metrics, evaluated, eer_threshold
        #: Feature-level training augmentation ``(features, frame_lengths) -> features`` (e.g.
        #: :class:`~speakerzoo.augment.SpectralAugment`), applied in :meth:`training_step` only.
        self.spec_augment: nn.Module | None = None

    # ------------------------------------------------------------------ model

    def encode(self, features: Tensor, frame_lengths: Tensor) -> Tensor:
        """Features ``[B, frames, dim]`` (``[B, T]`` for the ``waveform`` frontend) with valid
        frame counts ``[B]`` -> embeddings ``[B, embedding_dim]``. Implemented by subclasses."""
        raise NotImplementedError(f"{type(self).__name__} must implement encode(features, frame_lengths)")

    def features(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """The model input of a batch: cached ``features`` if present, else the frontend of ``waveforms``."""
        if "features" in batch:
            return batch["features"], batch["frame_lengths"]
        return self.frontend(batch["waveforms"], batch.get("lengths"))

    def embed(self, waveforms: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Waveforms ``[B, T]`` (float, at ``sample_rate``) with lengths in samples ``[B]``
        (default: all ``T``) -> embeddings ``[B, embedding_dim]``."""
        features, frame_lengths = self.frontend(waveforms, lengths)
        return self.encode(features, frame_lengths)

    def forward(self, waveforms: Tensor, lengths: Tensor | None = None) -> Tensor:
        return self.embed(waveforms, lengths)

    def training_embeddings(self, features: Tensor, frame_lengths: Tensor) -> Tensor:
        """What :meth:`training_loss` receives in a training step; default: :meth:`encode`'s
        embeddings. Override it when a loss needs something else (e.g. the embedding before
        length normalisation)."""
        return self.encode(features, frame_lengths)

    def training_loss(self, embeddings: Tensor, speakers: Tensor) -> tuple[Tensor, Tensor | None]:
        """``(loss, logits [B, num_speakers])`` for a batch; default: ``self.head(embeddings, speakers)``.
        Losses without class logits (metric learning) return ``(loss, None)``: ``train/acc`` is then
        not logged and the step output has no ``logits``."""
        if self.head is None:
            raise RuntimeError(
                f"{type(self).__name__} has no classification head (num_speakers=0); "
                "set num_speakers (linked from the DataModule by the CLI) to train it"
            )
        return self.head(embeddings, speakers)

    def classify(self, embeddings: Tensor) -> Tensor | None:
        """Closed-set logits ``[B, num_speakers]`` of the classification head (no margin), or
        ``None`` for a model without a head. The default asks ``head.cosine`` (AAM-softmax heads)
        and scales it by ``head.scale``; override it for other heads."""
        head = self.head
        if head is None or not hasattr(head, "cosine"):
            return None
        return getattr(head, "scale", 1.0) * head.cosine(embeddings)

    # ------------------------------------------------------------------ training

    def setup(self, stage: str) -> None:
        # Cached features from the corpus must be exactly what this model's frontend computes
        # at inference, or training and test features would differ.
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        cached = getattr(datamodule, "feature_config", None)
        if cached is not None and cached != self.frontend.config:
            raise ValueError(
                f"the DataModule serves cached features {cached} but {type(self).__name__} computes "
                f"{self.frontend.config}; set the model's frontend to the same preset, or train on audio "
                "(data.init_args.features: null)"
            )
        rate = getattr(datamodule, "sample_rate", None)
        if rate is not None and int(rate) != self.sample_rate:
            raise ValueError(
                f"the corpus is at {rate} Hz but {type(self).__name__} expects {self.sample_rate} Hz audio; "
                f"prepare the corpus with --sample-rate {self.sample_rate} (or build the model for {rate} Hz)"
            )
        if stage == "fit":
            if self._train_seed is None:
                self._train_seed = _initial_train_seed()
            self._apply_init_from()

    def _apply_init_from(self) -> None:
        # Lightning calls setup before it restores a --ckpt_path, so a resume overwrites what is
        # loaded here (see on_load_checkpoint). A failure is kept until the restore is done
        # (on_fit_start; on_train_start for strategies that restore after setup) and raised only
        # if nothing was restored: a resumed run does not need the init file any more.
        if not self.init_from or self._init_from_done:
            return
        try:
            report = self.init_weights_from(self.init_from)
        except (OSError, InvalidCheckpointError, _registry.RegistryError) as error:
            self._init_from_error = error
            return
        self._init_from_done = True
        self._init_from_error = None
        self.init_report = report
        rank_zero_info(f"{type(self).__name__} init_from: {report.summary()}")

    def _raise_init_from_error(self) -> None:
        error, self._init_from_error = self._init_from_error, None
        if error is not None and not self._restored:
            raise error

    def on_fit_start(self) -> None:
        if self._trainer is None or not self.trainer.strategy.restore_checkpoint_after_setup:
            self._raise_init_from_error()

    def on_train_start(self) -> None:
        self._raise_init_from_error()

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Everything random in an epoch follows from (seed, epoch): the sampler's batches and
        # crops (set_epoch), and here the torch generator (dropout), so that a resumed run
        # draws what the uninterrupted one would have drawn. It is re-seeded at the first batch,
        # not at the epoch start: Lightning makes the loader iterator (which draws from the
        # generator) after on_train_epoch_start in a running fit, before it after a resume.
        # Epoch 0 is never where a resume starts: it keeps the generator as seeded before training.
        if batch_idx == 0 and self._train_seed is not None and self.current_epoch > 0:
            rank = self.global_rank if self._trainer is not None else 0
            torch.manual_seed(_epoch_seed(self._train_seed, self.current_epoch, rank))

    def training_step(self, batch: Batch, batch_idx: int) -> dict[str, Tensor]:
        """Returns ``{"loss", "logits" [B, C] (detached, no margin), "targets" [B]}`` (only
        ``{"loss"}`` when :meth:`training_loss` gives no logits): callbacks
        (:mod:`speakerzoo.callbacks`) read the predictions in ``on_train_batch_end``."""
        features, frame_lengths = self.features(batch)
        if self.spec_augment is not None:
            features = self.spec_augment(features, frame_lengths)
        speakers = batch["speakers"]
        loss, logits = self.training_loss(self.training_embeddings(features, frame_lengths), speakers)
        batch_size = speakers.shape[0]
        self._train_loss(loss.detach(), batch_size)
        self.log("train/loss", self._train_loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=batch_size)
        if logits is not None:
            self._train_acc((logits.detach().argmax(dim=-1) == speakers).float())
            self.log("train/acc", self._train_acc, on_step=True, on_epoch=True, batch_size=batch_size)
        if self._trainer is not None and self.trainer.optimizers:
            lr = self.trainer.optimizers[0].param_groups[0]["lr"]
            self.log("train/lr", float(lr), on_step=True, on_epoch=False, batch_size=batch_size)
        if logits is None:
            return {"loss": loss}
        return {"loss": loss, "logits": logits.detach(), "targets": speakers}

    def configure_optimizers(self) -> Any:
        """AdamW, then per step: linear warm-up over ``warmup_epochs``, then a cosine that falls
        to 0 over :meth:`lr_decay_steps` steps (default: the rest of training,
        ``trainer.estimated_stepping_batches``); a constant rate when the length of training is
        unknown (``max_epochs=-1`` without ``max_steps``)."""
        # Frozen parameters stay out: a callback that unfreezes them later (BackboneFinetuning) adds
        # them as a parameter group of their own.
        trainable = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=self.lr, weight_decay=self.weight_decay)
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total) or total <= 0:
            return optimizer
        total = int(total)
        max_epochs = self.trainer.max_epochs
        steps_per_epoch = total / max_epochs if max_epochs and max_epochs > 0 else None
        warmup = 0
        if self.warmup_epochs and steps_per_epoch:
            warmup = min(int(round(self.warmup_epochs * steps_per_epoch)), total)
        decay = max(1, self.lr_decay_steps(total - warmup, steps_per_epoch))

        def factor(step: int) -> float:
            if step < warmup:  # ramps up to the full rate, reached at step ``warmup``
                return (step + 1) / (warmup + 1)
            return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / decay))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        follow_added_param_groups(scheduler)  # a callback may have unfrozen parameters (BackboneFinetuning)
        super().lr_scheduler_step(scheduler, metric)

    def lr_decay_steps(self, remaining: int, steps_per_epoch: float | None) -> int:
        """Steps over which the default schedule's cosine falls from the full rate to 0 (the
        half period of ``CosineAnnealingLR``'s ``T_max``): by default the ``remaining`` steps of
        training after the warm-up. Past it the cosine rises again, as torch's does."""
        return remaining

    # ------------------------------------------------------------------ validation / test / predict

    def predict_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor | None]:
        return {"index": batch.get("index"), "embedding": self.embed_unpadded(batch)}

    def embed_unpadded(self, batch: Batch, encode: Callable[[Tensor, Tensor], Tensor] | None = None) -> Tensor:
        """Embeddings of an evaluation batch, each row computed at its own length (by ``encode``,
        default :meth:`encode`; any function of ``(features, frame_lengths)`` that gives ``[B, ...]``).

        Rows of equal length are embedded together, cut to that length, so batch padding never
        reaches a model: speechbrain's ECAPA reflect-pads at the end of the padded tensor, and
        padded batches moved FSDD embeddings to a cosine of 0.92 with their unpadded selves.
        """
        encode = self.encode if encode is None else encode
        features, lengths = self.features(batch)
        rows_by_length = [(int(n), (lengths == n).nonzero().squeeze(1)) for n in torch.unique(lengths)]
        if len(rows_by_length) == 1 and rows_by_length[0][0] == features.shape[1]:
            return encode(features, lengths)
        parts = [(rows, encode(features[rows, :n], lengths[rows])) for n, rows in rows_by_length]
        out = parts[0][1].new_empty((len(lengths), *parts[0][1].shape[1:]))
        for rows, emb in parts:
            out[rows] = emb
        return out

    # ------------------------------------------------------------------ checkpoints

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if not checkpoint.get("hyper_parameters"):
            raise RuntimeError(f"{type(self).__name__} has no hyper-parameters to rebuild it from")
        # Everything in the file must load with torch.load(weights_only=True), and describe the model.
        write_metadata(self, checkpoint, train_seed=self._train_seed)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Lightning's resume (--ckpt_path) and load_from_checkpoint: the weights come from the
        # checkpoint, so init_from must not be applied (again) over them.
        self._restored = True
        self._init_from_done = True
        # Trainer.fit/test(ckpt_path=...) called from Python: the CLI checked the file already.
        check_tensor_digests(checkpoint, "the checkpoint being restored")
        meta = checkpoint.get("speakerzoo")
        if isinstance(meta, Mapping) and meta.get("train_seed") is not None:
            self._train_seed = int(meta["train_seed"])
        if isinstance(meta, Mapping) and meta.get("eer_threshold") is not None:
            self.eer_threshold = float(meta["eer_threshold"])
        if self.init_from and (self.init_report is not None or self._init_from_error is not None):
            rank_zero_info(
                f"{type(self).__name__}: resuming from a checkpoint; its weights replace those of "
                f"init_from={self.init_from!r}"
                + (f" (which could not be loaded: {self._init_from_error})" if self._init_from_error else "")
            )

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        map_location: str | torch.device = "cpu",
        drop_head: bool = False,
        num_speakers: int | None = None,
        registry: str | Path | None = None,
    ) -> "SpeakerEmbeddingModule":
        """Rebuild a model from a speakerzoo checkpoint file alone, in eval mode.

        Arguments:
            path: a ``.ckpt`` saved by Lightning from a :class:`SpeakerEmbeddingModule` subclass,
                or the name of one in the checkpoint registry (a registered name wins over a file of
                that name in the working directory; see :mod:`speakerzoo.zoo.registry`). A registered file is checked against its sha256
                (a ``url`` is downloaded into the cache first) and its class against the registry's.
            map_location: where to load the tensors.
            drop_head: do not load the classification head (``head.*`` weights); the model gets
                ``num_speakers`` classes with a fresh head, or no head when ``num_speakers`` is not given.
            num_speakers: a new number of training speakers; head weights whose shape no longer
                matches are not loaded (the rest of the head is).
            registry: the registry file for names (default: ``$SPEAKERZOO_REGISTRY`` or the
                source checkout's ``checkpoints/registry.yaml``).

        What was not loaded is reported with a ``UserWarning``; speaker names are kept only when
        the head is loaded whole. The file is read with ``torch.load(weights_only=True)`` (no code
        runs from it); the class named in it is imported only from ``speakerzoo`` or from a module
        that is already imported, and must subclass ``cls``. The rebuilt model's ``init_from`` is
        ``None``: its weights are those of the file, whatever it was fine-tuned from.

        Raises:
            FileNotFoundError: no such file (:class:`~speakerzoo.zoo.registry.UnknownCheckpointError`
                when it is no registered name either; the message lists the known names).
            InvalidCheckpointError: not a (complete) speakerzoo checkpoint, a checkpoint of a
                class that is not a subclass of ``cls`` or not the registry's class.
            ~speakerzoo.zoo.registry.ChecksumError: a registered file whose digest does not match.
        """
        return load_pretrained(cls, path, map_location, drop_head, num_speakers, registry)

    def init_weights_from(
        self, source: str | Path, registry: str | Path | None = None, map_location: str | torch.device = "cpu"
    ) -> LoadReport:
        """Load a trained checkpoint's weights into this model, the start of fine-tuning (``init_from``).

        ``source`` is a checkpoint file or a registry name (checked as in :meth:`from_pretrained`).
        The checkpoint must hold this model's class (or a class it derives from, or one derived
        from it) with the same frontend and sample rate. Classifier-head weights (``head.*``)
        are loaded only when their shape fits and, when the checkpoint and this model both know
        their speaker names, the speakers are the same; otherwise they are dropped and the head
        keeps its fresh initialisation. Any other mismatch (missing, unexpected or differently
        shaped weights: another architecture or size) raises :class:`InvalidCheckpointError`
        naming the file and the keys. Returns what was kept and dropped; nothing is printed
        (``init_from`` logs :meth:`LoadReport.summary`).
        """
        return init_weights(self, source, registry, map_location)


def _not_init_arguments(cls: type[SpeakerEmbeddingModule]) -> list[str]:
    """Parameters of the ``__init__`` methods of ``cls`` and of its bases up to
    :class:`SpeakerEmbeddingModule` that ``cls(...)`` does not take (a subclass without ``**kwargs``
    that passes fewer on): no hyper-parameters of ``cls``."""
    accepted = init_argument_names(cls)
    if accepted is None:
        return []
    named = {
        p.name
        for klass in cls.__mro__ if "__init__" in vars(klass) and issubclass(klass, SpeakerEmbeddingModule)
        for p in inspect.signature(klass.__init__).parameters.values()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }
    return sorted(named - accepted - {"self"})


def _initial_train_seed() -> int:
    """The ``seed_everything`` seed (``PL_GLOBAL_SEED``), else the torch generator's initial seed
    (``torch.manual_seed``'s, or the random one torch starts with); draws nothing from it."""
    env = os.environ.get("PL_GLOBAL_SEED")
    if env is not None:
        try:
            return int(env)
        except ValueError:
            pass
    return int(torch.initial_seed())


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """Seed of the torch generator for one training epoch of one rank."""
    state = np.random.SeedSequence([seed % 2**64, epoch, rank]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1
