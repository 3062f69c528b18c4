"""Decode a folder of audio files once into a corpus file (HDF5): the library behind
``speakerzoo prepare`` (its command line is :mod:`speakerzoo.commands.prepare`).

Flow: an importer of :mod:`speakerzoo.datamodules.sources` lists the files (speaker,
utterance id, transcript, session); :func:`prepare` decodes them with
:func:`speakerzoo.audio.read_audio` and :func:`~speakerzoo.audio.condition` in a pool of processes (mono, one sample rate,
optional peak normalisation and silence trimming), writes them in a deterministic order
through :class:`~speakerzoo.datamodules.corpus.CorpusWriter` (splits, trials and optional
cached features included) and returns a :class:`PrepareSummary`.

Unusable files are skipped and reported with their reason, never silently dropped:

* missing, empty (0 bytes) or header-only files, and files libsndfile cannot decode
  (text renamed to ``.wav``, an HTML error page saved as ``.flac``, a cut FLAC stream);
* **truncated WAV files**, whose header declares more audio than the file holds. libsndfile
  (soundfile) does not fail on them: it logs ``data : N (should be M)`` and returns the
  samples that are there. We skip them anyway, because a file cut short is a damaged copy
  (an interrupted download or copy) whose label may no longer match what is left of it,
  and preparing again after fixing the copy gives the full clip. WAV files written as a
  stream, whose header holds the placeholder size ``0xFFFFFFFF``, are not truncated and are
  kept.

``strict=True`` (``--strict``) turns the first unusable file into an error that names it.
Files at another sample rate are resampled and counted per original rate; multi-channel
files are mixed to mono (the mean of the channels) and counted. The corpus is written
under a temporary name and renamed only when complete: an error or Ctrl-C leaves an
existing corpus at the output path as it was.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from speakerzoo.checks import check_number
from speakerzoo.atomic import same_file_among
from speakerzoo.h5file import remove_stale_lock
from speakerzoo.audio import AudioError, condition, read_audio, silence_reason
from speakerzoo.datamodules.corpus import (
    SCHEMA_VERSION, Corpus, CorpusError, CorpusWriter, cacheable_features, single_torch_thread, to_pcm16)
from speakerzoo.datamodules.shards import (
    ShardProgress, empty_marker, finished_shard, job_digest, join_shards, read_empty_marker, shard_folder, shard_path,
    write_empty_marker)
from speakerzoo.datamodules.splits import MODES, PARTS, check_ratios
from speakerzoo.datamodules.sources import Utterance
from speakerzoo.features import FeatureConfig

__all__ = ["prepare", "prepare_toy_corpus", "PrepareSummary", "ToySummary", "PrepareError", "DEFAULT_WORKERS"]

#: Decoding processes used unless told otherwise.
DEFAULT_WORKERS = min(4, os.cpu_count() or 1)

#: Skipped files listed in the corpus attributes (the count is always recorded).
_MAX_SKIPPED_IN_ATTRS = 1000
#: Skipped files listed in the printed summary.
_MAX_SKIPPED_PRINTED = 20


class PrepareError(RuntimeError):
    """Preparation cannot go on (strict mode, bad settings, nothing usable); the message says why."""


# -- the summary -----------------------------------------------------------------------------


@dataclass
class PrepareSummary:
    """What :func:`prepare` wrote; ``print(summary)`` gives the report shown by the command.

    ``utterances`` counts clips with a speaker and ``noise_clips`` those without, so the
    corpus holds ``utterances + noise_clips`` entries.
    """

    output: Path
    sample_rate: int
    speakers: int
    utterances: int
    noise_clips: int
    seconds: float
    resampled_from: dict[int, int] = field(default_factory=dict)
    stereo_mixed: int = 0
    scaled_to_full_scale: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    splits: dict[str, dict[str, int]] = field(default_factory=dict)
    split_speakers: dict[str, dict[str, int]] = field(default_factory=dict)
    trials: dict[str, dict[str, int]] = field(default_factory=dict)
    single_file_speakers: list[str] = field(default_factory=list)
    features: list[str] = field(default_factory=list)
    elapsed: float = 0.0
    shards: int = 0

    @property
    def hours(self) -> float:
        return self.seconds / 3600.0

    @property
    def files(self) -> int:
        """Files offered to :func:`prepare` (stored plus skipped)."""
        return self.utterances + self.noise_clips + len(self.skipped)

    @property
    def realtime_factor(self) -> float:
        """Seconds of audio prepared per wall-clock second."""
        return self.seconds / self.elapsed if self.elapsed > 0 else float("inf")

    def __str__(self) -> str:
        lines = [f"prepared {self.output}"]
        row = lines.append
        row(f"  speakers         {self.speakers}")
        row(f"  utterances       {self.utterances}")
        row(f"  noise clips      {self.noise_clips}  (no speaker; splits/noise)")
        row(f"  audio            {self.hours:.3f} h ({self.seconds:.1f} s) at {self.sample_rate} Hz")
        if self.resampled_from:
            rates = ", ".join(f"{n} from {rate} Hz" for rate, n in sorted(self.resampled_from.items()))
            row(f"  resampled        {rates}")
        else:
            row("  resampled        none")
        row(f"  stereo -> mono   {self.stereo_mixed} file(s) mixed to mono")
        if self.scaled_to_full_scale:
            row(f"  above full scale {self.scaled_to_full_scale} file(s) scaled down to full scale "
                "(16-bit PCM would have clipped their peaks)")
        if self.features:
            row(f"  cached features  {', '.join(self.features)}")
        if self.shards:
            row(f"  shards           {self.shards} file(s) with audio in {shard_folder(self.output)}")
        for mode in self.splits:
            parts = self.splits[mode]
            trials = self.trials.get(mode, {})
            text = ", ".join(f"{p} {n}" + (f" ({trials[p]} trial pairs)" if p in trials else "") for p, n in parts.items())
            row(f"  split {mode:<10} {text}")
        for mode, parts in self.split_speakers.items():
            for part, n in parts.items():
                if part != "train" and n < 2:
                    row(f"  warning: split {mode}/{part} has {n} speaker(s), so it has no trials "
                        f"(too few speakers for these --split-ratios)")
        if self.single_file_speakers:
            names = ", ".join(self.single_file_speakers[:10]) + (" ..." if len(self.single_file_speakers) > 10 else "")
            row(f"  warning: {len(self.single_file_speakers)} speaker(s) have a single file and cannot be the "
                f"anchor of a trial: {names}")
        if self.skipped:
            row(f"  skipped          {len(self.skipped)} file(s):")
            for path, reason in self.skipped[:_MAX_SKIPPED_PRINTED]:
                row(f"    {path}: {reason}")
            if len(self.skipped) > _MAX_SKIPPED_PRINTED:
                row(f"    ... and {len(self.skipped) - _MAX_SKIPPED_PRINTED} more (all listed in the corpus "
                    f"attribute settings['skipped'])")
        else:
            row("  skipped          none")
        row(f"  took             {self.elapsed:.1f} s ({self.realtime_factor:.0f} s of audio per second)")
        row(f"  output           {self.output}")
        return "\n".join(lines)


# -- decoding (runs in worker processes) -----------------------------------------------------


def _worker_init() -> None:
    # One thread per process (as DataLoader workers do): torch's intra-op thread pool is not
    # safe to use after fork, and the processes already use the cores.
    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is handled once, by the parent
    # The parent's SIGTERM handler (speakerzoo.cli) is inherited through fork: a worker ends quietly
    # when the pool is terminated instead of printing the parent's interruption as a traceback.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _die_with_parent()


def _die_with_parent() -> None:
    """Linux: ask the kernel to send SIGTERM to this worker when its parent dies. A parent killed
    with ``kill -9`` cannot terminate its pool, and a shard writer left running would hold that
    shard's lock (and the CPU) after the user started the run again."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


