"""Cut a prepared corpus into fixed-length chunks (seed paper 004): the library behind
``speakerzoo chunk`` (its command line is :mod:`speakerzoo.commands.chunk`).

Speaker identification is compared across 3, 5 and 10 s of speech in seed 004, so the
corpus is re-cut into chunks of one length: a new corpus file whose utterances are the
chunks, with its own splits and trials. Two ways to cut:

* ``join=True``, for corpora of short clips (FSDD, Speech Commands: well under a second
  each): a speaker's clips, in corpus order, are joined end to end and cut every
  ``chunk_samples`` samples, so one chunk may span several clips;
* ``join=False``, for long recordings: every utterance is cut on its own, and a chunk never
  spans two recordings.

``join="auto"`` joins when the median speaker utterance is shorter than the chunk. The last
piece shorter than a chunk (per speaker when joined, per utterance otherwise) is kept as a
shorter chunk (``tail="keep"``: no audio is lost) or left out (``tail="drop"``: every chunk
has exactly the chunk length). Noise clips (no speaker) are not chunked: they are copied
whole, still without a speaker, so that waveform augmentation can draw noise from them.

The int16 PCM is copied sample for sample (never decoded to float and back), the sample
rate is kept, and the output is written under a temporary name and renamed only when
complete, as :mod:`speakerzoo.datamodules.prepare` does. Cached features of the source are
not carried over (frames at chunk boundaries would differ); ask for them again with
``features``. Note that with the ``utterance`` split the chunks of one speaker are shuffled
into train, val and test, so neighbouring chunks of one recording (or of one clip cut at a
chunk boundary) can sit in different parts: no sample is in two parts, but the recording is.

Example: speaker 0 has clips 0 and 2 (3 and 5 samples), clip 1 is noise; chunks of 4 samples:

>>> import numpy as np
>>> from speakerzoo.datamodules.chunks import plan_chunks
>>> lengths, speaker = np.array([3, 4, 5]), np.array([0, -1, 0])
>>> [c.pieces for c in plan_chunks(lengths, speaker, chunk_samples=4, join=True)]
[((0, 0, 3), (2, 0, 1)), ((2, 1, 5),)]
>>> [c.pieces for c in plan_chunks(lengths, speaker, chunk_samples=4, join=False)]
[((0, 0, 3),), ((2, 0, 4),), ((2, 4, 5),)]
>>> [c.pieces for c in plan_chunks(lengths, speaker, chunk_samples=4, join=False, tail="drop")]
[((2, 0, 4),)]
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Literal, Sequence

import numpy as np
from tqdm.auto import tqdm

from speakerzoo.atomic import same_file_among
from speakerzoo.datamodules.corpus import Corpus, CorpusError, CorpusWriter, cacheable_features
from speakerzoo.datamodules.splits import check_ratios
from speakerzoo.features import FeatureConfig

__all__ = ["Chunk", "plan_chunks", "chunk_corpus", "TAILS"]

#: What to do with the last piece shorter than a chunk.
TAILS = ("keep", "drop")

#: Utterances up to this many samples are read from the source whole, once (2 M samples = 4 MB);
#: longer ones are read piece by piece, so a recording of hours is never held in memory.
_READ_WHOLE_SAMPLES = 1 << 21


@dataclass(frozen=True)
class Chunk:
    """One chunk of the plan: a speaker id of the source corpus and the source sample ranges
    ``(utterance index, start, stop)`` that, concatenated in order, make up its audio."""

    speaker: int
    pieces: tuple[tuple[int, int, int], ...]

    @property
    def num_samples(self) -> int:
        return sum(stop - start for _, start, stop in self.pieces)


def _cut(utterances: Iterable[int], num_samples: np.ndarray, speaker: int, chunk_samples: int,
         keep_tail: bool) -> list[Chunk]:
    """Join ``utterances`` end to end and cut the stream every ``chunk_samples`` samples."""
    chunks: list[Chunk] = []
    pieces: list[tuple[int, int, int]] = []
    filled = 0
    for u in utterances:
        u, n, pos = int(u), int(num_samples[u]), 0
        while pos < n:
            take = min(chunk_samples - filled, n - pos)
            pieces.append((u, pos, pos + take))
            pos += take
            filled += take
            if filled == chunk_samples:
                chunks.append(Chunk(speaker, tuple(pieces)))
                pieces, filled = [], 0
    if pieces and keep_tail:
        chunks.append(Chunk(speaker, tuple(pieces)))
    return chunks


def plan_chunks(num_samples: Sequence[int] | np.ndarray, speaker: Sequence[int] | np.ndarray, chunk_samples: int,
                join: bool, tail: Literal["keep", "drop"] = "keep") -> list[Chunk]:
    """The chunks of a corpus with utterance lengths ``num_samples`` and speaker ids ``speaker``.

    Chunks come speaker by speaker (ascending id), each speaker's in source order, so a
    speaker's chunks concatenated give its utterances concatenated (with ``tail="keep"``:
    every sample exactly once). ``join`` cuts each speaker's utterances as one stream
    (chunks may span utterances) or each utterance alone. Utterances with ``speaker < 0``
    (noise clips) are not chunked, and empty utterances give no chunk.
    """
    num_samples = np.asarray(num_samples, dtype=np.int64)
    speaker = np.asarray(speaker, dtype=np.int64)
    if num_samples.ndim != 1 or num_samples.shape != speaker.shape:
        raise ValueError(f"num_samples and speaker must be 1-D arrays of the same length, "
                         f"not shapes {num_samples.shape} and {speaker.shape}")
    if (num_samples < 0).any():
        raise ValueError("num_samples cannot be negative")
    if isinstance(chunk_samples, bool) or int(chunk_samples) != chunk_samples or chunk_samples < 1:
        raise ValueError(f"chunk_samples must be a positive whole number of samples, not {chunk_samples!r}")
    if tail not in TAILS:
        raise ValueError(f"tail must be one of {TAILS}, not {tail!r}")
    chunk_samples, keep_tail = int(chunk_samples), tail == "keep"
    chunks: list[Chunk] = []
    # Group the utterances by speaker in one stable sort (corpus order within a speaker):
    # a mask per speaker would cost speakers x utterances (6,000 x 1 M for VoxCeleb2).
    order = np.argsort(speaker, kind="stable")
    order = order[speaker[order] >= 0]
    ids, starts = np.unique(speaker[order], return_index=True)
    for spk, utterances in zip(ids, np.split(order, starts[1:])):
        if join:
            chunks += _cut(utterances, num_samples, int(spk), chunk_samples, keep_tail)
        else:
            for u in utterances:
                chunks += _cut((u,), num_samples, int(spk), chunk_samples, keep_tail)
    return chunks


# -- writing the chunked corpus ----------------------------------------------------------------


def _resolve_join(join: bool | str, corpus: Corpus, chunk_samples: int) -> bool:
    if isinstance(join, (bool, np.bool_)):
        return bool(join)
    if join in ("yes", "no"):
        return join == "yes"
    if join != "auto":
        raise ValueError(f"join must be 'auto', 'yes', 'no' or a bool, not {join!r}")
    lengths = corpus.num_samples[corpus.speaker >= 0]
    return bool(len(lengths)) and bool(float(np.median(lengths)) < chunk_samples)


def _check_options(source: Path, output: Path, seconds: float, tail: str, ratios, features,
                   max_trial_anchors) -> tuple[tuple[float, float, float], list[FeatureConfig]]:
    """Refuse bad settings before anything is read or written."""
    try:
        seconds_ok = math.isfinite(float(seconds)) and float(seconds) > 0
    except (TypeError, ValueError):
        seconds_ok = False
    if not seconds_ok:
        raise ValueError(f"chunk length must be a positive number of seconds, not {seconds!r} (e.g. 3, 5 or 10)")
    if tail not in TAILS:
        raise ValueError(f"tail must be 'keep' (short last chunks) or 'drop' (only full-length chunks), not {tail!r}")
    ratios = check_ratios(ratios)
    if max_trial_anchors is not None and int(max_trial_anchors) < 1:
        raise ValueError(f"max trial anchors must be at least 1, not {max_trial_anchors}")
    if output.is_dir():
        raise ValueError(f"{output}: output is a folder; give a file name such as {output / 'chunks.h5'}")
    if output.resolve() == source.resolve() or same_file_among(output, [source]):
        raise ValueError(f"{output}: the output is the source corpus itself; write the chunks to another file "
                         f"(e.g. {source.with_name(f'{source.stem}_{seconds:g}s{source.suffix}')})")
    configs = cacheable_features(features)
    return ratios, configs


class _PcmReader:
    """Reads source int16 PCM exactly as stored, one read per utterance where it is short."""

    def __init__(self, corpus: Corpus):
        self.corpus = corpus
        self._index, self._pcm = -1, np.zeros(0, np.int16)

    def __call__(self, u: int, start: int, stop: int) -> np.ndarray:
        if int(self.corpus.num_samples[u]) > _READ_WHOLE_SAMPLES:
            return self.corpus.pcm(u, start, stop)
        if u != self._index:  # all pieces of an utterance are consecutive in the plan
            self._index, self._pcm = u, self.corpus.pcm(u)
        return self._pcm[start:stop]


def _warn_small_speakers(chunks: list[Chunk], corpus: Corpus, chunk_samples: int, tail: str) -> None:
    counts = np.bincount([c.speaker for c in chunks], minlength=len(corpus.speakers))
    present = np.zeros(len(corpus.speakers), bool)
    present[np.unique(corpus.speaker[corpus.speaker >= 0])] = True
    none = np.flatnonzero(present & (counts == 0))
    one = np.flatnonzero(present & (counts == 1))
    names = lambda ids: ", ".join(corpus.speakers[i] for i in ids[:10]) + (" ..." if len(ids) > 10 else "")  # noqa: E731
    if len(none):
        warnings.warn(f"{corpus.path}: {len(none)} speaker(s) have less audio than one chunk of "
                      f"{chunk_samples} samples and are left out with tail={tail!r}: {names(none)}; "
                      f"use shorter chunks or tail='keep' to keep them", stacklevel=3)
    if len(one):
        warnings.warn(f"{corpus.path}: {len(one)} speaker(s) have a single chunk, so they stay in train in the "
                      f"utterance split and cannot be the anchor of a trial: {names(one)}; use shorter chunks "
                      f"to give them more", stacklevel=3)


def chunk_corpus(
    source: str | Path,
    output: str | Path,
    seconds: float,
    join: bool | Literal["auto", "yes", "no"] = "auto",
    tail: Literal["keep", "drop"] = "keep",
    ratios: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    features: Sequence[str | FeatureConfig | dict] = (),
    max_trial_anchors: int | None = 2000,
    progress: bool = True,
) -> Path:
    """Write the chunks of corpus ``source`` as a new corpus ``output`` and return its path.

    Arguments:
        source: a prepared corpus file (``speakerzoo prepare``).
        output: the ``.h5`` file to write; an existing file is replaced only once the new one is complete.
        seconds: chunk length; the chunk holds ``round(seconds * sample_rate)`` samples.
        join: join each speaker's utterances before cutting (``True``/``"yes"``), cut each on
            its own (``False``/``"no"``), or ``"auto"``: join when the median utterance is
            shorter than a chunk.
        tail: ``"keep"`` the last, shorter piece as a chunk or ``"drop"`` it.
        ratios, seed, max_trial_anchors: splits and trials of the new corpus, as in ``prepare``;
            the ``utterance`` split divides each speaker's chunks.
        features: feature presets to cache for the chunks (the source's are not carried over).
        progress: show a progress bar over the chunks.

    Every chunk is one utterance of the output, with utt_id ``{speaker}/chunk{k:05d}`` (``k``
    counts per speaker), the path and session of its first piece, and the non-empty
    transcripts of its pieces joined by spaces. Noise clips follow, copied whole.

    Raises:
        CorpusError: the source is missing or unusable, or no chunk is left.
        ValueError: bad settings, or ``output`` is the source itself.
    """
    source, output = Path(source).expanduser(), Path(output).expanduser()
    if isinstance(features, (str, dict, FeatureConfig)):
        features = [features]
    ratios, configs = _check_options(source, output, seconds, tail, ratios, features, max_trial_anchors)
    corpus = Corpus(source)
    try:
        rate = corpus.sample_rate
        chunk_samples = int(round(float(seconds) * rate))
        if chunk_samples < 1:
            raise ValueError(f"{seconds} s is shorter than one sample at {rate} Hz; use a longer chunk")
        if not (corpus.speaker >= 0).any():
            raise CorpusError(f"{source}: the corpus has no speaker utterances (only noise clips), nothing to chunk")
        joined = _resolve_join(join, corpus, chunk_samples)
        chunks = plan_chunks(corpus.num_samples, corpus.speaker, chunk_samples, join=joined, tail=tail)
        if not chunks:
            speech = corpus.speaker >= 0
            if joined:
                most = np.bincount(corpus.speaker[speech], weights=corpus.num_samples[speech]).max() / rate
                why = f"the speaker with the most audio has {most:.2f} s"
            else:
                why = f"the longest utterance is {corpus.num_samples[speech].max() / rate:.2f} s"
            raise CorpusError(
                f"{source}: no chunk of {seconds:g} s fits ({why}) and "
                f"tail={tail!r} leaves out shorter pieces; use shorter chunks or tail='keep' ({output} was not written)")
        _warn_small_speakers(chunks, corpus, chunk_samples, tail)
        text = {key: corpus.texts(key) for key in ("utt_id", "path", "transcript", "session")}
        settings: dict[str, Any] = {
            "chunked_from": str(source),
            "chunk_seconds": float(seconds),
            "chunk_samples": chunk_samples,
            "join": joined,
            "tail": tail,
            "source_settings": corpus.settings,
            "features": [c.key for c in configs],
            "max_trial_anchors": max_trial_anchors,
        }
        noise = np.flatnonzero(corpus.speaker < 0)
        bar = tqdm(total=len(chunks) + len(noise), desc="chunking", unit="chunk", disable=not progress,
                   dynamic_ncols=True)
        try:
            with CorpusWriter(output, rate, settings=settings) as writer:
                read = _PcmReader(corpus)
                counter: dict[int, int] = {}
                for chunk in chunks:
                    k = counter.get(chunk.speaker, 0)
                    counter[chunk.speaker] = k + 1
                    first = chunk.pieces[0][0]
                    pcm = np.concatenate([read(u, a, b) for u, a, b in chunk.pieces])
                    name = corpus.speakers[chunk.speaker]
                    transcript = " ".join(t for t in (text["transcript"][u] for u, _, _ in chunk.pieces) if t)
                    writer.add(pcm, speaker=name, utt_id=f"{name}/chunk{k:05d}", path=text["path"][first],
                               transcript=transcript, session=text["session"][first])
                    bar.update(1)
                for u in noise:
                    writer.add(read(int(u), 0, int(corpus.num_samples[u])), speaker=None, utt_id=text["utt_id"][u],
                               path=text["path"][u], transcript=text["transcript"][u], session=text["session"][u])
                    bar.update(1)
                bar.close()
                return writer.finish(features=configs, ratios=ratios, seed=seed, max_trial_anchors=max_trial_anchors,
                                     progress=progress)
        finally:
            bar.close()
    finally:
        corpus.close()
