"""Augmentation wired into training: the DataModule augments crops reproducibly with the corpus's real
noise clips, and a model applies its SpectralAugment in training steps only."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from speakerzoo.datamodules import SpeakerDataModule
from speakerzoo.zoo import SECNNBiGRU


def _first_batch(corpus, augment, seed=0, epoch=0):
    dm = SpeakerDataModule(str(corpus), speakers_per_batch=4, utterances_per_speaker=2, crop_seconds=1.0,
                           num_workers=0, augment=augment, seed=seed)
    loader = dm.train_dataloader()
    loader.batch_sampler.set_epoch(epoch)
    return next(iter(loader)), dm


def test_datamodule_augments_reproducibly_with_real_noise(speech_commands_corpus):
    augment = {"speeds": [0.9, 1.1], "noise_prob": 1.0, "snr_db": [5.0, 5.0]}
    plain, _ = _first_batch(speech_commands_corpus, None)
    first, dm = _first_batch(speech_commands_corpus, augment)
    again, _ = _first_batch(speech_commands_corpus, augment)
    other_epoch, _ = _first_batch(speech_commands_corpus, augment, epoch=1)
    assert len(dm.noise_items) > 300  # Speech Commands' _silence_ clips are the noise
    assert torch.equal(first["waveforms"], again["waveforms"]) and torch.equal(first["lengths"], again["lengths"])
    assert torch.equal(first["speakers"], plain["speakers"])  # the same crops of the same speakers ...
    assert not torch.equal(first["waveforms"], other_epoch["waveforms"])
    # ... changed: speed 1.1 shortens a crop, 0.9 keeps it at the crop length; noise fills silences.
    assert set(first["lengths"].tolist()) <= {16000, 14545, 14546}
    assert not torch.allclose(first["waveforms"][:, :14000], plain["waveforms"][:, :14000])
    assert float(first["waveforms"].abs().amax(dim=1).min()) == pytest.approx(0.95, abs=1e-3)  # volume norm


def test_datamodule_warns_when_noise_is_asked_for_but_the_corpus_has_none(fsdd_corpus):
    with pytest.warns(UserWarning, match="no noise clips"):
        dm = SpeakerDataModule(str(fsdd_corpus), speakers_per_batch=2, num_workers=0, augment=True)
    batch = next(iter(dm.train_dataloader()))
    assert torch.isfinite(batch["waveforms"]).all()


def test_augment_needs_audio_not_cached_features(fsdd_corpus):
    with pytest.raises(ValueError, match="features: null"):
        SpeakerDataModule(str(fsdd_corpus), num_workers=0, features="fbank80", augment=True)


def test_model_applies_spectral_augment_in_training_steps_only():
    model = SECNNBiGRU(num_speakers=2, channels=[4, 8, 16], hidden=8, projection_dim=8, embedding_dim=8,
                       spec_augment={"freq_masks": 2, "freq_width": 8, "time_masks": 0, "vtlp": None})
    seen = []
    model.encoder.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    batch = {"waveforms": torch.randn(2, 8000), "lengths": torch.tensor([8000, 6000]),
             "speakers": torch.tensor([0, 1])}
    torch.manual_seed(3)
    model.train()
    out = model.training_step(batch, 0)
    assert set(out) == {"loss", "logits", "targets"} and out["logits"].shape == (2, 2)
    features, _ = model.frontend(batch["waveforms"], batch["lengths"])
    assert not torch.equal(seen[-1], features)  # masked
    masked_bins = (seen[-1] != features).all(dim=1)  # whole bins replaced in a row
    assert bool(masked_bins.any())
    model.eval()
    model.embed(batch["waveforms"], batch["lengths"])
    assert torch.equal(seen[-1], features)
    # The masks follow the torch generator: the same seed gives the same masks.
    torch.manual_seed(3)
    model.train()
    model.training_step(batch, 0)
    assert torch.equal(seen[-1], seen[0])
    np.testing.assert_array_equal(seen[-1].numpy(), seen[0].numpy())
