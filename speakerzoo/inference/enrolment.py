"""Enrolling speakers and embedding whole audio files for verification and identification (middle floor).

Speakers are enrolled (:func:`enrol_speakers`) from any mix of named audio files, folders with
one sub-folder per speaker (``DIR/<speaker>/**/*.wav``, as ``speakerzoo embed`` reads folders) and
embeddings files written by ``speakerzoo embed`` with the same checkpoint (rows grouped by their
``speaker`` column). Each enrolment file is embedded like a test file (whole, or from segments;
never with MC dropout) and a speaker's embedding is the mean of its length-normalised utterance
embeddings, normalised again (:meth:`~speakerzoo.inference.bank.SpeakerBank.from_utterances`).

Audio is decoded by :func:`speakerzoo.audio.load_audio`: any rate, mono or stereo, mixed to
mono and resampled to the model's rate, exactly as ``speakerzoo prepare`` and ``speakerzoo
embed`` do. Without MC dropout and segments, a file's embedding is bitwise the one
``speakerzoo embed`` writes for it (the same :func:`~speakerzoo.inference.engine.embed_waveforms`).
Every problem is an :class:`EnrolError` whose message names the file and the fix.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from speakerzoo.audio import AUDIO_EXTENSIONS, AudioError
from speakerzoo.datamodules.sources import SourceError
from speakerzoo.embeddings import EmbeddingError, EmbeddingFile
from speakerzoo.inference.bank import ProfileBank, SpeakerBank
from speakerzoo.inference.engine import embed_waveforms, min_samples
from speakerzoo.inference.file_embedding import WINDOW_SAMPLES, load_item
from speakerzoo.inference.inputs import Item, items_from_folder
from speakerzoo.inference.loading import model_class_path
from speakerzoo.inference.mc_dropout import require_dropout
from speakerzoo.inference.segments import RecordingEmbedding, aggregate, segment_embeddings, segments
from speakerzoo.zoo.registry import sha256_of

__all__ = [
    "EnrolError",
    "Enrolment",
    "FileEmbedder",
    "check_mc",
    "embedding_file_rows",
    "enrol_speakers",
    "folder_speakers",
    "resolve_threshold",
    "seeded",
]

#: Files at which a progress bar appears (fewer finish too quickly to need one).
PROGRESS_MIN_FILES = 10
#: Files embedded together (equal lengths batched) between progress updates.
_FLUSH_FILES = 32


class EnrolError(RuntimeError):
    """Enrolment or embedding of files cannot go on; the message names the file and the fix."""


def resolve_threshold(given: float | None, model: Any) -> tuple[float | None, str]:
    """``(threshold, where it came from)``: ``--threshold``, else the model's ``eer_threshold``, else ``(None, "")``."""
    if given is not None:
        return float(given), "--threshold"
    stored = getattr(model, "eer_threshold", None)
    if stored is not None and math.isfinite(float(stored)):
        return float(stored), "validation EER threshold stored in the checkpoint"
    return None, ""


def check_mc(model: Any, passes: int) -> None:
    """Refuse ``--mc-passes`` for 1 pass or a model without dropout, before anything is embedded."""
    if passes == 1:
        raise EnrolError("--mc-passes 1 gives no spread; use at least 2 (e.g. 20), or 0 for one deterministic pass")
    if passes:
        require_dropout(model)


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch for the MC dropout masks without changing the caller's random state."""
    device = torch.device(device)
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    else:
        devices = []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@dataclass
