"""CAM++ as a zoo model: statistics over valid frames, training through the shipped config and
LightningCLI, and the fine-tuning overlay whose frozen warm-up leaves the embedder's weights
untouched."""

from __future__ import annotations


import pytest
import torch

from speakerzoo.zoo import CAMPPlus, SpeakerEmbeddingModule
from cli_run import QUIET, REPO, cli

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONFIG = str(REPO / "configs" / "campplus_speech_commands.yaml")
FINETUNE = str(REPO / "configs" / "campplus_finetune.yaml")
TINY = dict(embedding_dim=16, growth_rate=8, init_channels=16, m_channels=8)
TINY_ARGS = ["--model.init_args.embedding_dim=16", "--model.init_args.growth_rate=8",
             "--model.init_args.init_channels=16", "--model.init_args.m_channels=8",
             "--data.init_args.speakers_per_batch=4", "--data.init_args.num_workers=0",
             "--trainer.limit_train_batches=2", "--trainer.max_epochs=1"]


def test_statistics_are_over_valid_frames_only():
    torch.manual_seed(0)
    model = CAMPPlus(num_speakers=0, **TINY).eval()
    features = torch.randn(1, 60, 80)
    with torch.no_grad():
        alone = model.encode(features, torch.tensor([60]))
        x = model.encoder.head(features.transpose(1, 2))
        x = model.encoder.xvector.tdnn(x)
        assert x.shape[-1] == 30  # stride 2: ceil(60 / 2) frames
        # A row padded with zeros: the statistics pooling alone must not see the padding.
        stats = model.encoder.xvector.stats
        h = torch.randn(2, 5, 30)
        padded = torch.cat([h[1:, :, :20], torch.zeros(1, 5, 10)], dim=-1)
        pooled = stats(torch.cat([h[:1], padded]), torch.tensor([30, 20]))
        reference = torch.cat([h[1, :, :20].mean(-1), h[1, :, :20].std(-1, unbiased=True)])
        torch.testing.assert_close(pooled[1], reference)
        torch.testing.assert_close(pooled[0], torch.cat([h[0].mean(-1), h[0].std(-1, unbiased=True)]))
        # one valid frame: a standard deviation of 0, not NaN
        single = stats(h[:1, :, :1], torch.tensor([1]))
        assert torch.isfinite(single).all() and torch.all(single[0, 5:] <= 1e-6)
    # A constant channel (all zero after a ReLU) must not make the gradient NaN.
    h = torch.randn(2, 5, 30)
    h[0, 2] = 0.0
    h.requires_grad_(True)
    stats(h, torch.tensor([30, 30])).sum().backward()
    assert torch.isfinite(h.grad).all()
    assert alone.shape == (1, 16) and torch.isfinite(alone).all()


def test_campplus_trains_and_fine_tunes_with_the_shipped_configs(speech_commands_corpus, tmp_path):
    cli("fit", "-c", CONFIG, *TINY_ARGS, *QUIET, f"--data.init_args.corpus={speech_commands_corpus}",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'scratch'}")
    trained = next((tmp_path / "scratch").rglob("last.ckpt"))
    model = SpeakerEmbeddingModule.from_pretrained(str(trained))
    assert isinstance(model, CAMPPlus) and model.frontend.config.kind == "kaldi_fbank"
    start = {k: v.clone() for k, v in model.state_dict().items()}

    # The fine-tuning overlay: the first 2 epochs train the new head only (BackboneFinetuning) ...
    args = ["-c", CONFIG, "-c", FINETUNE, *TINY_ARGS, *QUIET, "--trainer.limit_val_batches=2",
            f"--data.init_args.corpus={speech_commands_corpus}", f"--model.init_args.init_from={trained}"]
    cli("fit", *args, f"--trainer.logger.init_args.save_dir={tmp_path / 'tuned'}")
    tuned = torch.load(next((tmp_path / "tuned").rglob("last.ckpt")), weights_only=True)["state_dict"]
    batch_norms = {n for n, m in model.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}
    frozen = [k for k in start if k.startswith("encoder.") and k.rpartition(".")[0] not in batch_norms]
    assert len(frozen) > 100 and all(torch.equal(tuned[k], start[k]) for k in frozen), "a frozen weight changed"
    # BackboneFinetuning keeps batch norms training while the rest is frozen
    assert not torch.equal(tuned["encoder.head.bn1.running_mean"], start["encoder.head.bn1.running_mean"])
    assert not torch.equal(tuned["head.classifier.weight"], start["head.classifier.weight"])

    # ... and epoch 2 unfreezes the embedder as a parameter group at a tenth of the rate, which
    # the cosine schedule then follows.
    cli("fit", *args, "--trainer.max_epochs=3", f"--trainer.logger.init_args.save_dir={tmp_path / 'unfrozen'}")
    last = torch.load(next((tmp_path / "unfrozen").rglob("last.ckpt")), weights_only=True)
    groups = last["optimizer_states"][0]["param_groups"]
    assert len(groups) == 2 and groups[1]["lr"] == pytest.approx(0.1 * groups[0]["lr"], rel=1e-6)
    assert not torch.equal(last["state_dict"]["encoder.head.conv1.weight"], start["encoder.head.conv1.weight"])
