"""Enrolment and file embedding shared by ``speakerzoo verify`` and ``speakerzoo identify``.

Speakers are enrolled from any mix of

* ``--enrol NAME=FILE[,FILE...]`` (repeatable; a name given twice collects the files of both);
* ``--enrol-dir DIR``: one sub-folder per speaker, ``DIR/<speaker>/**/*.wav`` (as ``speakerzoo embed``
  reads folders);
* ``--enrol-embeddings FILE.h5``: an embeddings file written by ``speakerzoo embed`` with the
  same checkpoint, rows grouped by its ``speaker`` column.

Each enrolment file is embedded like a test file (whole, or from segments with
``--segment-seconds``; never with MC dropout) and a speaker's embedding is the mean of its
length-normalised utterance embeddings, normalised again
(:meth:`~speakerzoo.zoo.uncertainty.SpeakerBank.from_utterances`).

Audio is decoded by :func:`speakerzoo.audio.load_audio`: any rate, mono or stereo, mixed to
mono and resampled to the model's rate, exactly as ``speakerzoo prepare`` and ``speakerzoo
embed`` do. Without MC dropout and segments, a file's embedding is bitwise the one
``speakerzoo embed`` writes for it (the same :func:`~speakerzoo.commands.embed.embed_waveforms`).
Every problem is an :class:`EnrolError` whose message names the file and the fix.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from speakerzoo.argtypes import non_negative_int, parse_or_exit_code, positive_float
from speakerzoo.audio import AUDIO_EXTENSIONS, AudioError
from speakerzoo.commands.embed import (
    WINDOW_SAMPLES,
    EmbeddingFile,
    Item,
    device_from_name,
    load_item,
    load_model as load_checkpoint_model,
    items_from_folder,
)
from speakerzoo.datamodules.corpus import CorpusError
from speakerzoo.datamodules.sources import SourceError
from speakerzoo.inference.engine import EmbeddingError, embed_waveforms, min_samples
from speakerzoo.zoo.registry import RegistryError
from speakerzoo.zoo.registry import sha256_of
from speakerzoo.zoo.uncertainty import (
    RecordingEmbedding,
    SpeakerBank,
    aggregate,
    embed_segments,
    require_dropout,
    segments,
)

__all__ = [
    "NO_THRESHOLD_HINT",
    "EnrolError",
    "Embedder",
    "Enrolment",
    "add_enrol_arguments",
    "add_inference_arguments",
    "add_model_arguments",
    "check_mc",
    "enrol",
    "format_score",
    "has_enrolment",
    "load_model",
    "model_class_path",
    "parse_enrol",
    "resolve_threshold",
    "seeded",
    "segments_note",
]

#: Files at which a progress bar appears (fewer finish too quickly to need one).
PROGRESS_MIN_FILES = 10
#: Files embedded together (equal lengths batched) between progress updates.
_FLUSH_FILES = 32

NO_THRESHOLD_HINT = ("no decision: the checkpoint stores no EER threshold; give --threshold T (e.g. the EER "
                     "threshold `speakerzoo score` reports on trials embedded with this checkpoint)")


class EnrolError(RuntimeError):
    """Enrolment or embedding of files cannot go on; the message names the file and the fix."""


# --------------------------------------------------------------------------- arguments


def parse_enrol(text: str) -> tuple[str, list[str]]:
    """``NAME=FILE[,FILE...]`` -> ``(name, files)`` (an argparse ``type=``).

    Example::

        >>> parse_enrol("alice=a1.wav,a2.wav")
        ('alice', ['a1.wav', 'a2.wav'])
    """
    name, sep, files = text.partition("=")
    name = name.strip()
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=FILE[,FILE...], e.g. alice=a1.wav,a2.wav; got {text!r}")
    paths = [f.strip() for f in files.split(",") if f.strip()]
    if not paths:
        raise argparse.ArgumentTypeError(f"speaker {name!r} has no files: give --enrol {name}=FILE[,FILE...]")
    return name, paths


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--checkpoint`` and ``--device``."""
    parser.add_argument("--checkpoint", "-c", required=True, metavar="CKPT",
                        help="checkpoint file (or registered checkpoint name) of an embedding model")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available, else cpu)")


def add_inference_arguments(parser: argparse.ArgumentParser) -> None:
    """MC dropout, segments and output options that verify and identify share."""
    emb = parser.add_argument_group("uncertainty and long recordings")
    emb.add_argument("--mc-passes", type=non_negative_int, default=0, metavar="K",
                     help="score each test file with K Monte-Carlo dropout passes and report score ± std "
                          "(needs a model trained with dropout; default 0: one deterministic pass)")
    emb.add_argument("--seed", type=int, default=0,
                     help="torch seed of the MC dropout masks, so that reruns report the same numbers (default: 0)")
    emb.add_argument("--segment-seconds", type=positive_float, metavar="S",
                     help="embed every file from segments of S seconds (the last one ends at the end of the file) "
                          "and average them: for long recordings (default: each file whole)")
    emb.add_argument("--segment-hop", type=positive_float, metavar="S",
                     help="start a segment every S seconds, at most --segment-seconds (default: no overlap)")
    out = parser.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print the results as JSON")
    out.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def add_enrol_arguments(parser: argparse.ArgumentParser) -> None:
    """``--enrol``, ``--enrol-dir``, ``--enrol-embeddings`` (any mix; speakers of one name are merged)."""
    group = parser.add_argument_group("enrolment (any mix; files of one speaker are averaged)")
    group.add_argument("--enrol", action="append", type=parse_enrol, default=[], metavar="NAME=FILE[,FILE...]",
                       help="enrol speaker NAME from these audio files (repeatable)")
    group.add_argument("--enrol-dir", type=Path, action="append", default=[], metavar="DIR",
                       help="enrol every sub-folder of DIR as a speaker (DIR/<speaker>/*.wav)")
    group.add_argument("--enrol-embeddings", type=Path, action="append", default=[], metavar="FILE.h5",
                       help="enrol the speakers of an embeddings file from `speakerzoo embed` made with the same checkpoint")


