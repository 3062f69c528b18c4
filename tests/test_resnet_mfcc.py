"""ResNet50 on MFCC images (seed 004): the images, the layout, partial freezing, local ImageNet
weights, checkpoints, and training through the CLI on real FSDD chunks (one process and DDP)."""

from __future__ import annotations

import pytest
import torch
from transformers import ResNetConfig, ResNetForImageClassification

from cli_run import QUIET, REPO, cli, fit_ddp_on_two_cpu_processes
from speakerzoo.zoo import ResNetMFCC, SpeakerEmbeddingModule
from speakerzoo.zoo.mfcc_image import MFCCImage, colormap_table
from speech_clips import trimmed_clips

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: A resnet-50-shaped backbone (bottleneck blocks, four stages) small enough for a CPU test.
TINY_BACKBONE = {"embedding_size": 8, "hidden_sizes": [16, 16, 32, 32], "depths": [1, 1, 1, 1]}
TINY = dict(backbone=TINY_BACKBONE, image_size=64, hidden=32)
CONFIG = str(REPO / "configs" / "resnet50_mfcc.yaml")
TINY_CLI = [
    f"--model.init_args.backbone={TINY_BACKBONE}".replace("'", '"'), "--model.init_args.image_size=64",
    "--model.init_args.hidden=32", "--data.init_args.num_workers=0", "--data.init_args.utterances_per_speaker=2",
]


@pytest.fixture(scope="module")
def chunks_3s(fsdd_corpus, tmp_path_factory):
    from speakerzoo.datamodules.chunks import chunk_corpus

    return chunk_corpus(fsdd_corpus, tmp_path_factory.mktemp("chunks") / "fsdd_3s.h5", 3.0, progress=False)


def _batch(root, n=4):
    clips = trimmed_clips(root, n=n, step=1200)
    lengths = torch.tensor([len(c) for c in clips])
    waves = torch.zeros(n, int(lengths.max()))
    for k, c in enumerate(clips):
        waves[k, : len(c)] = c
    return waves, lengths


# ---------------------------------------------------------------------------------- images


def test_image_shape_range_and_orientation():
    image = MFCCImage(size=40, colormap="coolwarm")
    # coefficient 0 high everywhere, the others low: the bottom of the picture takes the top
    # colour of the map and the top of the picture its bottom colour
    feats = torch.full((1, 30, 13), -5.0)
    feats[0, :, 0] = 7.0
    out = image(feats, torch.tensor([30]))
    assert out.shape == (1, 3, 40, 40) and out.dtype == torch.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    table = colormap_table("coolwarm")
    assert torch.allclose(out[0, :, -1, 20], table[-1], atol=1e-5)
    assert torch.allclose(out[0, :, 0, 20], table[0], atol=1e-5)


def test_image_ignores_padding_and_scale_of_the_clip():
    image = MFCCImage(size=48)
    feats = torch.randn(1, 80, 13)
    alone = image(feats, torch.tensor([80]))
    padded = torch.cat([feats, torch.randn(1, 40, 13) * 100], dim=1)
    batch = torch.cat([padded, torch.randn(1, 120, 13)])
    together = image(batch, torch.tensor([80, 120]))
    assert torch.allclose(together[0], alone[0], atol=1e-6)
    # a plot's colour scale is per clip: scaling and shifting the coefficients draws the same image
    assert torch.allclose(image(feats * 3 + 2, torch.tensor([80])), alone, atol=1e-5)


def test_images_of_real_speech_fill_the_colour_range(speech_commands_root):
    model = ResNetMFCC(num_speakers=2, **TINY).eval()
    waves, lengths = _batch(speech_commands_root)
    feats, frames = model.frontend(waves, lengths)
    assert feats.shape[-1] == 13  # 13 MFCC by default
    images = model.images(feats, frames)
    assert images.shape == (4, 3, 64, 64)
    for img in images:  # every clip spans its whole colour scale: both ends of the map occur
        assert float(img.min()) >= 0.0 and float(img.max()) <= 1.0
        assert float(img.std()) > 0.05
    # a different number of coefficients is a frontend setting
    model20 = ResNetMFCC(num_speakers=2, frontend={"kind": "mfcc", "n_mels": 40, "n_mfcc": 20}, **TINY)
    assert model20.frontend(waves, lengths)[0].shape[-1] == 20


# ---------------------------------------------------------------------------------- layout


def test_layout_matches_the_seed_at_300_pixels():
    """§4.9's summary at 300 x 300 with 5 speakers: the dense layers have exactly its parameter
    counts (204800 -> 512: 104,858,112; 512 -> 512: 262,656; 512 -> 5: 2,565) and the backbone is
    the resnet-50 layout (23.5 M; Keras' 23.6 M adds conv biases that BatchNorm makes redundant)."""
    model = ResNetMFCC(num_speakers=5, image_size=300)
    dense = [m for m in model.neck if isinstance(m, torch.nn.Linear)] + [model.head.linear]
    assert [sum(p.numel() for p in m.parameters()) for m in dense] == [104_858_112, 262_656, 2_565]
    assert sum(p.numel() for p in model.backbone.parameters()) == 23_508_032
    assert list(model.backbone.config.depths) == [3, 4, 6, 3] and model.backbone.config.layer_type == "bottleneck"


