"""Embedding utterances (audio files or corpus rows) into rows or into an embeddings file (middle floor).

Audio is decoded a window at a time (about :data:`WINDOW_SAMPLES` samples) and each window is
embedded by the one engine, :func:`~speakerzoo.inference.engine.embed_waveforms`: batched only
with utterances of exactly the same length, under batch-invariant kernels, so that a file's
embedding is bitwise the same whatever else is embedded with it (see the engine). Files that
cannot be decoded, truncated WAVs and clips too short for the model are skipped and listed, not
fatal. ``speakerzoo embed`` is :func:`embed_to_file`; the Python API's ``embed_files`` is
:func:`embed_items` into :class:`EmbeddingRows`: the same rows, bitwise.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from speakerzoo.atomic import same_file_among
from speakerzoo.audio import AudioError, load_audio
from speakerzoo.datamodules.corpus import Corpus
from speakerzoo.embeddings import EmbeddingError, EmbeddingWriter
from speakerzoo.inference.engine import centre_crop, embed_waveforms, min_samples, resolve_batching
from speakerzoo.inference.inputs import Item, find_inputs
from speakerzoo.inference.loading import device_from_name, load_model, model_class_path
from speakerzoo.zoo.registry import sha256_of

__all__ = ["WINDOW_SAMPLES", "EmbedSummary", "EmbeddingRows", "ItemsEmbedded", "embed_items", "embed_source",
           "embed_to_file", "load_item"]

#: Audio held in memory at once while embedding files (samples; 2^25 = 35 min at 16 kHz, 128 MiB).
WINDOW_SAMPLES = 1 << 25
_MAX_SKIPPED_IN_ATTRS = 1000
_MAX_SKIPPED_PRINTED = 20


class RowSink(Protocol):
    """Where :func:`embed_items` puts rows: an :class:`~speakerzoo.embeddings.EmbeddingWriter` or :class:`EmbeddingRows`."""

    def add(self, emb: Tensor, utt_ids: Sequence[str], speakers: Sequence[str], paths: Sequence[str]) -> None: ...


@dataclass
class EmbeddingRows:
    """Embedded rows kept in memory (what :func:`embed_items` adds), in the order they were added."""

    embedding: list[Tensor] = field(default_factory=list)
    utt_id: list[str] = field(default_factory=list)
    speaker: list[str] = field(default_factory=list)
    path: list[str] = field(default_factory=list)

    def add(self, emb: Tensor, utt_ids: Sequence[str], speakers: Sequence[str], paths: Sequence[str]) -> None:
        self.embedding.extend(torch.as_tensor(emb).float().cpu())
        self.utt_id.extend(utt_ids)
        self.speaker.extend(speakers)
        self.path.extend(paths)

    def stacked(self, dim: int = 0) -> Tensor:
        """``[N, D]`` float32 (``[0, dim]`` when empty)."""
        return torch.stack(self.embedding) if self.embedding else torch.zeros(0, dim)


@dataclass
class ItemsEmbedded:
    """What :func:`embed_items` did: rows added, seconds of audio embedded, files skipped (with the reason)."""

    rows: int
    seconds: float
    skipped: list[tuple[str, str]]


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


def load_item(item: Item, corpus: Corpus | None, sample_rate: int) -> np.ndarray:
    """The audio of ``item`` at ``sample_rate``: from the corpus, or its file (conditioned and checked as in prepare)."""
    if item.corpus_index >= 0:
        assert corpus is not None
        return corpus.audio(item.corpus_index)
    return load_audio(item.path, sample_rate)[0]  # checked as in prepare: truncation, regular file


def embed_items(
    model: torch.nn.Module,
    items: Sequence[Item],
    sink: RowSink,
    corpus: Corpus | None = None,
    batch_size: int = 32,
    max_seconds: float | None = None,
    exact: bool = True,
    threads: int | None = None,
    progress: bool = True,
    window_samples: int | None = None,
    batching: str = "auto",
) -> ItemsEmbedded:
    """Embed ``items`` (files, or utterances of ``corpus``) into ``sink``, rows in the order of ``items``.

    Utterances that cannot be used are skipped and returned with the reason; ``max_seconds``
    centre-crops longer ones (as the evaluation loader does). ``batching``: how utterances of
    different lengths share a forward pass (:func:`~speakerzoo.inference.engine.embed_waveforms`;
    ``"auto"`` pads buckets of similar lengths for models that mask padding exactly, on a GPU).
    """
    try:
        resolve_batching(model, batching)  # a bad choice fails before any audio is read
    except ValueError as err:
        raise EmbeddingError(str(err)) from None
    window_samples = WINDOW_SAMPLES if window_samples is None else int(window_samples)
    sample_rate = int(model.sample_rate)
    if corpus is not None and corpus.sample_rate != sample_rate:
        raise EmbeddingError(f"{corpus.path} is at {corpus.sample_rate} Hz but the model expects {sample_rate} Hz; "
                             f"prepare the corpus with --sample-rate {sample_rate}, or embed the audio files")
    max_samples = None if max_seconds is None else int(round(max_seconds * sample_rate))
    if max_samples is not None and max_samples < 1:
        raise EmbeddingError(f"--max-seconds must be positive, not {max_seconds}")
    shortest = min_samples(model)
    skipped: list[tuple[str, str]] = []
    seconds, rows = 0.0, 0
    pending: list[tuple[Item, np.ndarray]] = []
    pending_samples = 0
    with tqdm(total=len(items), desc="embedding", unit="utt", disable=not progress, dynamic_ncols=True) as bar:

        def flush() -> None:
            nonlocal pending, pending_samples, rows
            if pending:
                emb = embed_waveforms(model, [w for _, w in pending], batch_size=batch_size, exact=exact,
                                      threads=threads, progress=bar.update, batching=batching)
                sink.add(emb, [it.utt_id for it, _ in pending], [it.speaker for it, _ in pending],
                         [it.path for it, _ in pending])
                rows += len(pending)
            pending, pending_samples = [], 0

        for item in items:
            try:
                wave = centre_crop(load_item(item, corpus, sample_rate), max_samples)  # as the evaluation loader does
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
    return ItemsEmbedded(rows=rows, seconds=seconds, skipped=skipped)


def embed_to_file(
    model: torch.nn.Module,
    items: Sequence[Item],
    output: str | Path,
    skipped: Sequence[tuple[str, str]] = (),
    attrs: dict[str, Any] | None = None,
    **options: Any,
) -> EmbedSummary:
    """Embed ``items`` into the embeddings file ``output`` (:mod:`speakerzoo.embeddings`), written
    under a temporary name and renamed when complete; ``skipped`` adds files the caller already
    rejected to the file's list, ``attrs`` to its attributes. ``options`` are :func:`embed_items`'s
    (``corpus``, ``batch_size``, ``max_seconds``, ``exact``, ``threads``, ``progress``,
    ``window_samples``, ``batching``). Raises :class:`~speakerzoo.embeddings.EmbeddingError` (nothing written)
    when no utterance could be embedded."""
    max_seconds, exact = options.get("max_seconds"), options.get("exact", True)
    t0 = time.perf_counter()
    with EmbeddingWriter(output) as writer:
        done = embed_items(model, items, writer, **options)
        skipped = [*skipped, *done.skipped]
        if len(writer) == 0:
            first = "; ".join(f"{p}: {r}" for p, r in skipped[:3])
            raise EmbeddingError(f"none of the {len(skipped)} files could be embedded, nothing written (e.g. {first})"
                                 if skipped else "no utterances to embed, nothing written")
        writer.finish({
            **dict(attrs or {}),
            "sample_rate": int(model.sample_rate),
            "frontend": model.frontend.config.to_dict() if hasattr(model, "frontend") else {},
            "model_class": model_class_path(model),
            "max_seconds": -1.0 if max_seconds is None else float(max_seconds),
            "exact": bool(exact),
            "batching": resolve_batching(model, options.get("batching", "auto")),
            "device": torch.device(getattr(model, "device", "cpu")).type,
            "skipped": [list(s) for s in skipped[:_MAX_SKIPPED_IN_ATTRS]],
            "skipped_count": len(skipped),
        })
        count, dim, speakers = len(writer), writer.dim, writer.speaker_count
    return EmbedSummary(output=Path(output), utterances=count, embedding_dim=dim, seconds=done.seconds,
                        elapsed=time.perf_counter() - t0, skipped=skipped, speakers=speakers)


def embed_source(
    checkpoint: str | Path,
    source: str | Path,
    output: str | Path,
    split: str | None = None,
    part: str | None = None,
    speakers: bool = True,
    device: str | torch.device = "auto",
    **options: Any,
) -> EmbedSummary:
    """``speakerzoo embed``: embed a folder, file list, manifest or corpus (part) with a checkpoint
    (file or registered name) into the embeddings file ``output``.

    ``options`` are those of :func:`embed_to_file` (``batch_size``, ``max_seconds``, ``exact``,
    ``threads``, ``progress``, ``batching``). The file records the checkpoint, its sha256 and the registered
    name it was given by, if any. Refuses an ``output`` that is one of the inputs.
    """
    device = device_from_name(device)  # a missing CUDA is said before any file is read
    inputs = find_inputs(source, split, part, speakers=speakers)
    try:
        model = load_model(checkpoint, device)
        path = model.checkpoint_path
        clash = same_file_among(output, [Path(source).expanduser(), path, *(item.path for item in inputs.items)])
        if clash is not None:
            raise EmbeddingError(f"--output {output} is an input of this run ({clash}): writing the embeddings "
                                 "would replace it. Give the embeddings file a new name, e.g. embeddings.h5")
        given = Path(str(checkpoint)).expanduser()
        attrs = {
            "checkpoint": str(path.resolve()),
            # the registered name, when the checkpoint was given by one
            "checkpoint_name": "" if given.resolve() == path.resolve() else str(checkpoint),
            "checkpoint_sha256": sha256_of(path),
            "source": inputs.info,
        }
        return embed_to_file(model, inputs.items, output, corpus=inputs.corpus, skipped=inputs.skipped,
                             attrs=attrs, **options)
    finally:
        inputs.close()