def has_enrolment(args: argparse.Namespace) -> bool:
    return bool(args.enrol or args.enrol_dir or args.enrol_embeddings)


# --------------------------------------------------------------------------- model


def model_class_path(model: torch.nn.Module) -> str:
    """The ``model_class`` attribute ``speakerzoo embed`` writes for ``model``."""
    return f"{type(model).__module__}.{type(model).__qualname__}"


def load_model(checkpoint: str, device: str = "auto") -> tuple[Any, Path]:
    """The model (eval mode, on ``device``) of a checkpoint file or registered name, and its file."""
    model = load_checkpoint_model(checkpoint, device_from_name(device))
    return model, model.checkpoint_path


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


# --------------------------------------------------------------------------- embedding files


@dataclass
class Embedder:
    """Embeds audio files with ``model``, whole or from segments, with or without MC dropout.

    Arguments:
        model: a :class:`~speakerzoo.zoo.base.SpeakerEmbeddingModule` in eval mode.
        segment_seconds, segment_hop: cut files into segments (see :func:`~speakerzoo.zoo.uncertainty.segments`).
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
        """One :class:`~speakerzoo.zoo.uncertainty.RecordingEmbedding` per file, in order.

        ``passes=0``: one eval-mode pass through :func:`~speakerzoo.commands.embed.embed_waveforms`
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
            if passes:
                for i, segs in pending:
                    out[i] = aggregate(embed_segments(self.model, segs, passes, self.batch_size))
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


# --------------------------------------------------------------------------- enrolment


@dataclass
class Enrolment:
    """The enrolled speakers.

    Attributes:
        bank: one centroid per speaker (:class:`~speakerzoo.zoo.uncertainty.SpeakerBank`), in the
            order speakers were first named.
        utterances: speaker -> what was enrolled (audio paths, or ``FILE.h5:utt_id`` rows).
    """

    bank: SpeakerBank
    utterances: dict[str, list[str]]

    def counts(self) -> dict[str, int]:
        return {name: len(self.utterances[name]) for name in self.bank.names}


def _folder_speakers(root: Path) -> list[tuple[str, str]]:
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


def _file_rows(path: Path, model: Any, checkpoint: Path) -> list[tuple[str, Tensor, str]]:
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


def enrol(args: argparse.Namespace, embedder: Embedder, checkpoint: Path) -> Enrolment | None:
    """The speakers of ``--enrol``, ``--enrol-dir`` and ``--enrol-embeddings`` (``None`` when none was given)."""
    if not has_enrolment(args):
        return None
    files: list[tuple[str, str]] = []
    for name, paths in args.enrol:
        files += [(name, p) for p in paths]
    for root in args.enrol_dir:
        files += _folder_speakers(Path(root))
    rows: list[tuple[str, Tensor, str]] = []
    for path in args.enrol_embeddings:
        rows += _file_rows(Path(path), embedder.model, checkpoint)
    order: dict[str, None] = {}
    for name, _ in files:
        order.setdefault(name)
    for name, _, _ in rows:
        order.setdefault(name)
    embedded = embedder.embed_files([p for _, p in files], passes=0, roles=[f"enrolment of speaker {n!r}" for n, _ in files],
                                    desc="enrolling")
    per_speaker: dict[str, list[Tensor]] = {name: [] for name in order}
    sources: dict[str, list[str]] = {name: [] for name in order}
    for (name, path), rec in zip(files, embedded):
        per_speaker[name].append(rec.embedding)
        sources[name].append(str(path))
    for name, vector, where in rows:
        per_speaker[name].append(vector.float())
        sources[name].append(where)
    bank = SpeakerBank.from_utterances({name: torch.stack(v) for name, v in per_speaker.items()})
    return Enrolment(bank=bank, utterances=sources)


def segments_note(count: int, seconds: float | None) -> str:
    """``"  (3 segments of 1 s)"`` when files were cut into segments, else ``""``."""
    if not seconds:
        return ""
    return f"  ({count} segment{'s' if count != 1 else ''} of {seconds:g} s)"


def format_score(score: float, std: float, mc: bool, digits: int = 4) -> str:
    """``0.8123`` or ``0.8123 ± 0.0101`` (with MC dropout)."""
    return f"{score:.{digits}f}" + (f" ± {std:.{digits}f}" if mc else "")


def run_command(name: str, argv: list[str] | None, build_parser, run, text) -> int:
    """The ``main`` of ``speakerzoo verify``, ``identify`` and ``layers``: parse, ``run(args) -> result``, print
    ``text(result)`` or JSON; returns the exit code (0 done, 2 error with the message on stderr,
    130 interrupted)."""
    args = parse_or_exit_code(build_parser(), argv)
    if isinstance(args, int):
        return args
    try:
        result = run(args)
    except KeyboardInterrupt:
        print(f"speakerzoo {name}: interrupted", file=sys.stderr)
        return 130
    except (EnrolError, EmbeddingError, SourceError, CorpusError, RegistryError, FileNotFoundError, ValueError,
            OSError) as err:
        print(f"speakerzoo {name}: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2) if args.json else text(result))
    return 0
