"""``speakerzoo embed``: embeddings of audio files or of a corpus, written to one HDF5 file.

Inputs (what ``INPUT`` is decides how it is read):

* a folder: every audio file below it (``.wav .flac .ogg .mp3``, sorted by relative path);
  the first folder level names the speaker (``<speaker>/...``), files lying directly in the
  folder have none; ``--no-speakers`` records no speakers at all;
* a ``.csv`` manifest (``path,speaker[,transcript,session,utt_id]``, as ``speakerzoo prepare manifest``);
* any other text file: a file list, one path per line (``#`` comments and blank lines skipped);
* a corpus file (``.h5`` from ``speakerzoo prepare``), optionally one part of one split
  (``--split speaker --part test``).

Relative paths in lists and manifests are read from the list's folder.

**Batching never changes an embedding.** Utterances are grouped by *exact* length (sorted by
length, equal lengths batched together, every other utterance alone), so no batch is ever
padded: speechbrain's ECAPA reflect-pads its convolutions at the end of the padded tensor,
so padding would change the embedding of every shorter utterance in a batch. Even without
padding, CPU kernels are not batch-invariant: oneDNN and NNPACK convolutions, and a matrix
product split across threads, round differently for one utterance than for several (measured:
up to 5e-6 absolute on embeddings of magnitude 10). With ``exact=True`` (the default) on the
CPU, :func:`embed_waveforms` therefore runs under :func:`batch_invariant_kernels` (native
convolutions, one intra-op thread per forward; batches run in parallel threads instead), where
an utterance's embedding is bitwise the same in any batch as alone. On CUDA the batches are
still unpadded, but bitwise equality with one-at-a-time embedding is not guaranteed.

**The embeddings file** (:class:`EmbeddingWriter`, :class:`EmbeddingFile`)::

    /embedding   float32 [N, D]
    /utt_id      str [N]         unique in the file
    /speaker     str [N]         "" where unknown
    /path        str [N]         the audio file (corpus inputs: the corpus file's source path)
    attrs: format, schema_version, model_class, checkpoint, checkpoint_sha256, sample_rate,
           frontend (JSON), embedding_dim, source (JSON), max_seconds (-1: whole utterances), exact, device,
           skipped (JSON, first 1000), skipped_count, created, speakerzoo_version, complete

It is written under a temporary name and renamed only when complete. Nothing in it depends
on the time of the run but ``created``, which follows ``SOURCE_DATE_EPOCH`` when that is set
(then two runs on the same inputs and device write byte-identical files).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import h5py
import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from speakerzoo import __version__
from speakerzoo.argtypes import parse_or_exit_code, positive_float, positive_int
from speakerzoo.atomic import same_file_among
from speakerzoo.audio import AUDIO_EXTENSIONS, AudioError, load_audio
from speakerzoo.datamodules.corpus import FORMAT as CORPUS_FORMAT
from speakerzoo.datamodules.corpus import Corpus, CorpusError
from speakerzoo.datamodules.sources import SourceError, manifest, scan_audio
from speakerzoo.h5file import AtomicH5Writer, created_timestamp
from speakerzoo.inference.engine import (  # the engine's names stay importable from here too
    EmbeddingError,
    batch_invariant_kernels,
    embed_waveforms,
    length_batches,
    min_samples,
)
from speakerzoo.zoo.registry import sha256_of

__all__ = [
    "FORMAT",
    "EmbeddingError",
    "EmbeddingFile",
    "EmbeddingWriter",
    "EmbedSummary",
    "Item",
    "batch_invariant_kernels",
    "build_parser",
    "embed_items",
    "embed_waveforms",
    "items_from_corpus",
    "items_from_folder",
    "items_from_list",
    "items_from_manifest",
    "length_batches",
    "main",
    "min_samples",
]

FORMAT = "speakerzoo-embeddings"
SCHEMA_VERSION = 1
_STR = h5py.string_dtype()
_MAX_SKIPPED_IN_ATTRS = 1000
_MAX_SKIPPED_PRINTED = 20
#: Audio held in memory at once while embedding files (samples; 2^25 = 35 min at 16 kHz, 128 MiB).
WINDOW_SAMPLES = 1 << 25


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Item:
    """One utterance to embed: a file (``corpus_index = -1``) or a corpus utterance."""

    utt_id: str
    speaker: str = ""
    path: str = ""
    corpus_index: int = -1


def _strip_audio_ext(name: str) -> str:
    while os.path.splitext(name)[1].lower() in AUDIO_EXTENSIONS:
        name = os.path.splitext(name)[0]
    return name


def _unique_ids(rel: list[str]) -> list[str]:
    """Relative paths -> ids without audio extension, keeping it where two files would clash."""
    ids = [_strip_audio_ext(r) for r in rel]
    counts: dict[str, int] = {}
    for i in ids:
        counts[i] = counts.get(i, 0) + 1
    return [r if counts[i] > 1 else i for r, i in zip(rel, ids)]


def items_from_folder(root: str | Path, speakers: bool = True) -> tuple[list[Item], list[tuple[str, str]]]:
    """Every audio file below ``root`` and the files that cannot be decoded (``.m4a`` ...) with the reason.

    ``utt_id`` is the path relative to ``root`` without its extension; the first folder level
    names the speaker (``""`` for files directly in ``root`` or when ``speakers`` is false).
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise SourceError(f"{root}: no such folder")
    root = root.resolve()
    files, unsupported = scan_audio(root)
    rel = [p.relative_to(root).as_posix() for p in files]
    items = [
        Item(utt_id=i, speaker=(r.split("/")[0] if speakers and "/" in r else ""), path=str(p))
        for p, r, i in zip(files, rel, _unique_ids(rel))
    ]
    skipped = [(str(p), f"{p.suffix} cannot be decoded (soundfile reads wav, flac, ogg and mp3); convert it to wav first")
               for p in unsupported]
    if not items and not skipped:
        raise SourceError(f"{root}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) below this folder")
    return items, skipped


