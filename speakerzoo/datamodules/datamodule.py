"""The DataModule that every speakerzoo model trains and is evaluated on.

Training: random crops, P speakers x K utterances per batch
(:class:`~speakerzoo.datamodules.sampler.SpeakerBatchSampler`), sharded by rank by the sampler
itself. Validation / test / predict: whole utterances of the split part (predict = test),
sorted by length so that a batch wastes little padding, and sharded by rank as
``sorted_items[rank::world_size]``; every batch carries the corpus utterance ``index``, which is
how models match embeddings to :meth:`SpeakerDataModule.trials`. Ranks may get one utterance
more or less than each other (no padding, so no utterance is scored twice); models gather the
embeddings of all ranks at the end of the epoch, not per step.

**Distributed training**: both kinds of loader already shard by rank, so build the Trainer with
``Trainer(use_distributed_sampler=False)`` (the speakerzoo CLI does); otherwise Lightning would
wrap them in a second ``DistributedSampler``. :meth:`SpeakerDataModule.setup` refuses to run
with more than one rank and ``use_distributed_sampler=True``.

Example::

    dm = SpeakerDataModule("data/toy.h5", speakers_per_batch=8, utterances_per_speaker=2)
    dm.num_speakers, dm.sample_rate        # known right after construction (LightningCLI links them)
    trainer = lightning.Trainer(use_distributed_sampler=False, ...)
    trainer.fit(model, datamodule=dm)
"""

from __future__ import annotations

import warnings
from typing import Literal

import lightning
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torch.utils.data import DataLoader

from speakerzoo.checks import check_number
from speakerzoo.augment import waveform_augment_from
from speakerzoo.datamodules.corpus import IN_MEMORY_FRACTION, Corpus, CorpusError
from speakerzoo.datamodules.dataset import CropDataset, UtteranceDataset, collate_crops, collate_utterances
from speakerzoo.datamodules.sampler import SpeakerBatchSampler, eligible_classes
from speakerzoo.datamodules.splits import PARTS
from speakerzoo.features import FeatureConfig, frame_count
from speakerzoo.scoring import Trials


class LazyStartDataLoader(DataLoader):
    """A DataLoader whose worker processes start at the first batch, not at ``iter()``.

    Lightning creates the training iterator before it restores a resumed run's epoch and calls
    the sampler's ``set_epoch``; workers started then prefetch batches of epoch 0, so a resumed
    run repeated epoch 0's batches. Deferring ``DataLoader.__iter__`` to the first ``next()``
    lets ``set_epoch`` act first.
    """

    def __iter__(self):
        return _DeferredIterator(self)


class _DeferredIterator:
    def __init__(self, loader: DataLoader):
        self._loader = loader
        self._iterator = None

    def __iter__(self):
        return self

    def __next__(self):
        if self._iterator is None:
            self._iterator = DataLoader.__iter__(self._loader)
        return next(self._iterator)

    def __len__(self) -> int:
        return len(self._loader)


def rank_and_world(trainer: lightning.Trainer | None) -> tuple[int, int]:
    """``(global rank, world size)`` of ``trainer``; ``(0, 1)`` without one."""
    if trainer is None:
        return 0, 1
    return int(trainer.global_rank), int(trainer.world_size)


def loader_kwargs(num_workers: int) -> dict:
    """DataLoader settings every speakerzoo loader shares: persistent workers, pinned memory on CUDA."""
    return {"num_workers": num_workers, "persistent_workers": num_workers > 0, "pin_memory": torch.cuda.is_available()}


def refuse_distributed_sampler(trainer: lightning.Trainer | None, owner: str) -> None:
    """Refuse a multi-process Trainer that would wrap loaders already sharded by rank in a second
    ``DistributedSampler``."""
    if trainer is not None and trainer.world_size > 1 and getattr(
            getattr(trainer, "_accelerator_connector", None), "use_distributed_sampler", False):
        raise RuntimeError(
            f"{owner} shards its loaders by rank itself: build the Trainer with "
            "use_distributed_sampler=False (trainer.use_distributed_sampler: false in a config)")


