"""Data augmentation (speakerzoo.augment): each part changes its input, is reproducible under a
seed, can be switched off, and respects padding. Real speech and real background noise
(Speech Commands ``_silence_``) where the signal matters; skipped cleanly without them."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from speakerzoo.audio import read_audio, to_mono
from speakerzoo.augment import SpectralAugment, WaveformAugment, spectral_augment_from, waveform_augment_from
from speakerzoo.features import Frontend

SR = 16000

# ---------------------------------------------------------------------------- fixtures


def _load(path: Path) -> np.ndarray:
    data, rate = read_audio(path)
    assert rate == SR
    return to_mono(data).astype(np.float32)


@pytest.fixture(scope="module")
def speech(speech_commands_root: Path) -> np.ndarray:
    """One second of a real spoken word."""
    return _load(sorted((speech_commands_root / "yes").glob("*.wav"))[0])


@pytest.fixture(scope="module")
def noise_recording(speech_commands_root: Path) -> np.ndarray:
    """Real background noise: the audible Speech Commands ``_silence_`` clips, concatenated."""
    clips = [_load(p) for p in sorted((speech_commands_root / "_silence_").glob("*.wav"))[:40]]
    clips = [c for c in clips if np.sqrt(np.mean(c.astype(np.float64) ** 2)) > 1e-3]
    assert clips, "no audible noise clip"
    return np.concatenate(clips)


@pytest.fixture(scope="module")
def noise(noise_recording: np.ndarray):
    """The callable the Dataset passes: ``n`` samples of real noise at an offset drawn by ``rng``."""

    def cut(rng: np.random.Generator, n: int) -> np.ndarray:
        start = int(rng.integers(0, len(noise_recording) - n + 1))
        return noise_recording[start:start + n]

    return cut


def tone(freq: float = 440.0, seconds: float = 2.0) -> np.ndarray:
    t = np.arange(int(SR * seconds)) / SR
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def dominant_hz(wave: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1 / SR)[spectrum.argmax()])


def snr_db(clean: np.ndarray, mixed: np.ndarray) -> float:
    clean = clean.astype(np.float64)
    return float(10 * np.log10(np.sum(clean ** 2) / np.sum((mixed - clean) ** 2)))


def only(**kw) -> WaveformAugment:
    """A WaveformAugment with everything off except ``kw``."""
    return WaveformAugment(SR, **{"speeds": None, "noise_prob": 0.0, "volume_norm": False, **kw})


# ---------------------------------------------------------------------------- WaveformAugment: speed


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_speed_changes_pitch_and_length(factor):
    wave = tone(440.0)
    out = only(speeds=(factor,))(wave, np.random.default_rng(0))
    assert out.dtype == np.float32 and out.ndim == 1
    # faster and higher above 1: the tone moves to 440 * factor Hz
    assert abs(dominant_hz(out) - 440.0 * factor) < 2.0
    # slower audio is cut back to the crop; faster audio stays shorter (the collate pads it)
    assert len(out) == (len(wave) if factor < 1 else int(np.ceil(len(wave) / factor)))


def test_speed_on_real_speech_is_seeded(speech):
    aug = only(speeds=(0.9, 1.0, 1.1))
    outs = [aug(speech, np.random.default_rng(seed)) for seed in range(30)]
    assert np.array_equal(outs[0], aug(speech, np.random.default_rng(0)))
    assert all(np.isfinite(o).all() for o in outs)
    # every factor was drawn: 1.0 (unchanged), 1.1 (shorter), 0.9 (cut back at random offsets)
    same = [np.array_equal(o, speech) for o in outs]
    shorter = [len(o) == int(np.ceil(len(speech) / 1.1)) for o in outs]
    assert any(same) and any(shorter)
    slow = {o.tobytes() for o, a, b in zip(outs, same, shorter) if not (a or b)}
    assert len(slow) >= 2


def test_speed_crop_offset_depends_on_seed():
    wave = np.random.default_rng(5).standard_normal(8000).astype(np.float32)
    aug = only(speeds=(0.9,))
    a, b = aug(wave, np.random.default_rng(1)), aug(wave, np.random.default_rng(2))
    assert len(a) == len(b) == len(wave) and not np.array_equal(a, b)


@pytest.mark.parametrize("speeds", [None, (1.0,)])
def test_speed_off(speeds):
    wave = tone()
    aug = only(speeds=speeds)
    assert not aug.enabled
    out = aug(wave, np.random.default_rng(0))
    assert np.array_equal(out, wave) and out is not wave


# ---------------------------------------------------------------------------- WaveformAugment: noise


@pytest.mark.parametrize("target", [0.0, 5.0, 12.5])
def test_noise_mixed_at_requested_snr(speech, noise, target):
    out = only(noise_prob=1.0, snr_db=(target, target))(speech, np.random.default_rng(3), noise)
    assert not np.array_equal(out, speech)
    assert abs(snr_db(speech, out) - target) < 0.5


def test_noise_snr_drawn_uniformly_in_range(speech, noise):
    aug = only(noise_prob=1.0, snr_db=(0.0, 15.0))
    measured = np.array([snr_db(speech, aug(speech, np.random.default_rng(s), noise)) for s in range(30)])
    assert measured.min() > -0.5 and measured.max() < 15.5
    assert measured.std() > 2.5  # uniform on [0, 15] has std 4.3


def test_noise_is_seeded(speech, noise):
    aug = only(noise_prob=1.0)
    a = aug(speech, np.random.default_rng(7), noise)
    assert np.array_equal(a, aug(speech, np.random.default_rng(7), noise))
    assert not np.array_equal(a, aug(speech, np.random.default_rng(8), noise))


def test_noise_probability(speech, noise):
    aug = only(noise_prob=0.5)
    noisy = [not np.array_equal(aug(speech, np.random.default_rng(s), noise), speech) for s in range(60)]
    assert 15 <= sum(noisy) <= 45


def test_noise_off(speech, noise):
    assert np.array_equal(only(noise_prob=0.0)(speech, np.random.default_rng(0), noise), speech)
    # no noise source: nothing to mix even when noise_prob is 1
    assert np.array_equal(only(noise_prob=1.0)(speech, np.random.default_rng(0), None), speech)


def test_noise_of_wrong_length_is_an_error(speech):
    aug = only(noise_prob=1.0)
    with pytest.raises(ValueError, match="must return 16000 samples"):
        aug(speech, np.random.default_rng(0), lambda rng, n: np.ones(n // 2, np.float32))


# ---------------------------------------------------------------------------- WaveformAugment: volume, whole chain


def test_volume_normalisation_alone(speech):
    out = only(volume_norm=True, peak=0.5)(speech, np.random.default_rng(0))
    assert np.isclose(np.abs(out).max(), 0.5, atol=1e-6)
    k = out[np.abs(speech) > 1e-3] / speech[np.abs(speech) > 1e-3]
    assert np.allclose(k, k[0], rtol=1e-5)  # a pure gain


def test_full_chain_seeded_and_independent_of_global_rngs(speech, noise):
    assert WaveformAugment(SR).enabled  # the defaults: speed, noise with p=0.5, volume norm
    aug = WaveformAugment(SR, noise_prob=1.0)  # noise every time: every seed cuts different noise
    np.random.seed(0)
    torch.manual_seed(0)
    a = aug(speech, np.random.default_rng(11), noise)
    np.random.seed(1)
    torch.manual_seed(1)
    b = aug(speech, np.random.default_rng(11), noise)
    assert np.array_equal(a, b)
    # DataLoader workers get a pickled copy: it augments identically
    assert np.array_equal(pickle.loads(pickle.dumps(aug))(speech, np.random.default_rng(11), noise), a)
    outs = {aug(speech, np.random.default_rng(s), noise).tobytes() for s in range(8)}
    assert len(outs) == 8
    assert a.dtype == np.float32 and np.isclose(np.abs(a).max(), 0.95, atol=1e-6)


def test_silent_crop_stays_finite(noise):
    silent = np.zeros(SR, np.float32)
    aug = WaveformAugment(SR, noise_prob=1.0)
    for seed in range(6):
        out = aug(silent, np.random.default_rng(seed), noise)
        assert np.isfinite(out).all() and not out.any()
    # a silent noise clip on real signal: nothing to scale, no NaN
    out = aug(tone(), np.random.default_rng(0), lambda rng, n: np.zeros(n, np.float32))
    assert np.isfinite(out).all() and np.isclose(np.abs(out).max(), 0.95, atol=1e-6)
    assert aug(np.zeros(0, np.float32), np.random.default_rng(0), noise).shape == (0,)


@pytest.mark.parametrize("kw, match", [
    ({"speeds": (0.9, -1.0)}, "speeds must be > 0"),
    ({"speeds": ()}, "non-empty"),
    ({"speeds": (0.9871,)}, "simple ratio"),
    ({"noise_prob": 1.5}, "noise_prob"),
    ({"snr_db": (15.0, 0.0)}, "ordered"),
    ({"snr_db": (5.0,)}, "pair"),
    ({"peak": 0.0}, "peak"),
    ({"volume_norm": "yes"}, "volume_norm"),
])
def test_waveform_augment_validates(kw, match):
    with pytest.raises(ValueError, match=match):
        WaveformAugment(SR, **kw)


def test_waveform_augment_needs_a_generator():
    with pytest.raises(ValueError, match="sample_rate"):
        WaveformAugment(0)
    for rng in (None, np.random.RandomState(0)):
        with pytest.raises(TypeError, match="Generator"):
            WaveformAugment(SR)(tone(), rng)
    with pytest.raises(ValueError, match="1-D"):
        WaveformAugment(SR)(np.zeros((2, 100), np.float32), np.random.default_rng(0))


# ---------------------------------------------------------------------------- SpectralAugment


def padded_batch(seed: int = 0, lengths=(120, 64, 7, 0), dim: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    """Positive random features (no accidental zeros), zero-padded beyond each row's length."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(lengths)
    feats = torch.rand(len(lengths), int(lengths.max()), dim, generator=g) + 1.0
    feats[torch.arange(feats.shape[1])[None, :] >= lengths[:, None]] = 0.0
    return feats, lengths


