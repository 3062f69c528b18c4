"""Sharded corpora: shard files, each a complete corpus of its own, joined by one index file.

A corpus too large to write in one go (VoxCeleb2: 1.1 M utterances, 276 GB of PCM) is prepared
as shards (``speakerzoo prepare ... --shard-files N``): ``OUT.h5.shards/00000.h5``, ``00001.h5``,
... each holding N consecutive input files, written under a temporary name, verified and renamed
on its own. The index ``OUT.h5`` holds everything but the audio and features (offsets, speakers,
texts, splits, trials) for the whole corpus, plus the shard table; :class:`Corpus` reads it as it
reads a single file, so DataModules, ``embed``, ``score`` and ``chunk`` need no change.

What this buys:

* **resume** - a rerun of the same command keeps every shard whose inputs and settings are those
  of the run (its *job digest*, recorded in the shard) and redoes only the others;
* **parallel and distributed preparation** - shards are independent: several processes write
  them at once, and ``--part K/M`` lets M machines that share the output folder each write every
  M-th shard; whichever run finds all shards finished writes the index;
* **bounded memory** - a shard writer holds one file's audio and at most 4 M samples of pending
  PCM, whatever the corpus size.

The joined corpus equals a single-file corpus of the same files: speaker indices in order of
first appearance, the same splits and trials from the same seed, the same audio and features.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import h5py
import numpy as np

from speakerzoo.datamodules.corpus import TEXT_FIELDS, Corpus, CorpusError, write_index
from speakerzoo.h5file import AtomicH5Writer

__all__ = ["shard_folder", "shard_path", "empty_marker", "job_digest", "finished_shard", "join_shards",
           "ShardProgress"]


def shard_folder(output: Path) -> Path:
    """The folder beside the index that holds its shards: ``OUT.h5.shards/``."""
    return output.with_name(output.name + ".shards")


def shard_path(output: Path, k: int) -> Path:
    return shard_folder(output) / f"{k:05d}.h5"


def empty_marker(output: Path, k: int) -> Path:
    """Where a shard whose every file was unusable is recorded (there is no corpus to write)."""
    return shard_folder(output) / f"{k:05d}.empty.json"


def _file_state(path) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def job_digest(settings: dict[str, Any], records: Sequence) -> str:
    """sha256 of what a shard is made from: the preparation settings that change its content and
    every input file's path, size, modification time, speaker, utt_id, transcript and session, in
    order (a file replaced by another recording redoes its shard)."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for r in records:
        row = [str(r.path), _file_state(r.path), r.speaker, r.utt_id, r.transcript, r.session]
        digest.update(json.dumps(row).encode() + b"\0")
    return digest.hexdigest()


def finished_shard(output: Path, k: int, digest: str) -> bool:
    """Whether shard ``k`` of ``output`` is complete and was made from the inputs of ``digest``."""
    marker = empty_marker(output, k)
    if marker.is_file():
        try:
            return json.loads(marker.read_text()).get("job") == digest
        except (OSError, ValueError):
            return False
    path = shard_path(output, k)
    if not path.is_file():
        return False
    try:
        corpus = Corpus(path)
    except CorpusError:  # unfinished or damaged: made again
        return False
    corpus.close()
    return corpus.settings.get("shard", {}).get("job") == digest


def write_empty_marker(output: Path, k: int, digest: str, skipped: list[tuple[str, str]]) -> None:
    marker = empty_marker(output, k)
    tmp = marker.with_name(f"{marker.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps({"job": digest, "skipped": [list(s) for s in skipped]}))
    os.replace(tmp, marker)
    shard_path(output, k).unlink(missing_ok=True)


def read_empty_marker(output: Path, k: int) -> list[tuple[str, str]] | None:
    """The skipped files of shard ``k`` if it is empty, else ``None``."""
    marker = empty_marker(output, k)
    if not marker.is_file():
        return None
    return [tuple(s) for s in json.loads(marker.read_text())["skipped"]]


def join_shards(output: Path, shards: Sequence[Path], settings: dict[str, Any], ratios=(0.7, 0.15, 0.15),
                seed: int = 0, max_trial_anchors: int | None = 2000) -> Path:
    """Write the index ``output`` that makes ``shards`` (complete corpus files, in order) one corpus.

    Raises:
        CorpusError: a shard cannot be read, or the shards disagree on sample rate or features.
    """
    output = Path(output)
    index: dict[str, int] = {}
    speaker, offsets, first, digests = [], [np.zeros(1, np.int64)], [0], []
    texts: dict[str, list[str]] = {key: [] for key in TEXT_FIELDS}
    frames: dict[str, list[np.ndarray]] = {}
    rate = configs = None
    for path in shards:
        corpus = Corpus(path)
        try:
            if rate is None:
                rate, configs = corpus.sample_rate, corpus.feature_configs
                frames = {key: [np.zeros(1, np.int64)] for key in configs}
            elif corpus.sample_rate != rate or corpus.feature_configs != configs:
                raise CorpusError(f"{path}: sample rate {corpus.sample_rate} Hz and features "
                                  f"{sorted(corpus.feature_configs)} differ from the first shard's ({rate} Hz, "
                                  f"{sorted(configs)}); prepare all shards with the same settings")
            remap = np.asarray([index.setdefault(n, len(index)) for n in corpus.speakers] + [-1], dtype=np.int64)
            speaker.append(remap[corpus.speaker])  # -1 (noise) maps to the appended -1
            offsets.append(np.asarray(corpus.offsets[1:], np.int64) + offsets[-1][-1])
            for key in frames:
                frames[key].append(np.cumsum(corpus.num_frames(key)) + frames[key][-1][-1])
            for key in TEXT_FIELDS:
                texts[key].extend(corpus.texts(key))
            first.append(first[-1] + len(corpus))
            with h5py.File(path, "r") as h5:
                digests.append(str(h5["audio_crc32"].attrs["sha256"]))
        finally:
            corpus.close()
    if rate is None:
        raise CorpusError(f"{output}: no shards to join")
    names = list(index)  # insertion order: first appearance, as a single-file writer numbers them
    all_offsets = np.concatenate(offsets)
    writer = AtomicH5Writer(output)
    with writer:
        write_index(writer, all_offsets, np.concatenate(speaker), names, texts, rate, settings, ratios=ratios,
                    seed=seed, max_trial_anchors=max_trial_anchors, layout="shards")
        writer.text_dataset("shards/path", [os.path.relpath(p, output.parent) for p in shards])
        writer.dataset("shards/first", data=np.asarray(first, dtype=np.int64))
        writer.text_dataset("shards/audio_digest", digests)
        for key, parts in frames.items():
            group = writer._h5.require_group(f"features/{key}")
            writer.dataset(f"features/{key}/offsets", data=np.concatenate(parts))
            group.attrs["config"] = configs[key].to_json()
            group.attrs["sample_rate"] = rate
        return writer._commit()


@dataclass
class ShardProgress:
    """What a run that could not join wrote (another part's shards are not finished yet)."""

    output: Path
    total: int
    finished: int
    written: list[int]

    def __str__(self) -> str:
        return (f"wrote {len(self.written)} shard(s) of {self.output} in {shard_folder(self.output)}; "
                f"{self.finished} of {self.total} are finished. When every part has run, run the command again "
                f"without --part (it keeps the finished shards) to write the index {self.output}")
