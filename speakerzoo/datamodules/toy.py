"""The embedded default corpus: synthetic speakers from a source-filter voice synthesiser.

:func:`prepare_toy` writes, offline and deterministically, a multi-speaker corpus whose
speaker identity lies in the voice itself, not in trivial cues:

* **source**: a Rosenberg glottal pulse train (its derivative, which includes lip
  radiation) at a varying F0, with per-cycle jitter and shimmer, plus aspiration noise
  gated by the glottal opening (breathiness);
* **filter**: a cascade of five second-order resonators (Klatt-style, unity gain at DC)
  whose formants follow the phone sequence with smooth transitions; it is applied in the
  short-time Fourier domain (one complex frequency response per 8 ms frame, overlap-add),
  which makes a time-varying filter a few vectorised FFTs instead of a per-sample loop;
* **speaker**: mean F0 and pitch spread, vocal-tract length (a formant scale factor),
  idiosyncratic offsets of the higher formants, formant bandwidths, spectral tilt, open
  quotient, jitter, shimmer, breathiness and speaking rate;
* **utterance**: 1.5-3 s of random syllables (onset consonant + vowel, words separated by
  short pauses), a pitch contour with declination and accents, a mild random channel tilt,
  coloured background noise at 25-45 dB SNR, and a loudness normalised to a random level
  independent of the speaker.

Every random draw comes from ``numpy.random.default_rng`` seeded by ``(seed, speaker,
utterance)``, so the same arguments give byte-identical audio, whatever the order or the
number of processes that synthesise it.

Example (also ``speakerzoo prepare toy --output data/toy.h5``)::

    from speakerzoo.datamodules.toy import prepare_toy
    path = prepare_toy("data/toy.h5")          # 40 speakers x 24 utterances, a few seconds

    >>> import numpy as np
    >>> wave, text = synthesize(make_voice(np.random.default_rng(0)), np.random.default_rng(1))
    >>> wave.dtype, 1.5 <= len(wave) / 16000 <= 3.0, bool(text)
    (dtype('float32'), True, True)
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import scipy.signal
from tqdm.auto import tqdm

from speakerzoo.datamodules.corpus import CorpusWriter

GENERATOR = "speakerzoo.datamodules.toy"
GENERATOR_VERSION = 1

# Formants F1-F4 (Hz) of a reference vocal tract (scale 1.0), after Peterson & Barney.
VOWELS: dict[str, tuple[float, float, float, float]] = {
    "a": (730.0, 1090.0, 2440.0, 3400.0),
    "e": (530.0, 1840.0, 2480.0, 3500.0),
    "i": (270.0, 2290.0, 3010.0, 3700.0),
    "o": (570.0, 840.0, 2410.0, 3300.0),
    "u": (300.0, 870.0, 2240.0, 3300.0),
}
F5 = 4500.0
BANDWIDTHS = (80.0, 100.0, 130.0, 180.0, 250.0)

# Voiced consonants with their own formants: (formants, voicing amplitude).
SONORANTS: dict[str, tuple[tuple[float, float, float, float], float]] = {
    "m": ((280.0, 1000.0, 2200.0, 3300.0), 0.35),
    "n": ((280.0, 1500.0, 2500.0, 3300.0), 0.35),
    "l": ((360.0, 1300.0, 2700.0, 3500.0), 0.6),
    "r": ((420.0, 1300.0, 1600.0, 3200.0), 0.6),
    "w": ((300.0, 700.0, 2200.0, 3300.0), 0.6),
    "y": ((280.0, 2200.0, 2950.0, 3600.0), 0.6),
}
# Fricatives: (voicing, frication amplitude, centre Hz, bandwidth Hz, aspiration).
FRICATIVES: dict[str, tuple[float, float, float, float, float]] = {
    "s": (0.0, 0.30, 5500.0, 1800.0, 0.0),
    "c": (0.0, 0.30, 2800.0, 1200.0, 0.0),  # "sh"
    "f": (0.0, 0.10, 4500.0, 4000.0, 0.0),
    "h": (0.0, 0.00, 3000.0, 3000.0, 0.6),
    "z": (0.3, 0.18, 5500.0, 1800.0, 0.0),
    "v": (0.3, 0.07, 4000.0, 4000.0, 0.0),
}
# Plosives: (voiced, burst centre Hz, burst bandwidth Hz).
PLOSIVES: dict[str, tuple[bool, float, float]] = {
    "p": (False, 1000.0, 1500.0),
    "t": (False, 4500.0, 2500.0),
    "k": (False, 2200.0, 1000.0),
    "b": (True, 1000.0, 1500.0),
    "d": (True, 4500.0, 2500.0),
    "g": (True, 2200.0, 1000.0),
}
ONSETS = tuple(SONORANTS) + tuple(FRICATIVES) + tuple(PLOSIVES)
_CLOSURE_FORMANTS = (200.0, 1000.0, 2300.0, 3300.0)


@dataclass(frozen=True)
class Voice:
    """One synthetic speaker's parameters."""

    f0: float  # mean F0 (Hz)
    f0_spread: float  # std of syllable pitch accents (semitones)
    formant_scale: float  # 1 / relative vocal-tract length
    formant_detail: tuple[float, float, float, float, float]  # idiosyncratic factors on F1..F5
    bandwidth_scale: float
    tilt: float  # extra spectral tilt above 500 Hz (dB/octave, positive = darker)
    open_quotient: float
    jitter: float  # relative std of the period, per cycle
    shimmer: float  # relative std of the amplitude, per cycle
    breathiness: float  # aspiration noise level relative to the voiced excitation
    rate: float  # speaking rate (>1 = faster)
    vowel_shift: tuple[tuple[float, float], ...] = ()  # per vowel (in VOWELS order): factors on F1, F2 ("accent")


