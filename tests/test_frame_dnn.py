"""Seed 000's frame task and frame classifier on real FSDD MFCC frames: the frames, class weights,
frame files, early stopping that restores the best epoch, transfer of pre-trained weights, and
training through the CLI (one process and DDP)."""

from __future__ import annotations

import h5py
import lightning
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint

from cli_run import QUIET, REPO, cli, fit_ddp_on_two_cpu_processes
from speakerzoo.datamodules import Corpus, FrameDataModule
from speakerzoo.datamodules.frames import (
    FrameFileError, balanced_class_weights, corpus_frames, read_frame_file, write_frame_file,
)
from speakerzoo.features import Frontend
from speakerzoo.zoo import FrameDNN, InvalidCheckpointError

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CONFIG = str(REPO / "configs" / "frame_dnn.yaml")


def _trainer(root, **kwargs) -> lightning.Trainer:
    kwargs.setdefault("max_epochs", 1)
    return lightning.Trainer(accelerator="cpu", default_root_dir=root, logger=False, enable_progress_bar=False,
                             enable_model_summary=False, **kwargs)


def _dnn(dm: FrameDataModule, **kwargs) -> FrameDNN:
    return FrameDNN(num_speakers=dm.num_speakers, sample_rate=dm.sample_rate, speaker_names=dm.speaker_names, **kwargs)


@pytest.fixture(scope="module")
def george(fsdd_corpus) -> FrameDataModule:
    """George against the other five FSDD speakers, from 10 of his training clips."""
    dm = FrameDataModule(str(fsdd_corpus), subject="george", subject_utterances=10, batch_size=512)
    dm.setup()
    return dm


# ------------------------------------------------------------------------------------- frames


def test_frames_are_the_cached_mfccs_and_the_frontend_computes_the_same(fsdd_corpus):
    corpus = Corpus(fsdd_corpus)
    items = np.array([3, 700, 2999])
    frames, owner = corpus_frames(corpus, items, "mfcc26")
    assert frames.shape[1] == 26 and frames.dtype == np.float32
    assert np.array_equal(np.unique(owner), items)
    for i in items:
        assert np.array_equal(frames[owner == i], corpus.features("mfcc26", int(i)))
        # the same 25 ms / 10 ms MFCCs from the audio, through the one feature implementation
        wave = torch.from_numpy(corpus.audio(int(i)))[None]
        feats, lengths = Frontend("mfcc26", corpus.sample_rate)(wave, torch.tensor([wave.shape[1]]))
        assert np.allclose(frames[owner == i], feats[0, : int(lengths[0])].numpy(), atol=1e-3)
        # one frame per 10 ms step (a 25 ms Hann window inside a 512-point FFT at 16 kHz)
        assert len(frames[owner == i]) == 1 + (corpus.num_samples[i] - 512) // 160


def test_binary_task_labels_parts_and_subject_limit(george, fsdd_corpus):
    corpus = Corpus(fsdd_corpus)
    assert george.num_speakers == 2 and george.speaker_names == ["background", "george"]
    owners = {}
    for part in ("train", "val", "test"):
        frames, labels, owner = george.part_frames(part)
        assert set(np.unique(labels)) == {0, 1}
        assert np.array_equal(labels == 1, corpus.speaker[owner] == corpus.speakers.index("george"))
        owners[part] = set(owner.tolist())
    # no clip gives frames to two parts
    assert not owners["train"] & owners["val"] and not owners["train"] & owners["test"]
    _, labels, owner = george.part_frames("train")
    assert len(np.unique(owner[labels == 1])) == 10  # subject_utterances
    assert len(np.unique(owner[labels == 0])) == int(np.sum(corpus.speaker[corpus.split("utterance", "train")] != 0))
    assert np.array_equal(george.subject_frames(), george.part_frames("train")[0][labels == 1])


def test_multiclass_task_has_every_speaker(fsdd_corpus):
    dm = FrameDataModule(str(fsdd_corpus), subject=None)
    assert dm.num_speakers == 6 and dm.speaker_names == Corpus(fsdd_corpus).speakers
    _, labels, owner = dm.part_frames("val")
    assert np.array_equal(labels, Corpus(fsdd_corpus).speaker[owner])


def test_bad_arguments_name_the_fix(fsdd_corpus):
    with pytest.raises(ValueError, match="no speaker 'nobody'.*george"):
        FrameDataModule(str(fsdd_corpus), subject="nobody")
    with pytest.raises(ValueError, match="fewer than subject_utterances=1000"):
        FrameDataModule(str(fsdd_corpus), subject="george", subject_utterances=1000)
    with pytest.raises(ValueError, match="set subject"):
        FrameDataModule(str(fsdd_corpus), subject_utterances=5)


# -------------------------------------------------------------------------------- class weights


