"""The DataModule of multi-task training: speech recognition and speaker recognition.

After Vaessen & van Leeuwen, "Towards multi-task learning of speech and speaker recognition":
one wav2vec2 network is trained on two tasks, each with its own data. Speech recognition
(CTC) sees *whole utterances with transcripts*, batched by similar length up to a padded-size
budget (:class:`~speakerzoo.datamodules.length_sampler.LengthBatchSampler`; 200 s of audio by
default). Speaker recognition sees *crops with speaker labels*, P speakers x K crops per batch,
exactly as every other speakerzoo model: this module builds a
:class:`~speakerzoo.datamodules.datamodule.SpeakerDataModule` for the speaker corpus and uses
its train loader, its evaluation loaders and its trials unchanged.

Modes:

* ``disjoint``: a speech corpus (transcripts) and a speaker corpus (speakers); every training
  step gets ``{"speech": speech_batch, "speaker": speaker_batch}``, and an epoch has as many
  speaker batches as speech batches;
* ``joint``: one corpus with both labels; every step gets ``{"joint": batch}``, whole
  utterances with transcripts *and* speaker classes;
* ``speech``: speech recognition alone, ``{"speech": batch}``; a speaker corpus, if given, is
  only used for speaker evaluation (validation/test embeddings and trials), never trained on;
* ``speaker``: speaker recognition alone, ``{"speaker": batch}``; a speech corpus, if given, is
  only used for speech evaluation (WER).

Batches (the contract with the model):

* speech batch, training and evaluation: ``{"waveforms": float32 [B, T] zero-padded,
  "lengths": int64 [B] samples, "transcripts": list[str] (raw corpus transcripts),
  "index": int64 [B] corpus utterance index}``; the joint batch adds ``"speakers": int64 [B]``
  (training class, as :meth:`SpeakerDataModule.classes`);
* speaker training batch: :func:`~speakerzoo.datamodules.dataset.collate_crops`
  (``waveforms``, ``lengths``, ``speakers``);
* speaker evaluation batch: :func:`~speakerzoo.datamodules.dataset.collate_utterances`
  (``waveforms``, ``lengths``, ``index``), matched to :meth:`MultiTaskDataModule.trials`.

``train_dataloader()`` is a Lightning ``CombinedLoader`` (``min_size``) over the dict of the
mode's loaders; ``val_dataloader()`` / ``test_dataloader()`` are a list: the speech loader first
(when there is a speech corpus), then the speaker loader (when there is a speaker corpus), so
``dataloader_idx`` tells the model which evaluation a batch belongs to.

Every loader shards by rank itself: build the Trainer with ``use_distributed_sampler=False``
(the speakerzoo CLI does); :meth:`MultiTaskDataModule.setup` refuses more than one rank otherwise.

Example::

    dm = MultiTaskDataModule(speech_corpus="data/librispeech.h5", speaker_corpus="data/voxceleb.h5",
                             mode="disjoint", speech_batch_seconds=200, speaker_crop_seconds=2.0)
    dm.num_speakers, dm.sample_rate, dm.characters()   # known right after construction
    trainer = lightning.Trainer(use_distributed_sampler=False, ...)
    trainer.fit(model, datamodule=dm)                  # training_step(batch={"speech": ..., "speaker": ...})
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Literal, Sequence

import lightning
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.combined_loader import CombinedLoader
from torch.utils.data import DataLoader, Dataset

from speakerzoo.datamodules.corpus import Corpus, CorpusError
from speakerzoo.datamodules.datamodule import (
    LazyStartDataLoader,
    SpeakerDataModule,
    loader_kwargs,
    rank_and_world,
    refuse_distributed_sampler,
)
from speakerzoo.datamodules.dataset import _pad
from speakerzoo.datamodules.length_sampler import LengthBatchSampler
from speakerzoo.datamodules.splits import PARTS
from speakerzoo.scoring import Trials

MODES = ("disjoint", "joint", "speech", "speaker")
_TRANSCRIBED_SOURCES = "librispeech, fsdd, speech-commands or a manifest with a transcript column"


class TranscribedDataset(Dataset):
    """Whole utterances with their transcripts (and, for joint training, speaker classes).

    Arguments:
        corpus: the corpus to read.
        items: corpus utterance index of every position.
        transcripts: transcript of every position (same length as ``items``).
        speakers: training class of every position, or ``None``.

    ``dataset[j]`` returns ``(float32 [samples], corpus_index, transcript)``, with the speaker
    class as a fourth element when ``speakers`` is given.
    """

    def __init__(self, corpus: Corpus, items: np.ndarray, transcripts: Sequence[str],
                 speakers: np.ndarray | None = None):
        self.corpus = corpus
        self.items = np.asarray(items, dtype=np.int64)
        self.transcripts = list(transcripts)
        if len(self.transcripts) != len(self.items):
            raise ValueError(f"{len(self.items)} items but {len(self.transcripts)} transcripts")
        self.speakers = None if speakers is None else np.asarray(speakers, dtype=np.int64)
        if self.speakers is not None and self.speakers.shape != self.items.shape:
            raise ValueError(f"items {self.items.shape} and speakers {self.speakers.shape} differ in shape")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, j: int) -> tuple:
        i = int(self.items[j])
        if self.speakers is None:
            return self.corpus.audio(i), i, self.transcripts[j]
        return self.corpus.audio(i), i, self.transcripts[j], int(self.speakers[j])


def collate_transcribed(batch: Sequence[tuple]) -> dict[str, Any]:
    """``{"waveforms": [B, T], "lengths": [B], "transcripts": list[str], "index": [B]}``, plus
    ``"speakers": [B]`` when the items carry a speaker class (joint training)."""
    waveforms, lengths = _pad([b[0] for b in batch])
    out: dict[str, Any] = {
        "waveforms": waveforms,
        "lengths": lengths,
        "transcripts": [b[2] for b in batch],
        "index": torch.tensor([b[1] for b in batch], dtype=torch.int64),
    }
    if len(batch[0]) > 3:
        out["speakers"] = torch.tensor([b[3] for b in batch], dtype=torch.int64)
    return out


def _same_file(a: str, b: str) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve() or Path(a).samefile(b)
    except OSError:
        return Path(a).resolve() == Path(b).resolve()


class MultiTaskDataModule(lightning.LightningDataModule):
    """Speech batches (whole utterances, transcripts) and speaker batches (crops, speakers).

    Arguments:
        speech_corpus: corpus with transcripts (speech recognition task).
        speaker_corpus: corpus with speakers (speaker recognition task); in ``joint`` mode it
            defaults to ``speech_corpus`` and must be the same file if given.
        mode: ``disjoint`` (both tasks, two corpora), ``joint`` (both tasks, one corpus with both
            labels), ``speech`` or ``speaker`` (one task; the other corpus, if given, is used for
            evaluation only). See the module docstring.
        speech_split, speaker_split: which split of each corpus gives train/val/test
            (``speaker``: open set; ``utterance``: closed set). In ``joint`` mode they must agree.
        speech_batch_seconds: padded audio per speech (or joint) training batch, in seconds.
        speaker_crop_seconds: speaker training crop length (2 s or 10 s in the paper).
        speakers_per_batch, utterances_per_speaker: a speaker batch holds P x K crops.
        eval_max_seconds: speaker evaluation utterances are centre-cropped to this (``None``:
            whole); speech evaluation utterances are always whole.
        eval_batch_size: utterances per evaluation batch (both tasks).
        num_workers: DataLoader worker processes per loader.
        min_utterances_per_speaker: training speakers with fewer utterances are no classes.
        seed: seed of both training samplers.
    """

    def __init__(
        self,
        speech_corpus: str | None = None,
        speaker_corpus: str | None = None,
        mode: Literal["disjoint", "joint", "speech", "speaker"] = "disjoint",
        speech_split: Literal["speaker", "utterance"] = "speaker",
        speaker_split: Literal["speaker", "utterance"] = "speaker",
        speech_batch_seconds: float = 200.0,
        speaker_crop_seconds: float = 2.0,
        speakers_per_batch: int = 50,
        utterances_per_speaker: int = 2,
        eval_max_seconds: float | None = None,
        eval_batch_size: int = 16,
        num_workers: int = 2,
        min_utterances_per_speaker: int = 2,
        seed: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters()
        speech_corpus = None if speech_corpus is None else str(speech_corpus)
        speaker_corpus = None if speaker_corpus is None else str(speaker_corpus)
        self._check_arguments(speech_corpus, speaker_corpus, mode, speech_split, speaker_split, speech_batch_seconds,
                              eval_batch_size, num_workers)
        if mode == "joint" and speaker_corpus is None:
            speaker_corpus = speech_corpus
        self.mode = mode
        self.speech_corpus_path = speech_corpus
        self.speaker_corpus_path = speaker_corpus
        self.speech_split = speech_split
        self.speaker_split = speaker_split
        self.speech_batch_seconds = float(speech_batch_seconds)
        self.eval_batch_size = int(eval_batch_size)
        self.num_workers = int(num_workers)
        self.seed = int(seed)

        # The speaker side: train crops, evaluation loaders and trials, all from SpeakerDataModule.
        self.speaker_data: SpeakerDataModule | None = None
        if speaker_corpus is not None:
            with warnings.catch_warnings():
                if mode == "speech":  # evaluation only: which training speakers are classes does not matter
                    warnings.filterwarnings("ignore", message=".*training speaker\\(s\\) with fewer than")
                self.speaker_data = SpeakerDataModule(
                    speaker_corpus, split=speaker_split, crop_seconds=speaker_crop_seconds,
                    speakers_per_batch=speakers_per_batch, utterances_per_speaker=utterances_per_speaker,
                    batches_per_epoch=None, eval_max_seconds=eval_max_seconds, eval_batch_size=eval_batch_size,
                    num_workers=num_workers, min_utterances_per_speaker=min_utterances_per_speaker, seed=seed)

        # The speech side: utterances with a transcript in every part.
        self.speech: Corpus | None = None
        self._transcripts: list[str] = []
        self._speech_parts: dict[str, np.ndarray] = {}
        self.joint_items = np.zeros(0, np.int64)
        self.joint_labels = np.zeros(0, np.int64)
        if speech_corpus is not None:
            self.speech = Corpus(speech_corpus)
            self._transcripts = self.speech.texts("transcript")
            self.speech.close()  # workers open their own handles
            has_text = np.array([bool(t.strip()) for t in self._transcripts], dtype=bool)
            self._speech_parts = {part: (items := self.speech.split(speech_split, part))[has_text[items]]
                                  for part in PARTS}
            if not len(self._speech_parts["train"]):
                raise CorpusError(
                    f"{speech_corpus}: no utterance of the train part of the {speech_split!r} split has a transcript, "
                    f"so it cannot train or evaluate speech recognition; prepare it from a source with transcripts: "
                    f"{_TRANSCRIBED_SOURCES} (or use it as speaker_corpus)")
            if mode == "joint":
                sd = self.speaker_data
                keep = has_text[sd.train_items]
                self.joint_items = sd.train_items[keep]
                self.joint_labels = sd.train_labels[keep]
                if not len(self.joint_items):
                    raise CorpusError(
                        f"{speech_corpus}: no training utterance has both a transcript and a training speaker; "
                        f"joint mode needs a corpus with both labels ({_TRANSCRIBED_SOURCES}), or use "
                        f"mode='disjoint' with a separate speaker_corpus")
        if self.speech is not None and self.speaker_data is not None:
            a, b = self.speech.sample_rate, self.speaker_data.sample_rate
            if a != b:
                raise CorpusError(
                    f"the speech corpus {speech_corpus} is at {a} Hz but the speaker corpus {speaker_corpus} is at "
                    f"{b} Hz; one model reads both: prepare one of them again at the other's rate "
                    f"(`speakerzoo prepare ... --sample-rate {a}` for {speaker_corpus}, or "
                    f"`--sample-rate {b}` for {speech_corpus})")
        self._described = False

    @staticmethod
    def _check_arguments(speech: str | None, speaker: str | None, mode: str, speech_split: str, speaker_split: str,
                         speech_batch_seconds: float, eval_batch_size: int, num_workers: int) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        for name, value in (("speech_split", speech_split), ("speaker_split", speaker_split)):
            if value not in ("speaker", "utterance"):
                raise ValueError(f"{name} must be 'speaker' or 'utterance', not {value!r}")
        if mode == "disjoint" and (speech is None or speaker is None):
            missing = " and ".join(n for n, v in (("speech_corpus", speech), ("speaker_corpus", speaker)) if v is None)
            raise ValueError(
                f"mode='disjoint' trains on two corpora: set {missing} (speech_corpus: a corpus with transcripts, "
                f"speaker_corpus: a corpus with speakers), or choose mode='speech', 'speaker' or 'joint'")
        if mode == "joint":
            if speech is None:
                raise ValueError("mode='joint' trains both tasks on one corpus with transcripts and speakers: set "
                                 "speech_corpus (speaker_corpus defaults to it)")
            if speaker is not None and not _same_file(speech, speaker):
                raise ValueError(
                    f"mode='joint' reads one corpus, but speech_corpus={speech!r} and speaker_corpus={speaker!r} "
                    f"differ: leave speaker_corpus unset, or use mode='disjoint' for two corpora")
            if speech_split != speaker_split:
                raise ValueError(
                    f"mode='joint' splits one corpus once, but speech_split={speech_split!r} and "
                    f"speaker_split={speaker_split!r} differ (training utterances of one would be evaluated by the "
                    f"other): set both to the same split")
        if mode == "speech" and speech is None:
            raise ValueError("mode='speech' trains speech recognition: set speech_corpus (a corpus with transcripts)")
        if mode == "speaker" and speaker is None:
            raise ValueError("mode='speaker' trains speaker recognition: set speaker_corpus")
        if not speech_batch_seconds > 0:
            raise ValueError(f"speech_batch_seconds must be positive (got {speech_batch_seconds})")
        if eval_batch_size < 1:
            raise ValueError(f"eval_batch_size must be at least 1 (got {eval_batch_size})")
        if num_workers < 0:
            raise ValueError(f"num_workers must be 0 or more (got {num_workers})")

    # -- what each mode trains -------------------------------------------------------------------
    @property
    def trains_speech(self) -> bool:
        """Whether training batches carry transcripts (``disjoint``, ``joint``, ``speech``)."""
        return self.mode != "speaker"

    @property
    def trains_speaker(self) -> bool:
        """Whether a speaker head trains (``disjoint``, ``joint``, ``speaker``)."""
        return self.mode != "speech"

    # -- sizes linked to the model ------------------------------------------------------------
    @property
    def num_speakers(self) -> int:
        """Training speaker classes; 0 without a speaker corpus or when it is evaluation-only (``speech`` mode)."""
        if self.speaker_data is None or not self.trains_speaker:
            return 0
        return self.speaker_data.num_speakers

    @property
    def speaker_names(self) -> list[str] | None:
        """Name of every training class; ``None`` when no speaker head trains."""
        if self.speaker_data is None or not self.trains_speaker:
            return None
        return self.speaker_data.speaker_names

    @property
    def sample_rate(self) -> int:
        """Rate of the corpora (both are at the same rate; checked at construction)."""
        return self.speech.sample_rate if self.speech is not None else self.speaker_data.sample_rate

    def characters(self) -> set[str]:
        """Characters of the training transcripts (speech train part, or the joint training items);
        the model checks its vocabulary against them. Empty without a speech corpus."""
        items = self.joint_items if self.mode == "joint" else self._speech_parts.get("train", ())
        return set("".join(self._transcripts[int(i)] for i in items))

    def transcripts_of(self, index: torch.Tensor) -> list[str]:
        """Transcript of each corpus utterance ``index`` of the speech corpus."""
        return [self._transcripts[int(i)] for i in index.detach().cpu().long().tolist()]

    def _rank_world(self) -> tuple[int, int]:
        return rank_and_world(self.trainer)

    # -- Lightning hooks ------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        trainer = self.trainer
        refuse_distributed_sampler(trainer, "MultiTaskDataModule")
        sd = self.speaker_data
        if sd is not None:
            sd.trainer = trainer  # it shards by rank too
            sd._described = True  # its summary is part of ours
            if self.mode in ("disjoint", "speaker"):
                stages = [stage]
            else:  # its train loader is not used: check only what is evaluated
                stages = {"fit": ["validate"], None: ["validate", "test"]}.get(stage, [stage])
            for s in stages:
                sd.setup(s)
        if stage in ("fit", None) and self.trains_speech:
            # Refuses too few batches for the ranks now, not at the first epoch.
            batches = len(self.speech_sampler())
            if self.mode == "disjoint":  # as many speaker batches as speech batches per epoch
                sd.batches_per_epoch = batches
        if not self._described:
            rank_zero_info(self.describe())
            self._described = True

    def teardown(self, stage: str | None = None) -> None:
        if self.speaker_data is not None:
            self.speaker_data.teardown(stage)
        if self.speech is not None:
            self.speech.close()

    def _train_dataset(self) -> TranscribedDataset:
        """Speech (or joint) training utterances, in the positions the length sampler indexes."""
        if self.mode == "joint":
            items, speakers = self.joint_items, self.joint_labels
        else:
            items, speakers = self._speech_parts["train"], None
        return TranscribedDataset(self.speech, items, [self._transcripts[int(i)] for i in items], speakers)

    def speech_sampler(self, world_size: int | None = None, rank: int | None = None) -> LengthBatchSampler:
        """The length batch sampler of the speech (or joint) training utterances of this rank."""
        if not self.trains_speech:
            raise RuntimeError(f"mode={self.mode!r} trains no speech recognition: there are no speech batches")
        r, w = self._rank_world()
        items = self.joint_items if self.mode == "joint" else self._speech_parts["train"]
        return LengthBatchSampler(self.speech.num_samples[items], int(self.speech_batch_seconds * self.sample_rate),
                                  num_replicas=w if world_size is None else world_size, rank=r if rank is None else rank,
                                  seed=self.seed)

    def train_dataloader(self) -> CombinedLoader:
        loaders: dict[str, DataLoader] = {}
        if self.speaker_data is not None:
            self.speaker_data.trainer = self.trainer
        if self.trains_speech:
            key = "joint" if self.mode == "joint" else "speech"
            sampler = self.speech_sampler()
            loaders[key] = LazyStartDataLoader(self._train_dataset(), batch_sampler=sampler,
                                               collate_fn=collate_transcribed, **loader_kwargs(self.num_workers))
        if self.mode in ("disjoint", "speaker"):
            if self.mode == "disjoint":  # as many speaker batches as speech batches per epoch
                self.speaker_data.batches_per_epoch = len(loaders["speech"].batch_sampler)
            loaders["speaker"] = self.speaker_data.train_dataloader()
        return CombinedLoader(loaders, mode="min_size")

    def speech_eval_items(self, part: str, rank: int | None = None, world_size: int | None = None) -> np.ndarray:
        """Speech utterances of ``part`` that ``rank`` evaluates: longest first, then every ``world_size``-th."""
        if part not in ("val", "test"):
            raise ValueError(f"part must be 'val' or 'test', not {part!r}")
        if self.speech is None:
            raise RuntimeError("no speech corpus: set speech_corpus to evaluate speech recognition")
        r, w = self._rank_world()
        rank = r if rank is None else rank
        world_size = w if world_size is None else world_size
        items = self._speech_parts[part]
        ordered = items[np.lexsort((items, -self.speech.num_samples[items]))]  # longest first, ties by index
        return ordered[rank::world_size]

    def _speech_eval_loader(self, part: str) -> DataLoader:
        items = self.speech_eval_items(part)
        dataset = TranscribedDataset(self.speech, items, [self._transcripts[int(i)] for i in items])
        return DataLoader(dataset, batch_size=self.eval_batch_size, shuffle=False, collate_fn=collate_transcribed,
                          **loader_kwargs(self.num_workers))

    def _eval_loaders(self, part: str) -> list[DataLoader]:
        loaders = []
        if self.speech is not None:
            loaders.append(self._speech_eval_loader(part))
        if self.speaker_data is not None:
            self.speaker_data.trainer = self.trainer
            loaders.append(self.speaker_data.val_dataloader() if part == "val" else self.speaker_data.test_dataloader())
        return loaders

    def val_dataloader(self) -> list[DataLoader]:
        """``[speech loader (if a speech corpus), speaker loader (if a speaker corpus)]``."""
        return self._eval_loaders("val")

    def test_dataloader(self) -> list[DataLoader]:
        """``[speech loader (if a speech corpus), speaker loader (if a speaker corpus)]``."""
        return self._eval_loaders("test")

    def predict_dataloader(self) -> DataLoader:
        """The speaker test utterances (embeddings), or the speech test utterances without a speaker corpus."""
        if self.speaker_data is not None:
            self.speaker_data.trainer = self.trainer
            return self.speaker_data.predict_dataloader()
        return self._speech_eval_loader("test")

    # -- evaluation trials ----------------------------------------------------------------------
    def trials(self, part: Literal["val", "test"]) -> Trials:
        """Speaker verification pairs and identification rows of ``part`` (by speaker-corpus utterance index)."""
        if self.speaker_data is None:
            raise RuntimeError("no speaker corpus, so no speaker trials: set speaker_corpus to evaluate speaker "
                               "recognition")
        return self.speaker_data.trials(part)

    # -- summary -------------------------------------------------------------------------------
    def describe(self) -> str:
        """Mode, corpora, speech utterances and hours per part, speech batches, then the speaker side."""
        task = {"disjoint": "speech + speaker recognition on two corpora",
                "joint": "speech + speaker recognition on one corpus with both labels",
                "speech": "speech recognition only", "speaker": "speaker recognition only"}[self.mode]
        lines = [f"MultiTaskDataModule: mode={self.mode!r} ({task})"]
        if self.speech is None:
            lines.append("  speech corpus: none")
        else:
            c = self.speech
            role = "training and evaluation" if self.trains_speech else "evaluation only"
            lines.append(f"  speech corpus: {self.speech_corpus_path} ({c.sample_rate} Hz, split={self.speech_split!r}, "
                         f"{role}; utterances with a transcript)")
            lines.append(f"  {'part':<6}{'utterances':>12}{'hours':>9}")
            for part in PARTS:
                items = self._speech_parts[part]
                lines.append(f"  {part:<6}{len(items):>12}{float(c.duration[items].sum()) / 3600:>9.3f}")
            if self.trains_speech:
                items = self.joint_items if self.mode == "joint" else self._speech_parts["train"]
                try:
                    per_epoch = len(self.speech_sampler())
                except ValueError as err:
                    per_epoch = f"n/a ({err})"
                what = "joint (transcripts + speakers)" if self.mode == "joint" else "speech"
                lines.append(f"  {what} training: {len(items)} utterances, {len(self.characters())} characters, "
                             f"batches of <= {self.speech_batch_seconds:g} s padded audio, "
                             f"{per_epoch} batches per epoch per rank")
        if self.speaker_data is None:
            lines.append("  speaker corpus: none")
        else:
            role = {"disjoint": "crops for training, evaluation", "speaker": "crops for training, evaluation",
                    "joint": "speaker classes of the joint batches, evaluation",
                    "speech": "evaluation only (no speaker head trains)"}[self.mode]
            lines.append(f"  speaker corpus: {self.speaker_corpus_path} ({role})")
            lines += ["  " + line for line in self.speaker_data.describe().splitlines()]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.describe()

    # LightningDataModule.__str__ would build and measure every dataloader.
    __str__ = __repr__