class SpeakerDataModule(lightning.LightningDataModule):
    """Crops for training, whole utterances and trials for evaluation, from one corpus file.

    Arguments:
        corpus: path of a corpus file (``speakerzoo prepare ...``).
        split: ``speaker`` (open set: val/test speakers never seen in training; verification)
            or ``utterance`` (closed set: the same speakers in every part).
        crop_seconds: training crop length (the longest when ``min_crop_seconds`` is set).
        min_crop_seconds: draw one crop length per batch in ``[min_crop_seconds, crop_seconds]``.
        speakers_per_batch, utterances_per_speaker: P and K; a batch holds P x K crops.
        batches_per_epoch: training batches per epoch *per rank*; ``None`` = one pass over the data.
        eval_max_seconds: evaluation utterances longer than this are centre-cropped (``None``: whole).
        eval_batch_size: utterances per evaluation batch.
        num_workers: DataLoader worker processes (persistent); each opens the corpus itself.
        cache_in_memory: load all audio (and cached features) into RAM at setup.
        features: key of cached features to train on (e.g. ``fbank80``; the corpus must have
            them) instead of raw audio. Evaluation always reads audio; the model's frontend must
            be the same feature configuration (see :attr:`feature_config`).
        min_utterances_per_speaker: training speakers with fewer utterances are left out
            (a warning says how many); they are not classes.
        seed: seed of the training sampler (batches, crop lengths and positions).
        augment: waveform augmentation of the training crops, on the fly in the loader workers
            (:class:`~speakerzoo.augment.WaveformAugment`): ``null``/``false`` off, ``true`` the
            defaults, or a dict of its arguments (``speeds``, ``noise_prob``, ``snr_db``,
            ``volume_norm``, ``peak``). Noise is cut from the corpus's noise clips (speaker -1,
            e.g. Speech Commands' ``_silence_`` recordings); without any, no noise is added.
            Reproducible: every crop's augmentation follows from the sampler seed and epoch.
    """

    def __init__(
        self,
        corpus: str,
        split: Literal["speaker", "utterance"] = "speaker",
        crop_seconds: float = 2.0,
        min_crop_seconds: float | None = None,
        speakers_per_batch: int = 16,
        utterances_per_speaker: int = 2,
        batches_per_epoch: int | None = None,
        eval_max_seconds: float | None = 10.0,
        eval_batch_size: int = 32,
        num_workers: int = 2,
        cache_in_memory: bool = False,
        features: str | None = None,
        min_utterances_per_speaker: int = 2,
        seed: int = 0,
        augment: bool | dict | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        if split not in ("speaker", "utterance"):
            raise ValueError(f"split must be 'speaker' or 'utterance', not {split!r}")
        if crop_seconds <= 0 or (min_crop_seconds is not None and not 0 < min_crop_seconds <= crop_seconds):
            raise ValueError(f"need 0 < min_crop_seconds <= crop_seconds (got {min_crop_seconds}, {crop_seconds})")
        self.corpus_path = str(corpus)
        self.split = split
        self.crop_seconds = float(crop_seconds)
        self.min_crop_seconds = None if min_crop_seconds is None else float(min_crop_seconds)
        self.speakers_per_batch = int(check_number("speakers_per_batch", speakers_per_batch, low=1))
        self.utterances_per_speaker = int(check_number("utterances_per_speaker", utterances_per_speaker, low=1))
        self.batches_per_epoch = batches_per_epoch if batches_per_epoch is None else int(
            check_number("batches_per_epoch", batches_per_epoch, low=1, hint="or null for one pass over the speakers"))
        self.eval_max_seconds = eval_max_seconds if eval_max_seconds is None else check_number(
            "eval_max_seconds", eval_max_seconds, low=0, low_open=True, hint="seconds, or null for whole utterances")
        self.eval_batch_size = int(check_number("eval_batch_size", eval_batch_size, low=1))
        self.num_workers = int(check_number("num_workers", num_workers, low=0))
        self.cache_in_memory = bool(cache_in_memory)
        self.features = features
        self.min_utterances_per_speaker = int(min_utterances_per_speaker)
        self.seed = int(seed)

        # Metadata only (the audio stays on disk until setup): the sizes below must be known
        # right after construction.
        self.corpus = Corpus(self.corpus_path)
        self._in_memory = False
        if features is not None and features not in self.corpus.feature_configs:
            raise CorpusError(
                f"{self.corpus_path}: no cached features {features!r} (has "
                f"{sorted(self.corpus.feature_configs) or 'none'}); prepare the corpus with `--features {features}` "
                f"or set features: null to train on audio")
        self._parts = {part: self.corpus.split(split, part) for part in PARTS}
        train = self._parts["train"]
        original = self.corpus.speaker[train]
        keep, dropped = eligible_classes(original, max(self.min_utterances_per_speaker, 1))
        if len(dropped):
            warnings.warn(
                f"{self.corpus_path}: {len(dropped)} training speaker(s) with fewer than "
                f"{self.min_utterances_per_speaker} utterances are left out (of {len(keep) + len(dropped)}); "
                f"lower min_utterances_per_speaker to keep them", stacklevel=2)
        class_of = np.full(len(self.corpus.speakers), -1, dtype=np.int64)
        class_of[keep] = np.arange(len(keep))
        mask = class_of[original] >= 0
        self.train_items = train[mask]
        self.train_labels = class_of[original[mask]]
        self._class_speakers = keep  # corpus speaker id of every class
        self._class_of_speaker = class_of
        self.augment = waveform_augment_from(augment, self.corpus.sample_rate)
        if self.augment is not None and features is not None:
            raise ValueError("augment works on audio crops: set features: null to train with augmentation")
        self.noise_items = np.flatnonzero(self.corpus.speaker < 0)
        if self.augment is not None and self.augment.noise_prob > 0 and not len(self.noise_items):
            warnings.warn(f"{self.corpus_path}: augment asks for noise but the corpus has no noise clips "
                          "(speaker -1); training without added noise", stacklevel=2)
        self._trials_cache: dict[str, Trials] = {}
        self._described = False

    # -- sizes linked to the model ------------------------------------------------------------
    @property
    def num_speakers(self) -> int:
        """Training classes (training speakers, renumbered ``0..C-1``)."""
        return len(self._class_speakers)

    @property
    def speaker_names(self) -> list[str]:
        """Name of every training class, in class order."""
        return [self.corpus.speakers[s] for s in self._class_speakers]

    @property
    def sample_rate(self) -> int:
        return self.corpus.sample_rate

    @property
    def feature_config(self) -> FeatureConfig | None:
        """Configuration of the cached features trained on, ``None`` for raw audio."""
        return self.corpus.feature_configs[self.features] if self.features else None

    @property
    def feature_dim(self) -> int | None:
        """Dimension of the training features, ``None`` for raw audio."""
        return self.feature_config.dim if self.features else None

    def classes(self, index: Tensor) -> Tensor:
        """Training class of each corpus utterance ``index`` (``-1``: its speaker is no training class)."""
        speaker = self.corpus.speaker[index.detach().cpu().long().numpy()]
        classes = np.where(speaker >= 0, self._class_of_speaker[np.maximum(speaker, 0)], -1)
        return torch.from_numpy(classes).to(index.device)

    def speakers_of(self, index: Tensor) -> list[str]:
        """Speaker name of each corpus utterance ``index`` (``""`` for noise clips)."""
        names = self.corpus.speakers
        return [names[s] if s >= 0 else "" for s in self.corpus.speaker[index.detach().cpu().long().numpy()]]

    # -- sizes in samples / frames ------------------------------------------------------------
    def crop_samples(self) -> tuple[int, int]:
        """(min, max) training crop length in samples."""
        hi = int(round(self.crop_seconds * self.sample_rate))
        lo = hi if self.min_crop_seconds is None else int(round(self.min_crop_seconds * self.sample_rate))
        return lo, hi

    def crop_lengths(self) -> tuple[int, int]:
        """(min, max) training crop length in the unit cropped: samples, or frames of the cached features."""
        lo, hi = self.crop_samples()
        if self.features:
            cfg = self.feature_config
            return int(frame_count(lo, self.sample_rate, cfg)), int(frame_count(hi, self.sample_rate, cfg))
        return lo, hi

    def _eval_max_samples(self) -> int | None:
        return None if self.eval_max_seconds is None else int(round(self.eval_max_seconds * self.sample_rate))

    def _rank_world(self) -> tuple[int, int]:
        return rank_and_world(self.trainer)

    # -- Lightning hooks ------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        refuse_distributed_sampler(self.trainer, "SpeakerDataModule")
        if self.cache_in_memory and not self._in_memory:
            self.corpus.close()
            # Every process on the machine holds its own copy: each may use its share of the limit.
            devices = max(int(getattr(self.trainer, "num_devices", 1) or 1), 1) if self.trainer is not None else 1
            self.corpus = Corpus(self.corpus_path, in_memory=True, memory_fraction=IN_MEMORY_FRACTION / devices)
            self._in_memory = True
        needed = {"fit": ["val"], "validate": ["val"], "test": ["test"], None: ["val", "test"]}.get(stage, [])
        for part in needed:
            self._check_trials(part)
        if stage in ("fit", None):
            self._check_training()
        if not self._described:
            rank_zero_info(self.describe())
            self._described = True

    def _check_trials(self, part: str) -> None:
        pairs, _ = self.corpus.trials(self.split, part)
        if len(pairs):
            return
        items = self._parts[part]
        n_spk = len(np.unique(self.corpus.speaker[items]))
        other = "utterance" if self.split == "speaker" else "speaker"
        raise CorpusError(
            f"{self.corpus_path}: the {part!r} part of the {self.split!r} split has no trials (it holds "
            f"{len(items)} utterance(s) of {n_spk} speaker(s); trials need at least two speakers and one of "
            f"them with two utterances). Use a corpus with more speakers and more utterances per speaker "
            f"(the speaker split puts 15% of the speakers in val and in test; the utterance split gives val and "
            f"test trials once speakers have about 10 utterances each), or try split={other!r}")

    def _check_training(self) -> None:
        if self.num_speakers < self.speakers_per_batch:
            raise ValueError(
                f"{self.corpus_path}: speakers_per_batch={self.speakers_per_batch} but the {self.split!r} split has "
                f"only {self.num_speakers} training speakers with at least {self.min_utterances_per_speaker} "
                f"utterances; lower speakers_per_batch")

    def train_sampler(self) -> SpeakerBatchSampler:
        rank, world = self._rank_world()
        return SpeakerBatchSampler(
            self.train_labels, self.speakers_per_batch, self.utterances_per_speaker, num_replicas=world, rank=rank,
            seed=self.seed, batches_per_epoch=self.batches_per_epoch, crop_samples=self.crop_lengths(),
            min_utterances=1)  # speakers below min_utterances_per_speaker were left out in __init__

    def train_dataloader(self) -> DataLoader:
        self._check_training()
        dataset = CropDataset(self.corpus, self.train_items, self.train_labels, features=self.features,
                              augment=self.augment, noise_items=self.noise_items)
        return LazyStartDataLoader(dataset, batch_sampler=self.train_sampler(), collate_fn=collate_crops,
                                   **loader_kwargs(self.num_workers))

    def eval_items(self, part: str, rank: int | None = None, world_size: int | None = None,
                   trial_utterances_only: bool = True) -> np.ndarray:
        """Utterances of ``part`` that ``rank`` evaluates: longest first, then every ``world_size``-th.

        With ``trial_utterances_only`` (validation and test), only the utterances that some trial
        of the part uses: with capped trial anchors a large part has many that none does (29 % of
        a VoxCeleb2-sized val part), and embedding them every epoch is wasted work.
        """
        if part not in ("val", "test"):
            raise ValueError(f"part must be 'val' or 'test', not {part!r}")
        r, w = self._rank_world()
        rank = r if rank is None else rank
        world_size = w if world_size is None else world_size
        items = self._parts[part]
        if trial_utterances_only:
            items = items[np.isin(items, self.trials(part).utterances().numpy())]
        lengths = self.corpus.num_samples[items]
        max_samples = self._eval_max_samples()
        if max_samples is not None:
            lengths = np.minimum(lengths, max_samples)
        ordered = items[np.lexsort((items, -lengths))]  # longest first, ties by index
        return ordered[rank::world_size]

    def _eval_loader(self, part: str, trial_utterances_only: bool = True) -> DataLoader:
        items = self.eval_items(part, trial_utterances_only=trial_utterances_only)
        dataset = UtteranceDataset(self.corpus, items, max_samples=self._eval_max_samples())
        return DataLoader(dataset, batch_size=self.eval_batch_size, shuffle=False, collate_fn=collate_utterances,
                          **loader_kwargs(self.num_workers))

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        """Every test utterance (embeddings to keep), not only those the trials use."""
        return self._eval_loader("test", trial_utterances_only=False)

    def teardown(self, stage: str | None = None) -> None:
        self.corpus.close()

    # -- evaluation trials ----------------------------------------------------------------------
    def trials(self, part: Literal["val", "test"]) -> Trials:
        """Verification pairs and identification rows of ``part``, by corpus utterance index."""
        if part not in ("val", "test"):
            raise ValueError(f"part must be 'val' or 'test', not {part!r}")
        if part not in self._trials_cache:
            pairs, ident = self.corpus.trials(self.split, part)
            self._trials_cache[part] = Trials(pairs=torch.from_numpy(np.asarray(pairs, dtype=np.int64)),
                                              ident=torch.from_numpy(np.asarray(ident, dtype=np.int64)))
        return self._trials_cache[part]

    # -- summary -------------------------------------------------------------------------------
    def describe(self) -> str:
        """What is loaded: speakers, utterances and hours per part, classes, crops, trials."""
        c = self.corpus
        lines = [f"SpeakerDataModule: {self.corpus_path} ({c.sample_rate} Hz, split={self.split!r}, "
                 f"{'features ' + self.features if self.features else 'raw audio'}"
                 f"{', in memory' if self.cache_in_memory else ''})",
                 f"  {'part':<6}{'speakers':>10}{'utterances':>12}{'hours':>9}{'trial pairs':>13}{'ident rows':>12}"
                 f"{'candidates':>12}"]
        for part in PARTS:
            items = self._parts[part]
            spk = len(np.unique(c.speaker[items]))
            hours = float(c.duration[items].sum()) / 3600
            if part == "train":
                pairs = ident = candidates = "-"
            else:
                p, i = c.trials(self.split, part)
                pairs, ident = len(p), len(i)
                # 1 positive + W negatives per row; W < 99 where the part is too small for 99 distinct ones.
                candidates = f"1+{i.shape[1] - 2}" + ("" if i.shape[1] - 2 >= 99 else " (short)")
            lines.append(f"  {part:<6}{spk:>10}{len(items):>12}{hours:>9.3f}{pairs:>13}{ident:>12}{candidates:>12}")
        lo, hi = self.crop_samples()
        crop = f"{hi / c.sample_rate:.2f} s" if lo == hi else f"{lo / c.sample_rate:.2f}-{hi / c.sample_rate:.2f} s"
        try:
            per_epoch = len(self.train_sampler())
        except ValueError as err:
            per_epoch = f"n/a ({err})"
        lines.append(f"  training: {self.num_speakers} classes, {len(self.train_items)} utterances "
                     f"(speakers with < {self.min_utterances_per_speaker} left out), crops {crop}, "
                     f"{self.speakers_per_batch} speakers x {self.utterances_per_speaker} per batch, "
                     f"{per_epoch} batches per epoch per rank")
        lines.append(f"  augmentation: {self.augment!r}, {len(self.noise_items)} noise clips" if self.augment is not None
                     else "  augmentation: none")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.describe()

    # LightningDataModule.__str__ would build and measure every dataloader.
    __str__ = __repr__