def make_voice(rng: np.random.Generator) -> Voice:
    """Draw one speaker. F0 and vocal-tract length are correlated (larger speakers are lower)."""
    log_lo, log_hi = math.log(85.0), math.log(260.0)
    t = rng.uniform()
    f0 = math.exp(log_lo + t * (log_hi - log_lo))
    scale = float(np.clip(0.84 + 0.32 * t + rng.normal(0.0, 0.04), 0.8, 1.2))
    detail = (1.0 + rng.normal(0.0, 0.03), 1.0 + rng.normal(0.0, 0.04), *(1.0 + rng.normal(0.0, 0.07, 3)))
    return Voice(
        f0=round(f0, 3),
        f0_spread=round(rng.uniform(0.8, 3.0), 3),
        formant_scale=round(scale, 4),
        formant_detail=tuple(round(float(x), 4) for x in detail),
        bandwidth_scale=round(rng.uniform(0.8, 1.5), 3),
        tilt=round(rng.uniform(-3.0, 6.0), 3),
        open_quotient=round(rng.uniform(0.4, 0.8), 3),
        jitter=round(rng.uniform(0.003, 0.025), 4),
        shimmer=round(rng.uniform(0.02, 0.12), 4),
        breathiness=round(float(np.exp(rng.uniform(np.log(0.02), np.log(0.3)))), 4),
        rate=round(rng.uniform(0.8, 1.25), 3),
        vowel_shift=tuple((round(float(a), 4), round(float(b), 4)) for a, b in 1.0 + rng.normal(0.0, 0.06, (len(VOWELS), 2))),
    )


# -- the phone sequence -------------------------------------------------------------------
# One segment: (duration s, F1..F4, voicing, frication, fric centre, fric bandwidth, aspiration, accent)
_Segment = tuple


