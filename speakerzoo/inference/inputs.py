"""What to embed: the utterances of a folder, a file list, a manifest or a corpus (middle floor).

:func:`find_inputs` decides by what ``source`` is:

* a folder: every audio file below it (``.wav .flac .ogg .mp3``, sorted by relative path);
  the first folder level names the speaker (``<speaker>/...``), files lying directly in the
  folder have none; ``speakers=False`` records no speakers at all;
* a ``.csv`` manifest (``path,speaker[,transcript,session,utt_id]``, as ``speakerzoo prepare manifest``);
* any other text file: a file list, one path per line (``#`` comments and blank lines skipped);
* a corpus file (``.h5`` from ``speakerzoo prepare``), optionally one part of one split.

Relative paths in lists and manifests are read from the list's folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from speakerzoo.audio import AUDIO_EXTENSIONS, strip_audio_ext
from speakerzoo.datamodules.corpus import FORMAT as CORPUS_FORMAT
from speakerzoo.datamodules.corpus import Corpus
from speakerzoo.datamodules.sources import SourceError, manifest, scan_audio
from speakerzoo.embeddings import EmbeddingError

__all__ = ["Inputs", "Item", "find_inputs", "is_corpus", "items_from_corpus", "items_from_folder",
           "items_from_list", "items_from_manifest"]


@dataclass(frozen=True)
class Item:
    """One utterance to embed: a file (``corpus_index = -1``) or a corpus utterance."""

    utt_id: str
    speaker: str = ""
    path: str = ""
    corpus_index: int = -1


def _unique_ids(rel: list[str]) -> list[str]:
    """Relative paths -> ids without audio extension, keeping it where two files would clash."""
    ids = [strip_audio_ext(r) for r in rel]
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


def is_corpus(path: Path) -> bool:
    if path.suffix.lower() not in (".h5", ".hdf5") or not path.is_file():
        return False
    try:
        with h5py.File(path, "r") as h5:
            return h5.attrs.get("format") == CORPUS_FORMAT
    except OSError:
        return False


@dataclass
class Inputs:
    """The utterances :func:`find_inputs` found: ``items`` in order, the files it ``skipped`` with
    the reason, the open ``corpus`` (corpus inputs; close it when done) and ``info`` (what the
    source was, as the embeddings file records it)."""

    items: list[Item]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    corpus: Corpus | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def close(self) -> None:
        if self.corpus is not None:
            self.corpus.close()


def find_inputs(source: str | Path, split: str | None = None, part: str | None = None,
                speakers: bool = True) -> Inputs:
    """The utterances of ``source`` (a folder, ``.csv`` manifest, file list or corpus ``.h5``; see
    the module docstring); ``split`` and ``part`` choose one part of a corpus."""
    source = Path(source).expanduser()
    if is_corpus(source):
        corpus = Corpus(source)
        try:
            items = items_from_corpus(corpus, split, part)
        except BaseException:
            corpus.close()
            raise
        return Inputs(items, [], corpus, {"kind": "corpus", "path": str(source.resolve()), "split": split,
                                          "part": part})
    if split or part:
        raise EmbeddingError(f"--split and --part apply to a corpus .h5 input; {source} is not one")
    if source.is_dir():
        items, skipped = items_from_folder(source, speakers=speakers)
        return Inputs(items, skipped, None, {"kind": "folder", "path": str(source.resolve())})
    if source.suffix.lower() == ".csv":
        return Inputs(items_from_manifest(source), [], None, {"kind": "manifest", "path": str(source.resolve())})
    if source.suffix.lower() in (".h5", ".hdf5"):
        Corpus(source)  # raises the reader's explanation of what is wrong with the file
        raise EmbeddingError(f"{source}: not a speakerzoo corpus")
    if source.is_file():
        return Inputs(items_from_list(source), [], None, {"kind": "list", "path": str(source.resolve())})
    raise EmbeddingError(f"{source}: no such folder or file")
