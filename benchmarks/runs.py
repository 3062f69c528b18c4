"""What the experiment runners in this folder share: train a system through the CLI once, find its
best checkpoint, test a checkpoint on a corpus, and time GPU work (synchronised) against the
machine's matrix-product rate. Import it from a script in this folder
(``python benchmarks/NAME.py`` puts the folder on ``sys.path``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable

REPO = Path(__file__).resolve().parents[1]


def synchronize(device) -> None:
    """Wait for the work queued on a CUDA ``device`` (nothing to wait for on the CPU)."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def matmul_rate(device, n: int, dtype=None, repeat: int = 10) -> float:
    """FLOP/s of an ``n x n`` matrix product in ``dtype`` (default float32) on ``device``: the
    median of ``repeat`` synchronised products after one untimed one."""
    import statistics
    import time

    import torch

    a = torch.randn(n, n, device=device, dtype=dtype or torch.float32)
    b = torch.randn(n, n, device=device, dtype=dtype or torch.float32)
    a @ b
    times = []
    for _ in range(repeat):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times)


def fit_once(args: list[str], checkpoints: Path, log: Path, threads: int) -> None:
    """``speakerzoo fit ARGS`` in a subprocess with ``threads`` OpenMP threads, its output in ``log``;
    skipped when ``checkpoints/last.ckpt`` exists (the system is trained)."""
    if (checkpoints / "last.ckpt").is_file():
        return
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "speakerzoo.cli", "fit", *args, "--trainer.enable_progress_bar=false"]
    with open(log, "w") as out:
        subprocess.run(cmd, check=True, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)


def train_all(train: Callable[[str, int], None], systems: Iterable[str], parallel: int) -> None:
    """``train(system, threads)`` for every system, ``parallel`` at a time with one OpenMP thread
    each (one at a time: with ``$OMP_NUM_THREADS`` or every core)."""
    threads = 1 if parallel > 1 else int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        list(pool.map(lambda system: train(system, threads), systems))


def write_results(root: Path, table: str, results: dict) -> None:
    """Print the markdown ``table``; keep it in ``root/results.md`` and ``results`` in ``root/results.json``."""
    print(table)
    (root / "results.md").write_text(table + "\n")
    (root / "results.json").write_text(json.dumps(results, indent=2) + "\n")


def best_checkpoint(checkpoints: Path) -> Path:
    """The newest ``best-*.ckpt`` in ``checkpoints``."""
    found = sorted(checkpoints.glob("best-*.ckpt"))
    if not found:
        raise FileNotFoundError(f"no best-*.ckpt in {checkpoints}; train it first")
    return found[-1]


def test_checkpoint(checkpoint: Path, corpus: Path | None = None, split: str = "speaker",
                    eval_max_seconds: float | None = None, callbacks: list | None = None,
                    data=None) -> dict[str, float]:
    """``trainer.test`` of the model in ``checkpoint`` on the test part of ``corpus`` (CPU), or on
    the DataModule ``data``; the logged metrics (of every test loader), and the model's
    ``parameters`` count."""
    import lightning as L

    from speakerzoo.datamodules import SpeakerDataModule
    from speakerzoo.zoo import SpeakerEmbeddingModule

    model = SpeakerEmbeddingModule.from_pretrained(checkpoint)
    if data is None:
        data = SpeakerDataModule(str(corpus), split=split, eval_max_seconds=eval_max_seconds, num_workers=0)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=callbacks or [])
    metrics = {k: float(v) for loader in trainer.test(model, datamodule=data, verbose=False) for k, v in loader.items()}
    metrics["parameters"] = sum(p.numel() for p in model.parameters())
    return metrics
