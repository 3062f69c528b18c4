"""The feature module: torchaudio-equivalent values, padding invariance, presets."""

import pytest
import torch
import torchaudio

from speakerzoo.features import PRESETS, FeatureConfig, Frontend, frame_count

SR = 16000


@pytest.fixture
def batch():
    gen = torch.Generator().manual_seed(0)
    waves = torch.randn(3, 24000, generator=gen) * 0.1
    lengths = torch.tensor([24000, 15000, 3000])
    return waves, lengths


@pytest.mark.parametrize("preset", ["fbank80", "fbank64", "mfcc26", "logmel64", "sb_fbank80", "kaldi_fbank80",
                                    "kaldi_fbank80_int16"])
def test_padding_never_changes_valid_frames(preset, batch):
    waves, lengths = batch
    fe = Frontend(preset, SR)
    feats, frames = fe(waves, lengths)
    assert feats.shape == (3, int(frames.max()), PRESETS[preset].dim)
    for i, n in enumerate(lengths.tolist()):
        alone, alone_frames = fe(waves[i:i + 1, :n])
        assert int(alone_frames) == int(frames[i]) == frame_count(n, SR, fe.config)
        torch.testing.assert_close(feats[i, : frames[i]], alone[0], rtol=0, atol=1e-5)
        assert torch.all(feats[i, frames[i]:] == 0)


def test_fbank_equals_torchaudio_log_mel(batch):
    waves, _ = batch
    cfg = FeatureConfig(kind="fbank", n_mels=40, normalize="none")
    fe = Frontend(cfg, SR)
    ours, _ = fe(waves)
    ref = torchaudio.transforms.MelSpectrogram(SR, n_fft=512, win_length=400, hop_length=160, n_mels=40, f_min=20.0,
                                               center=False)(waves)
    torch.testing.assert_close(ours, torch.log(ref + 1e-6).transpose(1, 2), rtol=1e-5, atol=1e-5)


def test_mfcc_equals_torchaudio_mfcc(batch):
    waves, _ = batch
    fe = Frontend("mfcc26", SR)
    ours, _ = fe(waves)
    ref = torchaudio.transforms.MFCC(SR, n_mfcc=26, log_mels=True, melkwargs=dict(
        n_fft=512, win_length=400, hop_length=160, n_mels=40, f_min=20.0, center=False))(waves)
    torch.testing.assert_close(ours, ref.transpose(1, 2), rtol=1e-4, atol=1e-4)


def test_logmel_floor_is_per_utterance(batch):
    waves, lengths = batch
    waves = waves.clone()
    waves[0] *= 100.0  # a loud batch-mate must not move another clip's floor
    fe = Frontend("logmel64", SR)
    feats, frames = fe(waves, lengths)
    for i in range(3):
        valid = feats[i, : frames[i]]
        assert valid.max() - valid.min() <= 80.0 + 1e-3
        torch.testing.assert_close(valid, fe(waves[i:i + 1, : lengths[i]])[0][0], rtol=0, atol=1e-4)


def test_meanvar_normalisation_over_valid_frames(batch):
    waves, lengths = batch
    feats, frames = Frontend("fbank64", SR)(waves, lengths)
    for i in range(3):
        valid = feats[i, : frames[i]]
        torch.testing.assert_close(valid.mean(0), torch.zeros(64), rtol=0, atol=1e-4)
        torch.testing.assert_close(valid.std(0, unbiased=False), torch.ones(64), rtol=0, atol=1e-2)


def test_config_round_trip_and_errors():
    for name, cfg in PRESETS.items():
        assert FeatureConfig.parse(cfg.to_json()) == cfg
        assert FeatureConfig.parse(cfg.to_dict()) == cfg
        assert cfg.key == name
    custom = FeatureConfig(n_mels=33)
    assert custom.key.startswith("custom-") and custom.key == FeatureConfig(n_mels=33).key
    with pytest.raises(ValueError, match="unknown feature preset"):
        FeatureConfig.parse("fbank81")
    with pytest.raises(ValueError, match="unknown feature parameters"):
        FeatureConfig.parse({"nmels": 3})


