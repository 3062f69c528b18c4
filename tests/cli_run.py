"""Running the speakerzoo command inside a test: the shipped small config, shrunk to run in seconds."""

from __future__ import annotations

import sys
from pathlib import Path
from unittest import mock

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