def items_from_list(list_path: str | Path) -> list[Item]:
    """A text file with one audio path per line (relative paths from the list's folder)."""
    list_path = Path(list_path).expanduser()
    if not list_path.is_file():
        raise SourceError(f"{list_path}: no such file list")
    base = list_path.resolve().parent
    paths: list[Path] = []
    for line in list_path.read_text(encoding="utf-8-sig").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        p = Path(line).expanduser()
        paths.append((p if p.is_absolute() else base / p).resolve())
    if not paths:
        raise SourceError(f"{list_path}: the file list names no files (one path per line)")
    try:
        common = Path(os.path.commonpath([str(p.parent) for p in paths]))
    except ValueError:  # different drives
        common = Path(paths[0].anchor)
    rel = [p.relative_to(common).as_posix() for p in paths]
    ids = _unique_ids(rel)
    seen: set[str] = set()
    items = []
    for p, i in zip(paths, ids):
        if i in seen:  # the same file listed twice
            continue
        seen.add(i)
        items.append(Item(utt_id=i, path=str(p)))
    return items


def items_from_manifest(csv_path: str | Path) -> list[Item]:
    """A manifest CSV as ``speakerzoo prepare manifest`` reads it (``utt_id``, ``speaker`` from its columns)."""
    return [Item(utt_id=r.utt_id, speaker=r.speaker or "", path=str(r.path)) for r in manifest(csv_path)]


def items_from_corpus(corpus: Corpus, split: str | None = None, part: str | None = None) -> list[Item]:
    """The utterances of a corpus, or of one ``part`` of one ``split`` (in corpus order)."""
    if (split is None) != (part is None):
        raise EmbeddingError("give --split and --part together (e.g. --split speaker --part test), or neither")
    index = np.arange(len(corpus)) if split is None else np.sort(corpus.split(split, part))
    utt_ids, paths = corpus.texts("utt_id"), corpus.texts("path")
    return [
        Item(utt_id=utt_ids[i], speaker=corpus.speakers[corpus.speaker[i]] if corpus.speaker[i] >= 0 else "",
             path=paths[i], corpus_index=int(i))
        for i in index
    ]