@contextlib.contextmanager
def _interrupts_held() -> Iterator[None]:
    """Ctrl-C and SIGTERM that arrive in the block are handled when it ends.

    Forking runs Python at-fork handlers (logging's) in the parent, and an exception that a
    signal handler raises inside one is printed and dropped: the interruption would be lost and
    the run would go on. Blocking the signal does not help (another thread receives it, and
    Python still runs the handler in the main thread), so the handlers are swapped for the block.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    parent = os.getpid()

    def hold(signum: int, frame: Any) -> None:
        if os.getpid() != parent:  # a worker just forked, before its initializer: as _worker_init says
            if signum == signal.SIGTERM:
                signal.signal(signum, signal.SIG_DFL)
                signal.raise_signal(signum)
            return
        pending.append(signum)

    previous = {s: signal.signal(s, hold) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if pending:
            handler = previous[pending[0]]
            if callable(handler):
                handler(pending[0], None)  # speakerzoo's SIGTERM handler, Python's KeyboardInterrupt
            elif handler == signal.SIG_DFL:
                signal.raise_signal(pending[0])


def _decode(job: tuple[int, str, bool], sample_rate: int, normalize: bool, trim: bool, min_samples: int):
    """``(index, int16 PCM or None, original rate, channels, scaled, reason or None)`` for one file;
    ``job`` is ``(index, path, whether the clip is speech)`` (noise clips may be silent).

    ``scaled``: the clip went beyond full scale (a float WAV can) and was scaled down to it,
    where storing it as 16-bit PCM would have clipped its peaks.
    """
    index, path, speech = job
    try:
        data, rate = read_audio(path)
        wave = condition(data, rate, sample_rate, normalize=normalize, trim=trim)
        if len(wave) < min_samples:
            after = " after trimming silence" if trim else ""
            return (index, None, 0, 0, False, f"too short: {len(wave) / sample_rate:.3f} s{after}, below "
                    f"--min-seconds {min_samples / sample_rate:g}; a clip this short cannot be embedded")
        reason = silence_reason(wave, sample_rate, data) if speech else None
        if reason is not None:
            return index, None, 0, 0, False, reason
        peak = float(np.abs(wave).max())
        scaled = peak > 1.0
        if scaled:
            wave = wave * (32767.0 / 32768.0 / peak)
        return index, to_pcm16(wave), rate, data.shape[1], scaled, None
    except AudioError as err:
        return index, None, 0, 0, False, err.reason
    except Exception as err:  # a decoder failure must name the file, not kill the whole run
        return index, None, 0, 0, False, f"decoding failed ({type(err).__name__}: {err})"


def _apply_each(fn, jobs: list) -> list:
    return [fn(job) for job in jobs]


def bounded_imap(pool, fn, items: Sequence, chunksize: int, window: int) -> Iterator:
    """``fn(item)`` for every item, in order, computed in ``pool`` with at most ``window`` chunks of
    ``chunksize`` items submitted and not yet consumed.

    ``Pool.imap`` queues every task at once and keeps every result until it is consumed: a slow
    consumer (the corpus writer on a slow disk) then holds the whole decoded corpus in memory.
    Here the results wait in at most ``window`` chunks, whatever the number of items.
    """
    pending: collections.deque = collections.deque()
    for start in range(0, len(items), chunksize):
        pending.append(pool.apply_async(_apply_each, (fn, list(items[start:start + chunksize]))))
        if len(pending) >= window:
            yield from pending.popleft().get()
    while pending:
        yield from pending.popleft().get()


def _pool(workers: int):
    """A pool of ``workers`` processes that ignore Ctrl-C and die with this process."""
    # fork is fast and needs no re-import; macOS and Windows spawn (fork is unsafe there).
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    with _interrupts_held():
        return multiprocessing.get_context(method).Pool(workers, initializer=_worker_init)


def _decoded(paths: list[str], speech: list[bool], workers: int, **kwargs) -> Iterator[tuple]:
    """Decode ``paths`` in order, in ``workers`` processes (0: in this process)."""
    fn = functools.partial(_decode, **kwargs)
    jobs = [(i, path, is_speech) for i, (path, is_speech) in enumerate(zip(paths, speech))]
    if workers <= 0 or len(jobs) <= 1:
        with single_torch_thread():  # as in the worker processes
            yield from map(fn, jobs)
        return
    workers = min(workers, len(jobs))
    chunksize = max(1, min(32, len(jobs) // (workers * 16)))
    pool = None
    try:
        pool = _pool(workers)
        yield from bounded_imap(pool, fn, jobs, chunksize, window=4 * workers)
    finally:
        if pool is not None:
            pool.terminate()


# -- prepare ---------------------------------------------------------------------------------


def _check_settings(sample_rate, ratios, features, workers, max_trial_anchors, min_seconds) -> list[FeatureConfig]:
    if int(sample_rate) <= 0:
        raise PrepareError(f"sample rate must be positive, not {sample_rate}")
    try:
        check_number("min seconds", min_seconds, low=0, hint="the shortest clip kept, e.g. 0.1")
    except ValueError as err:
        raise PrepareError(str(err)) from None
    try:
        check_ratios(ratios)
    except ValueError as err:
        raise PrepareError(str(err)) from None
    if int(workers) < 0:
        raise PrepareError(f"workers must be 0 (decode in this process) or more, not {workers}")
    if max_trial_anchors is not None and int(max_trial_anchors) < 1:
        raise PrepareError(f"max trial anchors must be at least 1, not {max_trial_anchors}")
    try:
        return cacheable_features(features)
    except ValueError as err:
        raise PrepareError(str(err)) from None


def prepare(
    records: Iterable[Utterance],
    output: str | Path,
    sample_rate: int = 16000,
    normalize: bool = False,
    trim_silence: bool = False,
    features: Sequence[str | FeatureConfig | dict] = (),
    ratios: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    strict: bool = False,
    workers: int = DEFAULT_WORKERS,
    max_trial_anchors: int | None = 2000,
    min_seconds: float = 0.1,
    progress: bool = True,
    settings: dict[str, Any] | None = None,
    shard_files: int | None = None,
    part: tuple[int, int] | None = None,
) -> PrepareSummary | ShardProgress:
    """Decode ``records`` into the corpus file ``output`` and return what was written.

    Arguments:
        records: files to store, e.g. from :mod:`speakerzoo.datamodules.sources`; stored in this order.
        output: the ``.h5`` file; replaced only once the new one is complete.
        sample_rate: rate of the stored audio; other rates are resampled (torchaudio, band-limited sinc).
        normalize: scale each clip to a peak of 0.95.
        trim_silence: cut long silences (energy below -40 dB of the loudest frame), keeping 100 ms margins.
        features: feature presets (``fbank80``, ``fbank64``, ``mfcc26``, ``logmel64``) or
            :class:`~speakerzoo.features.FeatureConfig` to cache beside the audio.
        ratios: train/val/test proportions for both split modes (by utterance, by speaker).
        seed: seed of the splits and trials.
        strict: stop at the first unusable file instead of skipping it.
        workers: decoding processes; 0 decodes in this process.
        max_trial_anchors: most trial anchors per split part.
        min_seconds: shortest clip kept (after trimming); shorter ones are skipped with the reason.
            Clips of speakers whose loudest 25 ms is below :data:`~speakerzoo.audio.SILENCE_FLOOR_DBFS`
            are skipped as silent, whatever their length.
        progress: show progress bars.
        settings: extra entries for the corpus' ``settings`` attribute (e.g. ``{"sources": [...]}``).
        shard_files: write the corpus as shards of this many input files (``OUT.h5.shards/``) and an
            index ``output`` (:mod:`speakerzoo.datamodules.shards`): ``workers`` shards are written
            at once, each decoding and caching features in its own process; a rerun keeps the
            finished shards. ``None``: one file.
        part: ``(K, M)``: write only the shards ``K, K + M, K + 2M, ...`` (one of M processes or
            machines sharing the output folder); the index is written by the run that finds every
            shard finished, and a run that does not returns a :class:`ShardProgress`.

    Raises:
        PrepareError: bad settings, ``strict`` and an unusable file, or no usable file at all.
    """
    t0 = time.perf_counter()
    records = list(records)
    if not records:
        raise PrepareError("no files to prepare")
    if isinstance(features, (str, dict, FeatureConfig)):
        features = [features]
    configs = _check_settings(sample_rate, ratios, features, workers, max_trial_anchors, min_seconds)
    sample_rate, workers, ratios = int(sample_rate), int(workers), tuple(float(r) for r in ratios)
    output = Path(output).expanduser()
    if output.is_dir():
        raise PrepareError(f"{output}: output is a folder; give a file name such as {output / 'corpus.h5'}")
    clash = same_file_among(output, (r.path for r in records))
    if clash is not None:
        raise PrepareError(f"--output {output} is one of the input files ({clash}): writing the corpus would "
                           "replace that recording. Give the corpus a new file name, e.g. corpus.h5")

    extra = dict(settings or {})
    if "sources" not in extra:
        try:
            extra["sources"] = [os.path.commonpath([str(r.path.parent) for r in records])]
        except ValueError:
            extra["sources"] = []
    attrs: dict[str, Any] = {
        **extra,
        "normalize": bool(normalize),
        "trim": bool(trim_silence),
        "features": [c.key for c in configs],
        "max_trial_anchors": max_trial_anchors,
        "min_seconds": float(min_seconds),
        "files": len(records),
    }  # the writer adds split_seed and split_ratios; sample rate and version are file attributes

    if part is not None and shard_files is None:
        raise PrepareError("part (one of several runs that share the shards) needs shard files (--shard-files N)")
    decode = dict(sample_rate=sample_rate, normalize=bool(normalize), trim=bool(trim_silence),
                  min_samples=max(1, int(round(min_seconds * sample_rate))))
    if shard_files is not None:
        return _prepare_shards(records, output, attrs, configs, decode, ratios, seed, max_trial_anchors, strict,
                               workers, int(shard_files), part, progress, t0)
    tally = _Tally()
    bar = tqdm(total=len(records), desc="decoding", unit="file", disable=not progress, dynamic_ncols=True)
    results = _decoded([str(r.path) for r in records], [r.speaker is not None for r in records], workers, **decode)
    try:
        with CorpusWriter(output, sample_rate, settings=attrs) as writer:
            for result in results:
                bar.update(1)
                if not tally.take(records[result[0]], result, writer, strict, output):
                    bar.set_postfix(skipped=len(tally.skipped), refresh=False)
            results.close()  # ends the worker processes before the index and features are written
            bar.close()
            if len(writer) == 0:
                raise tally.nothing_usable(len(records))
            writer.settings.update(tally.settings(_MAX_SKIPPED_IN_ATTRS))
            writer.finish(features=configs, ratios=ratios, seed=seed, max_trial_anchors=max_trial_anchors,
                          progress=progress)
    finally:
        results.close()  # on an error too: stops the workers at once (the traceback would keep them alive)
        bar.close()
    return _summarize(output, tally, [c.key for c in configs], time.perf_counter() - t0)


@dataclass
class _Tally:
    """What became of the files of one corpus or shard: the skipped ones with their reason, and
    counts of resampled, mixed-down and scaled clips."""

    skipped: list[tuple[str, str]] = field(default_factory=list)
    resampled: Counter = field(default_factory=Counter)
    stereo: int = 0
    scaled: int = 0

    def take(self, rec: Utterance, result: tuple, writer: CorpusWriter, strict: bool, output: Path) -> bool:
        """Store one decoded file (a :func:`_decode` result) in ``writer``, or count it as skipped."""
        _, pcm, rate, channels, was_scaled, reason = result
        if reason is not None:
            if strict:
                raise PrepareError(f"{rec.path}: {reason} (--strict stops at the first unusable file; "
                                   f"{output} was not written)")
            self.skipped.append((str(rec.path), reason))
            return False
        if rate != writer.sample_rate:
            self.resampled[rate] += 1
        self.stereo += channels > 1
        self.scaled += was_scaled
        writer.add(pcm, speaker=rec.speaker, utt_id=rec.utt_id, path=str(rec.path), transcript=rec.transcript,
                   session=rec.session)
        return True

    def nothing_usable(self, files: int) -> PrepareError:
        first = "; ".join(f"{p}: {r}" for p, r in self.skipped[:3])
        return PrepareError(f"all {files} files were unusable, nothing written (e.g. {first})")

    def settings(self, most_listed: int | None) -> dict[str, Any]:
        """The corpus settings that record it (``most_listed`` skipped files listed, all counted)."""
        return {
            "skipped": [list(s) for s in self.skipped[:most_listed]],
            "skipped_count": len(self.skipped),
            "resampled_from": {str(k): v for k, v in sorted(self.resampled.items())},
            "stereo_mixed": self.stereo,
            "scaled_to_full_scale": self.scaled,
        }

    def add_settings(self, settings: dict[str, Any]) -> None:
        """Add what a shard's :meth:`settings` recorded (all its skipped files are listed there)."""
        self.skipped.extend(tuple(s) for s in settings.get("skipped", []))
        self.resampled.update({int(k): int(v) for k, v in settings.get("resampled_from", {}).items()})
        self.stereo += int(settings.get("stereo_mixed", 0))
        self.scaled += int(settings.get("scaled_to_full_scale", 0))


