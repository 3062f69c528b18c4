"""The prepared-corpus HDF5 file: its writer and its reader.

Layout (schema version 3; versions 1 and 2 are still read: 1 kept ``speakers`` and ``settings``
as JSON attributes, 2 had checksum blocks of 65,536 samples and 4,096 frames)::

    /audio                    int16  [total_samples]  PCM at attrs["sample_rate"], utterances concatenated
    /audio_crc32              uint32 [blocks]         CRC-32 of every chunk of /audio (AUDIO_BLOCK samples)
    /offsets                  int64  [N + 1]          utterance i is audio[offsets[i]:offsets[i + 1]]
    /speaker                  int32  [N]              index into /speakers; -1 = no speaker (noise)
    /speakers                 str [S]                 speaker names
    /settings                 str [1]                 how the corpus was made (JSON)
    /utt_id /path /transcript /session   str [N]      ("" where unknown)
    /duration                 float32 [N]             seconds
    /splits/<mode>/<part>     int64                   mode: utterance | speaker; part: train | val | test
    /splits/noise             int64                   clips without a speaker (e.g. background noise)
    /trials/<mode>/<part>/pairs   int64 [M, 3]        (enrol, test, label)
    /trials/<mode>/<part>/ident   int64 [A, 2 + W]    (anchor, positive, W distinct negatives; W = 99,
                                                  fewer in a part too small for 99)
    /features/<key>/data      float32 [frames, dim]   cached frontend output (speakerzoo.features)
    /features/<key>/offsets   int64 [N + 1]
    /features/<key>/crc32     uint32 [blocks]         CRC-32 of every chunk of data (FEATURE_BLOCK frames)

    attrs: format, schema_version, layout ("file"), sample_rate, created, speakerzoo_version, complete

A *sharded* corpus (layout ``"shards"``, :mod:`speakerzoo.datamodules.shards`) is an index file
with all of the above but ``/audio``, ``/features/<key>/data`` and their checksums, which live in
shard files (each a complete corpus of its own), plus::

    /shards/path              str [K]                 shard files, relative to the index's folder
    /shards/first             int64 [K + 1]           shard k holds utterances first[k]:first[k + 1]
    /shards/audio_digest      str [K]                 sha256 attribute of each shard's /audio_crc32

``/offsets`` and feature offsets of the index count across shards as if the audio were one array.

Speaker names and settings are datasets, not attributes: HDF5 1.x (h5py < 3.16) limits an
attribute to 64 KiB, which the names of VoxCeleb2's 6,112 speakers exceed as one JSON string.

The writer works on a temporary name beside the target and renames it only after
``complete`` is set, so an interrupted run never leaves a half file under the real name
and never destroys an earlier corpus. The reader opens the file lazily and read-only in
each process (h5py handles cannot cross a fork) and refuses incomplete files with a
message that says how to rebuild them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

import h5py
import numpy as np
import torch
from tqdm.auto import tqdm

from speakerzoo import __version__
from speakerzoo.datamodules import splits as splitting
from speakerzoo.features import PRESETS, FeatureConfig, Frontend
from speakerzoo.h5file import (
    AtomicH5Writer,
    BlockChecksums,
    ChecksumMismatch,
    created_timestamp,
    is_checksum_failure,
    read_blocks_checked,
    read_checked,
    read_texts_checked,
)

FORMAT = "speakerzoo-corpus"
SCHEMA_VERSION = 3
#: Versions this reader opens (1: speakers and settings as JSON attributes; 2: checksum blocks of
#: 65,536 samples and 4,096 frames; 3: blocks that are the chunks of the data, and sharded corpora).
READABLE_SCHEMA_VERSIONS = (1, 2, 3)
#: Largest share of the machine's RAM that ``Corpus(in_memory=True)`` may fill (divided by the
#: processes on the machine that each load a copy: see ``SpeakerDataModule(cache_in_memory=True)``).
IN_MEMORY_FRACTION = 0.5


def physical_memory_bytes() -> int | None:
    """Total RAM of this machine, or ``None`` where the OS does not say."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


