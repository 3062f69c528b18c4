"""The LightningModule base class of every embedding model of the zoo.

:class:`SpeakerEmbeddingModule` owns what all embedding models share: the feature
frontend, ``embed(waveforms, lengths)``, the training step around a classification head,
DDP-safe validation on cosine trials (EER, minDCF, identification accuracy), the default
optimiser, and checkpoints that rebuild themselves with :meth:`~SpeakerEmbeddingModule.from_pretrained`.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import inspect
import math
import os
import sys
import warnings
from collections import Counter
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any, Callable, Literal

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from torchmetrics import MeanMetric

from speakerzoo import __version__
from speakerzoo.argtypes import check_number
from speakerzoo.features import FeatureConfig, Frontend
from speakerzoo.scoring import EqualErrorRate, MinDCF, Trials, eer_threshold, score_trials, subset_trials
from speakerzoo.zoo import registry as _registry
from speakerzoo.zoo.checkpoint import (
    InvalidCheckpointError,
    check_tensor_digests,
    read_checkpoint_file,
    tensor_digests,
)

Batch = dict[str, Tensor]


@dataclasses.dataclass
class LoadReport:
    """What loading a checkpoint's weights into a model kept and left out.

    Attributes:
        source: the checkpoint file (and the registry name it was found by, if any).
        class_path: the model class recorded in the checkpoint.
        loaded: state-dict keys loaded from the file.
        dropped: keys of the file not loaded, each as ``"key [shape] (reason)"`` (classifier head only).
        fresh: keys of the model that the file did not give (a newly initialised head).
    """

    source: str
    class_path: str
    loaded: list[str]
    dropped: list[str]
    fresh: list[str]

    def summary(self) -> str:
        groups = Counter(key.split(".", 1)[0] for key in self.loaded)
        kept = ", ".join(f"{name}.* {n}" for name, n in sorted(groups.items()))
        lines = [f"weights from {self.source} ({self.class_path}): kept {len(self.loaded)} tensors ({kept})"]
        if self.dropped:
            lines.append(f"  dropped {len(self.dropped)}: " + "; ".join(self.dropped))
        if self.fresh:
            lines.append(f"  newly initialised {len(self.fresh)}: " + ", ".join(self.fresh))
        return "\n".join(lines)


class SpeakerEmbeddingModule(L.LightningModule):
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

    **Writing a model.** Subclass, pass the shared arguments to ``super().__init__``, call
    ``self.save_hyperparameters()`` in your own ``__init__`` (so that *every* init argument,
    yours included, lands in the checkpoint; keep them plain: numbers, strings, lists,
    dicts), set ``self.embedding_dim``, build ``self.head`` (e.g. :class:`~speakerzoo.zoo.heads.AAMSoftmax`,
    or ``None`` when ``self.num_speakers == 0``) and implement :meth:`encode`::

        class MyModel(SpeakerEmbeddingModule):
            def __init__(self, num_speakers=0, sample_rate=16000, frontend="fbank80",
                         speaker_names=None, embedding_dim=128, lr=1e-3, weight_decay=1e-4,
                         warmup_epochs=0.0, init_from=None):
                super().__init__(num_speakers, sample_rate, frontend, speaker_names,
                                 lr, weight_decay, warmup_epochs, init_from)
                self.save_hyperparameters()
                self.embedding_dim = embedding_dim
                self.encoder = ...
                self.head = AAMSoftmax(embedding_dim, self.num_speakers) if self.num_speakers else None

            def encode(self, features, frame_lengths):
                return ...  # [B, embedding_dim]

    Override :meth:`training_loss` for losses other than ``self.head(emb, speakers)`` and
    :meth:`configure_optimizers` for other optimisers. Set ``self.spec_augment`` (e.g.
    ``speakerzoo.augment.spectral_augment_from(spec_augment)`` from an init argument) for
    SpecAugment / VTLP on the features of training steps.

    **Batches** are dicts. Training: ``waveforms [B, T] float``, ``lengths [B] int64``
    (samples), ``speakers [B] int64``; a DataModule with cached features may give
    ``features [B, frames, dim]`` and ``frame_lengths [B]`` instead of waveforms and lengths,
    and the frontend is skipped. Validation, test and predict batches carry
    ``index [B] int64`` (corpus utterance index) instead of ``speakers``.

    **Validation and test.** Each step embeds its batch and keeps ``(index, embedding)``;
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

    #: Prior of a target trial for ``val/mindcf`` and ``test/mindcf``.
    dcf_p_target: float = 0.01
    #: Set by subclasses: size of the embeddings ``encode`` returns.
    embedding_dim: int
    #: Set by subclasses: classification head ``(embeddings, speakers) -> (loss, logits)``, or None.
    head: nn.Module | None

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
        self.trial_metrics = nn.ModuleDict(
            {
                part: nn.ModuleDict(
                    {"eer": EqualErrorRate(), "mindcf": MinDCF(p_target=self.dcf_p_target), "ident_acc": MeanMetric()}
                )
                for part in ("val", "test")
            }
        )
        self._collected: dict[str, tuple[list[Tensor], list[Tensor]]] = {}
        self._warned: set[str] = set()
        #: Feature-level training augmentation ``(features, frame_lengths) -> features`` (e.g.
        #: :class:`~speakerzoo.augment.SpectralAugment`), applied in :meth:`training_step` only.
        self.spec_augment: nn.Module | None = None
        #: What the last validation / test epoch scored, for callbacks (set at the end of the
        #: epoch, identical on every rank): ``{"val": {"index", "embedding", "scores", "labels"}}``.
        self.evaluated: dict[str, dict[str, Tensor]] = {}
        #: Cosine threshold at the equal error rate of the last validation epoch; stored in
        #: checkpoints and restored by :meth:`from_pretrained` (``speakerzoo verify``'s default).
        self.eer_threshold: float | None = None

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
        if not self.hparams:
            raise RuntimeError(
                f"{type(self).__name__}.__init__ must call self.save_hyperparameters(); "
                "without them its checkpoints cannot be rebuilt by from_pretrained"
            )
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
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
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

    def lr_decay_steps(self, remaining: int, steps_per_epoch: float | None) -> int:
        """Steps over which the default schedule's cosine falls from the full rate to 0 (the
        half period of ``CosineAnnealingLR``'s ``T_max``): by default the ``remaining`` steps of
        training after the warm-up. Past it the cosine rises again, as torch's does."""
        return remaining

    # ------------------------------------------------------------------ validation / test / predict

    def on_validation_epoch_start(self) -> None:
        self._collected["val"] = ([], [])

    def validation_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor] | None:
        """Returns ``{"index" [B], "embedding" [B, D]}`` (detached) for callbacks."""
        return self._collect("val", batch)

    def on_validation_epoch_end(self) -> None:
        self._score("val")

    def on_test_epoch_start(self) -> None:
        self._collected["test"] = ([], [])

    def test_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor] | None:
        return self._collect("test", batch)

    def on_test_epoch_end(self) -> None:
        self._score("test")

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

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            rank_zero_warn(message)

    def _collect(self, part: str, batch: Batch) -> dict[str, Tensor] | None:
        embeddings = self.embed_unpadded(batch).detach().float()
        if "index" not in batch:
            self._warn_once(f"{part}-index", f"{part} batches carry no 'index'; no trials can be scored")
            return None
        index, emb = self._collected.setdefault(part, ([], []))
        batch_index = batch["index"].detach().to(self.device).long()
        index.append(batch_index)
        emb.append(embeddings)
        return {"index": batch_index, "embedding": embeddings}

    def _gather(self, part: str) -> tuple[Tensor, Tensor]:
        """Embeddings of all processes: ``(index [K] sorted unique, emb [K, D])``, identical on every rank."""
        index_list, emb_list = self._collected.pop(part, ([], []))
        dim = emb_list[0].shape[-1] if emb_list else getattr(self, "embedding_dim", 0)
        index = torch.cat(index_list) if index_list else torch.zeros(0, dtype=torch.long, device=self.device)
        emb = torch.cat(emb_list) if emb_list else torch.zeros(0, dim, device=self.device)
        world = self.trainer.world_size if self._trainer is not None else 1
        if world > 1:
            # Shards may differ in size: pad to the largest with index -1, gather, drop the padding.
            sizes = self.all_gather(torch.tensor(index.numel(), device=self.device))
            longest = int(sizes.max())
            if longest == 0:
                return index, emb
            pad = longest - index.numel()
            index = self.all_gather(F.pad(index, (0, pad), value=-1)).reshape(-1)
            emb = self.all_gather(F.pad(emb, (0, 0, 0, pad))).reshape(-1, dim)
            keep = index >= 0
            index, emb = index[keep], emb[keep]
        # A DistributedSampler pads shards by repeating utterances: keep the first copy.
        unique, inverse = torch.unique(index, return_inverse=True)
        positions = torch.arange(index.numel(), device=index.device)
        first = torch.full_like(unique, index.numel()).scatter_reduce(0, inverse, positions, reduce="amin")
        return unique, emb[first]

    def _trials(self, part: str) -> Trials | None:
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        get = getattr(datamodule, "trials", None)
        return get(part) if callable(get) else None

    def _score(self, part: str) -> dict[str, Tensor]:
        """Score the gathered embeddings on the trials of ``part`` and log the metrics; returns
        the values logged (empty when nothing could be scored)."""
        index, emb = self._gather(part)
        self.evaluated.pop(part, None)
        trials = self._trials(part)
        if trials is None:
            self._warn_once(
                f"{part}-trials",
                f"no trials for '{part}' (the datamodule has no trials({part!r})): "
                f"{part}/eer, {part}/mindcf and {part}/ident_acc are not logged",
            )
            return {}
        usable = subset_trials(trials, index)
        sanity = self._trainer is not None and self.trainer.sanity_checking
        if not sanity and (len(usable.pairs) < len(trials.pairs) or len(usable.ident) < len(trials.ident)):
            self._warn_once(
                f"{part}-partial",
                f"{part}: only {len(usable.pairs)}/{len(trials.pairs)} trial pairs and {len(usable.ident)}/"
                f"{len(trials.ident)} identification rows have all their utterances embedded "
                f"(limit_{part}_batches?); scoring those",
            )
        world = self.trainer.world_size if self._trainer is not None else 1
        rank = self.global_rank if self._trainer is not None else 0
        # Every rank holds the same embeddings and trials, so these decisions agree across ranks.
        labels = usable.pairs[:, 2]
        n_target = int((labels == 1).sum())
        verify = 0 < n_target < labels.numel()
        identify = usable.ident.shape[0] > 0
        if not (verify or identify):
            if not sanity:
                # Log NaN rather than nothing: ModelCheckpoint/EarlyStopping monitor val/eer and
                # stop the run when the key is missing; they treat NaN as the worst value.
                self._warn_once(f"{part}-empty", f"{part}: no trial could be scored this epoch; {part}/eer is NaN")
                for name in ("eer", "mindcf", "ident_acc"):
                    self.log(f"{part}/{name}", float("nan"), sync_dist=True)
            return {}
        scores, labels = self._keep_evaluated(part, index, emb, usable, verify)
        metrics = self.trial_metrics[part]
        values = {}
        if verify:
            # Each rank feeds its share of the pairs; the metrics concatenate the shares.
            metrics["eer"].update(scores[rank::world], labels[rank::world])
            metrics["mindcf"].update(scores[rank::world], labels[rank::world])
            values["eer"] = metrics["eer"].compute()
            values["mindcf"] = metrics["mindcf"].compute()
        if identify:
            _, _, hits = score_trials(index, emb, Trials(pairs=usable.pairs[:0], ident=usable.ident[rank::world]))
            metrics["ident_acc"].update(hits.float())
            values["ident_acc"] = metrics["ident_acc"].compute()
        for metric in metrics.values():
            metric.reset()
        for name, value in values.items():
            # The values are already global (identical on every rank); sync_dist only averages equal numbers.
            self.log(f"{part}/{name}", value.float(), prog_bar=name == "eer", sync_dist=True)
        return values

    def _keep_evaluated(self, part: str, index: Tensor, emb: Tensor, usable: Trials,
                        verify: bool) -> tuple[Tensor, Tensor]:
        """Score every usable pair (on every rank: one dot product per pair), keep them in
        :attr:`evaluated` for callbacks and the validation EER threshold; returns ``(scores, labels)``."""
        scores, labels, _ = score_trials(index, emb, Trials(pairs=usable.pairs, ident=usable.ident[:0]))
        self.evaluated[part] = {"index": index, "embedding": emb, "scores": scores, "labels": labels}
        sanity = self._trainer is not None and self.trainer.sanity_checking
        if part == "val" and verify and not sanity:
            self.eer_threshold = float(eer_threshold(scores, labels))
        return scores, labels

    # ------------------------------------------------------------------ checkpoints

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if not checkpoint.get("hyper_parameters"):
            raise RuntimeError(f"{type(self).__name__}.__init__ must call self.save_hyperparameters()")
        # Everything in the file must load with torch.load(weights_only=True): make the
        # hyper-parameters plain (Path -> str, dataclass -> dict, numpy scalar -> number, ...).
        for key in ("hyper_parameters", "datamodule_hyper_parameters"):
            if key in checkpoint:
                checkpoint[key] = _plain(checkpoint[key], key)
        cls = type(self)
        checkpoint["speakerzoo"] = {
            "class_path": f"{cls.__module__}.{cls.__qualname__}",
            "version": __version__,
            "frontend": self.frontend.config.to_dict(),
            "sample_rate": self.sample_rate,
            "speaker_names": list(self.speaker_names) if self.speaker_names is not None else None,
            "embedding_dim": int(getattr(self, "embedding_dim", 0)),
            "train_seed": self._train_seed,
            "eer_threshold": self.eer_threshold,
            "tensor_sha256": tensor_digests(checkpoint.get("state_dict", {})),
        }

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
        path, checkpoint, meta, klass = _read_checkpoint(path, map_location, registry)
        if not issubclass(klass, cls):
            raise InvalidCheckpointError(
                f"{path} holds a {meta['class_path']} checkpoint, which is not a {cls.__qualname__}; "
                f"load it with {klass.__qualname__}.from_pretrained({str(path)!r}) "
                f"or SpeakerEmbeddingModule.from_pretrained({str(path)!r})"
            )

        hparams = {k: v for k, v in dict(checkpoint.get("hyper_parameters") or {}).items() if not k.startswith("_")}
        # The stored frontend is the full parameter set: a preset renamed or changed later cannot alter it.
        if "frontend" in meta:
            hparams["frontend"] = dict(meta["frontend"])
        if "sample_rate" in meta:
            hparams["sample_rate"] = int(meta["sample_rate"])
        # The weights are the file's: never re-read what the model was fine-tuned from.
        hparams["init_from"] = None
        stored_speakers = int(hparams.get("num_speakers", 0) or 0)
        new_speakers = num_speakers if num_speakers is not None else (0 if drop_head else stored_speakers)
        head_changed = drop_head or new_speakers != stored_speakers
        if head_changed:
            hparams["num_speakers"] = new_speakers
            hparams["speaker_names"] = None
        params = inspect.signature(klass.__init__).parameters
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            hparams = {k: v for k, v in hparams.items() if k in params}
        model = klass(**hparams)

        report = _load_weights(
            model, checkpoint["state_dict"], str(path), str(meta["class_path"]),
            head="drop" if drop_head else ("fit" if head_changed else "keep"),
            what=f"{klass.__qualname__} built from its hyper-parameters",
        )
        if report.dropped:
            warnings.warn(f"{path}: classifier weights not loaded: " + "; ".join(report.dropped), UserWarning,
                          stacklevel=2)
        if meta.get("eer_threshold") is not None:
            model.eer_threshold = float(meta["eer_threshold"])
        model.checkpoint_path = Path(path)  # the file read (a registry name's checked file)
        return model.eval()

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
        path, checkpoint, meta, klass = _read_checkpoint(source, map_location, registry)
        mine = type(self)
        label = str(path) if str(path) == str(source) else f"{path} ({source!r})"
        if not (issubclass(mine, klass) or issubclass(klass, mine)) or klass is SpeakerEmbeddingModule:
            raise InvalidCheckpointError(
                f"{label} holds a {meta['class_path']} checkpoint: a {mine.__qualname__} cannot be initialised "
                f"from it (init_from needs a checkpoint of the same model class)"
            )
        if "frontend" in meta:
            try:
                stored = FeatureConfig.parse(dict(meta["frontend"]))
            except (TypeError, ValueError) as error:
                raise InvalidCheckpointError(f"{label}: unreadable frontend {meta['frontend']!r}: {error}") from error
            if stored != self.frontend.config:
                raise InvalidCheckpointError(
                    f"{label} was trained on features {stored} but this {mine.__qualname__} computes "
                    f"{self.frontend.config}; set the model's frontend to the checkpoint's to fine-tune it"
                )
        if "sample_rate" in meta and int(meta["sample_rate"]) != self.sample_rate:
            raise InvalidCheckpointError(
                f"{label} was trained on {int(meta['sample_rate'])} Hz audio but this {mine.__qualname__} "
                f"expects {self.sample_rate} Hz"
            )
        names = meta.get("speaker_names")
        other_speakers = names is not None and self.speaker_names is not None and list(names) != list(self.speaker_names)
        return _load_weights(
            self, checkpoint["state_dict"], label, str(meta["class_path"]),
            head="drop" if other_speakers else "fit",
            what=mine.__qualname__,
            drop_note="trained on other speakers" if other_speakers else None,
        )