class FileEmbedder:
    """Embeds audio files with ``model``, whole or from segments, with or without MC dropout.

    Arguments:
        model: a :class:`~speakerzoo.zoo.base.SpeakerEmbeddingModule` in eval mode.
        segment_seconds, segment_hop: cut files into segments (see :func:`~speakerzoo.inference.segments.segments`).
        progress: show a progress bar for :data:`PROGRESS_MIN_FILES` files or more.
        batch_size: segments of equal length per forward pass.
    """

    model: Any
    segment_seconds: float | None = None
    segment_hop: float | None = None
    progress: bool = True
    batch_size: int = 32
    _shortest: int | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.segment_hop is not None and self.segment_seconds is None:
            raise EnrolError("--segment-hop applies to segments: give --segment-seconds too")
        if self.segment_hop is not None and self.segment_hop > self.segment_seconds:
            raise EnrolError(f"--segment-hop {self.segment_hop:g} is longer than --segment-seconds "
                             f"{self.segment_seconds:g}: audio between segments would be skipped")

    @property
    def sample_rate(self) -> int:
        return int(self.model.sample_rate)

    def shortest(self) -> int:
        if self._shortest is None:
            self._shortest = min_samples(self.model)
        return self._shortest

    def load(self, path: str | Path, role: str) -> Tensor:
        """A file decoded to mono at the model's rate, cut into segments ``[N, L]`` (``N = 1``: whole)."""
        path = str(path)
        try:
            wave = load_item(Item(utt_id=path, path=path), None, self.sample_rate)
        except AudioError as err:
            fix = ("; give a recording with speech in it" if "empty" in err.reason or "no samples" in err.reason
                   else "")
            raise EnrolError(f"{err}{fix} ({role})") from None
        except Exception as err:  # a decoder failure must name the file
            raise EnrolError(f"{path}: decoding failed ({type(err).__name__}: {err}); convert it to wav ({role})") from None
        wave_t = torch.from_numpy(wave)
        if self.segment_seconds is not None:
            segs = segments(wave_t, self.sample_rate, self.segment_seconds, self.segment_hop)
        else:
            segs = wave_t[None]
        need = self.shortest()
        if segs.shape[1] < need:
            what = "the segments of --segment-seconds are" if segs.shape[1] < wave_t.numel() else "the recording is"
            raise EnrolError(f"{path}: too short for the model: {what} {segs.shape[1]} samples "
                             f"({segs.shape[1] / self.sample_rate:.3f} s at {self.sample_rate} Hz), it needs at least "
                             f"{need} ({need / self.sample_rate:.3f} s); use a longer recording ({role})")
        return segs

    def embed_files(self, paths: Sequence[str | Path], passes: int = 0, roles: Sequence[str] | None = None,
                    desc: str = "embedding") -> list[RecordingEmbedding]:
        """One :class:`~speakerzoo.inference.segments.RecordingEmbedding` per file, in order.

        ``passes=0``: one eval-mode pass through :func:`~speakerzoo.inference.engine.embed_waveforms`
        (unpadded, batch-invariant: a whole file's embedding is bitwise ``speakerzoo embed``'s);
        ``passes=K``: ``K`` MC-dropout passes per file. ``roles`` say in error messages what each
        file was for (default ``"test file"``).
        """
        roles = list(roles) if roles is not None else ["test file"] * len(paths)
        out: list[RecordingEmbedding | None] = [None] * len(paths)
        bar = tqdm(total=len(paths), desc=desc, unit="file", dynamic_ncols=True, leave=False,
                   disable=not self.progress or len(paths) < PROGRESS_MIN_FILES)
        pending: list[tuple[int, Tensor]] = []
        pending_samples = 0

        def flush() -> None:
            nonlocal pending, pending_samples
            if not pending:
                return
            if passes:  # one file after another, so that the seed fixes each file's masks
                for i, segs in pending:
                    out[i] = aggregate(segment_embeddings(self.model, segs, passes, self.batch_size))
                    bar.update(1)
            else:
                emb = embed_waveforms(self.model, [s for _, segs in pending for s in segs], batch_size=self.batch_size)
                start = 0
                for i, segs in pending:
                    out[i] = aggregate(emb[start : start + segs.shape[0]][None])
                    start += segs.shape[0]
                bar.update(len(pending))
            pending, pending_samples = [], 0

        try:
            for i, (path, role) in enumerate(zip(paths, roles)):
                segs = self.load(path, role)
                pending.append((i, segs))
                pending_samples += segs.numel()
                if pending_samples >= WINDOW_SAMPLES or len(pending) >= _FLUSH_FILES:
                    flush()
            flush()
        finally:
            bar.close()
        return out  # type: ignore[return-value]


DEFAULT_PROFILE = "default"