#: Rows per HDF5 chunk, and per CRC-32 of a corpus' audio (samples) and cached features (frames).
#: A read fetches and checks whole blocks, so a crop of L rows reads about L + block rows: 4,096
#: samples (8 KiB) keep a 2 s crop's read within 1.13x of its size at 16 kHz (1.26x at 8 kHz),
#: where schema 2's 65,536 read 3x; 64 frames (20 KiB of fbank80) keep a 200-frame crop within
#: 1.32x, where 4,096 frames (1.3 MB) read about 20x. Readers take the block from the chunk shape
#: of each file, so older corpora keep working.
AUDIO_BLOCK = 1 << 12
FEATURE_BLOCK = 64
TEXT_FIELDS = ("utt_id", "path", "transcript", "session")


class CorpusError(RuntimeError):
    """A corpus file that cannot be used; the message names the file and the fix."""


@contextlib.contextmanager
def single_torch_thread() -> Iterator[None]:
    """Run torch on one intra-op thread inside the block.

    Per-utterance work (one clip's features or resampling) is a handful of tiny ops: extra
    threads only add synchronisation, and on a busy 2-core CPU they made such loops about
    5x slower.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def to_pcm16(wave: np.ndarray) -> np.ndarray:
    """Float waveform in [-1, 1] to int16 PCM (clipped, rounded)."""
    return np.clip(np.round(np.asarray(wave, dtype=np.float32) * 32768.0), -32768, 32767).astype(np.int16)


def from_pcm16(pcm: np.ndarray) -> np.ndarray:
    return pcm.astype(np.float32) / 32768.0


def cacheable_features(specs: Iterable[str | FeatureConfig | dict]) -> list[FeatureConfig]:
    """The distinct feature configurations of ``specs`` (preset names, dicts or configs) that a
    corpus can cache; ``ValueError`` names a bad one (raw waveforms are stored anyway)."""
    configs: list[FeatureConfig] = []
    for spec in specs:
        try:
            cfg = FeatureConfig.parse(spec)
        except (ValueError, TypeError) as err:
            raise ValueError(f"features: {err}") from None
        if cfg.kind == "waveform":
            raise ValueError("features: the waveform is always stored; cache a feature such as "
                             f"{', '.join(k for k in PRESETS if k != 'waveform')}")
        if cfg not in configs:
            configs.append(cfg)
    return configs


def write_index(writer: AtomicH5Writer, offsets: np.ndarray, speaker: np.ndarray, speaker_names: list[str],
                texts: dict[str, list[str]], sample_rate: int, settings: dict[str, Any], ratios=(0.7, 0.15, 0.15),
                seed: int = 0, max_trial_anchors: int | None = 2000, layout: str = "file") -> None:
    """Everything of a corpus file but its audio and features: the per-utterance index, speaker
    names, settings, splits, trials and the file attributes (``complete`` included, so call it
    last but for the features). One code path for a corpus file and for the index of a sharded
    corpus, so that both get the same splits and trials from the same utterances and seed."""
    speaker = np.asarray(speaker, dtype=np.int32)
    writer.dataset("offsets", data=np.asarray(offsets, dtype=np.int64))
    writer.dataset("speaker", data=speaker)
    for key in TEXT_FIELDS:
        writer.text_dataset(key, texts[key])
    writer.text_dataset("speakers", speaker_names)
    writer.text_dataset("settings", [json.dumps({**settings, "split_ratios": list(ratios), "split_seed": seed},
                                                default=str)])
    writer.dataset("duration", data=(np.diff(offsets) / sample_rate).astype(np.float32))
    writer.dataset("splits/noise", data=np.flatnonzero(speaker < 0).astype(np.int64))
    for mode, split_fn in (("utterance", splitting.split_by_utterance), ("speaker", splitting.split_by_speaker)):
        parts = split_fn(speaker, ratios=ratios, seed=seed)
        for part, idx in parts.items():
            writer.dataset(f"splits/{mode}/{part}", data=idx)
            if part == "train":
                continue
            pairs, ident = splitting.make_trials(speaker, idx, seed=seed, max_anchors=max_trial_anchors)
            writer.dataset(f"trials/{mode}/{part}/pairs", data=pairs)
            writer.dataset(f"trials/{mode}/{part}/ident", data=ident)
    writer._h5.attrs.update({
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "layout": layout,
        "sample_rate": int(sample_rate),
        "created": created_timestamp(),
        "speakerzoo_version": __version__,
        "complete": True,
    })


class CorpusWriter(AtomicH5Writer):
    """Writes one corpus file; use as a context manager.

    Example::

        with CorpusWriter("corpus.h5", sample_rate=16000, settings={"source": "..."}) as w:
            w.add(wave, speaker="alice", utt_id="alice/1", path="a/1.wav")
            ...
            w.finish(features=["fbank80"], seed=0)

    Leaving the block without :meth:`finish` (an error, Ctrl-C) removes the temporary
    file and leaves any existing file at ``path`` untouched.
    """

    def __init__(self, path: str | Path, sample_rate: int, settings: dict[str, Any] | None = None):
        super().__init__(path)
        self.sample_rate = int(sample_rate)
        self.settings = dict(settings or {})
        self._audio = self.dataset("audio", shape=(0,), maxshape=(None,), dtype=np.int16, chunks=(AUDIO_BLOCK,))
        self._audio_crc = BlockChecksums(AUDIO_BLOCK)
        self._offsets = [0]
        self._speaker_names: list[str] = []
        self._speaker_index: dict[str, int] = {}
        self._speaker: list[int] = []
        self._text: dict[str, list[str]] = {k: [] for k in TEXT_FIELDS}
        self._pending: list[np.ndarray] = []
        self._pending_len = 0

    def __len__(self) -> int:
        return len(self._speaker)

    def add(self, wave: np.ndarray, speaker: str | None, utt_id: str, path: str = "", transcript: str = "",
            session: str = "") -> int:
        """Append one utterance at the corpus rate: float in [-1, 1] or int16 PCM (stored as is);
        ``speaker=None`` for noise clips."""
        wave = np.asarray(wave)
        if wave.ndim != 1:
            # A [samples, channels] array would otherwise be flattened into interleaved garbage.
            raise ValueError(f"{path or utt_id}: expected a mono 1-D waveform, got shape {wave.shape}")
        if wave.dtype == np.int16:
            pcm = wave
        else:
            if not np.isfinite(wave).all():
                # NaN/inf would be cast to arbitrary int16 values without a word.
                raise ValueError(f"{path or utt_id}: waveform contains NaN or infinite samples")
            pcm = to_pcm16(wave)
        if pcm.size == 0:
            raise ValueError(f"{path or utt_id}: empty waveform")
        if speaker is None:
            spk = -1
        else:
            spk = self._speaker_index.setdefault(speaker, len(self._speaker_names))
            if spk == len(self._speaker_names):
                self._speaker_names.append(speaker)
        self._speaker.append(spk)
        for key, value in zip(TEXT_FIELDS, (utt_id, path, transcript, session)):
            self._text[key].append(value or "")
        self._offsets.append(self._offsets[-1] + pcm.size)
        self._pending.append(pcm)
        self._pending_len += pcm.size
        if self._pending_len > (1 << 22):
            self._flush()
        return len(self._speaker) - 1

    def _flush(self) -> None:
        if not self._pending:
            return
        block = np.concatenate(self._pending)
        start = self._audio.shape[0]
        self._audio.resize((start + block.size,))
        self._audio[start:] = block
        self._audio_crc.update(block)
        self._pending, self._pending_len = [], 0

    def finish(self, features: Iterable[str | FeatureConfig | dict] = (), ratios=(0.7, 0.15, 0.15), seed: int = 0,
               max_trial_anchors: int | None = 2000, progress: bool = True) -> Path:
        """Write the index, splits, trials and cached features, then rename into place."""
        self._flush()
        if not self._speaker:
            raise CorpusError(f"{self.path}: no utterances were added; nothing to write")
        offsets = np.asarray(self._offsets, dtype=np.int64)
        self.dataset("audio_crc32", data=self._audio_crc.finish())
        write_index(self, offsets, np.asarray(self._speaker, dtype=np.int32), self._speaker_names, self._text,
                    self.sample_rate, self.settings, ratios=ratios, seed=seed, max_trial_anchors=max_trial_anchors)
        for spec in features:
            self._write_features(FeatureConfig.parse(spec), offsets, progress)
        return self._commit()

    def _write_features(self, config: FeatureConfig, offsets: np.ndarray, progress: bool) -> None:
        """Cache the frontend's output, computed from the stored int16 PCM exactly as a model would."""
        if config.kind == "waveform":
            raise ValueError("the waveform is already stored; choose a feature such as fbank80, mfcc26 or logmel64")
        frontend = Frontend(config, self.sample_rate)
        group = self._h5.create_group(f"features/{config.key}")
        data = self.dataset(f"features/{config.key}/data", shape=(0, config.dim), maxshape=(None, config.dim),
                            dtype=np.float32, chunks=(FEATURE_BLOCK, config.dim))
        frame_offsets = [0]
        n = len(offsets) - 1
        bar = tqdm(total=n, desc=f"features {config.key}", unit="utt", disable=not progress, leave=False)
        checksums = BlockChecksums(FEATURE_BLOCK)
        with single_torch_thread():
            self._feature_loop(frontend, config, offsets, data, frame_offsets, bar, checksums)
        bar.close()
        self.dataset(f"features/{config.key}/crc32", data=checksums.finish())
        self.dataset(f"features/{config.key}/offsets", data=np.asarray(frame_offsets, dtype=np.int64))
        group.attrs["config"] = config.to_json()
        group.attrs["sample_rate"] = self.sample_rate

    def _feature_loop(self, frontend: Frontend, config: FeatureConfig, offsets: np.ndarray, data: h5py.Dataset,
                      frame_offsets: list[int], bar, checksums: BlockChecksums) -> None:
        audio = self._audio
        n = len(offsets) - 1
        start = 0
        with torch.inference_mode():
            while start < n:
                # Read the PCM in slabs of about 16 M samples: one h5py read per utterance is slow.
                stop = max(int(np.searchsorted(offsets, offsets[start] + (1 << 24), side="right")) - 1, start + 1)
                stop = min(stop, n)
                slab = from_pcm16(audio[offsets[start]:offsets[stop]])
                block = []
                for i in range(start, stop):
                    wave = torch.from_numpy(slab[offsets[i] - offsets[start]:offsets[i + 1] - offsets[start]])
                    feats, frames = frontend(wave[None], torch.tensor([wave.numel()]))
                    block.append(feats[0, : int(frames[0])].numpy())
                    frame_offsets.append(frame_offsets[-1] + int(frames[0]))
                block = np.concatenate(block)
                first = data.shape[0]
                data.resize((first + len(block), config.dim))
                data[first:] = block
                checksums.update(block)
                bar.update(stop - start)
                start = stop