@pytest.mark.parametrize("size", [64, 77, 100])
def test_flatten_size_matches_the_feature_map(size):
    model = ResNetMFCC(num_speakers=3, backbone=TINY_BACKBONE, image_size=size, hidden=16).eval()
    with torch.no_grad():
        maps = model.backbone(pixel_values=torch.rand(1, 3, size, size)).last_hidden_state
        assert maps[0].numel() == model.neck[1].in_features
        assert model.embed(torch.randn(2, 8000) * 0.1).shape == (2, 16)


def test_avg_pooling_and_bad_arguments():
    model = ResNetMFCC(num_speakers=3, pooling="avg", **TINY)
    assert model.neck[1].in_features == TINY_BACKBONE["hidden_sizes"][-1]
    with pytest.raises(ValueError, match="stage5"):
        ResNetMFCC(num_speakers=3, freeze=["stage5"], **TINY)
    with pytest.raises(ValueError, match="pooling"):
        ResNetMFCC(num_speakers=3, pooling="max", **TINY)
    with pytest.raises(ValueError, match="colormap"):
        ResNetMFCC(num_speakers=3, colormap="no-such-map", **TINY)


# ---------------------------------------------------------------------------------- freezing


def test_frozen_stages_do_not_change_and_the_rest_does(speech_commands_root):
    torch.manual_seed(0)
    model = ResNetMFCC(num_speakers=4, **TINY)  # default: stage2-4 frozen
    model.train()
    frozen = [model.backbone.encoder.stages[i] for i in (1, 2, 3)]
    assert not any(m.training for part in frozen for m in part.modules())  # BatchNorm in inference mode
    assert model.backbone.embedder.training and model.backbone.encoder.stages[0].training
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = model.configure_optimizers()
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    waves, lengths = _batch(speech_commands_root)
    feats, frames = model.frontend(waves, lengths)
    loss, logits = model.training_loss(model.encode(feats, frames), torch.tensor([0, 1, 2, 3]))
    assert logits.shape == (4, 4) and torch.isfinite(loss)
    loss.backward()
    optimizer.step()
    after = model.state_dict()
    for name, param in model.named_parameters():
        changed = not torch.equal(before[name], after[name])
        is_frozen = name.startswith(("backbone.encoder.stages.1.", "backbone.encoder.stages.2.",
                                     "backbone.encoder.stages.3."))
        assert changed != is_frozen, f"{name}: changed={changed} but frozen={is_frozen}"
        assert (id(param) in in_optimizer) != is_frozen
    for name in before:  # running statistics of frozen BatchNorm stay; the trained ones move
        if name.endswith("running_mean"):
            moved = not torch.equal(before[name], after[name])
            assert moved == name.startswith(("backbone.embedder.", "backbone.encoder.stages.0.")), name


def test_freeze_nothing_trains_everything():
    model = ResNetMFCC(num_speakers=2, freeze=[], **TINY)
    assert all(p.requires_grad for p in model.parameters())
    model = ResNetMFCC(num_speakers=2, freeze=["stem", "stage1", "stage2", "stage3", "stage4"], **TINY)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == [
        "neck.1.weight", "neck.1.bias", "neck.4.weight", "neck.4.bias", "head.linear.weight", "head.linear.bias"]


# ---------------------------------------------------------------------------------- weights


def test_imagenet_weights_from_a_local_directory_and_checkpoints_without_it(tmp_path, speech_commands_root):
    torch.manual_seed(1)
    source = ResNetForImageClassification(ResNetConfig(**TINY_BACKBONE, num_labels=10))
    weights = tmp_path / "resnet"
    source.save_pretrained(weights)
    model = ResNetMFCC(num_speakers=3, pretrained=str(weights), **TINY)
    for name, value in source.resnet.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[name], value), name
    # a checkpoint holds the weights: rebuilding it needs no directory
    import lightning as L

    trainer = L.Trainer(accelerator="cpu", logger=False, max_epochs=0)
    trainer.strategy.connect(model)
    ckpt = tmp_path / "model.ckpt"
    trainer.save_checkpoint(ckpt)
    (weights / "model.safetensors").unlink()
    state = torch.load(ckpt, weights_only=True)
    assert state["hyper_parameters"]["pretrained"] is None
    assert state["speakerzoo"]["backbone_weights"] == str(weights)
    rebuilt = SpeakerEmbeddingModule.from_pretrained(ckpt)
    assert isinstance(rebuilt, ResNetMFCC)
    waves, lengths = _batch(speech_commands_root, n=2)
    with torch.no_grad():
        assert torch.allclose(rebuilt.eval().embed(waves, lengths), model.eval().embed(waves, lengths), atol=1e-5)