def _read_checkpoint(
    source: str | Path, map_location: str | torch.device, registry: str | Path | None
) -> tuple[Path, Mapping[str, Any], Mapping[str, Any], type[SpeakerEmbeddingModule]]:
    """``(file, checkpoint, speakerzoo metadata, model class)`` of a checkpoint file or registry name,
    read with ``torch.load(weights_only=True)``; the registry's class must be the file's."""
    candidate = Path(source)
    if candidate.exists() and not candidate.is_file():
        raise FileNotFoundError(f"checkpoint {str(candidate)!r} does not exist or is not a file")
    path, entry = _registry.resolve_entry(source, registry)
    checkpoint = read_checkpoint_file(path, map_location)
    if not isinstance(checkpoint, Mapping) or "state_dict" not in checkpoint:
        raise InvalidCheckpointError(f"{path} is a PyTorch file but not a Lightning checkpoint (no 'state_dict')")
    meta = checkpoint.get("speakerzoo")
    if not isinstance(meta, Mapping) or "class_path" not in meta:
        raise InvalidCheckpointError(
            f"{path} is a Lightning checkpoint but not one of a speakerzoo embedding model (no 'speakerzoo' entry)"
        )
    if entry is not None and not _registry.class_matches(entry.class_path, str(meta["class_path"])):
        raise InvalidCheckpointError(
            f"registry entry {entry.name!r} says class {entry.class_path} but its file {path} holds a "
            f"{meta['class_path']} checkpoint; refusing to load it"
        )
    klass = _resolve_class(str(meta["class_path"]), path)
    return path, checkpoint, meta, klass


