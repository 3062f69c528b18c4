"""The one feature module: log-fbank, MFCC and log-mel frontends (ground floor).

Corpus preparation caches features with :class:`Frontend` and every model computes
its input with the same class, so features at training and at inference never differ.
The transforms are torchaudio's; this module only fixes the parameters and makes the
output independent of batch padding:

* frames are taken without centring (Kaldi's ``snip_edges``), so a valid frame only
  ever sees samples inside the utterance and zero padding cannot leak into it;
* log compression, dB floors and mean/variance normalisation are computed per
  utterance over its valid frames only (torchaudio's ``AmplitudeToDB`` takes the
  maximum over the whole batch, which would make one clip's features depend on its
  batch-mates; we apply it per item).

Two kinds reproduce the features of pretrained models made elsewhere, for the importers
(:mod:`speakerzoo.zoo.importers`): ``sb_fbank`` is speechbrain's ``Fbank`` (its STFT, centred,
Hamming window, and its filterbank; the 80 dB floor under each utterance's own peak, taken
over its valid frames) and ``kaldi_fbank`` is Kaldi's ``compute-fbank-feats``
(``torchaudio.compliance.kaldi.fbank``, one utterance at a time, as 3D-Speaker and wespeaker
compute it).

Example::

    >>> import torch
    >>> fe = Frontend("fbank80", sample_rate=16000)
    >>> feats, n = fe(torch.randn(2, 16000), torch.tensor([16000, 8000]))
    >>> feats.shape, n.tolist()
    (torch.Size([2, 97, 80]), [97, 47])
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torchaudio
from torch import Tensor, nn

FeatureKind = Literal["fbank", "mfcc", "logmel", "waveform", "sb_fbank", "kaldi_fbank"]


@dataclass(frozen=True)
class FeatureConfig:
    """Parameters of one feature type; hashable, JSON-serialisable, stored in corpora and checkpoints.

    Arguments:
        kind: ``fbank`` (natural log of mel energies), ``mfcc`` (DCT of log mel), ``logmel``
            (mel power in dB relative to the utterance maximum, floored at ``floor_db``),
            ``waveform`` (no transform: models such as wav2vec2 that take raw audio),
            ``sb_fbank`` (speechbrain's ``Fbank``: dB, floored at ``floor_db`` under the
            utterance's peak) or ``kaldi_fbank`` (Kaldi's log filterbank, no dither).
        n_mels: mel filters.
        n_mfcc: cepstral coefficients kept (``mfcc`` only).
        win_ms, hop_ms: analysis window and step in milliseconds.
        f_min, f_max: mel filterbank range in Hz; ``f_max=None`` means the Nyquist frequency.
        floor_db: dynamic range of ``logmel`` below the utterance maximum (negative, e.g. -80).
        normalize: ``none``, ``mean`` (cepstral mean normalisation) or ``meanvar`` per utterance;
            for ``waveform`` over the utterance's samples (``meanvar``: zero mean and unit
            variance, as wav2vec2's feature extractor prepares audio for its BASE models).
        window: ``kaldi_fbank`` only: Kaldi's window type (``povey``, 3D-Speaker's; ``hamming``,
            wespeaker's); ``None`` for the kind's own window.
        input_scale: waveforms are multiplied by it first (wespeaker computes Kaldi features on
            16-bit sample values: 32768).
    """

    kind: FeatureKind = "fbank"
    n_mels: int = 80
    n_mfcc: int = 0
    win_ms: float = 25.0
    hop_ms: float = 10.0
    f_min: float = 20.0
    f_max: float | None = None
    floor_db: float = -80.0
    normalize: Literal["none", "mean", "meanvar"] = "mean"
    window: str | None = None
    input_scale: float = 1.0

    @property
    def dim(self) -> int | None:
        """Feature dimension per frame (``None`` for raw waveforms)."""
        if self.kind == "waveform":
            return None
        return self.n_mfcc if self.kind == "mfcc" else self.n_mels

    @property
    def key(self) -> str:
        """Stable name of this parameter set, used as the HDF5 cache key."""
        for name, cfg in PRESETS.items():
            if cfg == self:
                return name
        return "custom-" + hashlib.sha1(self.to_json().encode()).hexdigest()[:8]

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        # Left out at their defaults, so that the JSON and cache key of every earlier config stay as they were.
        for name, default in _OPTIONAL_DEFAULTS.items():
            if out[name] == default:
                del out[name]
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def parse(cls, spec: "FeatureConfig | dict | str") -> "FeatureConfig":
        """Build from a preset name (see :data:`PRESETS`), a dict or a JSON string."""
        if isinstance(spec, FeatureConfig):
            return spec
        if isinstance(spec, str):
            if spec in PRESETS:
                return PRESETS[spec]
            if spec.lstrip().startswith("{"):
                return cls.parse(json.loads(spec))
            raise ValueError(f"unknown feature preset {spec!r}; choose one of {sorted(PRESETS)} or give a dict")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(spec) - fields
        if unknown:
            raise ValueError(f"unknown feature parameters {sorted(unknown)}; valid: {sorted(fields)}")
        return cls(**spec)


_OPTIONAL_DEFAULTS = {"window": None, "input_scale": 1.0}
_KALDI_WINDOWS = ("povey", "hamming", "hanning", "rectangular", "blackman")


#: Named parameter sets used by the zoo (the seed papers' numbers).
PRESETS: dict[str, FeatureConfig] = {
    # ECAPA-TDNN reference model: 80 log mel filterbanks, mean normalised (speechbrain recipe).
    "fbank80": FeatureConfig(kind="fbank", n_mels=80, normalize="mean"),
    # Deep Speaker (seed 001, §4.3): 64 log fbank, zero mean and unit variance.
    "fbank64": FeatureConfig(kind="fbank", n_mels=64, normalize="meanvar"),
    # Bird et al. (seed 000, §III-B): 26 MFCC from 25 ms windows with a 10 ms step.
    "mfcc26": FeatureConfig(kind="mfcc", n_mels=40, n_mfcc=26, normalize="none"),
    # ResNet50 on MFCC images (seed 004, §3.1): 13 MFCC, the usual count; images are scaled per clip.
    "mfcc13": FeatureConfig(kind="mfcc", n_mels=40, n_mfcc=13, normalize="none"),
    # SE-CNN-BiGRU (seed 002, §2.2): 64 log-mel, 50-8000 Hz, Hann 25/10 ms, -80 dB floor.
    "logmel64": FeatureConfig(kind="logmel", n_mels=64, f_min=50.0, f_max=8000.0, floor_db=-80.0, normalize="none"),
    # wav2vec2 and other raw-audio models.
    "waveform": FeatureConfig(kind="waveform", normalize="none"),
    "waveform_meanvar": FeatureConfig(kind="waveform", normalize="meanvar"),
    # speechbrain's spkrec-ecapa-voxceleb: Fbank(n_mels=80), sentence mean normalisation.
    "sb_fbank80": FeatureConfig(kind="sb_fbank", n_mels=80, f_min=0.0, normalize="mean"),
    # 3D-Speaker's CAM++: Kaldi fbank, 80 bins, povey window, mean normalisation.
    "kaldi_fbank80": FeatureConfig(kind="kaldi_fbank", n_mels=80, normalize="mean", window="povey"),
    # wespeaker: the same on 16-bit sample values with a Hamming window.
    "kaldi_fbank80_int16": FeatureConfig(kind="kaldi_fbank", n_mels=80, normalize="mean", window="hamming",
                                         input_scale=32768.0),
}


def frame_count(num_samples: Tensor | int, sample_rate: int, config: FeatureConfig) -> Tensor | int:
    """Number of valid frames for ``num_samples`` samples (at least one).

    Frames lie inside the utterance (``snip_edges``) except for ``sb_fbank``, whose centred
    STFT gives ``num_samples // hop + 1`` frames as speechbrain computes them for the clip alone.
    """
    win, hop, n_fft = _sizes(sample_rate, config)
    if config.kind == "sb_fbank":
        return num_samples // hop + 1
    size = win if config.kind == "kaldi_fbank" else n_fft
    if isinstance(num_samples, Tensor):
        return torch.clamp((num_samples - size) // hop + 1, min=1)
    return max((num_samples - size) // hop + 1, 1)


def valid_mask(lengths: Tensor, frames: int) -> Tensor:
    """``[B, frames]`` bool, True at the first ``lengths[b]`` frames of each row (the valid ones).

    Example::

        >>> valid_mask(torch.tensor([3, 1]), 4)
        tensor([[ True,  True,  True, False],
                [ True, False, False, False]])
    """
    return torch.arange(frames, device=lengths.device)[None, :] < lengths[:, None]


def _sizes(sample_rate: int, config: FeatureConfig) -> tuple[int, int, int]:
    win = int(round(sample_rate * config.win_ms / 1000))
    hop = int(round(sample_rate * config.hop_ms / 1000))
    n_fft = 1 << max(win - 1, 1).bit_length()
    return win, hop, n_fft


class Frontend(nn.Module):
    """Waveforms ``[B, T]`` with lengths in samples -> features ``[B, frames, dim]`` with frame lengths.

    Arguments:
        config: a :class:`FeatureConfig`, a preset name or a dict of its fields.
        sample_rate: rate of the waveforms it will receive.
    """

    def __init__(self, config: FeatureConfig | dict | str = "fbank80", sample_rate: int = 16000):
        super().__init__()
        self.config = FeatureConfig.parse(config)
        self.sample_rate = int(sample_rate)
        cfg = self.config
        if cfg.kind == "waveform":
            self.mel = None
            return
        win, hop, n_fft = _sizes(self.sample_rate, cfg)
        self.win_length, self.hop_length, self.n_fft = win, hop, n_fft
        nyquist = self.sample_rate / 2
        f_max = nyquist if cfg.f_max is None else cfg.f_max
        if f_max > nyquist:
            warnings.warn(
                f"f_max={f_max:g} Hz is above the Nyquist frequency of {self.sample_rate} Hz audio; "
                f"using {nyquist:g} Hz (prepare the corpus at a higher --sample-rate to keep the full band)",
                stacklevel=2,
            )
            f_max = nyquist
        if cfg.kind == "mfcc" and cfg.n_mfcc > cfg.n_mels:
            raise ValueError(f"n_mfcc={cfg.n_mfcc} cannot exceed n_mels={cfg.n_mels}")
        if cfg.window is not None and (cfg.kind != "kaldi_fbank" or cfg.window not in _KALDI_WINDOWS):
            raise ValueError(f"window={cfg.window!r}: only kaldi_fbank takes a window, one of {_KALDI_WINDOWS}")
        if cfg.kind == "sb_fbank":
            self.n_fft = win  # speechbrain's Fbank: n_fft 400 at 16 kHz, the window length
            self.mel = SpeechBrainMel(self.sample_rate, win, cfg.win_ms, cfg.hop_ms, cfg.n_mels, cfg.f_min, f_max)
            return
        if cfg.kind == "kaldi_fbank":
            self.n_fft = win  # Kaldi frames are window-long; the FFT size is not the frame size
            self.mel = KaldiFbank(self.sample_rate, cfg.win_ms, cfg.hop_ms, cfg.n_mels, cfg.f_min, f_max,
                                  cfg.window or "povey")
            return
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=self.sample_rate,
            n_fft=n_fft,
            win_length=win,
            hop_length=hop,
            f_min=cfg.f_min,
            f_max=f_max,
            n_mels=cfg.n_mels,
            window_fn=torch.hann_window,
            power=2.0,
            center=False,
        )
        if cfg.kind == "mfcc":
            dct = torchaudio.functional.create_dct(cfg.n_mfcc, cfg.n_mels, norm="ortho")
            self.register_buffer("dct", dct, persistent=False)

    @property
    def dim(self) -> int | None:
        return self.config.dim

    def frame_lengths(self, lengths: Tensor) -> Tensor:
        return frame_count(lengths, self.sample_rate, self.config)

    def forward(self, waveforms: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if waveforms.dim() == 1:
            waveforms = waveforms.unsqueeze(0)
        batch, num_samples = waveforms.shape
        if lengths is None:
            lengths = torch.full((batch,), num_samples, dtype=torch.long, device=waveforms.device)
        lengths = lengths.to(waveforms.device).long()
        if self.mel is None:
            return self._normalize_waveforms(waveforms, lengths), lengths
        if num_samples < self.n_fft:  # shorter than one analysis window
            waveforms = nn.functional.pad(waveforms, (0, self.n_fft - num_samples))
        # Spectra in float32 even under autocast: log of fp16 mel energies underflows.
        with torch.autocast(device_type=waveforms.device.type, enabled=False):
            waveforms = waveforms.float()
            if self.config.input_scale != 1.0:
                waveforms = waveforms * self.config.input_scale
            if isinstance(self.mel, KaldiFbank):
                mel = self.mel(waveforms, lengths)  # [B, n_mels, frames], already log
            elif isinstance(self.mel, SpeechBrainMel):
                # Centred frames reach past the end: they must see zeros, as for the clip alone.
                inside = valid_mask(lengths.clamp(max=waveforms.shape[1]), waveforms.shape[1])
                mel = self.mel(waveforms.masked_fill(~inside, 0.0))
            else:
                mel = self.mel(waveforms)  # [B, n_mels, frames]
            frames = mel.shape[-1]
            frame_lengths = self.frame_lengths(lengths).clamp(max=frames)
            mask = valid_mask(frame_lengths, frames)  # [B, frames]
            feats = self._compress(mel, mask)  # [B, dim, frames]
            feats = self._normalize(feats, mask, frame_lengths)
            feats = feats.masked_fill(~mask[:, None, :], 0.0)
        return feats.transpose(1, 2).contiguous(), frame_lengths

    def _normalize_waveforms(self, waveforms: Tensor, lengths: Tensor) -> Tensor:
        """Raw audio normalised per utterance over its valid samples; padding stays zero."""
        if self.config.normalize == "none":
            return waveforms
        mask = valid_mask(lengths.clamp(max=waveforms.shape[1]), waveforms.shape[1])
        with torch.autocast(device_type=waveforms.device.type, enabled=False):
            normed = self._normalize(waveforms.float()[:, None, :], mask, lengths.clamp(min=1))[:, 0]
        return normed.masked_fill(~mask, 0.0)

    def _compress(self, mel: Tensor, mask: Tensor) -> Tensor:
        cfg = self.config
        if cfg.kind == "kaldi_fbank":
            return mel
        if cfg.kind in ("logmel", "sb_fbank"):
            db = 10.0 * torch.log10(torch.clamp(mel, min=1e-10))
            peak = db.masked_fill(~mask[:, None, :], -math.inf).amax(dim=(1, 2), keepdim=True)
            return torch.maximum(db, peak + cfg.floor_db)
        log_mel = torch.log(mel + 1e-6)
        if cfg.kind == "mfcc":
            return torch.einsum("bmt,mc->bct", log_mel, self.dct)
        return log_mel

    def _normalize(self, feats: Tensor, mask: Tensor, frame_lengths: Tensor) -> Tensor:
        mode = self.config.normalize
        if mode == "none":
            return feats
        m = mask[:, None, :].to(feats.dtype)
        n = frame_lengths[:, None, None].to(feats.dtype)
        mean = (feats * m).sum(-1, keepdim=True) / n
        feats = feats - mean
        if mode == "meanvar":
            std = torch.sqrt(((feats * m) ** 2).sum(-1, keepdim=True) / n + 1e-5)
            feats = feats / std
        return feats

    def extra_repr(self) -> str:
        return f"sample_rate={self.sample_rate}, config={self.config}"


class SpeechBrainMel(nn.Module):
    """Mel power ``[B, n_mels, frames]`` as speechbrain's ``Fbank`` computes it before its log:
    speechbrain's own ``STFT`` (centred, zero-padded, Hamming window) and ``Filterbank``, so that
    imported speechbrain models see their training features. The dB conversion and its floor
    are :class:`Frontend`'s, over each utterance's valid frames (speechbrain takes the peak over
    all frames, padded ones included; for a clip alone the two are the same)."""

    def __init__(self, sample_rate: int, n_fft: int, win_ms: float, hop_ms: float, n_mels: int,
                 f_min: float, f_max: float):
        super().__init__()
        from speechbrain.processing.features import STFT, Filterbank

        self.stft = STFT(sample_rate=sample_rate, n_fft=n_fft, win_length=win_ms, hop_length=hop_ms)
        self.filterbank = Filterbank(sample_rate=sample_rate, n_fft=n_fft, n_mels=n_mels, f_min=f_min,
                                     f_max=f_max, log_mel=False)

    def forward(self, waveforms: Tensor) -> Tensor:
        from speechbrain.processing.features import spectral_magnitude

        return self.filterbank(spectral_magnitude(self.stft(waveforms))).transpose(1, 2)


class KaldiFbank(nn.Module):
    """Kaldi log filterbanks ``[B, n_mels, frames]`` (``torchaudio.compliance.kaldi.fbank``, no
    dither), one utterance at a time over its valid samples, as 3D-Speaker and wespeaker compute
    features; frames past an utterance's end are zero."""

    def __init__(self, sample_rate: int, win_ms: float, hop_ms: float, n_mels: int, f_min: float,
                 f_max: float, window: str):
        super().__init__()
        self.sample_rate, self.win_ms, self.hop_ms = sample_rate, win_ms, hop_ms
        self.n_mels, self.f_min, self.f_max, self.window = n_mels, f_min, f_max, window
        self.win = int(round(sample_rate * win_ms / 1000))

    def forward(self, waveforms: Tensor, lengths: Tensor) -> Tensor:
        from torchaudio.compliance import kaldi

        rows = []
        for wave, n in zip(waveforms, lengths.tolist()):
            clip = wave[: max(int(n), self.win)]
            if clip.numel() < self.win:  # shorter than one window: one frame of the zero-padded clip
                clip = nn.functional.pad(clip, (0, self.win - clip.numel()))
            rows.append(kaldi.fbank(clip[None], num_mel_bins=self.n_mels, frame_length=self.win_ms,
                                    frame_shift=self.hop_ms, dither=0.0, window_type=self.window,
                                    sample_frequency=self.sample_rate, low_freq=self.f_min,
                                    high_freq=self.f_max, use_energy=False))
        frames = max(r.shape[0] for r in rows)
        out = waveforms.new_zeros(len(rows), self.n_mels, frames)
        for i, r in enumerate(rows):
            out[i, :, : r.shape[0]] = r.T
        return out
