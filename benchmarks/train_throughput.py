"""Training throughput of a zoo model against the spine's ECAPA, its achieved FLOP rate, and bf16 against fp32.

All in one run, on the same random batches of ``--seconds``-long crops (default 2 s, the crop
the seed-002 cost estimate is for), each figure the median of ``--steps`` timed training steps
(frontend, forward, the model's training loss, backward, AdamW step) after ``--warmup`` untimed ones:

* crops/s of the model and of the baseline (default: ECAPA at the
  ``configs/ecapa_speech_commands.yaml`` size, C=256), fp32, and the ratio;
* the model's FLOPs per training step, counted by ``torch.utils.flop_counter.FlopCounterMode``
  (matrix products and convolutions, forward and backward), divided by the step time: the
  achieved GFLOP/s, as a fraction of the same run's fp32 matrix-multiply rate
  (``--matmul`` square matrices);
* the same step under ``torch.autocast`` with bfloat16, and its speed-up over fp32.

    python benchmarks/train_throughput.py                        # SE-CNN-BiGRU vs ECAPA, CPU
    python benchmarks/train_throughput.py --device cuda --batch 128
    python benchmarks/train_throughput.py --model SECNNBiGRU --threads 1
    python benchmarks/train_throughput.py --model ResCNN --baseline ECAPA-C1024   # seed 001, full size
    python benchmarks/train_throughput.py --model ResNet50 --baseline SECNNBiGRU --seconds 3 --batch 30

On a shared CPU, pin ``--threads`` to the cores that are really free: an oversubscribed
OpenMP pool slows small kernels (the GRU's per-step products) by an order of magnitude.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from runs import matmul_rate, synchronize
from speakerzoo import zoo

# Model names: zoo classes, or these aliases of a class at a given size.
MODELS = {
    "SECNNBiGRU": ("SECNNBiGRU", {}),
    "ECAPA": ("ECAPA", {"channels": [256, 256, 256, 256, 768], "embedding_dim": 192}),  # C=256, the SC config
    "ECAPA-C1024": ("ECAPA", {}),  # speechbrain's VoxCeleb size, 14.7M parameters
    "ResCNN": ("DeepSpeaker", {"architecture": "rescnn"}),  # seed 001 Table 1, 24M parameters
    "GRU": ("DeepSpeaker", {"architecture": "gru"}),  # seed 001 Table 2, 23M parameters
    "ResNet50": ("ResNetMFCC", {}),  # seed 004: 224-pixel MFCC images, stage2-4 frozen, 75M parameters
    "ResNet50-full": ("ResNetMFCC", {"freeze": []}),  # the same, every layer training
}


def matmul_gflops(device: torch.device, n: int, repeat: int = 10) -> float:
    """fp32 rate of an ``n x n`` matrix product on ``device``, GFLOP/s (median of ``repeat``)."""
    return matmul_rate(device, n, repeat=repeat) / 1e9


def build(name: str, num_speakers: int, device: torch.device) -> zoo.SpeakerEmbeddingModule:
    cls, sizes = MODELS.get(name, (name, {}))
    model = getattr(zoo, cls)(num_speakers=num_speakers, **sizes)
    return model.to(device).train()


def train_step(model, optimizer, waves, lengths, speakers, bf16: bool) -> None:
    with torch.autocast(device_type=waves.device.type, dtype=torch.bfloat16, enabled=bf16):
        features, frame_lengths = model.frontend(waves, lengths)
        loss, _ = model.training_loss(model.training_embeddings(features, frame_lengths), speakers)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def step_seconds(model, batch, args, bf16: bool) -> float:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times = []
    for i in range(args.warmup + args.steps):
        synchronize(batch[0].device)
        start = time.perf_counter()
        train_step(model, optimizer, *batch, bf16=bf16)
        synchronize(batch[0].device)
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def step_flops(model, batch) -> int:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    with FlopCounterMode(display=False) as counter:
        train_step(model, optimizer, *batch, bf16=False)
    return counter.get_total_flops()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="SECNNBiGRU",
                        help=f"zoo model class or one of {', '.join(MODELS)} (default: SECNNBiGRU)")
    parser.add_argument("--baseline", default="ECAPA", help="reference model, as --model (default: ECAPA, C=256)")
    parser.add_argument("--batch", type=int, default=32, help="crops per step (default 32)")
    parser.add_argument("--seconds", type=float, default=2.0, help="crop length (default 2 s)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per figure (default 5)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    parser.add_argument("--matmul", type=int, default=2048, help="size of the reference matrix product")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    samples = int(args.seconds * 16000)
    waves = 0.1 * torch.randn(args.batch, samples, device=device)
    lengths = torch.full((args.batch,), samples, device=device)
    speakers = torch.randint(0, 100, (args.batch,), device=device)
    batch = (waves, lengths, speakers)

    result = {"device": str(device), "threads": torch.get_num_threads(), "batch": args.batch,
              "seconds": args.seconds, "matmul_gflops": matmul_gflops(device, args.matmul)}
    model = build(args.model, 100, device)
    flops = step_flops(model, batch)
    fp32 = step_seconds(model, batch, args, bf16=False)
    bf16 = step_seconds(model, batch, args, bf16=True)
    base = step_seconds(build(args.baseline, 100, device), batch, args, bf16=False)
    result.update({
        "model": args.model, "baseline": args.baseline,
        "model_crops_per_s": args.batch / fp32, "baseline_crops_per_s": args.batch / base,
        "throughput_vs_baseline": base / fp32,
        "gflop_per_crop": flops / args.batch / 1e9, "achieved_gflops": flops / fp32 / 1e9,
        "bf16_crops_per_s": args.batch / bf16, "bf16_speedup": fp32 / bf16,
    })
    result["fraction_of_matmul"] = result["achieved_gflops"] / result["matmul_gflops"]
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{device}, {result['threads']} threads, batches of {args.batch} x {args.seconds:g} s crops")
    print(f"  fp32 matmul {args.matmul}^2: {result['matmul_gflops']:.1f} GFLOP/s")
    print(f"  {args.baseline} fp32: {result['baseline_crops_per_s']:.1f} crops/s")
    print(f"  {args.model} fp32: {result['model_crops_per_s']:.1f} crops/s "
          f"({result['throughput_vs_baseline']:.2f}x {args.baseline})")
    print(f"  {args.model}: {result['gflop_per_crop']:.2f} GFLOP per crop per training step, "
          f"{result['achieved_gflops']:.1f} GFLOP/s = {100 * result['fraction_of_matmul']:.0f}% of matmul")
    print(f"  {args.model} bf16 autocast: {result['bf16_crops_per_s']:.1f} crops/s "
          f"({result['bf16_speedup']:.2f}x fp32)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
