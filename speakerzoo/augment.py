"""Training-time data augmentation (seed paper 002, §2.3) (ground floor).

Two stages, each part switchable on its own, all on the fly:

* :class:`WaveformAugment` works on one audio crop at a time inside the DataLoader workers
  (numpy in, numpy out): speed perturbation, additive background noise at a random SNR,
  per-sample volume normalisation. It draws only from the ``numpy.random.Generator`` it is
  given, so a crop is augmented identically in any worker and after a resume.
* :class:`SpectralAugment` is an ``nn.Module`` the model applies to its features
  ``[B, frames, dim]`` in training: vocal-tract-length perturbation (VTLP) and SpecAugment
  frequency and time masks. It draws from torch's default generator on the features'
  device, so ``torch.manual_seed(s)`` before a call makes it deterministic.

What comes from libraries and what is written here:

* speed perturbation is torchaudio's resampler (the body of ``torchaudio.functional.speed``,
  called with exact integer rates, see :class:`WaveformAugment`);
* noise mixing is ``torchaudio.functional.add_noise``;
* volume normalisation is :func:`speakerzoo.audio.normalize_volume`;
* the SpecAugment masks are written here: ``torchaudio.functional.mask_along_axis(_iid)``
  and ``speechbrain.augment.freq_domain.SpectrogramDrop`` place time masks anywhere on the
  padded axis (into padding, and past short rows' ends) and fill with one value for the
  whole batch; we need masks inside each row's valid frames, filled with that row's mean;
* VTLP is written here: neither torchaudio nor speechbrain has it.

YAML configs build both from plain values with :func:`waveform_augment_from` and
:func:`spectral_augment_from` (``augment: {speeds: [0.9, 1.0, 1.1], noise_prob: 0.5}``).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torchaudio
from torch import Tensor, nn

from speakerzoo.audio import normalize_volume
from speakerzoo.features import valid_mask

__all__ = ["WaveformAugment", "SpectralAugment", "waveform_augment_from", "spectral_augment_from"]

#: Largest reduced resampling ratio ``p/q`` (``max(p, q)``) a speed factor may need. The sinc
#: resampler's cost grows with it: 0.9 at 16 kHz is 9/10 (under 1 ms per 2 s crop), 1.037 is
#: 1037/1000 (about 20 ms), 0.9871 is 7897/8000 (about 12 s per crop).
MAX_SPEED_RATIO_TERM = 1000

NoiseSource = Callable[[np.random.Generator, int], np.ndarray]


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def _count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def _range(name: str, value: Any, positive: bool = False) -> tuple[float, float]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2:
        raise ValueError(f"{name} must be a pair (low, high), got {value!r}")
    low, high = (_number(name, v) for v in value)
    if low > high:
        raise ValueError(f"{name} must be ordered (low <= high), got ({low}, {high})")
    if positive and low <= 0:
        raise ValueError(f"{name} must be positive, got ({low}, {high})")
    return low, high


def _speed_rates(factor: float, sample_rate: int) -> tuple[int, int]:
    """Reduced integer rates ``(source, target)`` whose resampling plays audio ``factor`` times faster."""
    source = round(factor * sample_rate)
    if source < 1:
        raise ValueError(f"speed {factor} is too small for sample_rate {sample_rate}")
    gcd = math.gcd(source, sample_rate)
    source, target = source // gcd, sample_rate // gcd
    if max(source, target) > MAX_SPEED_RATIO_TERM:
        raise ValueError(
            f"speed {factor} at {sample_rate} Hz means resampling by {source}/{target}, which costs "
            f"seconds per crop; use a factor with a simple ratio (e.g. {round(factor, 2)})")
    return source, target


class WaveformAugment:
    """Speed perturbation, background noise and volume normalisation of one audio crop.

    Applied by the training Dataset to each crop (numpy in, numpy out, CPU). In order:

    1. speed perturbation: a factor drawn from ``speeds``; the crop is resampled from
       ``factor * sample_rate`` to ``sample_rate`` (faster and higher for factors above 1, as
       Kaldi's and torchaudio's speed perturbation). A longer result is cut back to the input
       length at a random offset; a shorter one stays shorter (the collate pads it and records
       its true length);
    2. with probability ``noise_prob``, ``noise(rng, n)`` (a float32 clip of ``n`` samples,
       cut by the caller from real background-noise recordings) is mixed in at an SNR drawn
       uniformly from ``snr_db`` (``torchaudio.functional.add_noise``). A silent crop (or a
       silent noise clip) has no defined SNR and is left as it is;
    3. volume normalisation: the largest absolute sample becomes ``peak``.

    Every random choice comes from the ``rng`` passed to the call, never from a global
    generator: the same seed gives the same output in any worker process.

    Arguments:
        sample_rate: rate of the crops in Hz.
        speeds: speed factors to draw from uniformly (``1.0`` = unchanged); ``None`` or
            ``(1.0,)`` switches speed perturbation off.
        noise_prob: probability of mixing in noise; ``0`` switches it off.
        snr_db: ``(low, high)`` SNR range in dB; ``(x, x)`` for a fixed SNR.
        volume_norm: normalise the peak of every output crop.
        peak: target peak (``0 < peak <= 1``).

    Example::

        >>> import numpy as np
        >>> aug = WaveformAugment(16000, speeds=(0.9, 1.1), noise_prob=1.0, snr_db=(5.0, 5.0))
        >>> aug
        WaveformAugment(sample_rate=16000, speeds=(0.9, 1.1), noise_prob=1.0, snr_db=(5.0, 5.0), volume_norm=True, peak=0.95)
        >>> wave = (0.1 * np.sin(2 * np.pi * 220 * np.arange(8000) / 16000)).astype(np.float32)
        >>> noise = lambda rng, n: rng.standard_normal(n).astype(np.float32)
        >>> out = aug(wave, np.random.default_rng(0), noise)
        >>> out.dtype, out.shape, round(float(np.abs(out).max()), 2)
        (dtype('float32'), (7273,), 0.95)
        >>> np.array_equal(out, aug(wave, np.random.default_rng(0), noise))
        True
    """

    def __init__(self, sample_rate: int, speeds: Sequence[float] | None = (0.9, 1.0, 1.1),
                 noise_prob: float = 0.5, snr_db: tuple[float, float] = (0.0, 15.0),
                 volume_norm: bool = True, peak: float = 0.95):
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
            raise ValueError(f"sample_rate must be a positive integer, got {sample_rate!r}")
        self.sample_rate = int(sample_rate)
        if speeds is not None:
            if isinstance(speeds, (str, bytes)) or not isinstance(speeds, Sequence) or len(speeds) == 0:
                raise ValueError(f"speeds must be a non-empty sequence of factors or None, got {speeds!r}")
            speeds = tuple(_number("speeds", s) for s in speeds)
            if any(s <= 0 for s in speeds):
                raise ValueError(f"speeds must be > 0, got {speeds}")
        self.speeds: tuple[float, ...] | None = speeds
        # (source, target) resampling rates of each factor, checked once here.
        self._rates = {s: _speed_rates(s, self.sample_rate) for s in speeds or () if s != 1.0}
        self.noise_prob = _number("noise_prob", noise_prob)
        if not 0.0 <= self.noise_prob <= 1.0:
            raise ValueError(f"noise_prob must be in [0, 1], got {noise_prob}")
        self.snr_db = _range("snr_db", snr_db)
        if not isinstance(volume_norm, (bool, np.bool_)):
            raise ValueError(f"volume_norm must be True or False, got {volume_norm!r}")
        self.volume_norm = bool(volume_norm)
        self.peak = _number("peak", peak)
        if not 0.0 < self.peak <= 1.0:
            raise ValueError(f"peak must be in (0, 1], got {peak}")

    @property
    def speed_enabled(self) -> bool:
        return bool(self._rates)

    @property
    def enabled(self) -> bool:
        """Whether anything is switched on (noise counts as on when ``noise_prob > 0``)."""
        return self.speed_enabled or self.noise_prob > 0.0 or self.volume_norm

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(sample_rate={self.sample_rate}, speeds={self.speeds}, "
                f"noise_prob={self.noise_prob}, snr_db={self.snr_db}, volume_norm={self.volume_norm}, "
                f"peak={self.peak})")

    def __call__(self, wave: np.ndarray, rng: np.random.Generator, noise: NoiseSource | None = None) -> np.ndarray:
        """Augment one crop; returns a new float32 1-D array (possibly shorter, never longer)."""
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
        wave = np.asarray(wave, dtype=np.float32)
        if wave.ndim != 1:
            raise ValueError(f"wave must be 1-D [samples], got shape {wave.shape}")
        out = wave.copy()
        if out.size == 0:
            return out
        if self.speed_enabled:
            out = self._speed(out, rng)
        if noise is not None and self.noise_prob > 0.0 and rng.random() < self.noise_prob:
            out = self._add_noise(out, rng, noise)
        if self.volume_norm:
            out = normalize_volume(out, self.peak)
        return np.ascontiguousarray(out, dtype=np.float32)

    def _speed(self, wave: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        factor = self.speeds[int(rng.integers(len(self.speeds)))]
        if factor == 1.0:
            return wave
        # torchaudio.functional.speed is exactly this resampling, but it computes the source
        # rate as int(factor * rate), which truncates (1.001 * 8000 -> 8007) and turns a 1001/1000
        # ratio into 8007/8000; we pass the exact integer rates to the same resampler.
        source, target = self._rates[factor]
        out = torchaudio.functional.resample(torch.from_numpy(wave), source, target).numpy()
        n = len(wave)
        if len(out) > n:
            start = int(rng.integers(0, len(out) - n + 1))
            out = out[start:start + n]
        return out

    def _add_noise(self, wave: np.ndarray, rng: np.random.Generator, noise: NoiseSource) -> np.ndarray:
        snr = float(rng.uniform(*self.snr_db))
        n = len(wave)
        clip = np.asarray(noise(rng, n), dtype=np.float64)
        if clip.shape != (n,):
            raise ValueError(f"noise(rng, {n}) must return {n} samples, got shape {clip.shape}")
        signal = torch.from_numpy(wave.astype(np.float64))
        clip_t = torch.from_numpy(clip)
        # add_noise scales by the ratio of the two energies: with a silent crop or clip that is
        # 0/0 or x/0 (NaN, inf), so those are left as they are.
        if not (float(signal @ signal) > 0.0 and float(clip_t @ clip_t) > 0.0 and np.isfinite(clip).all()):
            return wave
        mixed = torchaudio.functional.add_noise(signal[None], clip_t[None], torch.tensor([snr], dtype=torch.float64))
        return mixed[0].numpy().astype(np.float32)


class SpectralAugment(nn.Module):
    """VTLP and SpecAugment frequency / time masks on a batch of features ``[B, frames, dim]``.

    In order, per row (utterance) of the batch:

    1. VTLP (Jaitly & Hinton, 2013): with probability ``vtlp_prob``, a warp factor ``alpha``
       uniform in ``vtlp`` warps the frequency axis piecewise-linearly: energy at bin ``f``
       moves to ``alpha * f`` up to a boundary, and the rest of the axis is mapped linearly so
       that the last bin stays the last bin. The paper warps the linear-frequency spectrum
       before the mel filterbank; here, as usual when only features are at hand, the warp is
       applied to the mel (or fbank) bins themselves by linear interpolation, an
       approximation. ``alpha = 1`` is exactly the identity;
    2. ``freq_masks`` frequency masks (SpecAugment, Park et al. 2019): each covers ``w``
       consecutive bins, ``w`` uniform in ``[0, freq_width]``, in every valid frame of the row;
    3. ``time_masks`` time masks: each ``w`` uniform in ``[0, time_width]`` consecutive frames,
       placed inside the row's valid frames (``frame_lengths``), never in its padding.

    Masked cells get ``mask_value``, or with ``None`` the row's mean over its valid frames
    (after VTLP): with mean-normalised features that is 0, with log-mel features floored at
    -80 dB it is a typical level rather than a loud 0 dB. Frames beyond a row's length are
    returned exactly as they came in (zero padding stays zero). The input is never modified.

    Random numbers come from torch's default generator on the features' device; seed it
    (``torch.manual_seed``) for reproducible output. Works on CPU and CUDA and with any
    floating dtype (half precision under autocast): the warp is computed in float32 and the
    result returned in the input's dtype. In eval mode the module is the identity (like
    ``nn.Dropout``) and returns its input.

    Arguments:
        freq_masks: frequency masks per row (0 = off).
        freq_width: largest frequency mask width in bins.
        time_masks: time masks per row (0 = off).
        time_width: largest time mask width in frames.
        vtlp: ``(low, high)`` range of the warp factor; ``None`` = off.
        vtlp_prob: probability that a row is warped.
        mask_value: value of masked cells; ``None`` = the row's mean over its valid frames.
        vtlp_boundary: where the warp changes slope, as a fraction of the bin axis (Jaitly &
            Hinton's 4.8 kHz of 8 kHz is about 0.8 of a 16 kHz mel axis).

    Example::

        >>> import torch
        >>> aug = SpectralAugment(freq_masks=1, freq_width=4, time_masks=1, time_width=5, mask_value=0.0)
        >>> feats = torch.randn(2, 50, 40)
        >>> feats[1, 30:] = 0.0                  # row 1 has 30 valid frames, then padding
        >>> _ = torch.manual_seed(0)
        >>> out = aug(feats, torch.tensor([50, 30]))
        >>> out.shape, bool(out[1, 30:].eq(0).all()), bool(out.ne(feats).any())
        (torch.Size([2, 50, 40]), True, True)
        >>> _ = torch.manual_seed(0)
        >>> torch.equal(out, aug(feats, torch.tensor([50, 30])))
        True
    """

    def __init__(self, freq_masks: int = 2, freq_width: int = 8, time_masks: int = 2, time_width: int = 10,
                 vtlp: tuple[float, float] | None = (0.9, 1.1), vtlp_prob: float = 1.0,
                 mask_value: float | None = None, vtlp_boundary: float = 0.8):
        super().__init__()
        self.freq_masks = _count("freq_masks", freq_masks)
        self.freq_width = _count("freq_width", freq_width)
        self.time_masks = _count("time_masks", time_masks)
        self.time_width = _count("time_width", time_width)
        self.vtlp = None if vtlp is None else _range("vtlp", vtlp, positive=True)
        self.vtlp_prob = _number("vtlp_prob", vtlp_prob)
        if not 0.0 <= self.vtlp_prob <= 1.0:
            raise ValueError(f"vtlp_prob must be in [0, 1], got {vtlp_prob}")
        self.mask_value = None if mask_value is None else _number("mask_value", mask_value)
        self.vtlp_boundary = _number("vtlp_boundary", vtlp_boundary)
        if not 0.0 < self.vtlp_boundary < 1.0:
            raise ValueError(f"vtlp_boundary must be in (0, 1), got {vtlp_boundary}")

    @property
    def vtlp_enabled(self) -> bool:
        return self.vtlp is not None and self.vtlp_prob > 0.0

    @property
    def masks_enabled(self) -> bool:
        return self.freq_masks * self.freq_width > 0 or self.time_masks * self.time_width > 0

    @property
    def enabled(self) -> bool:
        """Whether anything is switched on."""
        return self.vtlp_enabled or self.masks_enabled

    def extra_repr(self) -> str:
        return (f"freq_masks={self.freq_masks}, freq_width={self.freq_width}, time_masks={self.time_masks}, "
                f"time_width={self.time_width}, vtlp={self.vtlp}, vtlp_prob={self.vtlp_prob}, "
                f"mask_value={self.mask_value}, vtlp_boundary={self.vtlp_boundary}")

    def forward(self, features: Tensor, frame_lengths: Tensor) -> Tensor:
        """``features [B, frames, dim]``, ``frame_lengths [B]`` -> augmented features, same shape and dtype."""
        if features.ndim != 3:
            raise ValueError(f"features must be [batch, frames, dim], got shape {tuple(features.shape)}")
        batch, frames, dim = features.shape
        if tuple(frame_lengths.shape) != (batch,):
            raise ValueError(f"frame_lengths must be [{batch}], got shape {tuple(frame_lengths.shape)}")
        if not self.training:
            return features
        device = features.device
        lengths = frame_lengths.to(device=device, dtype=torch.long).clamp(0, frames)
        valid = valid_mask(lengths, frames)  # [B, T]
        out = features
        if self.vtlp_enabled:
            out = self._vtlp(out)
        if self.masks_enabled:
            hit = torch.zeros(batch, frames, dim, dtype=torch.bool, device=device)
            if self.freq_masks * self.freq_width > 0:
                bins = torch.full((batch,), dim, dtype=torch.long, device=device)
                hit |= _intervals(self.freq_masks, self.freq_width, bins, dim)[:, None, :]
            if self.time_masks * self.time_width > 0:
                hit |= _intervals(self.time_masks, self.time_width, lengths, frames)[:, :, None]
            if self.mask_value is None:
                total = torch.where(valid[..., None], out, 0).sum(dim=(1, 2), dtype=torch.float32)
                value = (total / (lengths.clamp(min=1) * dim)).to(out.dtype)[:, None, None]
            else:
                value = torch.tensor(self.mask_value, dtype=out.dtype, device=device)
            out = torch.where(hit, value, out)
        # padding comes back exactly as it went in; torch.where also makes a new tensor.
        return torch.where(valid[..., None], out, features)

    def _vtlp(self, features: Tensor) -> Tensor:
        # Written by hand: neither torchaudio nor speechbrain implements VTLP. Jaitly & Hinton
        # (2013) warp frequency f by f' = alpha * f for f <= F_hi * min(alpha, 1) / alpha and
        # linearly above, so that the Nyquist frequency maps to itself. Here the "frequency"
        # is the bin index 0..N (N = dim - 1) and F_hi = vtlp_boundary * N. Output bin k reads
        # the input at the inverse warp of k, interpolated linearly between the two nearest bins.
        batch, _, dim = features.shape
        if dim < 2:
            return features
        device = features.device
        apply = torch.rand(batch, device=device) < self.vtlp_prob
        low, high = self.vtlp
        alpha = low + (high - low) * torch.rand(batch, device=device)
        alpha = torch.where(apply, alpha, torch.ones_like(alpha))[:, None]  # [B, 1]
        top = float(dim - 1)
        k = torch.arange(dim, device=device, dtype=torch.float32)[None, :]  # [1, D]
        bend_out = self.vtlp_boundary * top * alpha.clamp(max=1.0)  # where the warped axis bends
        bend_in = bend_out / alpha  # the same point before warping
        source = torch.where(k <= bend_out, k / alpha, top - (top - bend_in) / (top - bend_out) * (top - k))
        source = source.clamp(0.0, top)
        left = source.floor().long().clamp(max=dim - 2)
        frac = (source - left)[:, None, :]  # [B, 1, D]
        x = features.float()
        index = left[:, None, :].expand(features.shape)
        lo, hi = x.gather(2, index), x.gather(2, index + 1)
        return (lo + (hi - lo) * frac).to(features.dtype)


def _intervals(count: int, width: int, size: Tensor, axis: int) -> Tensor:
    """``[B, axis]`` bool: union of ``count`` random intervals per row inside ``[0, size[b])``.

    Each interval's width is uniform in ``[0, width]`` (capped at the row's size) and its start
    uniform over the positions where it fits, as in SpecAugment.
    """
    u = torch.rand(size.shape[0], count, 2, device=size.device)
    size = size[:, None]
    w = torch.minimum((u[..., 0] * (width + 1)).long().clamp(max=width), size)
    start = torch.minimum((u[..., 1] * (size - w + 1)).long(), size - w)
    pos = torch.arange(axis, device=size.device)
    inside = (pos >= start[..., None]) & (pos < (start + w)[..., None])  # [B, count, axis]
    return inside.any(dim=1)


def _from_config(cls: type, config: Any, what: str, **fixed: Any):
    if config is None or config is False:
        return None
    if isinstance(config, cls):
        return config
    if config is True:
        return cls(**fixed)
    if not isinstance(config, Mapping):
        raise ValueError(f"{what} must be true, false, null or a mapping of options, got {config!r}")
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p != "self" and p not in fixed]
    unknown = sorted(set(config) - set(allowed))
    if unknown:
        raise ValueError(f"unknown {what} option(s) {', '.join(map(str, unknown))}; allowed: {', '.join(allowed)}")
    options = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
    return cls(**fixed, **options)


def waveform_augment_from(config: dict | bool | None, sample_rate: int) -> WaveformAugment | None:
    """:class:`WaveformAugment` from a config value: ``None``/``False`` -> ``None``, ``True`` ->
    the defaults, a mapping -> those keyword arguments (an unknown key is a ``ValueError``).

    >>> waveform_augment_from({"speeds": [0.9, 1.0, 1.1], "noise_prob": 0.5}, 16000)
    WaveformAugment(sample_rate=16000, speeds=(0.9, 1.0, 1.1), noise_prob=0.5, snr_db=(0.0, 15.0), volume_norm=True, peak=0.95)
    >>> waveform_augment_from(False, 16000) is None
    True
    """
    return _from_config(WaveformAugment, config, "waveform augmentation", sample_rate=sample_rate)


def spectral_augment_from(config: dict | bool | None) -> SpectralAugment | None:
    """:class:`SpectralAugment` from a config value: ``None``/``False`` -> ``None``, ``True`` ->
    the defaults, a mapping -> those keyword arguments (an unknown key is a ``ValueError``).

    >>> spectral_augment_from({"vtlp": None, "time_masks": 1})
    SpectralAugment(freq_masks=2, freq_width=8, time_masks=1, time_width=10, vtlp=None, vtlp_prob=1.0, mask_value=None, vtlp_boundary=0.8)
    """
    return _from_config(SpectralAugment, config, "spectral augmentation")