def _plan(rng: np.random.Generator, voice: Voice, duration: float) -> tuple[list[_Segment], str]:
    """Random syllables filling ``duration`` seconds; returns the segments and the transcript."""
    r = 1.0 / voice.rate
    silence = lambda d: (d, *_CLOSURE_FORMANTS, 0.0, 0.0, 1000.0, 1000.0, 0.0, 0.0)  # noqa: E731
    segments: list[_Segment] = [silence(rng.uniform(0.05, 0.2))]
    total = segments[0][0]
    words: list[str] = []
    word = ""
    n_syllables = 0
    vowels = list(VOWELS)
    while True:
        v = int(rng.integers(len(vowels)))
        vowel = vowels[v]
        f1, f2, f3, f4 = VOWELS[vowel]
        if voice.vowel_shift:
            f1, f2 = f1 * voice.vowel_shift[v][0], f2 * voice.vowel_shift[v][1]
        vf = (f1, f2, f3, f4)
        onset = ONSETS[rng.integers(len(ONSETS))] if rng.uniform() < 0.75 else ""
        accent = rng.normal()
        syl: list[_Segment] = []
        if onset in SONORANTS:
            form, amp = SONORANTS[onset]
            syl.append((rng.uniform(0.05, 0.09) * r, *form, amp, 0.0, 1000.0, 1000.0, 0.0, accent))
        elif onset in FRICATIVES:
            v, n, fc, bw, asp = FRICATIVES[onset]
            syl.append((rng.uniform(0.07, 0.12) * r, *vf, v, n, fc, bw, asp, accent))
        elif onset in PLOSIVES:
            voiced, fc, bw = PLOSIVES[onset]
            syl.append((rng.uniform(0.04, 0.07) * r, *_CLOSURE_FORMANTS, 0.08 if voiced else 0.0, 0.0, fc, bw, 0.0, accent))
            syl.append((rng.uniform(0.008, 0.015), *vf, 0.0, 0.5, fc, bw, 0.0, accent))
            if not voiced:
                syl.append((rng.uniform(0.02, 0.045) * r, *vf, 0.0, 0.0, fc, bw, 0.5, accent))
        syl.append((rng.uniform(0.1, 0.24) * r, *vf, 1.0, 0.0, 1000.0, 1000.0, 0.0, accent))
        pause = rng.uniform(0.08, 0.25) if rng.uniform() < 0.25 else 0.0
        length = sum(s[0] for s in syl) + pause
        if total + length + 0.05 > duration and n_syllables:
            break
        if total + length + 0.05 > duration:  # not even one syllable fits: shorten it
            syl = [(s[0] * 0.5, *s[1:]) for s in syl]
            length = sum(s[0] for s in syl)
            pause = 0.0
        segments.extend(syl)
        n_syllables += 1
        total += length
        word += onset + vowel
        if pause:
            segments.append(silence(pause))
            words.append(word)
            word = ""
    if word:
        words.append(word)
    segments.append(silence(max(duration - total, 0.0)))
    return segments, " ".join(words)


def _smooth(x: np.ndarray, width: int) -> np.ndarray:
    """Moving average along axis 0 (edge-padded), ``width`` frames."""
    if width <= 1:
        return x
    kernel = np.ones(width) / width
    pad = width // 2
    xp = np.pad(x, [(pad, width - 1 - pad)] + [(0, 0)] * (x.ndim - 1), mode="edge")
    if x.ndim == 1:
        return np.convolve(xp, kernel, mode="valid")
    return np.stack([np.convolve(xp[:, j], kernel, mode="valid") for j in range(x.shape[1])], axis=1)


