"""Running the speakerzoo command inside a test: the shipped small config, shrunk to run in seconds."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import torch

from speakerzoo.cli import main

REPO = Path(__file__).resolve().parents[1]
SMALL = str(REPO / "configs" / "ecapa_small.yaml")
# Shrink the shipped small config further so each CLI test runs in seconds.
TINY = [
    "--model.init_args.channels=[32,32,32,32,96]", "--model.init_args.embedding_dim=32",
    "--model.init_args.attention_channels=16", "--model.init_args.se_channels=16",
    "--data.init_args.speakers_per_batch=4", "--data.init_args.crop_seconds=1.0",
    "--data.init_args.num_workers=0", "--data.init_args.eval_max_seconds=1.5",
]
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def cli(*args: str) -> None:
    """``speakerzoo ARGS...`` in this process."""
    # LightningCLI warns when sys.argv (here pytest's) and args are both given.
    with mock.patch.object(sys, "argv", ["speakerzoo"]):
        main(list(args))


def exit_code(*args: str) -> int:
    """``speakerzoo ARGS...`` in this process, for commands that end with ``SystemExit``: its code."""
    import pytest

    with mock.patch.object(sys, "argv", ["speakerzoo"]), pytest.raises(SystemExit) as exit_info:
        main(list(args))
    return exit_info.value.code


def fit_tiny(corpus: Path, root: Path, batches: int = 2) -> Path:
    """One epoch of ``batches`` steps of the shrunk small config on ``corpus``, logging under ``root``;
    the ``last.ckpt`` it wrote."""
    cli("fit", "-c", SMALL, *TINY, *QUIET, f"--data.init_args.corpus={corpus}", "--trainer.max_epochs=1",
        f"--trainer.limit_train_batches={batches}", f"--trainer.logger.init_args.save_dir={root}")
    return next(Path(root).rglob("last.ckpt"))


def fit_ddp_on_two_cpu_processes(*args: str, root: Path, cwd: Path) -> dict:
    """``speakerzoo fit ARGS...`` as two gloo processes through the real console entry point
    and the ddp preset (SyncBatchNorm off: it is CUDA-only), logging under ``root``; asserts
    success and returns the state of the ``last.ckpt`` written."""
    cmd = [sys.executable, "-m", "speakerzoo.cli", "fit", *args, "-c", str(REPO / "configs/trainer/ddp.yaml"),
           "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.sync_batchnorm=false",
           f"--trainer.logger.init_args.save_dir={root}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return torch.load(next(Path(root).rglob("last.ckpt")), weights_only=True)
