"""Same seed, same figures: two runs of the same config in two fresh processes, with a loader
worker, give bitwise the same weights and the same per-epoch validation EER (on one machine;
other machines and library versions may give other figures, see docs/benchmarks.md)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cli_run import QUIET, SMALL, TINY
from speakerzoo.datamodules.toy import prepare_toy

REPO = Path(__file__).resolve().parents[1]


def fit(corpus: Path, root: Path) -> tuple[dict, list[float]]:
    args = [a for a in TINY if not a.startswith("--data.init_args.num_workers")]
    cmd = [sys.executable, "-m", "speakerzoo.cli", "fit", "-c", SMALL, *args, *QUIET, "--data.init_args.num_workers=1",
           f"--data.init_args.corpus={corpus}", "--trainer.max_epochs=2", "--trainer.limit_train_batches=3",
           f"--trainer.logger.init_args.save_dir={root}"]
    done = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    state = torch.load(next(root.rglob("last.ckpt")), weights_only=True)["state_dict"]
    events = EventAccumulator(str(next(root.rglob("events.out.tfevents.*")))).Reload()
    return state, [e.value for e in events.Scalars("val/eer")]


def test_two_runs_with_the_same_seed_give_the_same_weights_and_curve(tmp_path: Path) -> None:
    corpus = prepare_toy(tmp_path / "toy.h5", speakers=12, utterances=8, progress=False)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    state_a, eer_a = fit(corpus, tmp_path / "a")
    state_b, eer_b = fit(corpus, tmp_path / "b")
    assert len(eer_a) == 2 and eer_a == eer_b
    assert state_a.keys() == state_b.keys()
    different = [k for k in state_a if not torch.equal(state_a[k], state_b[k])]
    assert not different, different[:5]
    # and training moved the weights (the comparison is of trained models, not of two inits)
    assert any(k.endswith("running_mean") and state_a[k].abs().sum() > 0 for k in state_a)