def synthesize(voice: Voice, rng: np.random.Generator, sample_rate: int = 16000,
               duration: float | None = None) -> tuple[np.ndarray, str]:
    """One utterance of ``voice``: float32 waveform in [-1, 1] and its transcript."""
    sr = sample_rate
    if duration is None:
        duration = rng.uniform(1.5, 3.0)
    n = int(round(duration * sr))
    segments, transcript = _plan(rng, voice, duration)
    seg = np.asarray(segments, dtype=np.float64)
    bounds = np.cumsum(seg[:, 0])

    win = 1 << int(round(math.log2(0.032 * sr)))  # ~32 ms analysis window
    hop = win // 2
    nfft = 2 * win
    pad = win
    n_frames = (n + 2 * pad - win) // hop + 1
    t_frames = (np.arange(n_frames) * hop + win / 2 - pad) / sr  # frame centres (s)
    idx = np.minimum(np.searchsorted(bounds, np.clip(t_frames, 0.0, None), side="right"), len(seg) - 1)
    track = seg[idx]  # [frames, 11]
    hop_s = hop / sr

    # Formants (smooth transitions ~50 ms) and amplitudes (~15 ms).
    formants = _smooth(track[:, 1:5], max(1, int(round(0.05 / hop_s))))
    formants = np.concatenate([formants, np.full((n_frames, 1), F5)], axis=1)
    formants = formants * voice.formant_scale * np.asarray(voice.formant_detail)
    amps = _smooth(track[:, 5:10], max(1, int(round(0.015 / hop_s))))
    voicing, frication, fric_fc, fric_bw, aspiration = amps.T

    # Pitch: utterance offset, declination, per-syllable accents (semitones), smoothed ~100 ms.
    semitones = (rng.normal(0.0, 0.7) - 2.0 * t_frames / max(duration, 1e-3)
                 + voice.f0_spread * track[:, 10])
    semitones = _smooth(semitones, max(1, int(round(0.1 / hop_s))))
    f0_frames = np.clip(voice.f0 * 2.0 ** (semitones / 12.0), 50.0, 0.2 * sr)

    # -- source, at the sample rate ----------------------------------------------------------
    t = np.arange(n) / sr
    f0 = np.interp(t, t_frames, f0_frames)
    cycles0 = np.floor(np.cumsum(f0) / sr).astype(np.int64)
    n_cycles = int(cycles0[-1]) + 2
    f0 = f0 * (1.0 + voice.jitter * rng.standard_normal(n_cycles))[cycles0]
    phase = np.cumsum(f0) / sr
    cycle = np.floor(phase).astype(np.int64)
    frac = (phase - cycle).astype(np.float32)
    oq = voice.open_quotient
    tp, tn = 0.65 * oq, 0.35 * oq
    opening = frac < tp
    arg = np.where(opening, np.float32(np.pi / tp) * frac, np.float32(0.5 * np.pi / tn) * (frac - np.float32(tp)))
    flow = np.cos(np.minimum(arg, np.float32(0.5 * np.pi)))  # closing phase; 0 once closed
    flow[opening] = 0.5 * (1.0 - flow[opening])
    flow *= (1.0 + voice.shimmer * rng.standard_normal(int(cycle[-1]) + 2, dtype=np.float32))[cycle]
    # Flow derivative (source + lip radiation), scaled so its size does not grow with F0.
    excitation = np.diff(flow, prepend=np.float32(0.0)) * (0.25 * sr / f0).astype(np.float32)
    v_s = np.interp(t, t_frames, voicing).astype(np.float32)
    a_s = np.interp(t, t_frames, aspiration).astype(np.float32)
    noise = rng.standard_normal(n, dtype=np.float32)
    breath = voice.breathiness * (0.3 + flow) * v_s
    voiced = excitation * v_s + noise * (breath + 0.35 * a_s)
    fric = rng.standard_normal(n, dtype=np.float32) * np.interp(t, t_frames, frication).astype(np.float32)

    # -- filter, in the short-time Fourier domain ------------------------------------------------
    # Each frame (periodic Hann, half-window hop: the windows sum to one) is filtered by that
    # frame's all-pole tract: the five sections' denominators multiplied into one polynomial of
    # order 10, whose frequency response is one short FFT. The causal impulse response decays
    # well within the zero padding, so overlap-add gives the time-varying cascade.
    window = np.hanning(win + 1)[:-1].astype(np.float32)
    freqs = np.fft.rfftfreq(nfft, 1.0 / sr)

    def spectra(x: np.ndarray) -> np.ndarray:
        xp = np.pad(x.astype(np.float32), (pad, pad + win))
        view = np.lib.stride_tricks.sliding_window_view(xp, win)[::hop][:n_frames]
        return np.fft.rfft(view * window, n=nfft)

    bw = np.asarray(BANDWIDTHS) * voice.bandwidth_scale
    nyquist = sr / 2
    radius = np.exp(-np.pi * bw / sr)[None, :]
    theta = 2.0 * np.pi * formants / sr
    keep = formants < 0.45 * sr  # formants too close to the Nyquist frequency are dropped
    a1 = np.where(keep, 2.0 * radius * np.cos(theta), 0.0)  # section k: 1 - a1 z^-1 - a2 z^-2
    a2 = np.where(keep, -(radius ** 2), 0.0)
    poly = np.zeros((n_frames, 11))
    poly[:, 0] = 1.0
    for k in range(formants.shape[1]):
        prev = poly.copy()
        poly[:, 1:] -= a1[:, k:k + 1] * prev[:, :-1]
        poly[:, 2:] -= a2[:, k:k + 1] * prev[:, :-2]
    gain = (1.0 - a1 - a2).prod(axis=1)  # unity gain at DC
    tract = gain[:, None].astype(np.float32) / np.fft.rfft(poly.astype(np.float32), n=nfft)  # [frames, bins]
    channel_tilt = voice.tilt + rng.uniform(-1.0, 1.0)
    tilt = ((np.maximum(freqs, 500.0) / 500.0) ** (-channel_tilt / 6.02)).astype(np.float32)
    fc = np.minimum(fric_fc * (0.5 + 0.5 * voice.formant_scale), 0.8 * nyquist)
    band = np.exp(-0.5 * ((freqs[None, :] - fc[:, None]) / fric_bw[:, None]) ** 2).astype(np.float32)
    spec = (spectra(voiced) * tract + spectra(fric) * band) * tilt
    out_frames = np.fft.irfft(spec, n=nfft)  # [frames, nfft]
    blocks = nfft // hop
    body = n_frames * hop
    out = np.zeros(body + nfft, dtype=np.float32)
    for k in range(blocks):
        out[k * hop:k * hop + body] += out_frames[:, k * hop:(k + 1) * hop].reshape(-1)
    speech = out[pad:pad + n].astype(np.float64)

    # -- loudness, noise, level ------------------------------------------------------------------
    frame = max(1, int(0.02 * sr))
    energy = np.square(speech[: len(speech) // frame * frame]).reshape(-1, frame).mean(axis=1)
    active = energy > energy.max() * 10 ** (-35 / 10)
    rms = math.sqrt(float(energy[active].mean())) if active.any() else 1.0
    target = 10 ** ((-24.0 + rng.uniform(-3.0, 3.0)) / 20)
    speech *= target / max(rms, 1e-9)
    colour = rng.uniform(0.0, 0.95)  # one-pole low-pass: white to brown-ish noise
    bg = scipy.signal.lfilter([1.0], [1.0, -colour], rng.standard_normal(n, dtype=np.float32))
    snr = rng.uniform(25.0, 45.0)
    bg *= target * 10 ** (-snr / 20) / max(float(np.sqrt(np.mean(bg ** 2))), 1e-12)
    wave = speech + bg
    peak = float(np.abs(wave).max())
    if peak > 0.99:
        wave *= 0.99 / peak
    return wave.astype(np.float32), transcript


def speaker_name(i: int, speakers: int) -> str:
    return f"toy{i:0{max(2, len(str(speakers - 1)))}d}"


def prepare_toy(output: str | Path, speakers: int = 40, utterances: int = 24, seed: int = 0,
                sample_rate: int = 16000, features: Iterable[str] = (), progress: bool = True) -> Path:
    """Synthesise ``speakers`` x ``utterances`` utterances into the corpus file ``output``.

    Arguments:
        output: corpus file to write (written under a temporary name, then renamed).
        speakers: synthetic speakers, named ``toy00``, ``toy01``, ...
        utterances: utterances per speaker (1.5-3 s each).
        seed: everything (voices, content, noise, splits and trials) follows from it.
        sample_rate: of the stored audio (formants above 0.45 x rate are dropped).
        features: feature presets to cache in the file (e.g. ``["fbank80"]``).
        progress: show a progress bar.

    Returns the path of the written corpus.
    """
    if speakers < 2 or utterances < 1:
        raise ValueError(f"need at least 2 speakers and 1 utterance each (got {speakers} x {utterances})")
    voices = [make_voice(np.random.default_rng([seed, 0, s])) for s in range(speakers)]
    settings = {
        "source": "toy",
        "generator": GENERATOR,
        "generator_version": GENERATOR_VERSION,
        "speakers": speakers,
        "utterances": utterances,
        "seed": seed,
        "sample_rate": sample_rate,
        "features": [str(f) for f in features],
        "voices": [asdict(v) for v in voices],
    }
    jobs = [(s, u) for s in range(speakers) for u in range(utterances)]

    def job(su: tuple[int, int]) -> tuple[np.ndarray, str]:
        s, u = su
        return synthesize(voices[s], np.random.default_rng([seed, 1, s, u]), sample_rate)

    # numpy's FFTs and array arithmetic release the GIL: threads use both cores, and every
    # utterance has its own generator, so the output does not depend on the scheduling.
    threads = max(1, min(os.cpu_count() or 1, 4))
    with CorpusWriter(output, sample_rate=sample_rate, settings=settings) as writer, \
            ThreadPoolExecutor(threads) as pool:
        bar = tqdm(total=len(jobs), desc="toy corpus", unit="utt", disable=not progress, leave=False)
        for (s, u), (wave, text) in zip(jobs, pool.map(job, jobs)):
            name = speaker_name(s, speakers)
            writer.add(wave, speaker=name, utt_id=f"{name}/{u:03d}", path=f"toy://{name}/{u:03d}",
                       transcript=text, session="toy")
            bar.update()
        bar.close()
        return writer.finish(features=list(features), seed=seed, progress=progress)
