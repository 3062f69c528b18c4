"""One command that checks speakerzoo on a CUDA machine, in one go, and its CPU dry-run.

On a CUDA machine (about 5 minutes on one H200; sized to leave time for a rerun within a
15-minute lease)::

    python benchmarks/device_check.py --out results/device_check

and on any machine, as the test suite runs it (tiny sizes, CPU, a few steps)::

    python benchmarks/device_check.py --dry-run --out /tmp/device_check

What it does, all in one process except the DDP run:

1. Prepares real speech (a subset of the Speech Commands test set and of FSDD, see
   :func:`subset`) with ``speakerzoo prepare`` and ``speakerzoo chunk``, as a user would.
2. Trains every zoo model for ``--steps`` steps through the LightningCLI configs users run
   (``-c configs/MODEL.yaml -c configs/trainer/gpu.yaml -c configs/trainer/bf16.yaml``, then with
   ``amp16.yaml``: float16 with gradient scaling), with validation off. A step meter (a
   callback) synchronises the GPU around each step and reports crops/s (every crop of every
   step after the warm-up, over their wall time including the time between steps), the time
   between steps (loading the next batch and Lightning's loop) as a share of the wall time,
   FLOPs of one training step counted by ``torch.utils.flop_counter.FlopCounterMode`` (matrix
   products and convolutions, forward and backward; cuDNN's fused RNN kernels are not
   counted, so the GRU models' rates are lower bounds) divided by the median step time, as a
   fraction of the same run's bfloat16 matrix-product rate, peak GPU memory, and whether every
   loss was finite.
3. The loader alone (the ECAPA run's DataModule) with 0, 1, 2, 4 and 8 workers, against the
   rate of batches the ECAPA bf16 step consumes: the fewest workers that keep it fed.
4. ``configs/trainer/ddp.yaml`` on the devices present, through ``speakerzoo fit`` in a
   subprocess (one device is still a real NCCL process group).
5. ``speakerzoo embed --device cuda`` and ``--device cpu`` of the ECAPA checkpoint on the test
   part: the embeddings must agree within :data:`EMBED_TOLERANCE`.
6. ``speakerzoo export``'s ONNX file of that checkpoint, run by onnxruntime (its CUDA provider
   where installed, else the CPU one, as reported) against the model on CUDA.

It writes ``device_check.md`` (one table per part) and ``device_check.json`` under ``--out``,
and prints the Markdown. A failing part is reported in its row and makes the exit code 1; the
other parts still run.

The device machine has no ``../shared`` and no network: ``benchmarks/device_bundle.py`` copies
the subset and the wheels the machine lacks into ``.device/`` (ignored by git) beforehand; see
``docs/benchmarks.md`` for the one command that runs this there.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.flop_counter import FlopCounterMode

from runs import matmul_rate, synchronize

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
BUNDLED_DATA = REPO / ".device" / "data"

#: ``speakerzoo embed`` on CUDA against the CPU, on L2-normalised embeddings: cuDNN may use
#: TF32 and other kernels than the CPU, so agreement is to a tolerance, not to the bit.
EMBED_TOLERANCE = {"max_abs_diff": 1e-3, "min_cosine": 0.9999}


@dataclass(frozen=True)
class Sizes:
    """How much the check does: the GPU run, or the CPU dry-run."""

    steps: int  # training steps per model and precision
    warmup: int  # untimed steps before the FLOP-counted step and the timed ones
    sc_speakers: int  # Speech Commands speakers in the subset (4 clips each)
    fsdd_index: int  # FSDD recordings 0 .. fsdd_index - 1 of each digit and speaker
    loader_batches: int
    workers: tuple[int, ...]
    matmul: int  # side of the square matrices of the matmul rate


GPU = Sizes(steps=40, warmup=5, sc_speakers=130, fsdd_index=10, loader_batches=30, workers=(0, 1, 2, 4, 8), matmul=8192)
DRY = Sizes(steps=4, warmup=1, sc_speakers=24, fsdd_index=10, loader_batches=3, workers=(0, 1), matmul=256)


@dataclass(frozen=True)
class ModelRun:
    """One zoo model as the check trains it: its shipped config and the corpora it reads."""

    name: str
    config: str
    corpora: dict[str, str]  # data init argument -> prepared corpus name
    gpu_args: tuple[str, ...] = ()  # what the shipped config needs to run on the subset
    dry_config: str | None = None
    dry_args: tuple[str, ...] = ()  # tiny sizes for the CPU dry-run


# Batches drawn per epoch where the DataModule has the option: the subset is small, and an epoch
# boundary every few steps would be timed as loader time.
EPOCH = ("--data.init_args.batches_per_epoch", "1000")
TINY_BATCH = ("--data.init_args.speakers_per_batch", "4", "--data.init_args.utterances_per_speaker", "2")

MODELS = (
    ModelRun("ECAPA", "configs/ecapa_speech_commands.yaml", {"corpus": "speech_commands"}, EPOCH,
             dry_args=(*EPOCH, *TINY_BATCH, "--model.init_args.channels", "[32, 32, 32, 32, 96]",
                       "--model.init_args.attention_channels", "16", "--model.init_args.se_channels", "16")),
    ModelRun("SECNNBiGRU", "configs/se_cnn_bigru.yaml", {"corpus": "speech_commands"}, EPOCH,
             dry_args=(*EPOCH, *TINY_BATCH, "--model.init_args.hidden", "32", "--model.init_args.projection_dim", "32",
                       "--model.init_args.embedding_dim", "32")),
    ModelRun("DeepSpeaker ResCNN", "configs/deep_speaker_rescnn.yaml", {"corpus": "speech_commands"}, EPOCH,
             dry_args=(*EPOCH, *TINY_BATCH, "--model.init_args.width", "0.125")),
    ModelRun("DeepSpeaker GRU", "configs/deep_speaker_gru.yaml", {"corpus": "speech_commands"}, EPOCH,
             dry_args=(*EPOCH, *TINY_BATCH, "--model.init_args.width", "0.125")),
    ModelRun("ResNetMFCC", "configs/resnet50_mfcc.yaml", {"corpus": "fsdd_3s"}, EPOCH,
             dry_args=(*EPOCH, "--data.init_args.utterances_per_speaker", "2", "--model.init_args.image_size", "64",
                       "--model.init_args.hidden", "32")),
    ModelRun("Wav2Vec2MultiTask", "configs/wav2vec2_mtl.yaml",
             {"speech_corpus": "speech_commands", "speaker_corpus": "speech_commands"},
             # The base-size network from random weights, trained from the first step, on 1 s clips.
             ("--model.init_args.freeze_steps", "0", "--model.init_args.freeze_feature_encoder", "false",
              "--data.init_args.speaker_crop_seconds", "1.0", "--data.init_args.speech_batch_seconds", "100",
              "--data.init_args.speakers_per_batch", "32", "--data.init_args.utterances_per_speaker", "2"),
             dry_config="configs/wav2vec2_mtl_small.yaml",
             dry_args=("--data.init_args.speech_batch_seconds", "4", *TINY_BATCH)),
    ModelRun("FrameDNN", "configs/frame_dnn.yaml", {"corpus": "fsdd8k"}, ("--data.init_args.subject_utterances", "20"),
             dry_args=("--data.init_args.subject_utterances", "10", "--data.init_args.batch_size", "256")),
)

PRECISIONS = {"bf16-mixed": "configs/trainer/bf16.yaml", "16-mixed": "configs/trainer/amp16.yaml"}


# ---------------------------------------------------------------------------------------------
# Data: a subset of the shared corpora, prepared as a user prepares them.


def subset(data_root: Path, sizes: Sizes) -> list[Path]:
    """The files of the check's data, relative to ``data_root`` (the shared data folder or a copy
    of this very subset, which selects itself again): the first ``sizes.sc_speakers`` Speech
    Commands speakers with four or more clips in the word folders, four clips each, and FSDD
    recordings ``0 .. sizes.fsdd_index - 1`` of every digit and speaker."""
    sc = data_root / "speech_commands_test"
    fsdd = data_root / "fsdd" / "recordings"
    for folder in (sc, fsdd):
        if not folder.is_dir():
            raise SystemExit(f"device_check: {folder} not found; give --data-root (the shared data folder, or the "
                             "copy benchmarks/device_bundle.py makes in .device/data)")
    clips: dict[str, list[Path]] = {}
    for path in sorted(sc.glob("*/*_nohash_*.wav")):
        if path.parent.name.startswith("_"):
            continue
        clips.setdefault(path.name.split("_nohash_")[0], []).append(path)
    speakers = [s for s in sorted(clips) if len(clips[s]) >= 4][: sizes.sc_speakers]
    files = [p for s in speakers for p in clips[s][:4]]
    for path in sorted(fsdd.glob("*_*_*.wav")):
        if int(path.stem.rsplit("_", 1)[1]) < sizes.fsdd_index:
            files.append(path)
    return [p.relative_to(data_root) for p in files]


def link_subset(data_root: Path, files: list[Path], target: Path) -> Path:
    """``files`` of ``data_root`` linked (or copied where links fail) under ``target``, same layout."""
    for rel in files:
        dest = target / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            dest.symlink_to((data_root / rel).resolve())
        except OSError:
            shutil.copy2(data_root / rel, dest)
    return target


def speakerzoo_command(*argv: str) -> None:
    """``speakerzoo ARGV`` (a command outside LightningCLI) in this process; raise on failure."""
    from speakerzoo.cli import COMMANDS

    code = importlib.import_module(COMMANDS[argv[0]]).main(list(argv[1:]))
    if code:
        raise RuntimeError(f"speakerzoo {' '.join(argv)} exited with {code}")


def prepare_corpora(data: Path, work: Path) -> dict[str, Path]:
    """The corpora the configs read, prepared from the subset in ``data``."""
    out = {name: work / f"{name}.h5" for name in ("speech_commands", "fsdd", "fsdd_3s", "fsdd8k")}
    speakerzoo_command("prepare", "speech-commands", str(data / "speech_commands_test"), "--output",
                       str(out["speech_commands"]), "--quiet")
    speakerzoo_command("prepare", "fsdd", str(data / "fsdd"), "--output", str(out["fsdd"]), "--quiet")
    speakerzoo_command("chunk", str(out["fsdd"]), "--seconds", "3", "--output", str(out["fsdd_3s"]), "--quiet")
    speakerzoo_command("prepare", "fsdd", str(data / "fsdd"), "--output", str(out["fsdd8k"]), "--sample-rate", "8000",
                       "--features", "mfcc26", "--quiet")
    return out


# ---------------------------------------------------------------------------------------------
# Training through LightningCLI with a step meter.


def examples_in(batch: Any) -> int:
    """Examples (crops, frames, clips) in a training batch: the leading size of its first tensor;
    for a multi-task batch of several task batches, their sum."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    if isinstance(batch, dict):
        values = list(batch.values())
        if values and all(isinstance(v, (dict, list, tuple)) for v in values):
            return sum(examples_in(v) for v in values)
        batch = values
    if isinstance(batch, (list, tuple)):
        for item in batch:
            if isinstance(item, torch.Tensor):
                return examples_in(item)
        return sum(examples_in(item) for item in batch if isinstance(item, (dict, list, tuple)))
    return 0


