"""The GPU device check (benchmarks/device_check.py) works before a GPU is there: its CPU dry-run
trains every zoo model through the shipped configs, runs the DDP preset, embed and the ONNX
export, and writes its report; the subset it ships to a GPU machine selects itself again."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import device_bundle  # noqa: E402
import device_check  # noqa: E402


def test_dry_run_trains_every_model_and_runs_every_check(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "device_check.py"), "--dry-run", "--data-root", str(shared_data),
         "--out", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "2"},
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    report = json.loads((out / "device_check.json").read_text())
    assert report["dry_run"] is True and report["ok"] is True

    rows = {r["model"]: r for r in report["training"]}
    assert set(rows) == {run.name for run in device_check.MODELS}
    for name, row in rows.items():
        assert row["ok"], (name, row)
        assert row["steps"] == device_check.DRY.steps
        # warm-up and the FLOP-counted step are not timed; the rest are
        assert row["timed_steps"] == device_check.DRY.steps - device_check.DRY.warmup - 1
        assert row["examples_per_s"] > 0 and math.isfinite(row["first_loss"]) and math.isfinite(row["last_loss"])
        assert row["flops_per_step"] > 0, name  # every model has matrix products FlopCounterMode counts
        assert 0 <= row["between_steps_share"] < 1
    # the FLOP count scales with the model: ResNet50 is far above the tiny ECAPA
    assert rows["ResNetMFCC"]["flops_per_step"] > 10 * rows["ECAPA"]["flops_per_step"]

    assert report["ddp"]["ok"] and report["ddp"]["backend"] == "gloo" and report["ddp"]["processes"] == 1
    assert report["embed"]["ok"] and report["embed"]["utterances"] > 0
    assert report["export"]["ok"] and report["export"]["provider"] == "CPUExecutionProvider"
    assert [r["workers"] for r in report["loader"]["rows"]] == list(device_check.DRY.workers)
    assert all(r["batches_per_s"] > 0 for r in report["loader"]["rows"])

    table = (out / "device_check.md").read_text()
    assert table in proc.stdout  # printed as written
    for name in rows:
        assert f"| {name} | bf16-mixed |" in table
    assert "| DDP preset | backend gloo" in table


def test_the_subset_selects_itself_from_its_copy(shared_data: Path, tmp_path: Path) -> None:
    """benchmarks/device_bundle.py copies the subset; on the GPU machine device_check selects it
    again from the copy: the same files, so the same corpora as here."""
    files = device_check.subset(shared_data, device_check.DRY)
    speakers = {p.name.split("_nohash_")[0] for p in files if p.parts[0] == "speech_commands_test"}
    assert len(speakers) == device_check.DRY.sc_speakers
    fsdd = [p for p in files if p.parts[0] == "fsdd"]
    assert len(fsdd) == 6 * 10 * device_check.DRY.fsdd_index  # 6 speakers, 10 digits
    copy = device_check.link_subset(shared_data, files, tmp_path / "copy")
    assert device_check.subset(copy, device_check.DRY) == files
    # the GPU subset is larger and includes the dry one
    assert set(files) < set(device_check.subset(shared_data, device_check.GPU))


def test_missing_data_names_the_folder_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="speech_commands_test not found; give --data-root"):
        device_check.subset(tmp_path, device_check.DRY)


def test_examples_are_counted_in_every_batch_shape() -> None:
    crops = (torch.zeros(8, 16000), torch.full((8,), 16000), torch.arange(8))
    assert device_check.examples_in(crops) == 8
    assert device_check.examples_in({"speech": (torch.zeros(3, 100), torch.zeros(3)), "speaker": crops}) == 11
    assert device_check.examples_in([{"a": torch.zeros(2, 5)}, (torch.zeros(4, 1),)]) == 6


def test_every_bundled_wheel_is_pinned_by_the_constraints() -> None:
    pins = device_bundle.pinned(device_bundle.WHEELS, REPO / "constraints.txt")
    assert len(pins) == len(device_bundle.WHEELS)
    assert all("==" in pin and pin.split("==")[1] for pin in pins)
    with pytest.raises(SystemExit, match="not pinned"):
        device_bundle.pinned(("no-such-package",), REPO / "constraints.txt")