SENTINEL = -1234.0


def test_masks_never_touch_padding():
    feats, lengths = padded_batch()
    keep = feats.clone()
    aug = SpectralAugment(freq_masks=3, freq_width=10, time_masks=3, time_width=20)
    for seed in range(20):
        torch.manual_seed(seed)
        out = aug(feats, lengths)
        assert out.shape == feats.shape and torch.isfinite(out).all()
        for b, n in enumerate(lengths.tolist()):
            assert out[b, n:].eq(0).all()
    assert torch.equal(feats, keep)  # input untouched


def test_time_masks_land_in_valid_frames():
    feats, lengths = padded_batch()
    aug = SpectralAugment(freq_masks=0, time_masks=2, time_width=10, vtlp=None, mask_value=SENTINEL)
    masked_any = 0
    for seed in range(30):
        torch.manual_seed(seed)
        out = aug(feats, lengths)
        hit = out.eq(SENTINEL)
        whole = hit.all(dim=2)
        assert torch.equal(hit.any(dim=2), whole)  # a time mask covers whole frames
        for b, n in enumerate(lengths.tolist()):
            frames = torch.nonzero(whole[b]).flatten()
            assert len(frames) <= 2 * 10 and (frames < n).all()
        assert torch.equal(out[~hit], feats[~hit])
        masked_any += int(whole.any())
    assert masked_any > 20