class StepMeter(Callback):
    """Times training steps (the GPU synchronised at both ends), the gaps between them, and
    counts one step's FLOPs; keeps every loss."""

    def __init__(self, warmup: int):
        self.warmup = warmup
        self.step_seconds: list[float] = []
        self.between_seconds: list[float] = []
        self.examples = 0
        self.flops = 0
        self.losses: list[float] = []
        self._start = 0.0
        self._end: float | None = None
        self._counter: FlopCounterMode | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        synchronize(pl_module.device)
        now = time.perf_counter()
        if self._end is not None and trainer.global_step > self.warmup + 1:
            self.between_seconds.append(now - self._end)
        self._start = now
        if trainer.global_step == self.warmup:
            self._counter = FlopCounterMode(display=False)
            self._counter.__enter__()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._counter is not None:
            self._counter.__exit__(None, None, None)
            self.flops = int(self._counter.get_total_flops())
            self._counter = None
            counted = True
        else:
            counted = False
        synchronize(pl_module.device)
        now = time.perf_counter()
        if trainer.global_step > self.warmup + 1 and not counted:
            self.step_seconds.append(now - self._start)
            self.examples += examples_in(batch)
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            self.losses.append(float(loss.detach().float()))
        self._end = now

    def summary(self) -> dict[str, Any]:
        wall = sum(self.step_seconds) + sum(self.between_seconds)
        median = statistics.median(self.step_seconds) if self.step_seconds else math.nan
        return {
            "timed_steps": len(self.step_seconds),
            "examples_per_s": self.examples / wall if wall else math.nan,
            "median_step_s": median,
            "between_steps_share": sum(self.between_seconds) / wall if wall else math.nan,
            "flops_per_step": self.flops,
            "flop_rate": self.flops / median if self.step_seconds and self.flops else math.nan,
            "losses_finite": bool(self.losses) and all(math.isfinite(x) for x in self.losses),
            "first_loss": self.losses[0] if self.losses else math.nan,
            "last_loss": self.losses[-1] if self.losses else math.nan,
        }