def test_band_above_nyquist_is_clamped_with_a_warning():
    with pytest.warns(UserWarning, match="Nyquist"):
        fe = Frontend("logmel64", 8000)
    feats, _ = fe(torch.randn(1, 8000))
    assert torch.isfinite(feats).all()


def test_waveform_frontend_passes_audio_through():
    fe = Frontend("waveform", SR)
    x = torch.randn(2, 100)
    out, n = fe(x, torch.tensor([100, 50]))
    assert out is x and n.tolist() == [100, 50]


def test_short_clip_gives_one_frame():
    feats, frames = Frontend("fbank80", SR)(torch.randn(1, 100))
    assert frames.tolist() == [1] and feats.shape == (1, 1, 80)


def test_waveform_meanvar_normalises_each_utterance_over_its_valid_samples():
    fe = Frontend("waveform_meanvar", 16000)
    torch.manual_seed(0)
    waves = 0.3 * torch.randn(2, 1000) + 0.2
    lengths = torch.tensor([1000, 600])
    out, n = fe(waves, lengths)
    assert torch.equal(n, lengths) and fe.dim is None
    short = out[1, :600]
    assert abs(float(short.mean())) < 1e-5 and abs(float(short.std(unbiased=False)) - 1) < 1e-3
    assert torch.equal(out[1, 600:], torch.zeros(400))  # padding stays zero
    alone, _ = fe(waves[1:, :600])
    torch.testing.assert_close(alone[0], short)  # the batch-mate and the padding change nothing
    raw, _ = Frontend("waveform", 16000)(waves, lengths)
    assert torch.equal(raw, waves)


def test_sb_fbank_equals_speechbrain_fbank_with_sentence_mean_norm(batch):
    from speechbrain.lobes.features import Fbank
    from speechbrain.processing.features import InputNormalization

    waves, lengths = batch
    ours, frames = Frontend("sb_fbank80", SR)(waves, lengths)
    fbank, norm = Fbank(n_mels=80), InputNormalization(norm_type="sentence", std_norm=False)
    for i, n in enumerate(lengths.tolist()):
        ref = norm(fbank(waves[i:i + 1, :n]), torch.ones(1))[0]
        assert ref.shape == (int(frames[i]), 80)
        torch.testing.assert_close(ours[i, : frames[i]], ref, rtol=0, atol=1e-4)


@pytest.mark.parametrize("preset,window,scale", [("kaldi_fbank80", "povey", 1.0),
                                                 ("kaldi_fbank80_int16", "hamming", 32768.0)])
def test_kaldi_fbank_equals_torchaudio_kaldi_fbank_minus_its_mean(batch, preset, window, scale):
    from torchaudio.compliance import kaldi

    waves, lengths = batch
    ours, frames = Frontend(preset, SR)(waves, lengths)
    for i, n in enumerate(lengths.tolist()):
        ref = kaldi.fbank(waves[i:i + 1, :n] * scale, num_mel_bins=80, dither=0.0, window_type=window,
                          sample_frequency=SR)
        ref = ref - ref.mean(dim=0, keepdim=True)
        assert ref.shape == (int(frames[i]), 80)
        torch.testing.assert_close(ours[i, : frames[i]], ref, rtol=0, atol=1e-4)


def test_new_options_leave_earlier_configs_keys_unchanged():
    for name in ("fbank80", "mfcc26", "logmel64", "waveform"):
        assert "window" not in PRESETS[name].to_dict() and "input_scale" not in PRESETS[name].to_dict()
    cfg = PRESETS["kaldi_fbank80_int16"]
    assert FeatureConfig.parse(cfg.to_json()) == cfg and cfg.key != PRESETS["kaldi_fbank80"].key
    with pytest.raises(ValueError, match="only kaldi_fbank takes a window"):
        Frontend(FeatureConfig(kind="fbank", window="povey"), SR)
    with pytest.raises(ValueError, match="only kaldi_fbank takes a window"):
        Frontend(FeatureConfig(kind="kaldi_fbank", window="triangle"), SR)
