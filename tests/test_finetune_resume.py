"""Fine-tuning with ``init_from`` and exact resumption with ``--ckpt_path``, through the CLI on toy corpora."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import lightning as L
import pytest
import torch

from cli_run import QUIET, SMALL, TINY, cli, fit_tiny
from speakerzoo.datamodules.toy import prepare_toy
from speakerzoo.zoo import ECAPA, InvalidCheckpointError, SpeakerEmbeddingModule


class Recorder(L.Callback):
    """Keeps, per run, the weights at the start of training (after setup and any restore, before
    the first step), the learning rate of every step and val/eer of every epoch."""

    runs: list[dict] = []

    def on_train_start(self, trainer, pl_module):
        Recorder.runs.append({
            "start": {k: v.detach().clone() for k, v in pl_module.state_dict().items()},
            "init_report": pl_module.init_report,
            "lr": {},
            "val_eer": {},
        })

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        Recorder.runs[-1]["lr"][trainer.global_step] = trainer.optimizers[0].param_groups[0]["lr"]

    def on_train_epoch_end(self, trainer, pl_module):  # validation of the epoch has run
        Recorder.runs[-1]["val_eer"][trainer.current_epoch] = float(trainer.callback_metrics["val/eer"])


class StopAfterFirstEpoch(L.Callback):
    """An interruption: the run stops after epoch 0, once its checkpoints are written."""

    def on_train_epoch_end(self, trainer, pl_module):
        trainer.should_stop = True


class NotPlain:
    pass


def assert_same(a, b, where="") -> None:
    """Nested dicts / lists of tensors and plain values, equal bit for bit."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def path_of(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