@dataclass
class Enrolment:
    """Enrolled speakers.

    Attributes:
        embeddings: speaker -> its utterances' embeddings, in the order speakers were first named.
        utterances: speaker -> what was enrolled (audio paths, or ``FILE.h5:utt_id`` rows).
        profiles: speaker -> the profile of each utterance (``"default"`` unless named): a
            speaker with several profiles (a microphone, a session) is scored by its best one.
        bank: one centroid per speaker, or per profile (:class:`~speakerzoo.inference.bank.SpeakerBank`,
            :class:`~speakerzoo.inference.bank.ProfileBank`), built from ``embeddings``.
    """

    embeddings: dict[str, list[Tensor]] = field(default_factory=dict)
    utterances: dict[str, list[str]] = field(default_factory=dict)
    profiles: dict[str, list[str]] = field(default_factory=dict)

    def add(self, name: str, embedding: Tensor, source: str, profile: str = DEFAULT_PROFILE) -> None:
        """One more utterance of speaker ``name`` (a new speaker is appended)."""
        name = str(name)
        earlier = self.profile_list(name) if name in self.utterances else []
        self.embeddings.setdefault(name, []).append(torch.as_tensor(embedding).detach().float().cpu())
        self.utterances.setdefault(name, []).append(str(source))
        self.profiles[name] = earlier + [str(profile)]

    def update(self, other: Enrolment) -> None:
        """Add every utterance of ``other``."""
        for name, vectors in other.embeddings.items():
            for vector, source, profile in zip(vectors, other.utterances[name], other.profile_list(name)):
                self.add(name, vector, source, profile)

    def profile_list(self, name: str) -> list[str]:
        """The profile of each utterance of ``name``."""
        given = self.profiles.get(name, [])
        return given + [DEFAULT_PROFILE] * (len(self.utterances[name]) - len(given))

    def remove(self, name: str, profile: str | None = None) -> None:
        """Forget speaker ``name``, or only its ``profile`` (``KeyError`` naming what is enrolled)."""
        if name not in self.embeddings:
            raise KeyError(f"unknown speaker {name!r}; enrolled: {', '.join(self.embeddings) or 'none'}")
        profiles = self.profile_list(name)
        if profile is not None and profile not in profiles:
            raise KeyError(f"speaker {name!r} has no profile {profile!r}; its profiles: {', '.join(sorted(set(profiles)))}")
        keep = [i for i, p in enumerate(profiles) if profile is not None and p != profile]
        if not keep:  # the speaker, or its only profile
            del self.embeddings[name], self.utterances[name]
            self.profiles.pop(name, None)
            return
        self.embeddings[name] = [self.embeddings[name][i] for i in keep]
        self.utterances[name] = [self.utterances[name][i] for i in keep]
        self.profiles[name] = [profiles[i] for i in keep]

    def profile_counts(self) -> dict[str, dict[str, int]]:
        """speaker -> profile -> number of enrolment utterances."""
        counts: dict[str, dict[str, int]] = {}
        for name in self.names:
            for profile in self.profile_list(name):
                counts.setdefault(name, {}).setdefault(profile, 0)
                counts[name][profile] += 1
        return counts

    @property
    def names(self) -> list[str]:
        return list(self.embeddings)

    @property
    def bank(self) -> SpeakerBank:
        groups: dict[tuple[str, str], list[Tensor]] = {}
        for name, vectors in self.embeddings.items():
            for vector, profile in zip(vectors, self.profile_list(name)):
                groups.setdefault((name, profile), []).append(vector)
        if len(groups) == len(self.embeddings):  # one profile each: one centroid per speaker
            return SpeakerBank.from_utterances({name: torch.stack(v) for name, v in self.embeddings.items()})
        return ProfileBank.from_profiles({key: torch.stack(v) for key, v in groups.items()})

    def counts(self) -> dict[str, int]:
        return {name: len(sources) for name, sources in self.utterances.items()}


def folder_speakers(root: Path) -> list[tuple[str, str]]:
    """``(speaker, file)`` pairs of a folder with one sub-folder per speaker."""
    layout = f"--enrol-dir wants one sub-folder per speaker ({root}/<speaker>/*.wav)"
    root = root.expanduser()
    if not root.is_dir():
        raise EnrolError(f"{root}: no such folder; {layout}")
    try:
        items, unsupported = items_from_folder(root, speakers=True)
    except SourceError as err:
        raise EnrolError(f"{err}; {layout}") from None
    if unsupported:
        path, reason = unsupported[0]
        raise EnrolError(f"{path}: {reason}" + (f" ({len(unsupported) - 1} more such files)" if len(unsupported) > 1 else ""))
    loose = [it.path for it in items if not it.speaker]
    if loose:
        raise EnrolError(f"{loose[0]} lies directly in {root}; {layout}: move it into its speaker's folder")
    have = {it.speaker for it in items}
    for sub in sorted(p for p in root.resolve().iterdir() if p.is_dir() and not p.name.startswith(".")):
        if sub.name not in have:
            raise EnrolError(f"{sub}: speaker {sub.name!r} has no audio files ({', '.join(AUDIO_EXTENSIONS)}); "
                             "add recordings of the speaker or remove the folder")
    return [(it.speaker, it.path) for it in items]