def test_balanced_class_weights_give_every_class_the_same_total():
    labels = np.array([0] * 90 + [1] * 10)
    weights = balanced_class_weights(labels, 2)
    assert np.allclose(weights, [100 / 180, 100 / 20])
    assert np.isclose(weights[0] * 90, weights[1] * 10)
    assert np.allclose(balanced_class_weights(np.array([0, 0, 2]), 3), [0.75, 0.0, 1.5])


def test_weighted_loss_counts_the_rare_class_by_its_weight(george, tmp_path):
    counts = george.class_counts()
    assert counts[1] < counts[0] / 5  # ten clips of the subject against five speakers
    model = _dnn(george)
    assert torch.equal(model.class_weight, torch.ones(2))  # until fitting starts
    _trainer(tmp_path, max_steps=1).fit(model, george)
    expected = torch.tensor(counts.sum() / (2 * counts), dtype=torch.float32)
    assert torch.allclose(model.class_weight, expected)
    # the loss is the weighted mean of per-frame cross-entropies
    logits, labels = torch.randn(6, 2), torch.tensor([0, 0, 0, 0, 1, 1])
    per_frame = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    w = expected[labels]
    assert torch.allclose(model.loss(logits, labels)[0], (per_frame * w).sum() / w.sum())
    # unweighted, and given weights, stay as they are
    plain = _dnn(george, class_weights=None)
    _trainer(tmp_path, max_steps=1).fit(plain, george)
    assert torch.equal(plain.class_weight, torch.ones(2))
    assert torch.equal(_dnn(george, class_weights=[1.0, 3.0]).class_weight, torch.tensor([1.0, 3.0]))


def test_topology_is_26_30_7_29_classes(george):
    model = _dnn(george)
    linears = [m for m in [*model.net, model.head] if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(26, 30), (30, 7), (7, 29), (29, 2)]
    assert sum(isinstance(m, torch.nn.ReLU) for m in model.net) == 3
    assert isinstance(model.configure_optimizers(), torch.optim.Adam)


# ------------------------------------------------------------------------------ early stopping


class _ValLosses(Callback):
    def __init__(self):
        self.losses = []

    def on_validation_end(self, trainer, module):  # after the module logged its epoch's loss
        if not trainer.sanity_checking:
            self.losses.append(float(trainer.callback_metrics["val/loss"]))


def test_early_stopping_restores_the_best_epochs_weights(george, tmp_path):
    lightning.seed_everything(0)
    model = _dnn(george, lr=0.05)  # a large step: the validation loss soon stops improving
    losses = _ValLosses()
    stop = EarlyStopping("val/loss", patience=3)
    best = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/loss", mode="min")
    trainer = _trainer(tmp_path, max_epochs=200, callbacks=[losses, stop, best])
    trainer.fit(model, george)
    assert stop.stopped_epoch > 0 and len(losses.losses) < 200  # stopped early
    best_epoch = int(np.argmin(losses.losses))
    assert len(losses.losses) == best_epoch + 1 + 3  # patience: three epochs without improvement
    last = [p.detach().clone() for p in model.net.parameters()]
    result = trainer.validate(model, george, ckpt_path="best", verbose=False)[0]
    assert result["val/loss"] == pytest.approx(min(losses.losses), rel=1e-5)
    assert any(not torch.equal(a, b) for a, b in zip(last, model.net.parameters()))  # not the last epoch's


# ------------------------------------------------------------------------------ weight transfer


def _layers(module) -> dict[str, torch.Tensor]:
    """The network's weights (hidden layers and output layer), by name."""
    return {k: v.detach().clone() for k, v in module.state_dict().items() if k.startswith(("net.", "head."))}


class _StartWeights(Callback):
    def on_train_start(self, trainer, module):
        self.weights = _layers(module)


def test_fine_tuning_starts_from_the_pretrained_weights(george, tmp_path):
    lightning.seed_everything(1)
    pretrained = _dnn(george)
    trainer = _trainer(tmp_path / "pre", max_epochs=2)
    trainer.fit(pretrained, george)
    path = tmp_path / "pre.ckpt"
    trainer.save_checkpoint(path)
    lightning.seed_everything(2)
    start = _StartWeights()
    tuned = _dnn(george, init_from=str(path))
    _trainer(tmp_path / "tune", max_steps=1, callbacks=[start]).fit(tuned, george)
    for name, value in _layers(pretrained).items():
        assert torch.equal(start.weights[name], value), name
    assert set(_layers(pretrained)) <= set(tuned.init_report.loaded) and tuned.init_report.dropped == []
    # the baseline from random init starts elsewhere
    lightning.seed_everything(2)
    start_random = _StartWeights()
    _trainer(tmp_path / "rand", max_steps=1, callbacks=[start_random]).fit(_dnn(george), george)
    assert not torch.equal(start_random.weights["net.0.weight"], start.weights["net.0.weight"])