class LogLines(logging.Handler):
    """Collects Lightning's rank-zero log (where init_from reports what it kept and dropped)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())

    def __enter__(self):
        logging.getLogger("lightning.pytorch").addHandler(self)
        return self

    def __exit__(self, *exc):
        logging.getLogger("lightning.pytorch").removeHandler(self)


@pytest.fixture(scope="module")
def corpus_a(tmp_path_factory) -> Path:
    return prepare_toy(tmp_path_factory.mktemp("a") / "a.h5", speakers=12, utterances=8, seed=3, progress=False)


@pytest.fixture(scope="module")
def corpus_b(tmp_path_factory) -> Path:
    # another seed and more speakers: 10 training speakers where A has 8
    return prepare_toy(tmp_path_factory.mktemp("b") / "b.h5", speakers=14, utterances=8, seed=7, progress=False)


@pytest.fixture(scope="module")
def trained_a(corpus_a, tmp_path_factory) -> Path:
    return fit_tiny(corpus_a, tmp_path_factory.mktemp("run_a"))


def test_finetune_on_another_speaker_set(trained_a, corpus_b, tmp_path):
    a = torch.load(trained_a, weights_only=True)
    assert a["speakerzoo"]["class_path"] == "speakerzoo.zoo.ecapa.ECAPA"
    assert a["state_dict"]["head.classifier.weight"].shape == (8, 32)
    init = tmp_path / "init.ckpt"
    shutil.copy(trained_a, init)
    root = tmp_path / "run"
    common = ["fit", "-c", SMALL, *TINY, *QUIET, f"--data.init_args.corpus={corpus_b}",
              "--trainer.limit_train_batches=2", f"--trainer.logger.init_args.save_dir={root}",
              "--trainer.logger.init_args.version=0", f"--trainer.callbacks+={path_of(Recorder)}",
              f"--model.init_args.init_from={init}"]
    Recorder.runs.clear()
    with LogLines() as log:
        cli(*common, "--trainer.max_epochs=1")
    start = Recorder.runs[-1]["start"]
    # Everything but the head starts as A left it; the head is B's size, freshly initialised.
    for key, value in a["state_dict"].items():
        if not key.startswith("head."):
            assert torch.equal(start[key], value), key
    assert start["head.classifier.weight"].shape == (10, 32)
    report = Recorder.runs[-1]["init_report"]
    assert report.dropped == ["head.classifier.weight [8, 32] (model now has [10, 32]; trained on other speakers)"]
    assert report.fresh == ["head.classifier.weight"]
    assert len(report.loaded) == len(a["state_dict"]) - 1
    message = "\n".join(line for line in log.lines if "init_from" in line)
    assert str(init) in message and "head.classifier.weight [8, 32]" in message and "dropped 1" in message

    last = root / "speakerzoo" / "version_0" / "checkpoints" / "last.ckpt"
    b = torch.load(last, weights_only=True)
    assert b["hyper_parameters"]["init_from"] == str(init)
    encoder_keys = [k for k in b["state_dict"] if k.startswith("encoder.") and b["state_dict"][k].is_floating_point()]
    assert any(not torch.equal(b["state_dict"][k], a["state_dict"][k]) for k in encoder_keys), "B did not train"

    # from_pretrained rebuilds B from its own weights and does not look at init_from again
    init.unlink()
    rebuilt = SpeakerEmbeddingModule.from_pretrained(last)
    assert rebuilt.init_from is None and rebuilt.hparams.init_from is None
    for key, value in b["state_dict"].items():
        assert torch.equal(rebuilt.state_dict()[key], value), key

    # A resume with init_from still set: the resumed weights win over the init file's
    shutil.copy(trained_a, init)
    Recorder.runs.clear()
    with LogLines() as log:
        cli(*common, "--trainer.max_epochs=2", f"--ckpt_path={last}")
    start = Recorder.runs[-1]["start"]
    for key, value in b["state_dict"].items():
        assert torch.equal(start[key], value), key
    assert any("resuming from a checkpoint" in line for line in log.lines)
    assert torch.load(last, weights_only=True)["global_step"] == 4

    # ... and needs no init file any more (one that is gone, or was never there)
    init.unlink()
    Recorder.runs.clear()
    cli(*common, "--trainer.max_epochs=3", f"--ckpt_path={last}")
    assert torch.load(last, weights_only=True)["global_step"] == 6


def test_init_from_problems_are_errors_naming_the_file(trained_a, corpus_b, tmp_path):
    root = tmp_path / "run"
    args = ["fit", "-c", SMALL, *TINY, *QUIET, f"--data.init_args.corpus={corpus_b}", "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=1", "--trainer.num_sanity_val_steps=0",
            f"--trainer.logger.init_args.save_dir={root}"]
    missing = tmp_path / "missing.ckpt"
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        cli(*args, f"--model.init_args.init_from={missing}")
    # another size of the same architecture: named keys, not a torch traceback
    with pytest.raises(InvalidCheckpointError, match=r"last\.ckpt: weights do not fit ECAPA.*shapes differ: encoder\."):
        cli(*args, "--model.init_args.channels=[48,48,48,48,144]", f"--model.init_args.init_from={trained_a}")
    # another frontend
    with pytest.raises(InvalidCheckpointError, match="trained on features"):
        cli(*args, "--model.init_args.frontend=mfcc26", f"--model.init_args.init_from={trained_a}")


def test_init_weights_from_keeps_the_head_only_for_the_same_speakers(trained_a, tmp_path):
    a = torch.load(trained_a, weights_only=True)
    names = a["speakerzoo"]["speaker_names"]
    tiny = dict(channels=[32, 32, 32, 32, 96], embedding_dim=32, attention_channels=16, se_channels=16)
    same = ECAPA(num_speakers=8, speaker_names=names, **tiny)
    report = same.init_weights_from(trained_a)
    assert report.dropped == [] and report.fresh == []
    assert torch.equal(same.head.classifier.weight, a["state_dict"]["head.classifier.weight"])
    others = ECAPA(num_speakers=8, speaker_names=[f"x{i}" for i in range(8)], **tiny)
    report = others.init_weights_from(trained_a)
    assert report.dropped == ["head.classifier.weight [8, 32] (model now has [8, 32]; trained on other speakers)"]
    assert not torch.equal(others.head.classifier.weight, a["state_dict"]["head.classifier.weight"])
    # never unpickles: a file with objects is refused
    pickled = tmp_path / "pickled.ckpt"
    torch.save({**a, "evil": NotPlain()}, pickled)
    with pytest.raises(InvalidCheckpointError, match="plain data"):
        same.init_weights_from(pickled)


@pytest.mark.parametrize("workers", [0, 1])  # 1: workers start only at the first batch
def test_resume_is_exact(corpus_a, tmp_path, workers):
    """2 epochs in one run == 1 epoch, interrupted, then resumed from last.ckpt for the second: same
    weights, optimiser and scheduler state, learning rates and val/eer (dropout on, warm-up over half an epoch)."""
    def common(root: Path) -> list[str]:
        return ["fit", "-c", SMALL, *TINY, *QUIET, f"--data.init_args.corpus={corpus_a}",
                f"--data.init_args.num_workers={workers}", "--model.init_args.dropout=0.2",
                "--model.init_args.warmup_epochs=0.5", "--trainer.max_epochs=2", "--trainer.limit_train_batches=3",
                f"--trainer.logger.init_args.save_dir={root}", "--trainer.logger.init_args.version=0",
                f"--trainer.callbacks+={path_of(Recorder)}"]

    Recorder.runs.clear()
    cli(*common(tmp_path / "full"))
    cli(*common(tmp_path / "parts"), f"--trainer.callbacks+={path_of(StopAfterFirstEpoch)}")
    last = tmp_path / "parts" / "speakerzoo" / "version_0" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["epoch"] == 0
    cli(*common(tmp_path / "parts"), f"--ckpt_path={last}")
    full_run, first, resumed = Recorder.runs

    full = torch.load(tmp_path / "full" / "speakerzoo" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    parts = torch.load(last, weights_only=True)
    assert (parts["epoch"], parts["global_step"]) == (full["epoch"], full["global_step"]) == (1, 6)
    differ = [k for k, v in full["state_dict"].items() if not torch.equal(v, parts["state_dict"][k])]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:3]}"
    assert_same(parts["optimizer_states"], full["optimizer_states"], "optimizer_states")
    assert_same(parts["lr_schedulers"], full["lr_schedulers"], "lr_schedulers")
    assert parts["speakerzoo"]["train_seed"] == full["speakerzoo"]["train_seed"] == 0
    (key,) = [k for k in full["callbacks"] if k.startswith("ModelCheckpoint{'monitor': 'val/eer'")]
    # (current_score is not part of ModelCheckpoint's restored state; the best score is)
    assert torch.equal(parts["callbacks"][key]["best_model_score"], full["callbacks"][key]["best_model_score"])
    # the same learning rate at every step (warm-up, then cosine), the same val/eer every epoch
    assert {**first["lr"], **resumed["lr"]} == full_run["lr"] and len(full_run["lr"]) == 6
    assert full_run["lr"][1] > full_run["lr"][0] and full_run["lr"][5] < full_run["lr"][2]
    assert {**first["val_eer"], **resumed["val_eer"]} == full_run["val_eer"] and len(full_run["val_eer"]) == 2
