"""Decoding audio files into mono float waveforms at one sample rate (ground floor).

soundfile (libsndfile) reads WAV, FLAC, OGG and MP3; torchaudio resamples. Used when a
corpus is prepared and when a trained model embeds files directly, so both see the same
decoded signal.
"""

from __future__ import annotations

import os
import stat
import struct
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")


def strip_audio_ext(name: str) -> str:
    """``name`` without its audio extension(s): ``"a/b.wav"`` -> ``"a/b"`` (``"x.flac.wav"`` -> ``"x"``)."""
    while os.path.splitext(name)[1].lower() in AUDIO_EXTENSIONS:
        name = os.path.splitext(name)[0]
    return name

#: A clip whose loudest 25 ms frame is quieter than this (mean square, dB relative to full scale)
#: holds no speech: digital silence, or near it. Measured on the shared real speech: the quietest
#: loudest frame is -48 dBFS (FSDD, 3,000 clips) and -37.5 dBFS (Speech Commands, 4,482 spoken
#: clips); 12 dB below the quietest real recording keeps them all.
SILENCE_FLOOR_DBFS = -60.0


class AudioError(ValueError):
    """A file that cannot be used as speech; the message names the file and the reason."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """Decode ``path`` to float32 ``[samples, channels]`` and its native rate.

    Raises :class:`AudioError` for a missing file, a FIFO, device or socket (never opened: reading
    one can block forever), an empty, unreadable, non-audio or truncated file (:func:`wav_truncation`).
    """
    path = Path(path)
    try:
        info = path.stat()
    except OSError:
        raise AudioError(path, "no such file") from None
    if not stat.S_ISREG(info.st_mode):
        what = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file (a FIFO, device or socket)"
        raise AudioError(path, f"{what}; skipped without opening it")
    if info.st_size == 0:
        raise AudioError(path, "empty file (0 bytes)")
    reason = wav_truncation(path)
    if reason is not None:
        raise AudioError(path, reason)
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as err:  # libsndfile reports many formats of failure
        raise AudioError(path, f"unreadable as audio ({err}); is it really a {path.suffix or 'sound'} file?") from err
    if data.shape[0] == 0:
        raise AudioError(path, "contains no samples")
    if not np.isfinite(data).all():
        raise AudioError(path, "contains NaN or infinite samples")
    return data, int(rate)


def wav_truncation(path: str | Path) -> str | None:
    """Why a RIFF/WAVE file is truncated, or ``None`` (also for files that are not WAV).

    libsndfile reads a truncated WAV without an error and returns the samples that are
    there, so we read the chunk headers ourselves: the file is truncated when its data chunk
    declares more bytes than the file holds. RF64 files and WAVs written as a stream (data
    size ``0xFFFFFFFF``) are not truncated.
    """
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[8:12] != b"WAVE" or head[:4] not in (b"RIFF", b"RIFX"):
                return None
            endian = "<" if head[:4] == b"RIFF" else ">"
            pos = 12
            for _ in range(64):  # a WAV has a handful of chunks before its data
                f.seek(pos)
                chunk = f.read(8)
                if len(chunk) < 8:
                    break
                cid, csize = chunk[:4], struct.unpack(endian + "I", chunk[4:])[0]
                if cid == b"data":
                    available = max(size - pos - 8, 0)
                    if csize == 0xFFFFFFFF or csize <= available:
                        return None
                    return (f"truncated: its header declares {csize} bytes of audio but only {available} "
                            f"are present ({available / csize:.0%}); copy or download it again")
                pos += 8 + csize + (csize & 1)
    except OSError:
        pass  # unreadable files are reported by the decoder
    return None


def loudest_frame_dbfs(wave: np.ndarray, sample_rate: int, frame_ms: float = 25.0) -> float:
    """Mean-square level of the loudest ``frame_ms`` frame of ``wave``, in dBFS (``-inf`` for zeros).

    >>> t = np.arange(16000) / 16000
    >>> round(loudest_frame_dbfs(0.5 * np.sin(2 * np.pi * 200 * t), 16000), 1)  # a sine at half scale
    -9.0
    >>> loudest_frame_dbfs(np.zeros(800), 16000)
    -inf
    """
    frame = max(int(sample_rate * frame_ms / 1000), 1)
    wave = np.asarray(wave)
    if wave.size == 0:
        return float("-inf")
    frames = wave[None, :] if len(wave) < frame else wave[: len(wave) // frame * frame].reshape(-1, frame)
    loudest = 0.0
    for i in range(0, len(frames), 1 << 14):  # in slabs: no float64 copy of a whole long recording
        slab = frames[i:i + (1 << 14)].astype(np.float64)
        loudest = max(loudest, float(np.max(np.mean(slab * slab, axis=1))))
    return float(10.0 * np.log10(loudest)) if loudest > 0 else float("-inf")


def silence_reason(wave: np.ndarray, sample_rate: int, channels: np.ndarray | None = None) -> str | None:
    """Why the mono ``wave`` holds no speech (its loudest frame below :data:`SILENCE_FLOOR_DBFS`),
    or ``None``. ``channels`` (the file's ``[samples, channels]``) tells a recording that is silent
    from channels that cancel when mixed (one the other inverted)."""
    level = loudest_frame_dbfs(wave, sample_rate)
    if level >= SILENCE_FLOOR_DBFS:
        return None
    if channels is not None and channels.shape[1] > 1 and loudest_frame_dbfs(channels[:, 0], sample_rate) >= SILENCE_FLOOR_DBFS:
        return (f"silent once its {channels.shape[1]} channels are mixed to mono (loudest frame {level:.0f} dBFS): "
                "they cancel out, one is the other inverted; keep one channel (e.g. sox in.wav out.wav remix 1)")
    shown = "-inf" if level == float("-inf") else f"{level:.0f}"
    return (f"silent: its loudest 25 ms is at {shown} dBFS, below the floor of {SILENCE_FLOOR_DBFS:.0f} dBFS "
            "for speech; nothing to recognise a speaker by")


def to_mono(data: np.ndarray) -> np.ndarray:
    """Average the channels of ``[samples, channels]`` into ``[samples]``."""
    return data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]


def resample(wave: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    """Band-limited resampling with torchaudio (sinc interpolation, Hann window)."""
    if orig_rate == new_rate:
        return wave
    out = torchaudio.functional.resample(torch.from_numpy(np.ascontiguousarray(wave)), orig_rate, new_rate)
    return out.numpy()


def normalize_volume(wave: np.ndarray, peak: float = 0.95) -> np.ndarray:
    """Scale so that the largest absolute sample is ``peak`` (seed 002, §2.1)."""
    top = float(np.abs(wave).max()) if wave.size else 0.0
    return wave if top == 0.0 else wave * (peak / top)


def trim_silence(wave: np.ndarray, sample_rate: int, threshold_db: float = -40.0, frame_ms: float = 25.0,
                 margin_ms: float = 100.0) -> np.ndarray:
    """Energy-based silence removal (seed 002, §2.1).

    Frames whose RMS is more than ``threshold_db`` below the loudest frame are silence;
    runs of silence longer than twice ``margin_ms`` are cut, keeping ``margin_ms`` of
    context on each side of speech. Returns the input unchanged if nothing is speech.
    """
    frame = max(int(sample_rate * frame_ms / 1000), 1)
    n = len(wave) // frame
    if n < 2:
        return wave
    frames = wave[: n * frame].reshape(n, frame)
    rms_db = 10.0 * np.log10(np.mean(frames.astype(np.float64) ** 2, axis=1) + 1e-12)
    speech = rms_db > rms_db.max() + threshold_db
    if not speech.any():
        return wave
    margin = int(np.ceil(margin_ms / frame_ms))
    keep = np.zeros(n, dtype=bool)
    for i in np.flatnonzero(speech):
        keep[max(i - margin, 0): i + margin + 1] = True
    keep_samples = np.repeat(keep, frame)
    tail = wave[n * frame:] if keep[-1] else wave[:0]
    return np.concatenate([wave[: n * frame][keep_samples], tail])


def condition(data: np.ndarray, rate: int, sample_rate: int, normalize: bool = False, trim: bool = False) -> np.ndarray:
    """``[samples, channels]`` at ``rate`` -> mono float32 at ``sample_rate``, optionally trimmed and normalised."""
    wave = resample(to_mono(data), rate, sample_rate)
    if trim:
        wave = trim_silence(wave, sample_rate)
    if normalize:
        wave = normalize_volume(wave)
    return np.ascontiguousarray(wave, dtype=np.float32)


def load_audio(path: str | Path, sample_rate: int, normalize: bool = False, trim: bool = False) -> tuple[np.ndarray, int]:
    """Decode, mix to mono and resample ``path``; returns the float32 waveform and the file's own rate.

    Raises :class:`AudioError` as :func:`read_audio` does, and for a recording without speech
    (:func:`silence_reason`): two silent files would otherwise get the same embedding and verify
    as the same speaker with a score of 1.
    """
    data, rate = read_audio(path)
    wave = condition(data, rate, sample_rate, normalize, trim)
    reason = silence_reason(wave, sample_rate, data)
    if reason is not None:
        raise AudioError(path, reason)
    return wave, rate