def presets(run: ModelRun, precision: str, dry: bool, ddp: bool = False) -> list[str]:
    """``fit`` and its configs: the model's shipped config, then the trainer presets users combine
    with it (``gpu.yaml`` and the precision's, or ``ddp.yaml``); on the CPU of a dry run, the CPU
    preset (or ``ddp.yaml`` with one CPU process)."""
    args = ["fit", "-c", (run.dry_config or run.config) if dry else run.config]
    if ddp:
        args += ["-c", "configs/trainer/ddp.yaml", "--trainer.precision", precision]
        # SyncBatchNorm runs on GPUs only: one CPU process keeps the plain BatchNorm.
        cpu = ["--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.sync_batchnorm", "false"]
        return args + (cpu if dry else [])
    if dry:
        return args + ["-c", "configs/trainer/cpu.yaml", "--trainer.precision", precision]
    return args + ["-c", "configs/trainer/gpu.yaml", "-c", PRECISIONS[precision]]


def run_args(run: ModelRun, corpora: dict[str, Path], sizes: Sizes, dry: bool, work: Path) -> list[str]:
    """What follows the configs: the subset's corpora and sizes, and validation, checkpoints and
    the config's callbacks off (the step meter is the only callback)."""
    args = list(run.dry_args if dry else run.gpu_args)
    for key, name in run.corpora.items():
        args += [f"--data.init_args.{key}", str(corpora[name])]
    return args + [
        "--trainer.max_steps", str(sizes.steps),
        "--trainer.limit_val_batches", "0",
        "--trainer.num_sanity_val_steps", "0",
        "--trainer.callbacks=[]",
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--trainer.logger.init_args.save_dir", str(work / "runs"),
        "--checkpoint.save_top_k", "0",
        "--last_checkpoint.save_top_k", "0",
    ]


