"""The speakerzoo command end to end: LightningCLI with the shipped configs on a real corpus file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import lightning
import pytest
import torch

from cli_run import REPO, SMALL, TINY, cli, fit_ddp_on_two_cpu_processes
from speakerzoo.datamodules import Corpus, SpeakerDataModule
from speakerzoo.datamodules.toy import prepare_toy
from speakerzoo.zoo import ECAPA, SpeakerEmbeddingModule


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    return prepare_toy(tmp_path_factory.mktemp("toy") / "toy.h5", speakers=12, utterances=8, seed=3, progress=False)


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli("--help")
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for word in ("prepare", "fit", "validate", "test", "predict"):
        assert word in out


def test_fit_fast_dev_run_with_shipped_config(toy, tmp_path):
    cli("fit", "-c", SMALL, *TINY, f"--data.init_args.corpus={toy}", "--trainer.fast_dev_run=2",
        f"--trainer.default_root_dir={tmp_path}")


def test_sizes_are_linked_from_the_data_not_typed(toy, tmp_path):
    """A config stating none of num_speakers / sample_rate / speaker_names still builds the right head."""
    root = tmp_path / "run"
    cli("fit", "-c", SMALL, *TINY, f"--data.init_args.corpus={toy}", "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=2", f"--trainer.logger.init_args.save_dir={root}")
    ckpts = sorted(root.rglob("last.ckpt"))
    assert ckpts, f"no last.ckpt under {root}"
    assert sorted(root.rglob("best-*.ckpt")), "best checkpoint by val/eer was not kept"
    assert sorted(root.rglob("events.out.tfevents.*")), "no TensorBoard log"
    model = SpeakerEmbeddingModule.from_pretrained(ckpts[0])
    corpus = Corpus(toy)
    train_speakers = {corpus.speakers[s] for s in corpus.speaker[corpus.split("speaker", "train")]}
    assert isinstance(model, ECAPA)
    assert model.frontend.sample_rate == corpus.sample_rate
    assert set(model.hparams.speaker_names) == train_speakers
    assert model.head.classifier.weight.shape[0] == model.hparams.num_speakers == len(train_speakers)
    # The checkpoint embeds raw audio by itself: no feature parameters restated.
    wave = torch.from_numpy(corpus.audio(0))[None]
    emb = model.embed(wave, torch.tensor([wave.shape[1]]))
    assert emb.shape == (1, 32) and torch.isfinite(emb).all()
    # validate and test from the checkpoint through the CLI
    for sub in ("validate", "test"):
        cli(sub, "-c", SMALL, *TINY, f"--data.init_args.corpus={toy}", f"--ckpt_path={ckpts[0]}",
            f"--trainer.logger.init_args.save_dir={root / sub}")


def test_resume_from_last_checkpoint_continues_the_epoch_count(toy, tmp_path):
    root = tmp_path / "run"
    common = ["fit", "-c", SMALL, *TINY, f"--data.init_args.corpus={toy}", "--trainer.limit_train_batches=2",
              f"--trainer.logger.init_args.save_dir={root}", "--trainer.logger.init_args.version=0"]
    cli(*common, "--trainer.max_epochs=1")
    last = next(root.rglob("last.ckpt"))
    assert torch.load(last, weights_only=True)["epoch"] == 0
    cli(*common, "--trainer.max_epochs=2", f"--ckpt_path={last}")
    state = torch.load(next(root.rglob("last.ckpt")), weights_only=True)
    # exactly one more epoch of 2 steps: nothing repeated, nothing skipped
    assert state["global_step"] == 4 and state["epoch"] == 1  # saved at the end of the second epoch


def test_ddp_on_two_cpu_processes(toy, tmp_path):
    """Two processes with gloo, through the real console entry point and the ddp preset."""
    state = fit_ddp_on_two_cpu_processes(
        "-c", SMALL, *TINY, f"--data.init_args.corpus={toy}", "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=3", root=tmp_path / "ddp", cwd=tmp_path)
    # 3 batches per rank; both ranks step together, so the global step is 3, not 6.
    assert state["global_step"] == 3
    # validation ran on both ranks and produced the monitored EER
    scores = [v["best_model_score"] for k, v in state["callbacks"].items() if "val/eer" in k]
    assert scores and 0.0 <= float(scores[0]) <= 1.0


def test_prepare_is_dispatched(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli("prepare", "toy", "--output", str(tmp_path / "t.h5"), "--speakers", "3", "--utterances", "4", "--quiet")
    assert exit_info.value.code == 0
    with h5py.File(tmp_path / "t.h5") as h5:
        assert h5.attrs["complete"]


def test_bf16_autocast_and_early_stopping_compose(toy, tmp_path):
    """The mixed-precision path (bf16 autocast works on CPU too) with the EarlyStopping preset."""
    root = tmp_path / "run"
    cli("fit", "-c", SMALL, "-c", str(REPO / "configs/trainer/early_stopping.yaml"), *TINY,
        f"--data.init_args.corpus={toy}", "--trainer.precision=bf16-mixed", "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=2", f"--trainer.logger.init_args.save_dir={root}")
    state = torch.load(next(root.rglob("last.ckpt")), weights_only=True)
    assert any(key.startswith("EarlyStopping") for key in state["callbacks"])
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())


def test_predict_returns_embeddings_of_the_test_part(toy, tmp_path):
    root = tmp_path / "run"
    cli("fit", "-c", SMALL, *TINY, f"--data.init_args.corpus={toy}", "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=1", f"--trainer.logger.init_args.save_dir={root}")
    model = SpeakerEmbeddingModule.from_pretrained(next(root.rglob("last.ckpt")))
    dm = SpeakerDataModule(str(toy), num_workers=0, eval_max_seconds=1.5)
    out = lightning.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False).predict(model, datamodule=dm)
    index = torch.cat([o["index"] for o in out])
    emb = torch.cat([o["embedding"] for o in out])
    assert sorted(index.tolist()) == sorted(Corpus(toy).split("speaker", "test").tolist())
    assert emb.shape == (len(index), 32) and torch.isfinite(emb).all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("preset", ["gpu", "amp16", "bf16"])
def test_gpu_presets(toy, tmp_path, preset):
    root = tmp_path / "run"
    cli("fit", "-c", SMALL, "-c", str(REPO / f"configs/trainer/{preset}.yaml"), *TINY,
        f"--data.init_args.corpus={toy}", "--trainer.devices=1", "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=3", f"--trainer.logger.init_args.save_dir={root}")
    state = torch.load(next(root.rglob("last.ckpt")), weights_only=True)
    assert state["global_step"] == 3
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())


def test_cached_features_must_match_the_model_frontend(tmp_path):
    toy = prepare_toy(tmp_path / "feats.h5", speakers=12, utterances=6, seed=4, features=("fbank80", "mfcc26"),
                      progress=False)
    args = ["fit", "-c", SMALL, *TINY, f"--data.init_args.corpus={toy}", "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=2", f"--trainer.logger.init_args.save_dir={tmp_path / 'run'}"]
    cli(*args, "--data.init_args.features=fbank80")  # the model's own frontend: trains on the cache
    with pytest.raises(ValueError, match="cached features"):
        cli(*args, "--data.init_args.features=mfcc26")


def test_a_validation_with_no_complete_trial_does_not_stop_training(toy, tmp_path):
    """With limit_val_batches too small for any trial, val/eer is NaN and checkpointing goes on."""
    root = tmp_path / "run"
    cli("fit", "-c", SMALL, *TINY, f"--data.init_args.corpus={toy}", "--data.init_args.eval_batch_size=1",
        "--trainer.limit_val_batches=1", "--trainer.num_sanity_val_steps=0", "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=1", f"--trainer.logger.init_args.save_dir={root}")
    assert next(root.rglob("last.ckpt")).is_file()


def test_last_checkpoint_follows_the_run_when_eer_does_not_improve(toy, tmp_path):
    """lr=0: the best checkpoint stays at epoch 0, but last.ckpt must hold the final step."""
    root = tmp_path / "run"
    cli("fit", "-c", SMALL, *TINY, f"--data.init_args.corpus={toy}", "--model.init_args.lr=0",
        "--trainer.max_epochs=3", "--trainer.limit_train_batches=2", f"--trainer.logger.init_args.save_dir={root}")
    assert torch.load(next(root.rglob("best-*.ckpt")), weights_only=True)["global_step"] == 2
    assert torch.load(next(root.rglob("last.ckpt")), weights_only=True)["global_step"] == 6


def test_tensorboard_preset_writes_figures_for_any_model(toy, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cli("fit", "-c", SMALL, "-c", str(REPO / "configs" / "trainer" / "tensorboard.yaml"), *TINY,
        f"--data.init_args.corpus={toy}", "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
        f"--trainer.logger.init_args.save_dir={tmp_path}", "--trainer.enable_progress_bar=false",
        "--trainer.num_sanity_val_steps=0")
    events = sorted(tmp_path.rglob("events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(str(events[0].parent), size_guidance={"images": 0, "histograms": 0})
    acc.Reload()
    assert {"val/det_curve", "train/confusion_matrix"} <= set(acc.Tags()["images"])
    assert "train/macro_f1" in acc.Tags()["scalars"] and acc.Tags()["histograms"]
    assert list(tmp_path.rglob("projector_config.pbtxt"))


def test_checkpoints_carry_the_validation_eer_threshold(toy, tmp_path):
    from speakerzoo.scoring import eer_threshold

    cli("fit", "-c", SMALL, *TINY, f"--data.init_args.corpus={toy}", "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=2", f"--trainer.logger.init_args.save_dir={tmp_path}",
        "--trainer.enable_progress_bar=false", "--trainer.num_sanity_val_steps=0")
    last = next(tmp_path.rglob("last.ckpt"))
    model = SpeakerEmbeddingModule.from_pretrained(last)
    stored = model.eer_threshold
    assert stored is not None
    # Validating the rebuilt model scores the same trials: its EER threshold is the stored one.
    dm = SpeakerDataModule(str(toy), speakers_per_batch=4, num_workers=0, eval_max_seconds=1.5)
    trainer = lightning.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False,
                                use_distributed_sampler=False)
    trainer.validate(model, datamodule=dm)
    val = model.evaluated["val"]
    assert stored == pytest.approx(eer_threshold(val["scores"], val["labels"]), abs=1e-5)


def test_fit_and_test_report_speakerzoo_errors_in_one_line(toy, tmp_path):
    """The command line (not an in-process call) shows our message, not jsonargparse's chained traceback."""
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(toy.read_bytes()[:300_000])
    foreign = tmp_path / "foreign.h5"
    foreign.write_bytes(os.urandom(50_000))
    cases = [
        ("fit", ["--model.init_args.lr=-1"], "lr must be a number >= 0, not -1.0"),
        ("fit", ["--model.init_args.scale=0"], "scale must be a number > 0, not 0.0"),
        ("fit", ["--model.init_args.margin=-5"], "margin must be a number >= 0 and < 1.5708, not -5.0"),
        ("fit", ["--data.init_args.eval_max_seconds=-2"], "eval_max_seconds must be a number > 0, not -2.0"),
        ("fit", [f"--data.init_args.corpus={truncated}"], f"{truncated}: not a complete speakerzoo corpus"),
        ("test", [f"--data.init_args.corpus={foreign}"], f"{foreign}: not a complete speakerzoo corpus"),
    ]
    for subcommand, extra, message in cases:
        args = [sys.executable, "-m", "speakerzoo", subcommand, "-c", SMALL, *TINY, f"--data.init_args.corpus={toy}",
                "--trainer.fast_dev_run=1", f"--trainer.default_root_dir={tmp_path}", *extra]
        proc = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2, (extra, proc.stderr[-2000:])
        assert f"speakerzoo {subcommand}: error: {message}" in proc.stderr, (extra, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr
    # In Python the error is raised as usual, and a config that is right still runs.
    with pytest.raises(ValueError, match="lr must be a number >= 0"):
        cli("fit", "-c", SMALL, *TINY, f"--data.init_args.corpus={toy}", "--trainer.fast_dev_run=1",
            "--model.init_args.lr=-1")