def _load_weights(
    model: nn.Module,
    state: Mapping[str, Tensor],
    source: str,
    class_path: str,
    head: Literal["keep", "fit", "drop"],
    what: str,
    drop_note: str | None = None,
) -> LoadReport:
    """Load ``state`` into ``model``. Classifier head (``head.*``): ``keep`` loads it like everything
    else, ``fit`` drops the weights that do not fit the model (its other head weights stay fresh),
    ``drop`` drops them all. Anything else that is missing, unexpected or of another shape raises
    :class:`InvalidCheckpointError` naming ``source`` and the keys."""
    state = dict(state)
    own = model.state_dict()
    dropped = []
    if head != "keep":
        for key in [k for k in state if k.startswith("head.")]:
            fits = key in own and own[key].shape == state[key].shape
            if head == "drop" or not fits:
                shape = list(state.pop(key).shape)
                reason = f"model now has {list(own[key].shape)}" if key in own else "not in the model"
                if drop_note:
                    reason += f"; {drop_note}"
                dropped.append(f"{key} {shape} ({reason})")
    flexible = head != "keep"
    mismatched = [
        f"{k} {list(v.shape)} (model has {list(own[k].shape)})" for k, v in state.items() if k in own and own[k].shape != v.shape
    ]
    unexpected = [k for k in state if k not in own]
    missing = [k for k in own if k not in state and not (flexible and k.startswith("head."))]
    if mismatched or unexpected or missing:
        problems = []
        for label, keys in (("shapes differ", mismatched), ("missing", missing), ("unexpected", unexpected)):
            if keys:
                more = f" and {len(keys) - 8} more" if len(keys) > 8 else ""
                problems.append(f"{label}: {', '.join(keys[:8])}{more}")
        raise InvalidCheckpointError(
            f"{source}: weights do not fit {what} (another architecture or size?); " + "; ".join(problems)
        )
    model.load_state_dict(state, strict=False)
    return LoadReport(source=source, class_path=class_path, loaded=list(state), dropped=dropped,
                      fresh=[k for k in own if k not in state])


