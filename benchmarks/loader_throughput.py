"""Training-loader throughput against ECAPA training throughput, in crops per second.

The loader (SpeakerDataModule's train_dataloader: P x K sampler, random crops, padding) is
measured with 0 and 2 workers, reading from disk and from the in-memory cache; ECAPA is
measured on batches of the same shape taken from that loader beforehand (forward, backward
and optimiser step; no data loading inside the timed loop). The loader should be at least
5x faster than the model, so that training is never waiting for data.

    python benchmarks/loader_throughput.py                        # toy corpus, generated in a temp dir
    python benchmarks/loader_throughput.py --corpus data/toy.h5 --batches 80
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from speakerzoo.datamodules import SpeakerDataModule
from speakerzoo.datamodules.toy import prepare_toy


def loader_rate(args, num_workers: int, in_memory: bool) -> dict:
    total = args.warmup + args.batches
    dm = SpeakerDataModule(args.corpus, split="speaker", crop_seconds=args.crop_seconds,
                           speakers_per_batch=args.speakers_per_batch, utterances_per_speaker=args.utterances_per_speaker,
                           batches_per_epoch=total, num_workers=num_workers, cache_in_memory=in_memory,
                           features=args.features, seed=0)
    start = time.perf_counter()
    dm.setup("fit")
    setup_s = time.perf_counter() - start
    loader = dm.train_dataloader()
    crops = 0
    start = time.perf_counter()
    it = iter(loader)
    for _ in range(args.warmup):  # includes starting the workers
        next(it)
    first_s = time.perf_counter() - start
    start = time.perf_counter()
    for batch in it:
        crops += len(batch["speakers"])
    elapsed = time.perf_counter() - start
    del it, loader
    return {"crops_per_s": crops / elapsed, "batches_per_s": args.batches / elapsed, "setup_s": setup_s,
            "warmup_s": first_s}


def ecapa_rate(args, sample_batches: list[dict], num_speakers: int, sample_rate: int) -> dict:
    from speakerzoo.zoo.ecapa import ECAPA  # the benchmark may use the zoo; the datamodules never do

    model = ECAPA(num_speakers=num_speakers, sample_rate=sample_rate, frontend=args.frontend, channels=args.channels,
                  embedding_dim=args.embedding_dim, attention_channels=args.attention_channels,
                  se_channels=args.se_channels)
    device = torch.device(args.device)
    model.to(device).train()
    sample_batches = [{k: v.to(device) for k, v in b.items()} for b in sample_batches]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    params = sum(p.numel() for p in model.parameters())

    def step(i: int) -> None:
        loss = model.training_step(sample_batches[i % len(sample_batches)], i)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log() outside a Trainer
        for i in range(args.ecapa_warmup):
            step(i)
        sync()
        start = time.perf_counter()
        crops = 0
        for i in range(args.ecapa_steps):
            step(i)
            crops += len(sample_batches[i % len(sample_batches)]["speakers"])
        sync()
        elapsed = time.perf_counter() - start
    return {"crops_per_s": crops / elapsed, "batches_per_s": args.ecapa_steps / elapsed, "params": params}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", help="corpus file (default: generate the 40 x 24 toy corpus in a temp dir)")
    parser.add_argument("--crop-seconds", type=float, default=2.0)
    parser.add_argument("--speakers-per-batch", type=int, default=16)
    parser.add_argument("--utterances-per-speaker", type=int, default=2)
    parser.add_argument("--features", default=None, help="train on these cached features instead of audio")
    parser.add_argument("--batches", type=int, default=60, help="timed loader batches per configuration")
    parser.add_argument("--warmup", type=int, default=3, help="loader batches before timing (worker start-up)")
    parser.add_argument("--frontend", default="fbank80")
    parser.add_argument("--channels", type=int, nargs=5, default=[128, 128, 128, 128, 384],
                        help="ECAPA channels (default: configs/ecapa_small.yaml)")
    parser.add_argument("--embedding-dim", type=int, default=128)
    parser.add_argument("--attention-channels", type=int, default=64)
    parser.add_argument("--se-channels", type=int, default=64)
    parser.add_argument("--ecapa-steps", type=int, default=16)
    parser.add_argument("--ecapa-warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="where ECAPA trains (cpu, cuda); the loader always runs on CPU")
    args = parser.parse_args(argv)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)  # no describe() per run

    tmp = None
    if args.corpus is None:
        tmp = tempfile.TemporaryDirectory()
        start = time.perf_counter()
        args.corpus = str(prepare_toy(Path(tmp.name) / "toy.h5", progress=False))
        print(f"generated the toy corpus (40 speakers x 24 utterances) in {time.perf_counter() - start:.1f} s")

    rows = []
    for workers in (0, 2):
        for in_memory in (False, True):
            r = loader_rate(args, workers, in_memory)
            rows.append((f"loader, num_workers={workers}", "memory" if in_memory else "disk", r))
    probe = SpeakerDataModule(args.corpus, crop_seconds=args.crop_seconds, speakers_per_batch=args.speakers_per_batch,
                              utterances_per_speaker=args.utterances_per_speaker, num_workers=0,
                              features=args.features, batches_per_epoch=4)
    probe.setup("fit")
    batches = list(probe.train_dataloader())
    try:
        ecapa = ecapa_rate(args, batches, probe.num_speakers, probe.sample_rate)
    except ImportError as err:
        ecapa = None
        print(f"ECAPA not available ({err}); loader figures only", file=sys.stderr)

    batch = args.speakers_per_batch * args.utterances_per_speaker
    print()
    print(f"corpus: {args.corpus}; batches of {args.speakers_per_batch} x {args.utterances_per_speaker} = {batch} "
          f"crops of {args.crop_seconds:g} s ({args.features or 'raw audio'}); torch threads: "
          f"{torch.get_num_threads()}; CPU cores: {os.cpu_count()}")
    print()
    print("| what | storage | crops/s | batches/s | ratio to ECAPA |")
    print("|---|---|---:|---:|---:|")
    for name, storage, r in rows:
        ratio = f"{r['crops_per_s'] / ecapa['crops_per_s']:.1f}x" if ecapa else "n/a"
        print(f"| {name} | {storage} | {r['crops_per_s']:.0f} | {r['batches_per_s']:.1f} | {ratio} |")
    if ecapa:
        print(f"| ECAPA train step on {args.device} ({args.frontend}, channels {args.channels}, "
              f"{ecapa['params'] / 1e6:.2f} M params) "
              f"| - | {ecapa['crops_per_s']:.0f} | {ecapa['batches_per_s']:.2f} | 1.0x |")
        worst = min(r["crops_per_s"] for _, _, r in rows) / ecapa["crops_per_s"]
        best = max(r["crops_per_s"] for _, _, r in rows) / ecapa["crops_per_s"]
        print()
        print(f"loader / ECAPA: {worst:.1f}x (slowest loader) to {best:.1f}x (fastest); target >= 5x: "
              f"{'met' if worst >= 5 else 'NOT met by every configuration'}")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