def train(run: ModelRun, precision: str, corpora: dict[str, Path], sizes: Sizes, dry: bool, work: Path):
    """One training run in this process; ``(row, cli)``."""
    from speakerzoo.cli import run_lightning

    meter = StepMeter(sizes.warmup)
    row: dict[str, Any] = {"model": run.name, "precision": precision}
    cuda = torch.cuda.is_available() and not dry
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    argv = presets(run, precision, dry) + run_args(run, corpora, sizes, dry, work)
    cli = run_lightning(argv, trainer_defaults={"callbacks": [meter]})
    row.update(meter.summary())
    row["seconds"] = time.perf_counter() - start
    row["steps"] = int(cli.trainer.global_step)
    row["parameters"] = sum(p.numel() for p in cli.model.parameters())
    row["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30 if cuda else math.nan
    row["ok"] = row["losses_finite"] and row["steps"] == sizes.steps
    return row, cli


# ---------------------------------------------------------------------------------------------
# The loader, DDP, embed and export.


def loader_sweep(datamodule, sizes: Sizes, step_seconds: float) -> dict[str, Any]:
    """Batches/s of the training loader alone for each worker count, against ``1 / step_seconds``."""
    rows = []
    original = datamodule.num_workers
    try:
        for workers in sizes.workers:
            datamodule.num_workers = workers
            iterator = iter(datamodule.train_dataloader())
            next(iterator)  # worker start-up is not timed
            start = time.perf_counter()
            examples = sum(examples_in(next(iterator)) for _ in range(sizes.loader_batches))
            seconds = time.perf_counter() - start
            rows.append({"workers": workers, "batches_per_s": sizes.loader_batches / seconds,
                         "examples_per_s": examples / seconds})
            del iterator
    finally:
        datamodule.num_workers = original
    needed = 1 / step_seconds if step_seconds and math.isfinite(step_seconds) else math.nan
    fed = [r["workers"] for r in rows if r["batches_per_s"] >= needed]
    return {"rows": rows, "model_batches_per_s": needed, "workers_that_keep_it_fed": fed[0] if fed else None}


def ddp_check(corpora: dict[str, Path], sizes: Sizes, dry: bool, work: Path) -> dict[str, Any]:
    """``speakerzoo fit`` of ECAPA with ``configs/trainer/ddp.yaml`` in a subprocess (Lightning
    launches one process per device from the command line)."""
    run = MODELS[0]
    argv = presets(run, "bf16-mixed", dry, ddp=True) + run_args(run, corpora, sizes, dry, work)
    cmd = [sys.executable, "-m", "speakerzoo.cli", *argv]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    output = done.stdout + done.stderr
    backend = re.search(r"distributed_backend=(\w+)", output)
    members = re.search(r"MEMBER: \d+/(\d+)", output)
    result = {
        "returncode": done.returncode,
        "backend": backend.group(1) if backend else None,
        "processes": int(members.group(1)) if members else None,
        "seconds": time.perf_counter() - start,
        "command": " ".join(cmd[2:]),
    }
    result["ok"] = done.returncode == 0 and result["backend"] == ("gloo" if dry else "nccl")
    if not result["ok"]:
        result["output_tail"] = output[-3000:]
    return result


def embed_check(checkpoint: Path, corpus: Path, device: str, work: Path) -> dict[str, Any]:
    """``speakerzoo embed`` on ``device`` and on the CPU: the largest difference of normalised embeddings."""
    from speakerzoo.embeddings import EmbeddingFile

    files = {}
    seconds = {}
    for where in (device, "cpu"):
        out = work / f"embed-{where.replace(':', '')}.h5"
        start = time.perf_counter()
        speakerzoo_command("embed", str(corpus), "--split", "speaker", "--part", "test", "--checkpoint", str(checkpoint),
                           "--output", str(out), "--device", where, "--quiet")
        seconds[where] = time.perf_counter() - start
        files[where] = EmbeddingFile(out)
    a, b = files[device], files["cpu"]
    same_rows = a.utt_id == b.utt_id
    x = torch.nn.functional.normalize(a.embedding.double(), dim=-1)
    y = torch.nn.functional.normalize(b.embedding.double(), dim=-1)
    diff = float((x - y).abs().max()) if same_rows else math.nan
    cosine = float((x * y).sum(-1).min()) if same_rows else math.nan
    return {
        "device": device, "utterances": len(a), "max_abs_diff": diff, "min_cosine": cosine,
        "seconds": seconds, "tolerance": EMBED_TOLERANCE,
        "ok": same_rows and diff <= EMBED_TOLERANCE["max_abs_diff"] and cosine >= EMBED_TOLERANCE["min_cosine"],
    }


def export_check(checkpoint: Path, device: str, work: Path) -> dict[str, Any]:
    """The ONNX file of ``speakerzoo export`` run by onnxruntime against the model on ``device``."""
    import onnxruntime as ort

    from speakerzoo.zoo import SpeakerEmbeddingModule
    from speakerzoo.zoo.export import ATOL, MIN_COSINE, INPUT_NAMES

    path = work / "ecapa.onnx"
    speakerzoo_command("export", str(checkpoint), "--output", str(path))
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
    session = ort.InferenceSession(str(path), providers=providers)
    model = SpeakerEmbeddingModule.from_pretrained(str(checkpoint)).to(device).eval()
    generator = torch.Generator().manual_seed(0)
    rows = []
    for seconds in (0.7, 1.3, 3.0):
        lengths = torch.tensor([int(seconds * model.sample_rate), int(0.6 * seconds * model.sample_rate)])
        waves = torch.randn(2, int(lengths[0]), generator=generator) * 0.1
        waves[1, int(lengths[1]):] = 0
        with torch.no_grad():
            reference = model.embed(waves.to(device), lengths.to(device)).float().cpu()
        out = torch.from_numpy(session.run(None, {INPUT_NAMES[0]: waves.numpy(), INPUT_NAMES[1]: lengths.numpy()})[0])
        cosine = torch.nn.functional.cosine_similarity(out, reference, dim=-1).min()
        rows.append((float((out - reference).abs().max()), float(cosine), float(reference.abs().max())))
    diff = max(r[0] for r in rows)
    cosine = min(r[1] for r in rows)
    scale = max(1.0, max(r[2] for r in rows))
    return {"provider": session.get_providers()[0], "model_device": device, "max_abs_diff": diff, "min_cosine": cosine,
            "ok": diff <= ATOL * scale and cosine >= MIN_COSINE, "tolerance": {"atol": ATOL, "min_cosine": MIN_COSINE}}


# ---------------------------------------------------------------------------------------------
# The report.


def _f(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return format(value, spec)


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [f"### speakerzoo device check, {report['date']}: {env['device_name']}", "",
             f"torch {env['torch']}, CUDA {env['cuda']}, {env['cpus']} CPU cores; "
             f"bf16 matmul {_f(report['matmul_tflops'], '.0f')} TFLOP/s ({report['matmul_n']}³); "
             f"{'dry run (CPU, tiny sizes)' if report['dry_run'] else 'GPU run'}, {report['seconds']:.0f} s in all.", "",
             "| model | precision | params | steps | crops/s | between steps | GFLOP/step | TFLOP/s | of bf16 matmul "
             "| peak GiB | loss first → last | ok |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in report["training"]:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['precision']} | | | | | | | | | | **failed**: {r['error']} |")
            continue
        fraction = r["flop_rate"] / report["matmul_flop_rate"] if report["matmul_flop_rate"] else math.nan
        lines.append(
            f"| {r['model']} | {r['precision']} | {r['parameters'] / 1e6:.1f} M | {r['steps']} | "
            f"{_f(r['examples_per_s'], '.0f')} | {_f(100 * r['between_steps_share'], '.0f')} % | "
            f"{_f(r['flops_per_step'] / 1e9, '.1f')} | {_f(r['flop_rate'] / 1e12, '.2f')} | {_f(100 * fraction, '.1f')} % | "
            f"{_f(r['peak_memory_gib'], '.2f')} | {_f(r['first_loss'], '.2f')} → {_f(r['last_loss'], '.2f')} | "
            f"{'yes' if r['ok'] else '**no**'} |")
    loader = report.get("loader")
    if loader and "rows" in loader:
        lines += ["", f"Loader alone (ECAPA's DataModule) against the {_f(loader['model_batches_per_s'], '.1f')} batches/s "
                  f"the ECAPA bf16 step takes; fewest workers that keep it fed: {loader['workers_that_keep_it_fed']}", "",
                  "| workers | batches/s | crops/s |", "|---:|---:|---:|"]
        lines += [f"| {r['workers']} | {r['batches_per_s']:.1f} | {r['examples_per_s']:.0f} |" for r in loader["rows"]]
    lines += ["", "| check | result | ok |", "|---|---|---|"]
    for name, key, describe in (
        ("DDP preset", "ddp", lambda r: f"backend {r.get('backend')}, {r.get('processes')} process(es), {r.get('seconds', 0):.0f} s"),
        ("embed on the device vs CPU", "embed",
         lambda r: f"{r.get('utterances')} utterances on {r.get('device')}: max abs diff {_f(r.get('max_abs_diff'), '.2e')}, "
                   f"min cosine {_f(r.get('min_cosine'), '.6f')}"),
        ("ONNX export vs PyTorch", "export",
         lambda r: f"{r.get('provider')} against the model on {r.get('model_device')}: max abs diff "
                   f"{_f(r.get('max_abs_diff'), '.2e')}, min cosine {_f(r.get('min_cosine'), '.6f')}"),
    ):
        r = report.get(key) or {}
        text = f"failed: {r['error']}" if "error" in r else describe(r)
        lines.append(f"| {name} | {text} | {'yes' if r.get('ok') else '**no**'} |")
    return "\n".join(lines)


def environment(device: torch.device) -> dict[str, Any]:
    return {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()})",
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }


