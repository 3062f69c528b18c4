"""The prepared-corpus HDF5 file: its writer and its reader.

Layout (schema version 2; version 1 files, which kept ``speakers`` and ``settings`` as JSON
attributes, are still read)::

    /audio                    int16  [total_samples]  PCM at attrs["sample_rate"], utterances concatenated
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

    attrs: format, schema_version, sample_rate, created, speakerzoo_version, complete

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
SCHEMA_VERSION = 2
#: Versions this reader opens (1: speakers and settings as JSON attributes).
READABLE_SCHEMA_VERSIONS = (1, 2)
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
AUDIO_BLOCK = 1 << 16
FEATURE_BLOCK = 4096
_TEXT_FIELDS = ("utt_id", "path", "transcript", "session")


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
        self._text: dict[str, list[str]] = {k: [] for k in _TEXT_FIELDS}
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
        for key, value in zip(_TEXT_FIELDS, (utt_id, path, transcript, session)):
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
        h5 = self._h5
        offsets = np.asarray(self._offsets, dtype=np.int64)
        speaker = np.asarray(self._speaker, dtype=np.int32)
        self.dataset("offsets", data=offsets)
        self.dataset("audio_crc32", data=self._audio_crc.finish())
        self.dataset("speaker", data=speaker)
        for key, values in self._text.items():
            self.text_dataset(key, values)
        self.text_dataset("speakers", self._speaker_names)
        self.text_dataset("settings", [json.dumps({**self.settings, "split_ratios": list(ratios), "split_seed": seed},
                                                  default=str)])
        self.dataset("duration", data=(np.diff(offsets) / self.sample_rate).astype(np.float32))
        self.dataset("splits/noise", data=np.flatnonzero(speaker < 0).astype(np.int64))
        for mode, split_fn in (("utterance", splitting.split_by_utterance), ("speaker", splitting.split_by_speaker)):
            parts = split_fn(speaker, ratios=ratios, seed=seed)
            for part, idx in parts.items():
                self.dataset(f"splits/{mode}/{part}", data=idx)
                if part == "train":
                    continue
                pairs, ident = splitting.make_trials(speaker, idx, seed=seed, max_anchors=max_trial_anchors)
                self.dataset(f"trials/{mode}/{part}/pairs", data=pairs)
                self.dataset(f"trials/{mode}/{part}/ident", data=ident)
        for spec in features:
            self._write_features(FeatureConfig.parse(spec), offsets, progress)
        h5.attrs.update({
            "format": FORMAT,
            "schema_version": SCHEMA_VERSION,
            "sample_rate": self.sample_rate,
            "created": created_timestamp(),
            "speakerzoo_version": __version__,
            "complete": True,
        })
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
    """Read-only access to a prepared corpus file, safe to pickle into DataLoader workers.

    The file is opened read-only with HDF5's default locking (``locking=False`` here would make
    every other ``h5py.File`` open of the same file in the process fail: HDF5 requires the same
    flags for all). On network file systems whose locks fail (NFS, Lustre), set
    ``HDF5_USE_FILE_LOCKING=FALSE`` in the environment (docs/data.md): the writer never changes a
    finished corpus in place (temporary name, then rename), so readers need no lock.

    Metadata (offsets, speakers, splits) is read once into memory; audio and features are
    read on demand through an h5py handle opened lazily in each process. With
    ``in_memory=True`` the whole PCM array and every cached feature array are loaded at once
    (the RAM-cached loader of seed 002 §2.4); forked workers then share them copy-on-write.
    """

    def __init__(self, path: str | Path, in_memory: bool = False, memory_fraction: float = IN_MEMORY_FRACTION):
        self.path = Path(path)
        if not self.path.exists():
            raise CorpusError(f"{self.path}: no such corpus file; create it with `speakerzoo prepare ... --output {self.path}`")
        try:
            with h5py.File(self.path, "r") as h5:
                self._load_index(h5)
                if in_memory:
                    self._check_fits_in_memory(h5, memory_fraction)
                self._audio_cache = h5["audio"][:] if in_memory else None
                if self._audio_cache is not None and self._audio_crc is not None:  # checked once, here
                    read_blocks_checked(self._audio_cache, self._audio_crc, AUDIO_BLOCK, 0, len(self._audio_cache))
                self._feature_cache = (
                    {key: h5[f"features/{key}/data"][:] for key in self.feature_configs} if in_memory else {}
                )
        except CorpusError:
            raise
        except (OSError, ChecksumMismatch) as err:
            if is_checksum_failure(err):
                raise self._damaged(f"its index ({err})") from err
            raise CorpusError(
                f"{self.path}: not a complete speakerzoo corpus ({err}); the file may be truncated or still being "
                f"written. Prepare it again with `speakerzoo prepare ... --output {self.path}`"
            ) from err
        except (KeyError, ValueError) as err:
            raise CorpusError(
                f"{self.path}: not a complete speakerzoo corpus ({err}); the file may be truncated or still being "
                f"written. Prepare it again with `speakerzoo prepare ... --output {self.path}`"
            ) from err
        self._h5: h5py.File | None = None
        self._pid: int | None = None

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
        if self.offsets[-1] != h5["audio"].shape[0]:
            raise CorpusError(f"{self.path}: audio array is shorter than its index (truncated); prepare it again")
        # Corpora written before checksums have none; they are read unchecked.
        self._audio_crc = read_checked(h5["audio_crc32"]) if "audio_crc32" in h5 else None
        self._splits = {name: read_checked(h5[f"splits/{name}"]) for name in self._walk(h5["splits"])}
        self._trials = ({name: read_checked(h5[f"trials/{name}"]) for name in self._walk(h5["trials"])}
                        if "trials" in h5 else {})
        self.feature_configs: dict[str, FeatureConfig] = {
            key: FeatureConfig.parse(str(group.attrs["config"])) for key, group in h5.get("features", {}).items()
        }
        self._feature_offsets = {key: read_checked(h5[f"features/{key}/offsets"]) for key in self.feature_configs}
        self._feature_crc = {key: read_checked(h5[f"features/{key}/crc32"]) for key in self.feature_configs
                             if f"features/{key}/crc32" in h5}

    def _check_fits_in_memory(self, h5: h5py.File, fraction: float) -> None:
        """Refuse ``in_memory`` when the audio and cached features exceed ``fraction`` of this
        machine's RAM (VoxCeleb2's 276 GB of PCM would otherwise be read into every rank)."""
        ram = physical_memory_bytes()
        need = h5["audio"].size * h5["audio"].dtype.itemsize + sum(
            h5[f"features/{key}/data"].size * h5[f"features/{key}/data"].dtype.itemsize for key in self.feature_configs)
        if ram is not None and need > fraction * ram:
            raise CorpusError(
                f"{self.path}: cache_in_memory would load {need / 2**30:.1f} GiB of audio and features, more than "
                f"{fraction:.0%} of this machine's {ram / 2**30:.1f} GiB of RAM (per process that loads it); "
                f"set cache_in_memory: false, which reads crops from the file on demand")

    @staticmethod
    def _walk(group: h5py.Group) -> list[str]:
        names: list[str] = []
        group.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
        return names

    # -- pickling: handles never cross a process boundary ---------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_h5"], state["_pid"] = None, None
        return state

    def _file(self) -> h5py.File:
        if self._h5 is None or self._pid != os.getpid():
            self._h5 = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._h5

    def close(self) -> None:
        if self._h5 is not None and self._pid == os.getpid():
            self._h5.close()
        self._h5 = None

    # -- metadata ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.speaker)


    def _damaged(self, what: str) -> CorpusError:
        return CorpusError(f"{self.path} is damaged: {what} fails its checksum (the file changed after it was "
                           f"written: a bad disk or copy). Copy it again, or prepare it again with "
                           f"`speakerzoo prepare ... --output {self.path}`")

    def texts(self, field: str) -> list[str]:
        """One of ``utt_id``, ``path``, ``transcript``, ``session`` for every utterance (checked against
        the digest stored beside it, where the corpus has one)."""
        if field not in _TEXT_FIELDS:
            raise KeyError(f"{field!r} is not one of {_TEXT_FIELDS}")
        try:
            return read_texts_checked(self._file()[field])
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
    def pcm(self, i: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Int16 samples ``[start:stop]`` of utterance ``i``, exactly as stored."""
        lo = int(self.offsets[i])
        hi = int(self.offsets[i + 1])
        a, b = lo + start, hi if stop is None else min(lo + stop, hi)
        return self._rows("audio", self._audio_cache, self._audio_crc, AUDIO_BLOCK, a, b,
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
        offsets = self._feature_offsets[key]
        lo, hi = int(offsets[i]), int(offsets[i + 1])
        b = hi if stop is None else min(lo + stop, hi)
        return self._rows(f"features/{key}/data", self._feature_cache.get(key), self._feature_crc.get(key),
                          FEATURE_BLOCK, lo + start, b, f"the {key} features of utterance {i}")

    def _rows(self, name: str, cache: np.ndarray | None, crcs: np.ndarray | None, block: int, a: int, b: int,
              what: str) -> np.ndarray:
        """Rows ``[a:b]`` of dataset ``name`` (or of its in-memory ``cache``), checked against its
        block checksums where the corpus has them; damage is a :class:`CorpusError` naming ``what``."""
        try:
            source = cache if cache is not None else self._file()[name]
            return source[a:b] if crcs is None else read_blocks_checked(source, crcs, block, a, b)
        except (OSError, ChecksumMismatch) as err:
            if is_checksum_failure(err):
                raise self._damaged(what) from err
            raise

    def num_frames(self, key: str) -> np.ndarray:
        """Length of every utterance in frames of the cached feature ``key``."""
        if key not in self._feature_offsets:
            raise CorpusError(
                f"{self.path}: no cached features {key!r} (has {sorted(self.feature_configs) or 'none'}); "
                f"prepare it again with `--features {key}`"
            )
        return np.diff(self._feature_offsets[key])