class Corpus:
    """Read-only access to a prepared corpus, safe to pickle into DataLoader workers.

    A corpus is one file, or an index file whose audio and cached features live in shard files
    beside it (``prepare --shard-files``, :mod:`speakerzoo.datamodules.shards`); both read the
    same way: utterance ``i`` of the index is utterance ``i`` of the corpus, whichever shard holds it.

    Files are opened read-only with HDF5's default locking (``locking=False`` here would make
    every other ``h5py.File`` open of the same file in the process fail: HDF5 requires the same
    flags for all). On network file systems whose locks fail (NFS, Lustre), set
    ``HDF5_USE_FILE_LOCKING=FALSE`` in the environment (docs/data.md): the writer never changes a
    finished corpus in place (temporary name, then rename), so readers need no lock.

    Metadata (offsets, speakers, splits) is read once into memory; audio and features are
    read on demand through h5py handles opened lazily in each process, and checked against the
    block checksums stored beside them (read with the data, so opening a corpus costs the same
    at any size). With ``in_memory=True`` the whole PCM array and every cached feature array are
    loaded at once (the RAM-cached loader of seed 002 §2.4); forked workers then share them
    copy-on-write.
    """

    def __init__(self, path: str | Path, in_memory: bool = False, memory_fraction: float = IN_MEMORY_FRACTION):
        self.path = Path(path)
        if not self.path.exists():
            raise CorpusError(f"{self.path}: no such corpus file; create it with `speakerzoo prepare ... --output {self.path}`")
        self._handles: dict[int, h5py.File] = {}
        self._datasets: dict[tuple[int, str], tuple[h5py.Dataset, h5py.Dataset | None, int]] = {}
        self._pid: int | None = None
        self._audio_cache: np.ndarray | None = None
        self._feature_cache: dict[str, np.ndarray] = {}
        try:
            with h5py.File(self.path, "r") as h5:
                self._load_index(h5)
            if in_memory:
                self._check_fits_in_memory(memory_fraction)
                self._load_into_memory()
        except CorpusError:
            raise
        except (OSError, ChecksumMismatch, KeyError, ValueError) as err:
            if is_checksum_failure(err):
                raise self._damaged(f"its index ({err})") from err
            raise CorpusError(
                f"{self.path}: not a complete speakerzoo corpus ({err}); the file may be truncated or still being "
                f"written. Prepare it again with `speakerzoo prepare ... --output {self.path}`"
            ) from err
        finally:
            self.close()

    def _load_index(self, h5: h5py.File) -> None:
        attrs = h5.attrs
        if attrs.get("format") != FORMAT:
            raise CorpusError(f"{self.path}: not a speakerzoo corpus (no format attribute); create it with `speakerzoo prepare`")
        version = int(attrs.get("schema_version", -1))
        if version not in READABLE_SCHEMA_VERSIONS:
            raise CorpusError(
                f"{self.path}: corpus schema version {attrs.get('schema_version')} but this speakerzoo reads "
                f"versions {list(READABLE_SCHEMA_VERSIONS)}; prepare it again with this version"
            )
        if not bool(attrs.get("complete", False)):
            raise CorpusError(f"{self.path}: corpus was not completely written; prepare it again")
        self.sample_rate = int(attrs["sample_rate"])
        if version == 1:
            self.speakers: list[str] = json.loads(attrs["speakers"])
            self.settings: dict[str, Any] = json.loads(attrs["settings"])
        else:
            try:
                self.speakers = read_texts_checked(h5["speakers"])
                self.settings = json.loads(read_texts_checked(h5["settings"])[0])
            except ChecksumMismatch:
                raise self._damaged("its speaker list or settings") from None
        self.offsets = read_checked(h5["offsets"])
        self.num_samples = np.diff(self.offsets)  # length of every utterance in samples
        self.speaker = read_checked(h5["speaker"]).astype(np.int64)
        self.duration = read_checked(h5["duration"])
        self.sharded = attrs.get("layout", "file") == "shards"
        if self.sharded:
            #: The shard files, in order; shard k holds utterances shard_first[k]:shard_first[k + 1].
            self.shard_paths = [self.path.parent / p for p in read_texts_checked(h5["shards/path"])]
            self.shard_first = read_checked(h5["shards/first"])
            self._shard_digest = read_texts_checked(h5["shards/audio_digest"])
            missing = [str(p) for p in self.shard_paths if not p.is_file()]
            if missing:
                raise CorpusError(
                    f"{self.path}: {len(missing)} of its {len(self.shard_paths)} shard files are missing "
                    f"({', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}); copy them beside the index, "
                    f"or run the same `speakerzoo prepare` command again: it keeps the shards that are there "
                    f"and makes the missing ones")
        else:
            self.shard_paths = [self.path]
            self.shard_first = np.asarray([0, len(self.speaker)], dtype=np.int64)
            self._shard_digest = [None]
            if self.offsets[-1] != h5["audio"].shape[0]:
                raise CorpusError(f"{self.path}: audio array is shorter than its index (truncated); prepare it again")
        self._splits = {name: read_checked(h5[f"splits/{name}"]) for name in self._walk(h5["splits"])}
        self._trials = ({name: read_checked(h5[f"trials/{name}"]) for name in self._walk(h5["trials"])}
                        if "trials" in h5 else {})
        self.feature_configs: dict[str, FeatureConfig] = {
            key: FeatureConfig.parse(str(group.attrs["config"])) for key, group in h5.get("features", {}).items()
        }
        self._feature_offsets = {key: read_checked(h5[f"features/{key}/offsets"]) for key in self.feature_configs}

    def _check_fits_in_memory(self, fraction: float) -> None:
        """Refuse ``in_memory`` when the audio and cached features exceed ``fraction`` of this
        machine's RAM (VoxCeleb2's 276 GB of PCM would otherwise be read into every rank)."""
        ram = physical_memory_bytes()
        need = int(self.offsets[-1]) * 2 + sum(int(self._feature_offsets[key][-1]) * cfg.dim * 4
                                               for key, cfg in self.feature_configs.items())
        if ram is not None and need > fraction * ram:
            raise CorpusError(
                f"{self.path}: cache_in_memory would load {need / 2**30:.1f} GiB of audio and features, more than "
                f"{fraction:.0%} of this machine's {ram / 2**30:.1f} GiB of RAM (per process that loads it); "
                f"set cache_in_memory: false, which reads crops from the file on demand")

    def _load_into_memory(self) -> None:
        """Read every shard's audio and features into one array each, checking every block once."""
        audio = np.empty(int(self.offsets[-1]), dtype=np.int16)
        features = {key: np.empty((int(self._feature_offsets[key][-1]), cfg.dim), dtype=np.float32)
                    for key, cfg in self.feature_configs.items()}
        for k in range(len(self.shard_paths)):
            first, last = int(self.shard_first[k]), int(self.shard_first[k + 1])
            for name, target, bounds in [("audio", audio, self.offsets)] + [
                    (f"features/{key}/data", features[key], self._feature_offsets[key]) for key in features]:
                lo, hi = int(bounds[first]), int(bounds[last])
                target[lo:hi] = self._read(k, name, 0, hi - lo, f"its {name}", whole=True)
        self._audio_cache, self._feature_cache = audio, features

    @staticmethod
    def _walk(group: h5py.Group) -> list[str]:
        names: list[str] = []
        group.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
        return names

    # -- pickling: handles never cross a process boundary ---------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handles"], state["_datasets"], state["_pid"] = {}, {}, None
        return state

    def _open(self, k: int) -> h5py.File:
        """The h5py handle of shard ``k`` in this process (``-1``: the index file), opened on first use;
        a shard is checked to be the one the index was made from the first time it opens."""
        if self._pid != os.getpid():
            self._handles, self._datasets, self._pid = {}, {}, os.getpid()
        if not self.sharded:
            k = 0 if k == -1 else k
        handle = self._handles.get(k)
        if handle is None:
            path = self.path if k == -1 else self.shard_paths[k]
            try:
                handle = h5py.File(path, "r")
            except OSError as err:
                raise CorpusError(f"{path}: cannot open this shard of {self.path} ({err}); run the same "
                                  "`speakerzoo prepare` command again to make it again") from err
            if k >= 0 and self.sharded:
                self._check_shard(k, handle)
            self._handles[k] = handle
        return handle

    def _check_shard(self, k: int, h5: h5py.File) -> None:
        path = self.shard_paths[k]
        extent = int(self.offsets[self.shard_first[k + 1]] - self.offsets[self.shard_first[k]])
        crc = h5.get("audio_crc32")
        if (not bool(h5.attrs.get("complete", False)) or crc is None or crc.attrs.get("sha256") != self._shard_digest[k]
                or h5["audio"].shape[0] != extent):
            h5.close()
            raise CorpusError(
                f"{path} is not the shard {self.path} was made from (it was replaced, or is unfinished); run the "
                f"same `speakerzoo prepare` command again, which makes the shards and the index agree")

    def close(self) -> None:
        if self._pid == os.getpid():
            for handle in self._handles.values():
                handle.close()
        self._handles, self._datasets, self._pid = {}, {}, None

    # -- metadata ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.speaker)

    def _damaged(self, what: str, path: Path | None = None) -> CorpusError:
        path = path or self.path
        return CorpusError(f"{path} is damaged: {what} fails its checksum (the file changed after it was "
                           f"written: a bad disk or copy). Copy it again, or prepare it again with "
                           f"`speakerzoo prepare ... --output {self.path}`")

    def texts(self, field: str) -> list[str]:
        """One of ``utt_id``, ``path``, ``transcript``, ``session`` for every utterance (checked against
        the digest stored beside it, where the corpus has one)."""
        if field not in TEXT_FIELDS:
            raise KeyError(f"{field!r} is not one of {TEXT_FIELDS}")
        try:
            return read_texts_checked(self._open(-1)[field])
        except ChecksumMismatch:
            raise self._damaged(f"its {field} list") from None

    def split(self, mode: str, part: str) -> np.ndarray:
        """Utterance indices of ``part`` (train/val/test) under split ``mode`` (utterance/speaker)."""
        key = f"{mode}/{part}"
        if key not in self._splits:
            raise CorpusError(f"{self.path}: no split {key!r}; available: {sorted(self._splits)}")
        return self._splits[key]

    def trials(self, mode: str, part: str) -> tuple[np.ndarray, np.ndarray]:
        """``(pairs, ident)`` arrays of ``part`` under ``mode`` (see :class:`speakerzoo.scoring.Trials`)."""
        key = f"{mode}/{part}"
        if f"{key}/pairs" not in self._trials:
            raise CorpusError(f"{self.path}: no trials for {key!r}")
        return self._trials[f"{key}/pairs"], self._trials[f"{key}/ident"]

    # -- data --------------------------------------------------------------------------------
    def shard_of(self, i: int) -> int:
        """The shard that holds utterance ``i`` (0 for a single-file corpus)."""
        return int(np.searchsorted(self.shard_first, i, side="right")) - 1

    def pcm(self, i: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Int16 samples ``[start:stop]`` of utterance ``i``, exactly as stored."""
        return self._utterance_rows("audio", self.offsets, self._audio_cache, i, start, stop,
                                    f"the audio of utterance {i}")

    def audio(self, i: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Float32 samples ``[start:stop]`` of utterance ``i``."""
        return from_pcm16(self.pcm(i, start, stop))

    def features(self, key: str, i: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Cached feature frames ``[start:stop]`` of utterance ``i`` (``[frames, dim]``)."""
        if key not in self.feature_configs:
            raise CorpusError(
                f"{self.path}: no cached features {key!r} (has {sorted(self.feature_configs) or 'none'}); "
                f"prepare it again with `--features {key}`"
            )
        return self._utterance_rows(f"features/{key}/data", self._feature_offsets[key], self._feature_cache.get(key),
                                    i, start, stop, f"the {key} features of utterance {i}")

    def _utterance_rows(self, name: str, offsets: np.ndarray, cache: np.ndarray | None, i: int, start: int,
                        stop: int | None, what: str) -> np.ndarray:
        lo, hi = int(offsets[i]), int(offsets[i + 1])
        a, b = lo + start, hi if stop is None else min(lo + stop, hi)
        if cache is not None:
            return cache[a:b]
        k = self.shard_of(i)
        base = int(offsets[self.shard_first[k]])
        return self._read(k, name, a - base, b - base, what)

    def _read(self, k: int, name: str, a: int, b: int, what: str, whole: bool = False) -> np.ndarray:
        """Rows ``[a:b]`` of dataset ``name`` of shard ``k``, checked against its block checksums (the
        ``*crc32`` dataset beside it, whose block is the dataset's chunk) where it has them; damage
        is a :class:`CorpusError` naming ``what``. ``whole``: read the checksums at once (a long read)."""
        path = self.shard_paths[k]
        try:
            entry = self._datasets.get((k, name)) if self._pid == os.getpid() else None
            if entry is None:
                h5 = self._open(k)
                data = h5[name]
                crc_name = "audio_crc32" if name == "audio" else name.rsplit("/", 1)[0] + "/crc32"
                entry = (data, h5[crc_name] if crc_name in h5 else None, int(data.chunks[0]) if data.chunks else 0)
                self._datasets[(k, name)] = entry
            data, crcs, block = entry
            if crcs is None:
                return data[a:b]
            return read_blocks_checked(data, crcs[()] if whole else crcs, block, a, b)
        except (OSError, ChecksumMismatch) as err:
            if is_checksum_failure(err):
                raise self._damaged(what, path) from err
            # The file opened, so a failing read is damage to its chunk index (HDF5: "wrong B-tree
            # signature") or a storage failure; either way not data to train on.
            raise CorpusError(f"{path} is damaged: {what} cannot be read ({err}); copy it again, or prepare it "
                              f"again with `speakerzoo prepare ... --output {self.path}`") from err

    def utterance_digests(self) -> list[str]:
        """sha256 of every utterance: its speaker name, texts, PCM and cached features. Two corpora
        with equal digests hold the same utterances in the same order, however they were written
        (one file or shards, in one run or resumed after a kill)."""
        texts = [self.texts(key) for key in TEXT_FIELDS]
        digests = []
        for i in range(len(self)):
            h = hashlib.sha256()
            name = self.speakers[self.speaker[i]] if self.speaker[i] >= 0 else ""
            h.update(json.dumps([name] + [t[i] for t in texts]).encode())
            h.update(self.pcm(i).tobytes())
            for key in sorted(self.feature_configs):
                h.update(np.ascontiguousarray(self.features(key, i)).tobytes())
            digests.append(h.hexdigest())
        return digests

    def num_frames(self, key: str) -> np.ndarray:
        """Length of every utterance in frames of the cached feature ``key``."""
        if key not in self._feature_offsets:
            raise CorpusError(
                f"{self.path}: no cached features {key!r} (has {sorted(self.feature_configs) or 'none'}); "
                f"prepare it again with `--features {key}`"
            )
        return np.diff(self._feature_offsets[key])
