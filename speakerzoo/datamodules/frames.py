"""Single MFCC frames as examples (seed 000 §III-B, §III-C): the frame task and frame files.

Bird et al. classify *frames*, not utterances: every 25 ms window (10 ms step) gives one
26-MFCC vector, and each vector is one example. The task is binary per subject (is this frame
the subject's voice, or one of the many background speakers'?) with the errors weighted by
class prominence, because the subject holds few frames; :class:`FrameDataModule` builds it
from a corpus file (``subject: NAME``), or the multi-class task over all speakers
(``subject: null``).

Frames of one utterance never straddle parts: the parts are the corpus's utterance split, so
every test frame comes from a clip no training frame came from. The subject's *training*
utterances can be limited (``subject_utterances``) to reproduce the paper's scarcity (a few
seconds of the subject against a large background).

Synthetic frames (from :mod:`speakerzoo.zoo.text_generator`, via ``speakerzoo synthesize``) have
no audio, so they are not a corpus of clips; they live in a *frame file*
(:func:`write_frame_file`, :func:`read_frame_file`): HDF5 with ``frames [N, dim]``,
``labels [N]`` and attributes naming the features, the subject and the generator, written
under a temporary name and renamed when complete like every speakerzoo file. A
:class:`FrameDataModule` with ``synthetic: FILE`` adds the first ``synthetic_frames`` of them
to its training part (the pre-training set of the transfer-learning experiment).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import lightning
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from tqdm.auto import tqdm

from speakerzoo.datamodules.corpus import Corpus, CorpusError
from speakerzoo.datamodules.splits import PARTS
from speakerzoo.features import FeatureConfig, Frontend
from speakerzoo.h5file import AtomicH5Writer, created_timestamp

FRAME_FORMAT = "speakerzoo-frames"
FRAME_SCHEMA_VERSION = 1
#: Class of the subject in the binary task; the background is class 0.
SUBJECT, BACKGROUND = 1, 0


def corpus_frames(corpus: Corpus, indices: np.ndarray, features: str = "mfcc26",
                  progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """All frames of the utterances ``indices``: ``(frames [N, dim] float32, utterance [N] int64)``.

    Read from the corpus's cached ``features`` when it has them, else computed from the audio
    with the one feature implementation (:class:`~speakerzoo.features.Frontend`) and the preset
    of that name, so cached and computed frames are the same numbers.
    """
    indices = np.asarray(indices, dtype=np.int64)
    cached = features in corpus.feature_configs
    if cached:
        dim = corpus.feature_configs[features].dim
        frontend = None
    else:
        try:
            frontend = Frontend(features, corpus.sample_rate).eval()
        except (KeyError, ValueError) as error:
            raise CorpusError(f"{corpus.path}: no cached features {features!r} and no preset of that name "
                              f"({error}); prepare the corpus with `--features {features}`") from error
        dim = frontend.config.dim
    chunks, owners = [], []
    for i in tqdm(indices, desc=f"{features} frames", unit="utt", disable=not progress, leave=False):
        if cached:
            frames = corpus.features(features, int(i))
        else:
            wave = torch.from_numpy(corpus.audio(int(i)))[None]
            with torch.no_grad():
                feats, lengths = frontend(wave, torch.tensor([wave.shape[1]]))
            frames = feats[0, : int(lengths[0])].numpy()
        chunks.append(np.asarray(frames, dtype=np.float32))
        owners.append(np.full(len(frames), i, dtype=np.int64))
    if not chunks:
        return np.zeros((0, dim), np.float32), np.zeros(0, np.int64)
    return np.concatenate(chunks), np.concatenate(owners)


def balanced_class_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Error weights by class prominence: ``N / (num_classes * count_c)`` (scikit-learn's
    "balanced"), so that every class carries the same total weight. A class without examples
    gets weight 0 (it cannot be mistaken for anything)."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).astype(np.float64)
    weights = np.zeros(num_classes)
    present = counts > 0
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights


# -- frame files -----------------------------------------------------------------------------

class FrameFileError(RuntimeError):
    """A frame file that cannot be read or does not fit the task."""


def write_frame_file(path: str | Path, frames: np.ndarray, labels: np.ndarray, *, features: str | dict,
                     subject: str | None, attrs: dict[str, Any] | None = None) -> Path:
    """Write frames ``[N, dim]`` and their classes ``[N]`` to ``path`` (temporary name, then renamed).

    ``features``: the feature preset or configuration the frames imitate (checked when a
    :class:`FrameDataModule` adds them to real frames); ``subject``: the speaker they imitate;
    ``attrs``: anything else worth keeping (generator, its settings, counts), JSON-serialisable.
    """
    frames = np.asarray(frames, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.int64)
    if frames.ndim != 2 or len(frames) != len(labels):
        raise ValueError(f"need frames [N, dim] and N labels, got {frames.shape} and {labels.shape}")
    with FrameFileWriter(path) as writer:
        return writer.write(frames, labels, FeatureConfig.parse(features), subject, attrs or {})


class FrameFileWriter(AtomicH5Writer):
    """Writes one frame file at once (:func:`write_frame_file`), temporary name then rename."""

    def write(self, frames: np.ndarray, labels: np.ndarray, features: FeatureConfig, subject: str | None,
              attrs: dict[str, Any]) -> Path:
        self.dataset("frames", data=frames)
        self.dataset("labels", data=labels)
        self._h5.attrs.update({
            "format": FRAME_FORMAT, "schema_version": FRAME_SCHEMA_VERSION, "features": json.dumps(features.to_dict()),
            "subject": "" if subject is None else str(subject), "settings": json.dumps(attrs),
            "created": created_timestamp()})
        return self._commit()


def read_frame_file(path: str | Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """``(frames, labels, info)`` of a frame file; ``info`` has ``features`` (a FeatureConfig),
    ``subject`` (``None`` for all speakers) and ``settings``."""
    path = Path(path)
    if not path.exists():
        raise FrameFileError(f"{path}: no such frame file; make it with `speakerzoo synthesize ... --output {path}`")
    try:
        with h5py.File(path, "r") as h5:
            if h5.attrs.get("format") != FRAME_FORMAT:
                raise FrameFileError(f"{path}: not a speakerzoo frame file (made by `speakerzoo synthesize`)")
            if int(h5.attrs.get("schema_version", -1)) != FRAME_SCHEMA_VERSION:
                raise FrameFileError(f"{path}: frame file schema {h5.attrs.get('schema_version')}, this speakerzoo "
                                     f"reads {FRAME_SCHEMA_VERSION}; make it again with `speakerzoo synthesize`")
            frames, labels = h5["frames"][:], h5["labels"][:]
            info = {"features": FeatureConfig.parse(json.loads(h5.attrs["features"])),
                    "subject": str(h5.attrs["subject"]) or None,
                    "settings": json.loads(h5.attrs["settings"])}
    except FrameFileError:
        raise
    except (OSError, KeyError, ValueError) as error:
        raise FrameFileError(f"{path}: unreadable frame file ({error}); it may be truncated: make it again "
                             f"with `speakerzoo synthesize`") from error
    if len(frames) != len(labels):
        raise FrameFileError(f"{path}: {len(frames)} frames but {len(labels)} labels; make it again")
    return frames, labels, info


# -- the DataModule ----------------------------------------------------------------------------

class FrameBatches(Dataset):
    """Frames and labels held as two tensors; the DataLoader fetches a whole batch with one
    indexing operation (``__getitems__``) instead of stacking ``batch_size`` single frames,
    which made a 1,024-frame batch cost more than the DNN's step on it."""

    def __init__(self, frames: np.ndarray, labels: np.ndarray):
        self.frames = torch.from_numpy(np.ascontiguousarray(frames, dtype=np.float32))
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.frames[i], self.labels[i]

    def __getitems__(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long)
        return self.frames[index], self.labels[index]