# -- sharded preparation (speakerzoo.datamodules.shards) ----------------------------------


def _write_shard(job: tuple, output: Path, configs: list[FeatureConfig], decode: dict, strict: bool) -> int:
    """Decode and write shard ``job = (k, records, digest)`` of ``output``, in this process; returns ``k``."""
    k, records, digest = job
    tally = _Tally()
    with single_torch_thread():
        with CorpusWriter(shard_path(output, k), decode["sample_rate"],
                          settings={"shard": {"index": k, "job": digest}}) as writer:
            for i, rec in enumerate(records):
                tally.take(rec, _decode((i, str(rec.path), rec.speaker is not None), **decode), writer, strict,
                           output)
            if len(writer) == 0:
                writer.abort()
                write_empty_marker(output, k, digest, tally.skipped)
                return k
            writer.settings.update(tally.settings(None))
            writer.finish(features=configs, progress=False)
    empty_marker(output, k).unlink(missing_ok=True)
    return k


def _prepare_shards(records: list[Utterance], output: Path, attrs: dict[str, Any], configs: list[FeatureConfig],
                    decode: dict, ratios, seed: int, max_trial_anchors, strict: bool, workers: int, shard_files: int,
                    part: tuple[int, int] | None, progress: bool, t0: float) -> PrepareSummary | ShardProgress:
    """:func:`prepare` as shards of ``shard_files`` files, written ``workers`` at a time, then joined."""
    if shard_files < 1:
        raise PrepareError(f"shard files must be at least 1, not {shard_files}")
    if part is not None and not (len(part) == 2 and part[1] >= 1 and 0 <= part[0] < part[1]):
        raise PrepareError(f"part must be K/M with 0 <= K < M (this run writes every M-th shard from the K-th), "
                           f"not {part}")
    groups = [records[i:i + shard_files] for i in range(0, len(records), shard_files)]
    # What makes a shard's content: a change of any of these redoes it (splits and trials are the index's).
    content = {**{k: decode[k] for k in ("sample_rate", "normalize", "trim", "min_samples")},
               "features": [c.to_json() for c in configs], "schema": SCHEMA_VERSION}
    digests = [job_digest(content, g) for g in groups]
    shard_folder(output).mkdir(parents=True, exist_ok=True)
    finished = {k for k in range(len(groups)) if finished_shard(output, k, digests[k])}
    mine = [k for k in range(len(groups)) if k not in finished and (part is None or k % part[1] == part[0])]
    bar = tqdm(total=len(records), initial=sum(len(groups[k]) for k in finished), desc="shards", unit="file",
               disable=not progress, dynamic_ncols=True)
    write = functools.partial(_write_shard, output=output, configs=configs, decode=decode, strict=strict)
    jobs = [(k, groups[k], digests[k]) for k in mine]
    pool = None
    try:
        if workers <= 0 or len(jobs) <= 1:
            done = map(write, jobs)
        else:
            pool = _pool(min(workers, len(jobs)))
            done = pool.imap_unordered(write, jobs)  # tasks and results are small: the shards hold the audio
        for k in done:
            finished.add(k)
            bar.update(len(groups[k]))
    finally:
        if pool is not None:
            pool.terminate()
        bar.close()
    if len(finished) < len(groups):
        return ShardProgress(output=output, total=len(groups), finished=len(finished), written=sorted(mine))
    tally, shards = _Tally(), []
    for k in range(len(groups)):
        remove_stale_lock(shard_path(output, k))  # of a writer killed just after finishing its shard
        skipped = read_empty_marker(output, k)
        if skipped is not None:
            tally.skipped.extend(skipped)
            continue
        corpus = Corpus(shard_path(output, k))
        corpus.close()
        tally.add_settings(corpus.settings)
        shards.append(shard_path(output, k))
    if not shards:
        raise tally.nothing_usable(len(records))
    settings = {**attrs, **tally.settings(_MAX_SKIPPED_IN_ATTRS), "shard_files": shard_files, "shards": len(groups)}
    try:
        join_shards(output, shards, settings, ratios=ratios, seed=seed, max_trial_anchors=max_trial_anchors)
    except CorpusError as err:
        raise PrepareError(str(err)) from None
    return _summarize(output, tally, [c.key for c in configs], time.perf_counter() - t0)