def attempt(report_part: dict[str, Any], fn, *args) -> Any:
    """``fn(*args)``; a failure is recorded in ``report_part`` (the check goes on)."""
    try:
        return fn(*args)
    except Exception as error:  # noqa: BLE001 - any failure is a finding to report
        report_part["error"] = f"{type(error).__name__}: {str(error).strip().splitlines()[0][:300] if str(error).strip() else ''}"
        report_part["traceback"] = traceback.format_exc()[-4000:]
        report_part["ok"] = False
        return None


def check(out: Path, data_root: Path, dry: bool, only: list[str] | None = None, work: Path | None = None) -> dict[str, Any]:
    """The whole check; writes and returns the report."""
    sizes = DRY if dry else GPU
    if not dry and not torch.cuda.is_available():
        raise SystemExit("device_check: no CUDA device; run with --dry-run on a CPU")
    device = torch.device("cuda" if not dry else "cpu")
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    own_work = work is None
    work = Path(tempfile.mkdtemp(prefix="device_check-")) if work is None else work
    work.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "dry_run": dry, "environment": environment(device),
                              "sizes": sizes.__dict__, "training": []}
    try:
        rate = matmul_rate(device, sizes.matmul, torch.bfloat16)
        report.update(matmul_flop_rate=rate, matmul_tflops=rate / 1e12, matmul_n=sizes.matmul)
        data = link_subset(data_root, subset(data_root, sizes), work / "data")
        corpora = prepare_corpora(data, work)
        precisions = ["bf16-mixed"] if dry else list(PRECISIONS)
        ecapa_cli = None
        for run in MODELS:
            if only and run.name not in only:
                continue
            for precision in precisions:
                part: dict[str, Any] = {"model": run.name, "precision": precision}
                result = attempt(part, train, run, precision, corpora, sizes, dry, work)
                if result is None:
                    report["training"].append(part)
                    continue
                row, cli = result
                report["training"].append(row)
                print(f"device_check: {run.name} {precision}: {row['examples_per_s']:.0f} crops/s, ok={row['ok']}", flush=True)
                if run is MODELS[0] and precision == "bf16-mixed":
                    ecapa_cli = cli
        if ecapa_cli is not None:
            checkpoint = work / "ecapa.ckpt"
            ecapa_cli.trainer.save_checkpoint(checkpoint, weights_only=True)  # no optimiser state
            step = next(r["median_step_s"] for r in report["training"] if r["model"] == "ECAPA" and "error" not in r)
            report["loader"] = {}
            found = attempt(report["loader"], loader_sweep, ecapa_cli.datamodule, sizes, step)
            if found is not None:
                report["loader"] = found
            report["embed"] = {}
            found = attempt(report["embed"], embed_check, checkpoint, corpora["speech_commands"], str(device), work)
            report["embed"] = found or report["embed"]
            report["export"] = {}
            found = attempt(report["export"], export_check, checkpoint, str(device), work)
            report["export"] = found or report["export"]
        report["ddp"] = {}
        found = attempt(report["ddp"], ddp_check, corpora, sizes, dry, work)
        report["ddp"] = found or report["ddp"]
    finally:
        report["seconds"] = time.perf_counter() - started
        report.setdefault("matmul_flop_rate", math.nan)
        report.setdefault("matmul_tflops", math.nan)
        report.setdefault("matmul_n", sizes.matmul)
        report["ok"] = (bool(report["training"]) and all(r.get("ok") for r in report["training"])
                        and "error" not in report.get("loader", {})
                        and all(report.get(part, {}).get("ok") for part in ("ddp", "embed", "export")))
        table = markdown(report)
        (out / "device_check.md").write_text(table + "\n")
        (out / "device_check.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
        print(table, flush=True)
        if own_work:
            shutil.rmtree(work, ignore_errors=True)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="See docs/benchmarks.md, 'GPU check'.")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "device_check", help="folder for device_check.md and .json")
    parser.add_argument("--data-root", type=Path, default=None,
                        help="the shared data folder (default: .device/data when present, else ../shared/data)")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, a few steps: that the script works")
    parser.add_argument("--only", nargs="+", metavar="MODEL", help="train only these models (names as in the table)")
    parser.add_argument("--work", type=Path, default=None, help="keep the prepared corpora and runs here (default: a temporary folder)")
    args = parser.parse_args(argv)
    data_root = args.data_root or (BUNDLED_DATA if BUNDLED_DATA.is_dir() else SHARED_DATA)
    with contextlib.chdir(REPO):
        report = check(args.out, data_root.resolve(), args.dry_run, args.only, args.work)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