def local_weights_dir(directory: str | Path, what: str, files: str, example: str) -> Path:
    """``directory``, a local ``save_pretrained`` directory of ``what`` weights (nothing is ever
    downloaded); FileNotFoundError naming the files it needs (``files``, e.g. of ``example``) and
    the fix when it has no ``config.json``."""
    path = Path(directory).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{path}: no {what} weights there (need config.json and {files} from save_pretrained, e.g. of "
            f"{example}); give another directory, or pretrained: null to start from random weights")
    return path


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


def _resolve_class(class_path: str, path: Path) -> type[SpeakerEmbeddingModule]:
    module_name, _, qualname = class_path.rpartition(".")
    if not module_name:
        raise InvalidCheckpointError(f"{path}: malformed class path {class_path!r}")
    # Import nothing a checkpoint names outside our package: other modules must already be imported.
    if module_name not in sys.modules:
        if module_name != "speakerzoo" and not module_name.startswith("speakerzoo."):
            raise InvalidCheckpointError(
                f"{path} holds a {class_path} checkpoint; import {module_name} first, then load it again"
            )
        try:
            importlib.import_module(module_name)
        except ImportError as error:
            raise InvalidCheckpointError(f"{path}: cannot import {module_name} for {class_path}: {error}") from error
    obj: Any = sys.modules[module_name]
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    if not (isinstance(obj, type) and issubclass(obj, SpeakerEmbeddingModule)):
        raise InvalidCheckpointError(
            f"{path} names {class_path}, which is not a speakerzoo SpeakerEmbeddingModule subclass; refusing to build it"
        )
    return obj