def test_transfer_from_another_class_count_drops_only_the_output_layer(george, fsdd_corpus, tmp_path):
    multi = FrameDataModule(str(fsdd_corpus), subject=None)
    model = _dnn(multi)
    trainer = _trainer(tmp_path, max_steps=0)
    trainer.fit(model, multi)
    trainer.save_checkpoint(tmp_path / "six.ckpt")
    binary = _dnn(george)
    report = binary.init_weights_from(tmp_path / "six.ckpt")
    assert [d.split()[0] for d in report.dropped] == ["head.weight", "head.bias"] and "net.4.weight" in report.loaded
    assert torch.equal(binary.net[4].weight, model.net[4].weight)
    wider = FrameDNN(num_speakers=2, hidden=(30, 8, 29))
    with pytest.raises(InvalidCheckpointError, match="six.ckpt.*same features and hidden layers"):
        wider.init_weights_from(tmp_path / "six.ckpt")


# ---------------------------------------------------------------------------------- frame files


def test_frame_file_round_trip_and_synthetic_frames_join_training(george, fsdd_corpus, tmp_path):
    rng = np.random.default_rng(0)
    fake = george.subject_frames()[:300] + rng.normal(0, 0.1, (300, 26)).astype(np.float32)
    path = write_frame_file(tmp_path / "synth.h5", fake, np.ones(300), features="mfcc26", subject="george",
                            attrs={"generator": "test"})
    frames, labels, info = read_frame_file(path)
    assert np.array_equal(frames, fake) and np.array_equal(labels, np.ones(300))
    assert info["subject"] == "george" and info["settings"] == {"generator": "test"}
    assert not list(tmp_path.glob("*.tmp-*"))
    dm = FrameDataModule(str(fsdd_corpus), subject="george", subject_utterances=10, synthetic=str(path),
                         synthetic_frames=200)
    assert np.array_equal(dm.class_counts(), george.class_counts() + [0, 200])
    assert torch.equal(dm._data["train"].frames[-200:], torch.from_numpy(fake[:200]))
    assert torch.equal(dm._data["test"].frames, george._data["test"].frames)  # real frames only


def test_frame_file_errors_name_the_file_and_the_fix(fsdd_corpus, tmp_path):
    path = write_frame_file(tmp_path / "s.h5", np.zeros((5, 26)), np.ones(5), features="mfcc26", subject="george")
    with pytest.raises(FrameFileError, match="fewer than synthetic_frames=10"):
        FrameDataModule(str(fsdd_corpus), subject="george", synthetic=str(path), synthetic_frames=10).setup()
    with pytest.raises(FrameFileError, match="subject 'george', not 'theo'"):
        FrameDataModule(str(fsdd_corpus), subject="theo", synthetic=str(path)).setup()
    other = write_frame_file(tmp_path / "o.h5", np.zeros((5, 13)), np.ones(5), features="mfcc13", subject="george")
    with pytest.raises(FrameFileError, match="o.h5.*synthesize them from frames of mfcc26"):
        FrameDataModule(str(fsdd_corpus), subject="george", synthetic=str(other)).setup()
    cut = tmp_path / "cut.h5"
    cut.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(FrameFileError, match="cut.h5.*truncated"):
        read_frame_file(cut)
    with h5py.File(tmp_path / "plain.h5", "w") as h5:
        h5["frames"] = np.zeros((2, 26))
    with pytest.raises(FrameFileError, match="not a speakerzoo frame file"):
        read_frame_file(tmp_path / "plain.h5")


# -------------------------------------------------------------------------------------- the CLI


@pytest.mark.slow
def test_cli_fits_and_tests_the_frame_dnn(fsdd_corpus, tmp_path):
    common = [f"--data.init_args.corpus={fsdd_corpus}", "--data.init_args.subject_utterances=10",
              f"--trainer.logger.init_args.save_dir={tmp_path}", *QUIET]
    cli("fit", "-c", CONFIG, *common, "--trainer.max_epochs=3")
    best = next(tmp_path.rglob("best-*.ckpt"))
    model = FrameDNN.load_from_checkpoint(best)
    assert model.speaker_names == ["background", "george"] and model.class_weight[1] > model.class_weight[0]
    probs = model.classify_audio(torch.from_numpy(Corpus(fsdd_corpus).audio(0)))
    assert probs.shape == (2,) and float(probs.sum()) == pytest.approx(1.0, abs=1e-5)
    cli("test", "-c", CONFIG, *common, f"--ckpt_path={best}")


@pytest.mark.slow
def test_cli_fits_the_frame_dnn_in_two_ddp_processes(fsdd_corpus, tmp_path):
    state = fit_ddp_on_two_cpu_processes(
        "-c", CONFIG, f"--data.init_args.corpus={fsdd_corpus}", "--data.init_args.subject_utterances=10",
        "--trainer.max_epochs=2", *QUIET, root=tmp_path / "runs", cwd=tmp_path)
    assert state["epoch"] == 1 and "net.0.weight" in state["state_dict"]