def _is_corpus(path: Path) -> bool:
    if path.suffix.lower() not in (".h5", ".hdf5") or not path.is_file():
        return False
    try:
        with h5py.File(path, "r") as h5:
            return h5.attrs.get("format") == CORPUS_FORMAT
    except OSError:
        return False


# --------------------------------------------------------------------------- the embeddings file


class EmbeddingWriter(AtomicH5Writer):
    """Writes one embeddings file; use as a context manager.

    Example::

        with EmbeddingWriter("emb.h5") as w:
            w.add(emb, utt_ids, speakers, paths)  # as often as needed
            w.finish({"model_class": ...})

    Leaving the block without :meth:`finish` removes the temporary file and leaves an existing
    file at ``path`` untouched.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.is_dir():
            raise EmbeddingError(f"{self.path}: output is a folder; give a file name such as {self.path / 'embeddings.h5'}")
        super().__init__(self.path)
        self._emb: h5py.Dataset | None = None
        self.dim = 0  # embedding size, known after the first add()
        self._text: dict[str, list[str]] = {"utt_id": [], "speaker": [], "path": []}
        self._ids: set[str] = set()

    def __len__(self) -> int:
        return len(self._text["utt_id"])

    @property
    def speaker_count(self) -> int:
        """Distinct non-empty speaker names added so far."""
        return len({s for s in self._text["speaker"] if s})

    def add(self, emb: Tensor | np.ndarray, utt_ids: Sequence[str], speakers: Sequence[str], paths: Sequence[str]) -> None:
        emb = np.asarray(torch.as_tensor(emb).detach().cpu().float().numpy(), dtype=np.float32)
        if emb.ndim != 2 or not (len(emb) == len(utt_ids) == len(speakers) == len(paths)):
            raise ValueError(f"expected [n, D] embeddings with n ids, speakers and paths; got {emb.shape}, "
                             f"{len(utt_ids)}, {len(speakers)}, {len(paths)}")
        for u in utt_ids:
            if u in self._ids:
                raise EmbeddingError(f"utterance id {u!r} appears twice; ids must be unique in an embeddings file")
            self._ids.add(u)
        if self._emb is None:
            dim = emb.shape[1]
            self._emb = self.dataset("embedding", shape=(0, dim), maxshape=(None, dim), dtype=np.float32,
                                     chunks=(max(1, min(4096, (1 << 18) // max(dim, 1))), dim),
                                     track_times=False)
            self.dim = dim
        elif emb.shape[1] != self._emb.shape[1]:
            raise ValueError(f"embedding size {emb.shape[1]} differs from the first rows' {self._emb.shape[1]}")
        start = self._emb.shape[0]
        self._emb.resize((start + len(emb), emb.shape[1]))
        self._emb[start:] = emb
        for key, values in zip(("utt_id", "speaker", "path"), (utt_ids, speakers, paths)):
            self._text[key].extend(str(v) for v in values)

    def finish(self, attrs: dict[str, Any] | None = None) -> Path:
        """Write the ids and attributes, mark the file complete and rename it into place."""
        if self._emb is None or len(self) == 0:
            raise EmbeddingError(f"{self.path}: no embeddings were added; nothing to write")
        for key, values in self._text.items():
            self._h5.create_dataset(key, data=np.asarray(values, dtype=object), dtype=_STR, track_times=False)
        plain = {k: (json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else ("" if v is None else v))
                 for k, v in dict(attrs or {}).items()}
        self._h5.attrs.update({
            **plain,
            "format": FORMAT,
            "schema_version": SCHEMA_VERSION,
            "embedding_dim": int(self._emb.shape[1]),
            "created": created_timestamp(),
            "speakerzoo_version": __version__,
            "complete": True,
        })
        return self._commit()


class EmbeddingFile:
    """An embeddings file read whole into memory.

    Attributes:
        embedding: ``[N, D]`` float32 tensor.
        utt_id, speaker, path: lists of ``N`` strings (``""`` where unknown).
        attrs: the file attributes, JSON values decoded.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise EmbeddingError(f"{self.path}: no such embeddings file; make it with `speakerzoo embed ... --output {self.path}`")
        try:
            with h5py.File(self.path, "r") as h5:
                attrs = dict(h5.attrs)
                if attrs.get("format") != FORMAT:
                    raise EmbeddingError(f"{self.path}: not a speakerzoo embeddings file (format "
                                         f"{attrs.get('format')!r}); make one with `speakerzoo embed`")
                if int(attrs.get("schema_version", -1)) != SCHEMA_VERSION:
                    raise EmbeddingError(f"{self.path}: embeddings schema version {attrs.get('schema_version')}, "
                                         f"this speakerzoo reads {SCHEMA_VERSION}; embed again")
                if not bool(attrs.get("complete", False)):
                    raise EmbeddingError(f"{self.path}: not completely written; embed again")
                self.embedding = torch.from_numpy(h5["embedding"][:])
                self.utt_id = [_text(s) for s in h5["utt_id"][:]]
                self.speaker = [_text(s) for s in h5["speaker"][:]]
                self.paths = [_text(s) for s in h5["path"][:]]
        except EmbeddingError:
            raise
        except (OSError, KeyError) as err:
            raise EmbeddingError(f"{self.path}: not a readable embeddings file ({err}); embed again") from err
        self.attrs = {k: _attr(v) for k, v in attrs.items()}
        self._row = {u: i for i, u in enumerate(self.utt_id)}

    def __len__(self) -> int:
        return len(self.utt_id)

    def __contains__(self, utt_id: object) -> bool:
        """Whether ``utt_id`` (or it without its audio extension) has an embedding."""
        return isinstance(utt_id, str) and (utt_id in self._row or _strip_audio_ext(utt_id) in self._row)

    def rows(self, utt_ids: Sequence[str]) -> Tensor:
        """Row of each id (``int64``). An id that is missing is tried without its audio extension
        (VoxCeleb trial lists name ``id10270/x6uYqmx31kE/00001.wav``). Raises ``KeyError`` naming
        what is missing."""
        rows, missing = [], []
        for u in utt_ids:
            r = self._row.get(u)
            if r is None:
                r = self._row.get(_strip_audio_ext(u))
            if r is None:
                missing.append(u)
                r = -1
            rows.append(r)
        if missing:
            raise KeyError(f"{self.path}: {len(set(missing))} utterance id(s) have no embedding, e.g. "
                           f"{sorted(set(missing))[:3]}")
        return torch.tensor(rows, dtype=torch.int64)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _attr(value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except ValueError:
            return value
    if isinstance(value, np.generic):
        return value.item()
    return value


# --------------------------------------------------------------------------- embedding inputs


@dataclass
class EmbedSummary:
    """What :func:`embed_items` wrote; ``print(summary)`` is the command's report."""

    output: Path
    utterances: int
    embedding_dim: int
    seconds: float  # of audio embedded (after cropping)
    elapsed: float
    skipped: list[tuple[str, str]] = field(default_factory=list)
    speakers: int = 0

    @property
    def rate(self) -> float:
        """Utterances embedded per wall-clock second (decoding included)."""
        return self.utterances / self.elapsed if self.elapsed > 0 else float("inf")

    def __str__(self) -> str:
        lines = [f"embedded {self.output}",
                 f"  utterances       {self.utterances} ({self.speakers} speakers)",
                 f"  embedding size   {self.embedding_dim}",
                 f"  audio            {self.seconds:.1f} s"]
        if self.skipped:
            lines.append(f"  skipped          {len(self.skipped)} file(s):")
            lines += [f"    {p}: {r}" for p, r in self.skipped[:_MAX_SKIPPED_PRINTED]]
            if len(self.skipped) > _MAX_SKIPPED_PRINTED:
                lines.append(f"    ... and {len(self.skipped) - _MAX_SKIPPED_PRINTED} more (attribute 'skipped' of the file)")
        else:
            lines.append("  skipped          none")
        lines.append(f"  took             {self.elapsed:.1f} s ({self.rate:.1f} utterances/s)")
        return "\n".join(lines)


def _crop(wave: np.ndarray, max_samples: int | None) -> np.ndarray:
    """Centre crop to ``max_samples`` (as the DataModules' evaluation loader does)."""
    if max_samples is not None and len(wave) > max_samples:
        start = (len(wave) - max_samples) // 2
        return wave[start : start + max_samples]
    return wave


def load_item(item: Item, corpus: Corpus | None, sample_rate: int) -> np.ndarray:
    """The audio of ``item`` at ``sample_rate``: from the corpus, or its file (conditioned and checked as in prepare)."""
    if item.corpus_index >= 0:
        assert corpus is not None
        return corpus.audio(item.corpus_index)
    return load_audio(item.path, sample_rate)[0]  # checked as in prepare: truncation, regular file


def embed_items(
    model: torch.nn.Module,
    items: Sequence[Item],
    output: str | Path,
    corpus: Corpus | None = None,
    batch_size: int = 32,
    max_seconds: float | None = None,
    exact: bool = True,
    threads: int | None = None,
    progress: bool = True,
    skipped: Sequence[tuple[str, str]] = (),
    attrs: dict[str, Any] | None = None,
    window_samples: int | None = None,
) -> EmbedSummary:
    """Embed ``items`` (files, or utterances of ``corpus``) into the embeddings file ``output``.

    Audio is decoded a window at a time (about ``window_samples`` samples, default
    :data:`WINDOW_SAMPLES`) and each window is
    embedded with :func:`embed_waveforms`; rows keep the order of ``items``. Files that cannot
    be decoded, truncated WAVs and clips too short for the model are skipped and listed
    (``skipped`` adds files the caller already rejected).
    """
    t0 = time.perf_counter()
    window_samples = WINDOW_SAMPLES if window_samples is None else int(window_samples)
    sample_rate = int(model.sample_rate)
    if corpus is not None and corpus.sample_rate != sample_rate:
        raise EmbeddingError(f"{corpus.path} is at {corpus.sample_rate} Hz but the model expects {sample_rate} Hz; "
                             f"prepare the corpus with --sample-rate {sample_rate}, or embed the audio files")
    max_samples = None if max_seconds is None else int(round(max_seconds * sample_rate))
    if max_samples is not None and max_samples < 1:
        raise EmbeddingError(f"--max-seconds must be positive, not {max_seconds}")
    shortest = min_samples(model)
    skipped = list(skipped)
    seconds = 0.0
    bar = tqdm(total=len(items), desc="embedding", unit="utt", disable=not progress, dynamic_ncols=True)
    try:
        with EmbeddingWriter(output) as writer:
            pending: list[tuple[Item, np.ndarray]] = []
            pending_samples = 0

            def flush() -> None:
                nonlocal pending, pending_samples
                if pending:
                    emb = embed_waveforms(model, [w for _, w in pending], batch_size=batch_size, exact=exact,
                                          threads=threads, progress=bar.update)
                    writer.add(emb, [it.utt_id for it, _ in pending], [it.speaker for it, _ in pending],
                               [it.path for it, _ in pending])
                pending, pending_samples = [], 0

            for item in items:
                try:
                    wave = _crop(load_item(item, corpus, sample_rate), max_samples)
                except AudioError as err:
                    skipped.append((item.path, err.reason))
                    bar.update(1)
                    continue
                except Exception as err:  # a decoder failure must name the file, not end the run
                    skipped.append((item.path, f"decoding failed ({type(err).__name__}: {err})"))
                    bar.update(1)
                    continue
                if len(wave) < shortest:
                    skipped.append((item.path or item.utt_id,
                                    f"too short for the model ({len(wave)} samples; it needs at least {shortest}, "
                                    f"{shortest / sample_rate:.3f} s)"))
                    bar.update(1)
                    continue
                seconds += len(wave) / sample_rate
                pending.append((item, wave))
                pending_samples += len(wave)
                if pending_samples >= window_samples:
                    flush()
            flush()
            bar.close()
            if len(writer) == 0:
                first = "; ".join(f"{p}: {r}" for p, r in skipped[:3])
                raise EmbeddingError(f"none of the {len(skipped)} files could be embedded, nothing written (e.g. {first})"
                                     if skipped else "no utterances to embed, nothing written")
            writer.finish({
                **dict(attrs or {}),
                "sample_rate": sample_rate,
                "frontend": model.frontend.config.to_dict() if hasattr(model, "frontend") else {},
                "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
                "max_seconds": -1.0 if max_seconds is None else float(max_seconds),
                "exact": bool(exact),
                "device": torch.device(getattr(model, "device", "cpu")).type,
                "skipped": [list(s) for s in skipped[:_MAX_SKIPPED_IN_ATTRS]],
                "skipped_count": len(skipped),
            })
            count, dim, speakers = len(writer), writer.dim, writer.speaker_count
    finally:
        bar.close()
    return EmbedSummary(output=Path(output), utterances=count, embedding_dim=dim, seconds=seconds,
                        elapsed=time.perf_counter() - t0, skipped=skipped, speakers=speakers)


# --------------------------------------------------------------------------- command line

EXAMPLES = """examples:
  speakerzoo embed data/speech_commands.h5 --split speaker --part test --checkpoint best.ckpt --output emb/test.h5
  speakerzoo embed my_speakers/ --checkpoint best.ckpt --output emb/mine.h5 --max-seconds 20
  speakerzoo embed files.txt --checkpoint best.ckpt --output emb/files.h5 --device cuda --batch-size 64
  speakerzoo embed list.csv --checkpoint best.ckpt --output emb/list.h5
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="speakerzoo embed",
        description=textwrap.fill(
            "Embed audio with a trained model into an HDF5 embeddings file (embedding [N, D] float32, "
            "utt_id, speaker, path; model, checkpoint sha256, sample rate and frontend as attributes). "
            "INPUT is a folder (every audio file below it; the first folder level names the speaker), "
            "a manifest .csv (path,speaker[,...]), a text file with one audio path per line, or a corpus .h5 "
            "from `speakerzoo prepare`. Utterances are batched only with others of exactly the same length, "
            "so padding never changes an embedding. Files that cannot be decoded are skipped and listed."
        , width=100),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("input", type=Path, metavar="INPUT", help="folder, file list, manifest .csv or corpus .h5")
    parser.add_argument("--checkpoint", "-c", required=True, metavar="CKPT",
                        help="checkpoint file (or registered checkpoint name) of an embedding model")
    parser.add_argument("--output", "-o", required=True, type=Path, metavar="OUT.h5", help="embeddings file to write")
    parser.add_argument("--split", choices=("speaker", "utterance"), help="corpus input: the split ...")
    parser.add_argument("--part", choices=("train", "val", "test"), help="... and the part of it to embed")
    parser.add_argument("--batch-size", type=positive_int, default=32, metavar="N",
                        help="most utterances of equal length per forward pass (default: 32)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available, else cpu)")
    parser.add_argument("--max-seconds", type=positive_float, metavar="S",
                        help="centre-crop longer utterances to S seconds (default: whole utterances)")
    parser.add_argument("--no-speakers", action="store_true",
                        help="folder input: do not take speaker names from the first folder level")
    parser.add_argument("--fast", action="store_true",
                        help="default kernels instead of batch-invariant ones: faster on some machines, but an "
                             "embedding may then differ in its last digits with its batch-mates")
    parser.add_argument("--threads", type=positive_int, metavar="N",
                        help=f"CPU: batches embedded in parallel (default: {torch.get_num_threads()})")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar; print only the output path")
    return parser


def _error(message: str) -> int:
    print(f"speakerzoo embed: error: {message}", file=sys.stderr)
    return 2


def device_from_name(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EmbeddingError(f"--device {name}: CUDA is not available on this machine")
    return device


def load_model(checkpoint: str, device: torch.device):
    from speakerzoo.zoo.base import SpeakerEmbeddingModule

    model = SpeakerEmbeddingModule.from_pretrained(checkpoint, map_location="cpu")
    return model.to(device).eval()


def main(argv: list[str] | None = None) -> int:
    """``speakerzoo embed ...``; returns the exit code (0 done, 2 error, 130 interrupted)."""
    args = parse_or_exit_code(build_parser(), argv)
    if isinstance(args, int):
        return args
    from speakerzoo.zoo.base import InvalidCheckpointError

    corpus = None
    try:
        device = device_from_name(args.device)
        source = args.input.expanduser()
        skipped: list[tuple[str, str]] = []
        if _is_corpus(source):
            corpus = Corpus(source)
            items = items_from_corpus(corpus, args.split, args.part)
            info = {"kind": "corpus", "path": str(source.resolve()), "split": args.split, "part": args.part}
        elif args.split or args.part:
            raise EmbeddingError(f"--split and --part apply to a corpus .h5 input; {source} is not one")
        elif source.is_dir():
            items, skipped = items_from_folder(source, speakers=not args.no_speakers)
            info = {"kind": "folder", "path": str(source.resolve())}
        elif source.suffix.lower() == ".csv":
            items = items_from_manifest(source)
            info = {"kind": "manifest", "path": str(source.resolve())}
        elif source.suffix.lower() in (".h5", ".hdf5"):
            Corpus(source)  # raises the reader's explanation of what is wrong with the file
            raise EmbeddingError(f"{source}: not a speakerzoo corpus")
        elif source.is_file():
            items = items_from_list(source)
            info = {"kind": "list", "path": str(source.resolve())}
        else:
            raise EmbeddingError(f"{source}: no such folder or file")
        # A path, or a registered name (its file's digest checked): the file is recorded either way.
        model = load_model(args.checkpoint, device)
        checkpoint = model.checkpoint_path
        clash = same_file_among(args.output, [source, checkpoint, *(item.path for item in items)])
        if clash is not None:
            raise EmbeddingError(f"--output {args.output} is an input of this run ({clash}): writing the embeddings "
                                 "would replace it. Give the embeddings file a new name, e.g. embeddings.h5")
        attrs = {
            "checkpoint": str(checkpoint.resolve()),
            # the registered name, when the checkpoint was given by one
            "checkpoint_name": "" if Path(args.checkpoint).expanduser().resolve() == checkpoint.resolve()
            else args.checkpoint,
            "checkpoint_sha256": sha256_of(checkpoint),
            "source": info,
        }
        summary = embed_items(model, items, args.output, corpus=corpus, batch_size=args.batch_size,
                              max_seconds=args.max_seconds, exact=not args.fast, threads=args.threads,
                              progress=not args.quiet, skipped=skipped, attrs=attrs)
    except KeyboardInterrupt:
        print(f"speakerzoo embed: interrupted; {args.output} was left as it was", file=sys.stderr)
        return 130
    except (EmbeddingError, SourceError, CorpusError, InvalidCheckpointError, FileNotFoundError, ValueError,
            OSError) as err:
        return _error(str(err))
    finally:
        if corpus is not None:
            corpus.close()
    if args.quiet:
        print(summary.output)
        if summary.skipped:
            print(f"speakerzoo embed: warning: skipped {len(summary.skipped)} file(s); run without --quiet for the list",
                  file=sys.stderr)
    else:
        print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