def _plain(value: Any, where: str) -> Any:
    """``value`` as plain data that ``torch.load(weights_only=True)`` accepts."""
    if value is None or type(value) in (bool, int, float, str, bytes) or isinstance(value, (Tensor, torch.dtype)):
        return value
    if isinstance(value, enum.Enum):
        return _plain(value.value, where)
    if isinstance(value, int):  # numpy integers do not subclass int, but IntEnum and friends do
        return int(value)
    if isinstance(value, float):  # numpy.float64 subclasses float
        return float(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, PurePath):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value), where)
    if isinstance(value, Mapping):
        return {_plain(k, where): _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [_plain(v, where) for v in value]
        return type(value)(items) if type(value) in (list, tuple, set, frozenset) else items
    if hasattr(value, "item") and hasattr(value, "dtype"):  # numpy scalars and 0-d arrays
        try:
            return _plain(value.item(), where)
        except (TypeError, ValueError):
            pass
    if hasattr(value, "tolist"):  # numpy arrays
        return _plain(value.tolist(), where)
    warnings.warn(
        f"checkpoint {where}: {type(value).__qualname__} is not plain data; stored as its repr {value!r:.80} "
        "(pass plain values to the model and datamodule)",
        UserWarning,
        stacklevel=3,
    )
    return repr(value)