def embedding_file_rows(path: Path, model: Any, checkpoint: Path) -> list[tuple[str, Tensor, str]]:
    """``(speaker, embedding, FILE:utt_id)`` of the named rows of an embeddings file made with ``checkpoint``."""
    try:
        emb = EmbeddingFile(path)
    except EmbeddingError as err:
        raise EnrolError(str(err)) from None
    fix = (f"embed the enrolment audio with this checkpoint: `speakerzoo embed SPEAKERS_DIR --checkpoint {checkpoint} "
           f"--output {path}`")
    dim, mine = int(emb.embedding.shape[1]), int(getattr(model, "embedding_dim", emb.embedding.shape[1]))
    theirs_class, mine_class = str(emb.attrs.get("model_class", "")), model_class_path(model)
    if dim != mine:
        raise EnrolError(f"{path} holds {dim}-d embeddings ({theirs_class or 'unknown model'}) but {checkpoint} makes "
                         f"{mine}-d ones ({mine_class}); {fix}")
    if theirs_class and theirs_class != mine_class:
        raise EnrolError(f"{path} was embedded with a {theirs_class}, {checkpoint} is a {mine_class}; {fix}")
    digest = str(emb.attrs.get("checkpoint_sha256", ""))
    mine_digest = sha256_of(checkpoint) if digest else ""
    if digest != mine_digest:
        raise EnrolError(f"{path} was embedded with another checkpoint (sha256 {digest[:12]}..., {checkpoint} is "
                         f"{mine_digest[:12]}...): its embeddings are not comparable with this model's; {fix}")
    rows = [(s, emb.embedding[i], f"{path}:{emb.utt_id[i]}") for i, s in enumerate(emb.speaker) if s]
    if not rows:
        raise EnrolError(f"{path} has no speaker names: embed a folder with one sub-folder per speaker "
                         f"(`speakerzoo embed SPEAKERS_DIR ...`) or a manifest with a speaker column")
    unnamed = len(emb.speaker) - len(rows)
    if unnamed:
        print(f"speakerzoo: warning: {path}: {unnamed} row(s) without a speaker name were not enrolled", file=sys.stderr)
    return rows


def enrol_speakers(
    embedder: FileEmbedder,
    checkpoint: str | Path,
    files: Sequence[tuple[str, Sequence[str | Path]]] = (),
    folders: Sequence[str | Path] = (),
    embedding_files: Sequence[str | Path] = (),
) -> Enrolment:
    """Enrol speakers from any mix of ``(name, audio files)`` pairs (a name given twice collects
    the files of both), folders with one sub-folder per speaker and embeddings files made with
    ``checkpoint``; each speaker's embedding is the normalised mean of its normalised utterance
    embeddings (:meth:`~speakerzoo.inference.bank.SpeakerBank.from_utterances`)."""
    named: list[tuple[str, str]] = []
    for name, paths in files:
        named += [(str(name), str(p)) for p in paths]
    for root in folders:
        named += folder_speakers(Path(root))
    files = named
    rows: list[tuple[str, Tensor, str]] = []
    for path in embedding_files:
        rows += embedding_file_rows(Path(path), embedder.model, Path(checkpoint))
    if not files and not rows:
        raise EnrolError("no speakers to enrol: give audio files, a folder of speakers or an embeddings file")
    order: dict[str, None] = {}
    for name, _ in files:
        order.setdefault(name)
    for name, _, _ in rows:
        order.setdefault(name)
    embedded = embedder.embed_files([p for _, p in files], passes=0, roles=[f"enrolment of speaker {n!r}" for n, _ in files],
                                    desc="enrolling")
    enrolment = Enrolment({name: [] for name in order}, {name: [] for name in order}, {name: [] for name in order})
    for (name, path), rec in zip(files, embedded):
        enrolment.add(name, rec.embedding, path)
    for name, vector, where in rows:
        enrolment.add(name, vector, where)
    return enrolment