def test_frequency_masks_replace_whole_bins_of_a_row():
    feats, lengths = padded_batch()
    aug = SpectralAugment(freq_masks=2, freq_width=8, time_masks=0, vtlp=None, mask_value=0.0)
    rows_masked = 0
    for seed in range(20):
        torch.manual_seed(seed)
        out = aug(feats, lengths)
        for b, n in enumerate(lengths.tolist()):
            if n == 0:
                continue
            zero = out[b, :n].eq(0)
            bins = zero.all(dim=0)
            assert torch.equal(zero.any(dim=0), bins)  # whole bins over all valid frames
            assert int(bins.sum()) <= 2 * 8
            assert torch.equal(out[b, :n, ~bins], feats[b, :n, ~bins])
            rows_masked += int(bins.any())
    assert rows_masked > 30


def test_default_mask_value_is_the_row_mean_of_valid_frames():
    feats, lengths = padded_batch(lengths=(50, 20))
    feats[1, :20] -= 80.0  # a different level per row (as log-mel in dB)
    torch.manual_seed(0)
    out = SpectralAugment(freq_masks=2, time_masks=2, vtlp=None)(feats, lengths)
    for b, n in enumerate(lengths.tolist()):
        mean = feats[b, :n].mean()
        changed = out[b, :n].ne(feats[b, :n])
        assert changed.any()
        assert torch.allclose(out[b, :n][changed], mean.expand(int(changed.sum())))
        assert out[b, n:].eq(0).all()