def _summarize(output: Path, tally: _Tally, features, elapsed) -> PrepareSummary:
    corpus = Corpus(output)
    try:
        spk = corpus.speaker
        counts = np.bincount(spk[spk >= 0], minlength=len(corpus.speakers))
        splits: dict[str, dict[str, int]] = {}
        split_speakers: dict[str, dict[str, int]] = {}
        trials: dict[str, dict[str, int]] = {}
        for mode in MODES:
            splits[mode] = {p: len(corpus.split(mode, p)) for p in PARTS}
            split_speakers[mode] = {p: len(np.unique(spk[corpus.split(mode, p)])) for p in PARTS}
            trials[mode] = {}
            for p in ("val", "test"):
                try:
                    trials[mode][p] = len(corpus.trials(mode, p)[0])
                except CorpusError:
                    pass
        return PrepareSummary(
            output=output,
            sample_rate=corpus.sample_rate,
            speakers=len(corpus.speakers),
            utterances=int((spk >= 0).sum()),
            noise_clips=int((spk < 0).sum()),
            seconds=float(corpus.duration.astype(np.float64).sum()),
            resampled_from=dict(sorted(tally.resampled.items())),
            stereo_mixed=int(tally.stereo),
            scaled_to_full_scale=int(tally.scaled),
            skipped=list(tally.skipped),
            shards=len(corpus.shard_paths) if corpus.sharded else 0,
            splits=splits,
            split_speakers=split_speakers,
            trials=trials,
            single_file_speakers=[corpus.speakers[i] for i in np.flatnonzero(counts == 1)],
            features=list(features),
            elapsed=elapsed,
        )
    finally:
        corpus.close()