def test_unusable_weight_directories_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        ResNetMFCC(num_speakers=2, pretrained=str(tmp_path / "nowhere"), **TINY)
    other = tmp_path / "other"
    ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8, 8, 8, 8], depths=[1, 1, 1, 1])
                                 ).save_pretrained(other)
    with pytest.raises(ValueError, match="layout differs"):
        ResNetMFCC(num_speakers=2, pretrained=str(other), **TINY)


# ---------------------------------------------------------------------------------- the CLI


@pytest.mark.slow
def test_config_trains_through_the_cli_with_fast_dev_run(chunks_3s, tmp_path):
    cli("fit", "-c", CONFIG, *TINY_CLI, *QUIET, f"--data.init_args.corpus={chunks_3s}", "--trainer.fast_dev_run=true",
        f"--trainer.logger.init_args.save_dir={tmp_path}")


@pytest.mark.slow
def test_ddp_preset_on_two_cpu_processes(chunks_3s, tmp_path):
    """§6's multi-GPU training, as two gloo processes through the ddp preset: the closed-set
    validation accuracy of both ranks' chunks reaches the checkpoint callback."""
    state = fit_ddp_on_two_cpu_processes(
        "-c", CONFIG, *TINY_CLI, *QUIET, f"--data.init_args.corpus={chunks_3s}", "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=2", root=tmp_path / "ddp", cwd=tmp_path)
    assert state["global_step"] == 2
    scores = [v["best_model_score"] for k, v in state["callbacks"].items() if "val/acc" in k]
    assert scores and 0.0 <= float(scores[0]) <= 1.0


@pytest.mark.slow
def test_lightning_training_keeps_frozen_batchnorm_statistics(chunks_3s, tmp_path):
    """Through a real Trainer (which switches modules between train and eval around validation),
    the frozen stages' BatchNorm statistics and weights end as they started."""
    import lightning as L

    from speakerzoo.datamodules import SpeakerDataModule

    data = SpeakerDataModule(str(chunks_3s), split="utterance", crop_seconds=3.0, speakers_per_batch=6,
                             utterances_per_speaker=1, num_workers=0)
    model = ResNetMFCC(num_speakers=data.num_speakers, **TINY)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=3, limit_val_batches=1,
                        num_sanity_val_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=data)
    after = model.state_dict()
    frozen = [k for k in before if k.startswith(("backbone.encoder.stages.1.", "backbone.encoder.stages.2.",
                                                  "backbone.encoder.stages.3."))]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    assert not torch.equal(before["backbone.embedder.embedder.normalization.running_mean"],
                           after["backbone.embedder.embedder.normalization.running_mean"])


def test_freezing_random_stages_is_warned_about(tmp_path):
    model = ResNetMFCC(num_speakers=2, **TINY)
    with pytest.warns(UserWarning, match="random filters"):
        model.setup("fit")
    weights = tmp_path / "w"
    ResNetForImageClassification(ResNetConfig(**TINY_BACKBONE)).save_pretrained(weights)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ResNetMFCC(num_speakers=2, pretrained=str(weights), **TINY).setup("fit")
        ResNetMFCC(num_speakers=2, freeze=[], **TINY).setup("fit")


@pytest.mark.slow
def test_input_images_reach_tensorboard(chunks_3s, tmp_path):
    """The InputImages callback writes the MFCC pictures of the first validation batch, tagged
    by speaker, exactly as the model draws them."""
    import lightning as L
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from speakerzoo.callbacks import InputImages
    from speakerzoo.datamodules import SpeakerDataModule

    data = SpeakerDataModule(str(chunks_3s), split="utterance", crop_seconds=3.0, speakers_per_batch=6,
                             utterances_per_speaker=1, num_workers=0, eval_batch_size=8)
    model = ResNetMFCC(num_speakers=data.num_speakers, freeze=[], **TINY)
    logger = TensorBoardLogger(tmp_path, name="tb", version="v")
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=1, limit_val_batches=1,
                        num_sanity_val_steps=0, logger=logger, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[InputImages(max_images=3)])
    trainer.fit(model, datamodule=data)
    events = EventAccumulator(str(tmp_path / "tb" / "v"), size_guidance={"images": 0})
    events.Reload()
    tags = sorted(events.Tags()["images"])
    assert len(tags) == 3 and all(t.startswith("val/input_images/") for t in tags)
    assert {t.rsplit("_", 1)[-1] for t in tags} <= set(data.speaker_names)
    image = events.Images(tags[0])[0]
    assert (image.width, image.height) == (64, 64)
