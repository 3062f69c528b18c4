"""Utterances per second of ``speakerzoo embed``'s batchings at VoxCeleb-like lengths.

Real corpora have almost no two utterances of equal length, so batching only equal lengths
(``--batching equal``, the only batching before) embeds them one at a time. This compares it
with padded length buckets (``padded``, the ``auto`` default for models that mask padding
exactly) and cropped buckets (``crop``, for the others), on full-size zoo models (random
weights with non-trivial BatchNorm statistics: speed does not depend on training) and
utterances of 4-20 s at 16 kHz drawn like VoxCeleb2's (4 s + an exponential of mean 3.8 s:
mean 7.8 s). Each way also reports the largest difference from the equal-length embeddings
(which are bitwise those of each utterance alone).

    python benchmarks/embed_batching.py                   # 32 utterances, CPU, 2 threads
    python benchmarks/embed_batching.py --count 256 --device cuda
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from speakerzoo.inference.engine import embed_waveforms
from speakerzoo.zoo.deep_speaker import DeepSpeaker
from speakerzoo.zoo.ecapa import ECAPA
from speakerzoo.zoo.se_cnn_bigru import SECNNBiGRU

MODELS = {
    "SE-CNN-BiGRU": (lambda: SECNNBiGRU(num_speakers=2), ("equal", "padded")),
    "Deep Speaker ResCNN": (lambda: DeepSpeaker(num_speakers=2, architecture="rescnn"), ("equal", "padded")),
    "ECAPA": (lambda: ECAPA(num_speakers=2), ("equal", "crop")),
}


def voxceleb_like(count: int, seed: int = 0) -> list[torch.Tensor]:
    rng = np.random.default_rng(seed)
    seconds = np.minimum(4.0 + rng.exponential(3.8, count), 20.0)
    return [torch.from_numpy((0.1 * rng.standard_normal(int(s * 16000))).astype(np.float32)) for s in seconds]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=32, help="utterances (default: 32)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    args = parser.parse_args()
    waves = voxceleb_like(args.count)
    hours = sum(len(w) for w in waves) / 16000 / 3600
    print(f"embed batching: {args.count} utterances ({hours * 60:.1f} min, 4-20 s), {args.device}, "
          f"{torch.get_num_threads()} threads, batch size {args.batch_size}, load average {os.getloadavg()[0]:.2f}\n")
    print("| model | batching | forward passes | utterances / s | speed-up | max abs diff from equal |")
    print("|---|---|---|---|---|---|")
    for name in args.models:
        build, ways = MODELS[name]
        torch.manual_seed(0)
        model = build()
        for module in model.modules():
            if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
        model = model.to(args.device).eval()
        reference, base = None, None
        for way in ways:
            calls = []
            start = time.perf_counter()
            emb = embed_waveforms(model, waves, batch_size=args.batch_size, batching=way, progress=calls.append)
            rate = len(waves) / (time.perf_counter() - start)
            if reference is None:
                reference, base = emb, rate
            diff = (emb - reference).abs().max().item()
            print(f"| {name} | {way} | {len(calls)} | {rate:.2f} | {rate / base:.1f}x | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