@dataclass
class ToySummary:
    """What :func:`prepare_toy_corpus` wrote; ``print(summary)`` gives the command's one-line report."""

    output: Path
    speakers: int
    utterances: int
    seconds: float
    sample_rate: int

    def __str__(self) -> str:
        return (f"prepared {self.output}: {self.speakers} speakers, {self.utterances} utterances, "
                f"{self.seconds / 3600:.3f} h at {self.sample_rate} Hz")


def prepare_toy_corpus(
    output: str | Path,
    speakers: int = 40,
    utterances: int = 24,
    seed: int = 0,
    sample_rate: int = 16000,
    features: Sequence[str] = (),
    progress: bool = True,
) -> ToySummary:
    """The synthetic corpus of :func:`speakerzoo.datamodules.toy.prepare_toy`, with the settings checked
    as :func:`prepare` checks them; returns what was written.

    Raises:
        PrepareError: bad settings, or the toy generator is not available in this installation.
    """
    try:
        from speakerzoo.datamodules.toy import prepare_toy
    except ImportError as err:
        raise PrepareError(f"the toy corpus generator is not available in this installation ({err})") from None
    if isinstance(features, str):
        features = [features]
    _check_settings(sample_rate, (0.7, 0.15, 0.15), features, 0, 1, 0.0)
    path = prepare_toy(output, speakers=speakers, utterances=utterances, seed=seed, sample_rate=sample_rate,
                       features=tuple(features), progress=progress)
    corpus = Corpus(path)
    try:
        return ToySummary(output=path, speakers=len(corpus.speakers), utterances=len(corpus),
                          seconds=float(corpus.duration.sum()), sample_rate=corpus.sample_rate)
    finally:
        corpus.close()