def test_vtlp_alpha_one_is_identity():
    feats, lengths = padded_batch()
    torch.manual_seed(0)
    assert torch.equal(SpectralAugment(freq_masks=0, time_masks=0, vtlp=(1.0, 1.0))(feats, lengths), feats)


@pytest.mark.parametrize("alpha, peak", [(0.9, 18), (1.1, 22)])
def test_vtlp_moves_spectral_peaks(alpha, peak):
    feats = torch.zeros(1, 5, 80)
    feats[..., 20] = 1.0  # a "formant" at bin 20
    out = SpectralAugment(freq_masks=0, time_masks=0, vtlp=(alpha, alpha))(feats, torch.tensor([5]))
    assert int(out[0, 0].argmax()) == peak  # 20 * alpha
    assert out[0, :, 0].eq(0).all() and out[0, :, -1].eq(0).all()  # the ends stay fixed


def test_vtlp_on_real_features_is_seeded_and_keeps_ends(speech):
    frontend = Frontend("fbank80", sample_rate=SR)
    waves = torch.zeros(2, SR)
    waves[0] = torch.from_numpy(speech)
    waves[1, : SR // 2] = torch.from_numpy(speech[: SR // 2])
    feats, frames = frontend(waves, torch.tensor([SR, SR // 2]))
    feats[1, int(frames[1]):] = 0.0
    aug = SpectralAugment(freq_masks=0, time_masks=0, vtlp=(0.9, 1.1))
    torch.manual_seed(1)
    a = aug(feats, frames)
    torch.manual_seed(1)
    assert torch.equal(a, aug(feats, frames))
    torch.manual_seed(2)
    assert not torch.equal(a, aug(feats, frames))
    assert not torch.equal(a, feats)
    assert torch.equal(a[..., [0, -1]], feats[..., [0, -1]])
    assert a[1, int(frames[1]):].eq(0).all()


def test_vtlp_probability():
    feats, lengths = padded_batch(lengths=(30,) * 64)
    torch.manual_seed(0)
    assert torch.equal(SpectralAugment(freq_masks=0, time_masks=0, vtlp_prob=0.0)(feats, lengths), feats)
    torch.manual_seed(0)
    out = SpectralAugment(freq_masks=0, time_masks=0, vtlp_prob=0.5)(feats, lengths)
    warped = sum(not torch.equal(out[b], feats[b]) for b in range(64))
    assert 16 <= warped <= 48


def test_spectral_augment_is_seeded():
    feats, lengths = padded_batch()
    aug = SpectralAugment()
    torch.manual_seed(3)
    a = aug(feats, lengths)
    torch.manual_seed(3)
    b = aug(feats, lengths)
    torch.manual_seed(4)
    c = aug(feats, lengths)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.data_ptr() != feats.data_ptr()


def test_spectral_augment_off_and_eval():
    feats, lengths = padded_batch()
    off = SpectralAugment(freq_masks=0, time_masks=0, vtlp=None)
    assert not off.enabled and SpectralAugment().enabled
    out = off(feats, lengths)
    assert torch.equal(out, feats) and out.data_ptr() != feats.data_ptr()
    assert not SpectralAugment(freq_width=0, time_width=0, vtlp_prob=0.0).enabled
    on = SpectralAugment().eval()
    assert torch.equal(on(feats, lengths), feats)


@pytest.mark.parametrize("floor", [0.0, -80.0])
def test_silent_features_stay_finite(floor):
    feats = torch.full((3, 40, 64), floor)
    lengths = torch.tensor([40, 10, 0])
    feats[1, 10:] = 0.0
    feats[2] = 0.0
    torch.manual_seed(0)
    out = SpectralAugment()(feats, lengths)
    assert torch.isfinite(out).all()
    assert torch.equal(out, feats)  # a constant row: warping and mean-masking change nothing


def test_spectral_augment_under_autocast():
    feats, lengths = padded_batch()
    aug = SpectralAugment()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = aug(feats.to(torch.bfloat16), lengths)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    assert out[3].eq(0).all() and out[2, 7:].eq(0).all()
    torch.manual_seed(0)
    half = aug(feats.half(), lengths)
    assert half.dtype == torch.float16 and torch.isfinite(half.float()).all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_spectral_augment_on_cuda():
    feats, lengths = padded_batch()
    aug = SpectralAugment().cuda()
    torch.manual_seed(0)
    with torch.autocast("cuda", dtype=torch.float16):
        a = aug(feats.cuda(), lengths)
    torch.manual_seed(0)
    with torch.autocast("cuda", dtype=torch.float16):
        b = aug(feats.cuda(), lengths.cuda())
    assert a.is_cuda and torch.equal(a, b)
    for i, n in enumerate(lengths.tolist()):
        assert a[i, n:].eq(0).all()


@pytest.mark.parametrize("kw, match", [
    ({"freq_masks": -1}, "freq_masks"),
    ({"time_width": 2.5}, "time_width"),
    ({"vtlp": (1.1, 0.9)}, "ordered"),
    ({"vtlp": (0.0, 1.1)}, "positive"),
    ({"vtlp_prob": 2.0}, "vtlp_prob"),
    ({"vtlp_boundary": 1.0}, "vtlp_boundary"),
])
def test_spectral_augment_validates(kw, match):
    with pytest.raises(ValueError, match=match):
        SpectralAugment(**kw)


def test_spectral_augment_checks_shapes():
    aug = SpectralAugment()
    with pytest.raises(ValueError, match="batch, frames, dim"):
        aug(torch.zeros(10, 40), torch.tensor([10]))
    with pytest.raises(ValueError, match="frame_lengths"):
        aug(torch.zeros(2, 10, 40), torch.tensor([10]))


# ---------------------------------------------------------------------------- config helpers


def test_from_config():
    assert waveform_augment_from(None, SR) is None and waveform_augment_from(False, SR) is None
    assert spectral_augment_from(None) is None and spectral_augment_from(False) is None
    assert repr(waveform_augment_from(True, SR)) == repr(WaveformAugment(SR))
    assert spectral_augment_from(True).vtlp == (0.9, 1.1)
    wave = waveform_augment_from({"speeds": [0.9, 1.0, 1.1], "noise_prob": 0.5, "snr_db": [5, 10]}, 8000)
    assert wave.sample_rate == 8000 and wave.speeds == (0.9, 1.0, 1.1) and wave.snr_db == (5.0, 10.0)
    spec = spectral_augment_from({"vtlp": [0.95, 1.05], "time_masks": 0})
    assert spec.vtlp == (0.95, 1.05) and spec.time_masks == 0
    with pytest.raises(ValueError, match="unknown .*'?speed'?.*allowed: speeds, noise_prob"):
        waveform_augment_from({"speed": [0.9]}, SR)
    with pytest.raises(ValueError, match="sample_rate"):
        waveform_augment_from({"sample_rate": 8000}, SR)
    with pytest.raises(ValueError, match="allowed: freq_masks"):
        spectral_augment_from({"freq_mask": 2})
    with pytest.raises(ValueError, match="mapping"):
        spectral_augment_from("yes")
