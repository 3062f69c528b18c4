"""The embeddings file: the data contract between ``speakerzoo embed`` and what reads its output
(``score``, ``verify``/``identify --enrol-embeddings``, the Python API), like ``corpus.h5`` is between
``prepare`` and training (ground floor)::

    /embedding   float32 [N, D]
    /utt_id      str [N]         unique in the file
    /speaker     str [N]         "" where unknown
    /path        str [N]         the audio file (corpus inputs: the corpus file's source path)
    attrs: format, schema_version, model_class, checkpoint, checkpoint_sha256, sample_rate,
           frontend (JSON), embedding_dim, source (JSON), max_seconds (-1: whole utterances), exact, device,
           skipped (JSON, first 1000), skipped_count, created, speakerzoo_version, complete

It is written under a temporary name and renamed only when complete (:class:`EmbeddingWriter`).
Nothing in it depends on the time of the run but ``created``, which follows ``SOURCE_DATE_EPOCH``
when that is set (then two runs on the same inputs and device write byte-identical files).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch import Tensor

from speakerzoo import __version__
from speakerzoo.audio import strip_audio_ext
from speakerzoo.h5file import AtomicH5Writer, created_timestamp

__all__ = ["FORMAT", "SCHEMA_VERSION", "EmbeddingError", "EmbeddingFile", "EmbeddingWriter"]

FORMAT = "speakerzoo-embeddings"
SCHEMA_VERSION = 1
_STR = h5py.string_dtype()


class EmbeddingError(RuntimeError):
    """Embedding cannot go on, or an embeddings file cannot be used; the message says why."""


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
        return isinstance(utt_id, str) and (utt_id in self._row or strip_audio_ext(utt_id) in self._row)

    def rows(self, utt_ids: Sequence[str]) -> Tensor:
        """Row of each id (``int64``). An id that is missing is tried without its audio extension
        (VoxCeleb trial lists name ``id10270/x6uYqmx31kE/00001.wav``). Raises ``KeyError`` naming
        what is missing."""
        rows, missing = [], []
        for u in utt_ids:
            r = self._row.get(u)
            if r is None:
                r = self._row.get(strip_audio_ext(u))
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