def _whole_batch(batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    return batch


class FrameDataModule(lightning.LightningDataModule):
    """Frames of a corpus file as single examples: one subject against the rest, or all speakers.

    Arguments:
        corpus: path of a corpus file (``speakerzoo prepare ...``), ideally with the
            ``features`` cached (``--features mfcc26``); otherwise they are computed at setup.
        subject: speaker name of the binary task (class 1; every other speaker is the
            background, class 0), or ``None`` for the multi-class task over all speakers.
        features: feature preset of the frames (default ``mfcc26``: 26 MFCCs, 25 ms / 10 ms).
        subject_utterances: keep only this many of the subject's training utterances (a
            seeded choice), the paper's few seconds of the subject; ``None`` keeps all.
            Validation and test keep every utterance.
        synthetic: a frame file (``speakerzoo synthesize``) whose frames join the training part.
        synthetic_frames: how many of its frames (its first ones); ``None``: all of them.
        batch_size: frames per batch.
        seed: seed of the subject-utterance choice and of the training shuffle.

    With several processes the loaders shard by rank themselves: build the Trainer with
    ``use_distributed_sampler=False`` (the speakerzoo CLI does).

    The class sizes are known right after construction (LightningCLI links them to the model):
    ``num_speakers`` is the number of classes and ``speaker_names`` their names
    (``["background", SUBJECT]`` in the binary task).
    """

    def __init__(self, corpus: str, subject: str | None = None, features: str = "mfcc26",
                 subject_utterances: int | None = None, synthetic: str | None = None,
                 synthetic_frames: int | None = None, batch_size: int = 1024, seed: int = 0):
        super().__init__()
        self.save_hyperparameters()
        self.corpus_path = str(corpus)
        self.corpus = Corpus(self.corpus_path)
        self.features = features
        self.subject = subject
        if subject is not None and subject not in self.corpus.speakers:
            raise ValueError(f"{self.corpus_path}: no speaker {subject!r}; its speakers are "
                             f"{', '.join(self.corpus.speakers[:20])}{' ...' if len(self.corpus.speakers) > 20 else ''}")
        if subject_utterances is not None and subject is None:
            raise ValueError("subject_utterances limits the subject of the binary task: set subject too")
        if subject_utterances is not None and subject_utterances < 1:
            raise ValueError(f"subject_utterances must be at least 1, got {subject_utterances}")
        if synthetic_frames is not None and synthetic is None:
            raise ValueError("synthetic_frames needs a synthetic frame file (synthetic: FILE)")
        self.subject_utterances = subject_utterances
        self.synthetic = synthetic
        self.synthetic_frames = synthetic_frames
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self._parts = {part: self._part_items(part) for part in PARTS}
        self._data: dict[str, FrameBatches] = {}

    # -- sizes linked to the model --------------------------------------------------------------
    @property
    def num_speakers(self) -> int:
        """Number of classes (2 in the binary task)."""
        return len(self.speaker_names)

    @property
    def speaker_names(self) -> list[str]:
        """Class names: ``["background", subject]`` or every corpus speaker."""
        return ["background", self.subject] if self.subject is not None else list(self.corpus.speakers)

    @property
    def sample_rate(self) -> int:
        return self.corpus.sample_rate

    # -- data -------------------------------------------------------------------------------------
    def _part_items(self, part: str) -> np.ndarray:
        items = self.corpus.split("utterance", part)
        items = items[self.corpus.speaker[items] >= 0]  # noise clips are nobody's voice
        if part == "train" and self.subject_utterances is not None:
            subject_id = self.corpus.speakers.index(self.subject)
            mine = items[self.corpus.speaker[items] == subject_id]
            if self.subject_utterances > len(mine):
                raise ValueError(f"{self.corpus_path}: subject {self.subject!r} has {len(mine)} training utterances, "
                                 f"fewer than subject_utterances={self.subject_utterances}")
            keep = np.random.default_rng(self.seed).choice(mine, self.subject_utterances, replace=False)
            items = np.sort(np.concatenate([items[self.corpus.speaker[items] != subject_id], keep]))
        return items

    def labels_of(self, items: np.ndarray) -> np.ndarray:
        """Class of each corpus utterance in ``items``."""
        speakers = self.corpus.speaker[items]
        if self.subject is None:
            return speakers.astype(np.int64)
        return np.where(speakers == self.corpus.speakers.index(self.subject), SUBJECT, BACKGROUND).astype(np.int64)

    def part_frames(self, part: str, progress: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Real frames of one part: ``(frames [N, dim], labels [N], utterance [N])``."""
        frames, owner = corpus_frames(self.corpus, self._parts[part], self.features, progress)
        labels = self.labels_of(owner)
        return frames, labels, owner

    def subject_frames(self, part: str = "train") -> np.ndarray:
        """The subject's real frames of one part (what a generator learns the subject from)."""
        if self.subject is None:
            raise ValueError("subject_frames needs the binary task (set subject)")
        frames, labels, _ = self.part_frames(part)
        return frames[labels == SUBJECT]

    def _synthetic_part(self, dim: int) -> tuple[np.ndarray, np.ndarray]:
        frames, labels, info = read_frame_file(self.synthetic)
        mine = FeatureConfig.parse(self.corpus.feature_configs.get(self.features) or self.features)
        if info["features"] != mine or frames.shape[1] != dim:
            raise FrameFileError(f"{self.synthetic}: frames imitate features {info['features']}, but this task uses "
                                 f"{self.features} ({mine}); synthesize them from frames of {self.features}")
        if self.subject is not None and info["subject"] != self.subject:
            raise FrameFileError(f"{self.synthetic}: frames imitate subject {info['subject']!r}, not {self.subject!r}")
        if self.subject is None and info["subject"] is not None:
            raise FrameFileError(f"{self.synthetic}: frames of one subject ({info['subject']!r}) do not fit the "
                                 "multi-class task; set subject to that speaker")
        count = len(frames) if self.synthetic_frames is None else int(self.synthetic_frames)
        if count > len(frames):
            raise FrameFileError(f"{self.synthetic}: holds {len(frames)} frames, fewer than synthetic_frames={count}; "
                                 "synthesize more (`speakerzoo synthesize --frames N`)")
        if labels[:count].min(initial=0) < 0 or labels[:count].max(initial=0) >= self.num_speakers:
            raise FrameFileError(f"{self.synthetic}: labels outside 0..{self.num_speakers - 1}")
        return frames[:count], labels[:count]

    def setup(self, stage: str | None = None) -> None:
        if self._data:
            return
        for part in PARTS:
            frames, labels, _ = self.part_frames(part)
            if part == "train" and self.synthetic is not None:
                extra, extra_labels = self._synthetic_part(frames.shape[1])
                frames, labels = np.concatenate([frames, extra]), np.concatenate([labels, extra_labels])
            if not len(labels):
                raise CorpusError(f"{self.corpus_path}: the {part} part has no frames")
            self._data[part] = FrameBatches(frames, labels)

    def class_counts(self) -> np.ndarray:
        """Training frames per class (after :meth:`setup`)."""
        self.setup()
        return np.bincount(self._data["train"].labels.numpy(), minlength=self.num_speakers)

    def class_weights(self) -> np.ndarray:
        """Error weights of the training classes (:func:`balanced_class_weights`)."""
        self.setup()
        return balanced_class_weights(self._data["train"].labels.numpy(), self.num_speakers)

    def _loader(self, part: str, shuffle: bool) -> DataLoader:
        """Batches of one part. With several processes each takes its share: training through a
        ``DistributedSampler`` (Lightning sets its epoch), evaluation as every ``world``-th frame
        from its rank on, so no frame is scored twice."""
        self.setup()
        data = self._data[part]
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        if world > 1 and shuffle:
            sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=self.seed)
            return DataLoader(data, batch_size=self.batch_size, sampler=sampler, collate_fn=_whole_batch)
        if world > 1:
            data = Subset(data, range(rank, len(data), world))
        generator = torch.Generator().manual_seed(self.seed) if shuffle else None
        return DataLoader(data, batch_size=self.batch_size, shuffle=shuffle, generator=generator,
                          collate_fn=_whole_batch)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
