"""``SpeakerRecognizer``: a trained model, used from Python as the commands use it.

The commands ``speakerzoo embed``, ``verify`` and ``identify`` are shells over this class and
the functions it calls, so that a Python user and a shell user get the same numbers::

    from speakerzoo import SpeakerRecognizer

    rec = SpeakerRecognizer.from_pretrained("runs/speakerzoo/version_0/checkpoints/best.ckpt")
    e = rec.embed_file("a.wav")                   # [D], bitwise what `speakerzoo embed` writes
    E = rec.embed_files(["a.wav", "b.wav"])       # .embedding [N, D], .skipped
    score, same = rec.verify_files("a.wav", "b.wav")
    rec.enrol("alice", ["a1.wav", "a2.wav"])
    best = rec.identify("x.wav", top_k=3)         # [Verification(speaker, score, score_std, accepted)]

Audio of any rate, mono or stereo, is mixed to mono and resampled to the model's rate as at
training (:func:`speakerzoo.audio.load_audio`). Scores are cosine similarities; a trial is
accepted when its score is at least the threshold: the one given, else the Bayes decision of a
calibration (:meth:`SpeakerRecognizer.use_calibration`: scores become log-likelihood ratios,
the threshold follows the prior and costs), else the validation-EER threshold stored in the
checkpoint (``None`` when there is none of them: then no decision).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from speakerzoo.calibration import CalibrationError, ScoreCalibrator
from speakerzoo.inference.bank import SpeakerBank, Verification, head_probabilities, rank
from speakerzoo.inference.engine import embed_waveforms
from speakerzoo.inference.enrolment import (
    DEFAULT_PROFILE,
    Enrolment,
    EnrolError,
    FileEmbedder,
    check_mc,
    enrol_speakers,
    resolve_threshold,
    seeded,
)
from speakerzoo.inference.file_embedding import EmbeddingRows, embed_items
from speakerzoo.inference.inputs import Item
from speakerzoo.inference.loading import load_model, model_class_path
from speakerzoo.inference.segments import RecordingEmbedding
from speakerzoo.inference.speaker_store import read_store, write_store
from speakerzoo.scoring import bayes_threshold
from speakerzoo.zoo.registry import sha256_of

__all__ = ["EmbeddedFiles", "SpeakerRecognizer", "UNKNOWN"]

#: What identification says when no enrolled speaker passes the threshold.
UNKNOWN = "unknown"


@dataclass
class EmbeddedFiles:
    """What :meth:`SpeakerRecognizer.embed_files` gives: ``embedding [N, D]`` of the ``paths`` that
    could be embedded (in the order given) and the ``skipped`` files with the reason."""

    embedding: Tensor
    paths: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)


class SpeakerRecognizer:
    """Embed, verify, enrol and identify with one trained model.

    Arguments:
        model: a :class:`~speakerzoo.zoo.base.SpeakerEmbeddingModule` (put in eval mode here).
        checkpoint: its file, when it came from one (recorded by embeddings files, checked by
            :meth:`enrol_embeddings`); default ``model.checkpoint_path`` when set.
        batch_size: most utterances of equal length per forward pass.
        segment_seconds, segment_hop: embed every file from segments of this many seconds
            (every ``segment_hop`` seconds) and average them, for long recordings; default: whole.
        progress: progress bars on long work (embedding 10 files or more).
    """

    def __init__(self, model: Any, checkpoint: str | Path | None = None, batch_size: int = 32,
                 segment_seconds: float | None = None, segment_hop: float | None = None, progress: bool = True):
        self.model = model.eval()
        path = checkpoint if checkpoint is not None else getattr(model, "checkpoint_path", None)
        self.checkpoint = None if path is None else Path(path)
        self.batch_size = int(batch_size)
        self.progress = bool(progress)
        self.files = FileEmbedder(self.model, segment_seconds, segment_hop, progress=progress, batch_size=batch_size)
        self.enrolment = Enrolment()
        self.calibration: ScoreCalibrator | None = None
        self.p_target = 0.01  # the prior of the posteriors reported when calibrated
        self._decision: tuple[float, str] | None = None  # the calibration's Bayes threshold (score units), source

    @classmethod
    def from_pretrained(cls, checkpoint: str | Path, device: str | torch.device = "auto",
                        **options: Any) -> SpeakerRecognizer:
        """The recognizer of a checkpoint file or registered checkpoint name, on ``device``
        (``"auto"``: CUDA when available). Loading is weights-only and checks the class and, for a
        registered name, the file's sha256. ``options`` are those of the constructor."""
        model = load_model(checkpoint, device)
        return cls(model, model.checkpoint_path, **options)

    # ------------------------------------------------------------------ what the model is

    @property
    def sample_rate(self) -> int:
        return int(self.model.sample_rate)

    @property
    def embedding_dim(self) -> int:
        return int(self.model.embedding_dim)

    @property
    def device(self) -> torch.device:
        return torch.device(self.model.device)

    @property
    def threshold(self) -> float | None:
        """The decision threshold on cosine scores: the calibration's Bayes threshold when one is
        in use, else the validation-EER threshold stored in the checkpoint (``None`` if neither)."""
        return self._resolve(None)[0]

    # ------------------------------------------------------------------ calibration

    def use_calibration(self, calibration: str | Path | ScoreCalibrator, p_target: float = 0.01, c_miss: float = 1.0,
                        c_fa: float = 1.0) -> float:
        """Calibrate this model's scores with a file of ``speakerzoo calibrate`` (fitted on this
        checkpoint's plain cosine scores) and decide by the Bayes threshold for the prior
        ``p_target`` and the costs: reports then carry each score's ``llr`` and ``posterior``.
        Returns the threshold in cosine-score units."""
        if isinstance(calibration, ScoreCalibrator):
            calibrator, name = calibration, "the calibration given"
        else:
            calibrator = ScoreCalibrator.load(calibration, checkpoint_sha256=self.checkpoint_sha256)
            name = str(calibration)
        if calibrator.quality:
            raise CalibrationError(f"{name} also weighs quality measures ({', '.join(calibrator.quality)}), which "
                                   "verification does not compute: fit one without --quality")
        try:
            calibrator.check_scoring([], "none", name)  # verification scores plain cosine of one model
        except CalibrationError as err:
            raise CalibrationError(f"{name} was fitted on normalised or fused scores; verification scores plain "
                                   "cosine of one model: fit one without --fusion, --mean-norm or --asnorm") from err
        value = calibrator.score_threshold(bayes_threshold(p_target, c_miss, c_fa))
        self.calibration = calibrator
        self.p_target = p_target
        self._decision = (value, f"Bayes decision of {name} at p_target {p_target:g}, C_miss {c_miss:g}, C_fa {c_fa:g}")
        return value

    def _resolve(self, threshold: float | None) -> tuple[float | None, str]:
        if threshold is None and self._decision is not None:
            return self._decision
        return resolve_threshold(threshold, self.model)

    def _calibrated(self, entry: dict[str, Any]) -> dict[str, Any]:
        """``entry`` with the ``llr`` and ``posterior`` of its cosine score when calibrated."""
        if self.calibration is not None:
            score = torch.tensor([entry["score"]], dtype=torch.float64)
            entry["llr"] = float(self.calibration.llr(score))
            entry["posterior"] = float(self.calibration.posterior(score, self.p_target))
        return entry

    @property
    def speakers(self) -> list[str]:
        """The enrolled speakers, in the order they were first enrolled."""
        return self.enrolment.names

    # ------------------------------------------------------------------ embeddings

    def _embedder(self, segment_seconds: float | None, segment_hop: float | None) -> FileEmbedder:
        if segment_seconds is None and segment_hop is None:
            return self.files
        return FileEmbedder(self.model, segment_seconds, segment_hop, progress=self.progress,
                            batch_size=self.batch_size, _shortest=self.files._shortest)

    def embed_recordings(self, paths: Sequence[str | Path], mc_passes: int = 0, seed: int = 0,
                         segment_seconds: float | None = None, segment_hop: float | None = None,
                         role: str = "test file") -> list[RecordingEmbedding]:
        """One :class:`~speakerzoo.inference.segments.RecordingEmbedding` per file (embedding,
        variance, per-pass embeddings), whole or from segments, with ``mc_passes`` MC-dropout
        passes seeded by ``seed``. Raises :class:`~speakerzoo.inference.enrolment.EnrolError`
        naming the first file that cannot be used."""
        check_mc(self.model, mc_passes)
        embedder = self._embedder(segment_seconds, segment_hop)
        with seeded(seed, self.device):
            return embedder.embed_files([str(p) for p in paths], passes=mc_passes, roles=[role] * len(paths))

    def embed_file(self, path: str | Path, segment_seconds: float | None = None, segment_hop: float | None = None,
                   mc_passes: int = 0, seed: int = 0) -> Tensor | RecordingEmbedding:
        """The ``[D]`` embedding of one audio file, bitwise what ``speakerzoo embed`` writes for it.

        With ``segment_seconds`` (segments of a long recording, averaged) or ``mc_passes=K``
        (Monte-Carlo dropout), a :class:`~speakerzoo.inference.segments.RecordingEmbedding`
        instead: ``.embedding`` the unit-length mean and ``.variance`` its variance over segments
        and passes.
        """
        segmented = segment_seconds is not None or self.files.segment_seconds is not None
        rec = self.embed_recordings([path], mc_passes, seed, segment_seconds, segment_hop)[0]
        return rec if (mc_passes or segmented) else rec.samples[0, 0]

    def embed_files(self, paths: Sequence[str | Path], batch_size: int | None = None,
                    max_seconds: float | None = None, progress: bool | None = None) -> EmbeddedFiles:
        """Embeddings of many audio files, batched (batch-invariant: each row is bitwise what the
        file gives alone, and what ``speakerzoo embed`` writes). Files that cannot be decoded, or
        are too short for the model, are skipped and listed in ``.skipped``, not fatal."""
        items = [Item(utt_id=str(p), path=str(p)) for p in paths]
        rows = EmbeddingRows()
        done = embed_items(self.model, items, rows, batch_size=batch_size or self.batch_size, max_seconds=max_seconds,
                           progress=self.progress if progress is None else progress)
        return EmbeddedFiles(rows.stacked(self.embedding_dim), rows.path, done.skipped)

    def embed_batch(self, waveforms: Tensor | Sequence[Tensor], lengths: Tensor | None = None) -> Tensor:
        """``[B, D]`` embeddings of waveforms at :attr:`sample_rate`: a list of 1-D tensors, or a
        padded ``[B, T]`` tensor with ``lengths`` (samples; each row is cut to its length, so
        padding never changes an embedding)."""
        if isinstance(waveforms, Tensor) and waveforms.dim() == 2:
            if lengths is None:
                waves = list(waveforms)
            else:
                waves = [w[: int(n)] for w, n in zip(waveforms, torch.as_tensor(lengths).tolist())]
        else:
            waves = list(waveforms)
        return embed_waveforms(self.model, waves, batch_size=self.batch_size)

    # ------------------------------------------------------------------ verification

    def verify_files(self, enrol: str | Path, test: str | Path, threshold: float | None = None) -> tuple[float, bool | None]:
        """``(score, same)`` for two recordings: the cosine score, and whether it reaches the
        threshold (``threshold``, else the checkpoint's; ``None`` when there is neither)."""
        result = self.verification_report([test], enrol_file=enrol, threshold=threshold)
        trial = result["trials"][0]
        return trial["score"], trial["accepted"]

    # ------------------------------------------------------------------ enrolment

    def enrol(self, name: str, paths: str | Path | Sequence[str | Path], profile: str = DEFAULT_PROFILE) -> None:
        """Enrol speaker ``name`` from audio files (more files of a known speaker are added to it);
        a ``profile`` other than the default one is scored apart (a speaker scores its best profile)."""
        paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
        self.enrol_from(files=[(name, paths)], profile=profile)

    def enrol_from(self, files: Sequence[tuple[str, Sequence[str | Path]]] = (), folders: Sequence[str | Path] = (),
                   embedding_files: Sequence[str | Path] = (), profile: str = DEFAULT_PROFILE) -> None:
        """Enrol from any mix of ``(name, files)`` pairs, folders with one sub-folder per speaker, and
        embeddings files made with this checkpoint (see :func:`~speakerzoo.inference.enrolment.enrol_speakers`),
        all under ``profile``."""
        if embedding_files and self.checkpoint is None:
            raise EnrolError("enrolling from an embeddings file needs the model's checkpoint file to check that "
                             "it made them; load the model with SpeakerRecognizer.from_pretrained")
        new = enrol_speakers(self.files, self.checkpoint or Path(), files, folders, embedding_files)
        new.profiles = {name: [str(profile)] * len(sources) for name, sources in new.utterances.items()}
        self.enrolment.update(new)

    @property
    def checkpoint_sha256(self) -> str | None:
        """sha256 of the checkpoint file (``None`` for a model that did not come from a file):
        what embeddings files, calibrations and speaker stores record to tell models apart."""
        return sha256_of(self.checkpoint) if self.checkpoint is not None and self.checkpoint.is_file() else None

    def _checkpoint_sha256(self, what: str) -> str:
        digest = self.checkpoint_sha256
        if digest is None:
            raise EnrolError(f"{what} needs the model's checkpoint file (the store records which model made its "
                             "embeddings); load the model with SpeakerRecognizer.from_pretrained")
        return digest

    def enrol_store(self, path: str | Path) -> None:
        """Enrol the speakers of a store (:mod:`speakerzoo.inference.speaker_store`) made with this checkpoint."""
        self.enrolment.update(read_store(path, self._checkpoint_sha256("reading a speaker store")))

    def save_store(self, path: str | Path) -> Path:
        """Write the enrolled speakers to a store for this checkpoint (complete or not at all)."""
        return write_store(path, self.enrolment, self._checkpoint_sha256("writing a speaker store"),
                           model_class_path(self.model))

    def enrol_folder(self, folder: str | Path) -> None:
        """Enrol every sub-folder of ``folder`` as a speaker (``folder/<speaker>/*.wav``)."""
        self.enrol_from(folders=[folder])

    def enrol_embeddings(self, path: str | Path) -> None:
        """Enrol the named rows of an embeddings file that ``speakerzoo embed`` made with this checkpoint."""
        self.enrol_from(embedding_files=[path])

    def forget(self, name: str, profile: str | None = None) -> None:
        """Remove enrolled speaker ``name``, or only its ``profile`` (an :class:`EnrolError` naming
        the enrolled speakers or profiles when there is no such one)."""
        try:
            self.enrolment.remove(name, profile)
        except KeyError as err:
            raise EnrolError(err.args[0]) from None

    def _bank(self) -> SpeakerBank:
        if not self.enrolment.names:
            raise EnrolError("no speakers are enrolled: enrol some first, e.g. rec.enrol('alice', ['a1.wav'])")
        return self.enrolment.bank

    def verify(self, path: str | Path, speaker: str, threshold: float | None = None, mc_passes: int = 0,
               seed: int = 0) -> Verification:
        """Whether the recording at ``path`` is the enrolled ``speaker``: its score (± std over
        ``mc_passes``) and the decision."""
        result = self.verification_report([path], claimed=speaker, threshold=threshold, mc_passes=mc_passes, seed=seed)
        t = result["trials"][0]
        return Verification(t["speaker"], t["score"], t["score_std"], t["accepted"])

    def who(self, path: str | Path, threshold: float | None = None) -> str | None:
        """Open-set identification of one recording: the enrolled speaker it is, :data:`UNKNOWN`
        when no enrolled speaker passes the threshold (given, calibrated or stored), ``None``
        when there is no threshold to decide by."""
        return self.identification_report([path], top_k=1, threshold=threshold)["results"][0]["identified"]

    def identify(self, path: str | Path, top_k: int = 5, threshold: float | None = None, mc_passes: int = 0,
                 seed: int = 0, closed_set: bool = False) -> list[Verification]:
        """The ``top_k`` enrolled speakers most like the recording, best first, each accepted or
        not by the threshold (none accepted: an unknown speaker). ``closed_set=True`` ranks the
        checkpoint's training speakers by its classification head instead."""
        result = self.identification_report([path], top_k=top_k, threshold=threshold, mc_passes=mc_passes, seed=seed,
                                            closed_set=closed_set)
        return [Verification(c["speaker"], c["score"], c["score_std"], c["accepted"])
                for c in result["results"][0]["candidates"]]

    # ------------------------------------------------------------------ reports (the commands' JSON)

    def verification_report(self, tests: Sequence[str | Path], enrol_file: str | Path | None = None,
                            claimed: str | None = None, threshold: float | None = None, mc_passes: int = 0,
                            seed: int = 0) -> dict[str, Any]:
        """``speakerzoo verify``'s result: each test file against ``enrol_file`` (a pair), against
        the ``claimed`` enrolled speaker, or against every enrolled speaker."""
        check_mc(self.model, mc_passes)
        value, source = self._resolve(threshold)
        if enrol_file is not None:
            rec = self.files.embed_files([str(enrol_file)], roles=["enrolment file"])[0]
            bank, counts = SpeakerBank([str(enrol_file)], rec.embedding[None]), {str(enrol_file): 1}
            claimed, mode = str(enrol_file), "pair"
        else:
            bank, counts = self._bank(), self.enrolment.counts()
            mode = "claim" if claimed is not None else "bank"
            if claimed is not None and claimed not in bank:
                raise EnrolError(f"--speaker {claimed!r} is not enrolled; enrolled: {', '.join(bank.names)}")
        recs = self.embed_recordings(tests, mc_passes, seed)
        trials = []
        for path, rec in zip(tests, recs):
            mean, std = bank.score_stats(rec.per_pass)
            results = rank(bank.names, mean, std, value)
            if claimed is not None:
                results = [results[bank.index(claimed)]]
            for v in results:
                trials.append(self._calibrated({
                    "test": str(path), "speaker": v.speaker, "score": v.score, "score_std": v.score_std,
                    "accepted": v.accepted, "decision": None if v.accepted is None else ("ACCEPT" if v.accepted else "REJECT"),
                    "segments": rec.segments}))
        return {"mode": mode, "checkpoint": str(self.checkpoint), "threshold": value, "threshold_source": source or None,
                "p_target": self.p_target if self.calibration is not None else None, "mc_passes": int(mc_passes),
                "segment_seconds": self.files.segment_seconds, "enrolled": counts, "trials": trials}

    def training_speakers(self) -> list[str]:
        """The checkpoint's training speakers (its classification head's classes)."""
        names = getattr(self.model, "speaker_names", None)
        count = int(getattr(self.model, "num_speakers", 0) or 0)
        return [str(n) for n in names] if names else [f"class {i}" for i in range(count)]

    def identification_report(self, tests: Sequence[str | Path], top_k: int = 5, threshold: float | None = None,
                              mc_passes: int = 0, seed: int = 0, closed_set: bool = False) -> dict[str, Any]:
        """``speakerzoo identify``'s result: the ``top_k`` candidates of each test file."""
        if closed_set:
            if getattr(self.model, "head", None) is None:
                raise EnrolError(f"{self.checkpoint} has no classification head (num_speakers=0): --closed-set is "
                                 "not available; enrol speakers instead")
            if threshold is not None:
                raise EnrolError("--threshold applies to cosine scores of enrolled speakers, not to --closed-set "
                                 "probabilities")
            check_mc(self.model, mc_passes)
            names, bank, counts, value, source = self.training_speakers(), None, None, None, ""
        else:
            check_mc(self.model, mc_passes)
            bank = self._bank()
            names, counts = bank.names, self.enrolment.counts()
            value, source = self._resolve(threshold)
        top_k = min(int(top_k), len(names))
        recs = self.embed_recordings(tests, mc_passes, seed)
        results = []
        for path, rec in zip(tests, recs):
            if bank is not None:
                mean, std = bank.score_stats(rec.per_pass)
            else:
                probs = head_probabilities(self.model, rec.samples.to(self.device)).double().mean(dim=1)  # [K, C]
                mean, std = probs.mean(dim=0), probs.std(dim=0, correction=0)
            ranked = rank(names, mean, std, value, top_k=top_k)
            # open set: the best candidate when it passes the threshold, else nobody enrolled
            identified = None if not ranked or ranked[0].accepted is None else (
                ranked[0].speaker if ranked[0].accepted else UNKNOWN)
            results.append({"test": str(path), "segments": rec.segments, "identified": identified,
                            "candidates": [self._calibrated({"rank": i + 1, **v.to_dict()}) if bank is not None
                                           else {"rank": i + 1, **v.to_dict()} for i, v in enumerate(ranked)]})
        return {
            "mode": "closed-set" if closed_set else "enrolled",
            "score": "softmax probability of the classification head" if closed_set else "cosine",
            "checkpoint": str(self.checkpoint),
            "speakers": len(names),
            "enrolled": counts,
            "top_k": top_k,
            "threshold": value,
            "threshold_source": source or None,
            "p_target": self.p_target if self.calibration is not None else None,
            "mc_passes": int(mc_passes),
            "segment_seconds": self.files.segment_seconds,
            "results": results,
        }
