"""Speed of ``speakerzoo embed``'s batching against embedding one utterance at a time.

Embeds the same utterances of a corpus several ways and prints utterances per second and
whether each way gives exactly (bitwise) the embeddings of one-at-a-time embedding:

* one at a time, default kernels (what a plain loop over ``model.embed`` does);
* one at a time, batch-invariant kernels (the reference of ``embed --exact``);
* ``embed_waveforms`` exact (default): equal-length batches, batch-invariant kernels, batches in parallel threads;
* ``embed_waveforms`` with ``exact=False`` (``embed --fast``): equal-length batches, default kernels;
* padded batches as the evaluation DataLoader builds them (for reference: not exact).

Run (defaults: the Speech Commands ECAPA of docs/recipes/ecapa.md and its test part)::

    python benchmarks/embed_speed.py --checkpoint runs/.../best-027.ckpt --corpus data/speech_commands.h5
"""

from __future__ import annotations

import argparse
import math
import os
import time

import numpy as np
import torch

from speakerzoo.inference.engine import batch_invariant_kernels, embed_waveforms
from speakerzoo.datamodules import Corpus
from speakerzoo.zoo import SpeakerEmbeddingModule


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _invariant(fn):
    with batch_invariant_kernels():
        return fn()


def one_at_a_time(model, waves):
    with torch.inference_mode():
        return torch.cat([model.embed(w[None]) for w in waves])


def padded(model, waves, batch_size):
    out = []
    with torch.inference_mode():
        for i in range(0, len(waves), batch_size):
            chunk = waves[i : i + batch_size]
            x = torch.nn.utils.rnn.pad_sequence(chunk, batch_first=True)
            out.append(model.embed(x, torch.tensor([w.numel() for w in chunk])))
    return torch.cat(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="/tmp/sc_run/speakerzoo/version_0/checkpoints/best-027.ckpt")
    parser.add_argument("--corpus", default="data/speech_commands.h5")
    parser.add_argument("--split", default="speaker")
    parser.add_argument("--part", default="test")
    parser.add_argument("--limit", type=int, default=300, help="utterances (default: 300)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-seconds", type=float, default=None, help="centre-crop to this length first")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each way; the best counts (default: 3)")
    args = parser.parse_args()

    model = SpeakerEmbeddingModule.from_pretrained(args.checkpoint)
    corpus = Corpus(args.corpus)
    index = np.sort(corpus.split(args.split, args.part))[: args.limit]
    waves = []
    for i in index:
        w = torch.from_numpy(corpus.audio(int(i)))
        if args.max_seconds is not None:
            n = int(round(args.max_seconds * corpus.sample_rate))
            if w.numel() > n:
                start = (w.numel() - n) // 2
                w = w[start : start + n]
        waves.append(w)
    corpus.close()
    lengths = [w.numel() for w in waves]
    print(f"{len(waves)} utterances, {len(set(lengths))} distinct lengths, {sum(lengths) / corpus.sample_rate:.0f} s "
          f"of audio; {type(model).__name__} with {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters; "
          f"{torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    embed_waveforms(model, waves[:8], batch_size=4)  # warm-up (oneDNN primitives, allocator)
    one_at_a_time(model, waves[:4])

    with batch_invariant_kernels():
        reference_exact = one_at_a_time(model, waves)
    reference_default = one_at_a_time(model, waves)
    ways = [
        ("one at a time, default kernels", lambda: one_at_a_time(model, waves), reference_default),
        ("one at a time, batch-invariant kernels (1 thread)",
         lambda: _invariant(lambda: one_at_a_time(model, waves)), reference_exact),
        (f"embed (exact): equal-length batches of <= {args.batch_size}, batch-invariant kernels, "
         f"{torch.get_num_threads()} batches in parallel",
         lambda: embed_waveforms(model, waves, batch_size=args.batch_size), reference_exact),
        (f"embed --fast: equal-length batches of <= {args.batch_size}, default kernels",
         lambda: embed_waveforms(model, waves, batch_size=args.batch_size, exact=False), reference_default),
        (f"padded batches of {args.batch_size} (DataLoader style, not exact)",
         lambda: padded(model, waves, args.batch_size), reference_default),
    ]
    # Round-robin repeats, best time of each: other processes on the machine only ever slow a run down.
    best = [math.inf] * len(ways)
    outputs = [None] * len(ways)
    for _ in range(args.repeat):
        for k, (_, fn, _) in enumerate(ways):
            outputs[k], seconds = timed(fn)
            best[k] = min(best[k], seconds)
    rows = [(name, best[k], outputs[k], ref) for k, (name, _, ref) in enumerate(ways)]
    t_default = best[0]

    print("\n| how | utterances/s | x one at a time | bitwise = one at a time (same kernels) | max abs diff |")
    print("|---|---:|---:|:---:|---:|")
    for name, seconds, emb, ref in rows:
        diff = float((emb - ref).abs().max())
        print(f"| {name} | {len(waves) / seconds:.1f} | {t_default / seconds:.2f}x | "
              f"{'yes' if torch.equal(emb, ref) else 'no'} | {diff:.1e} |")
    print(f"\nbatch-invariant vs default kernels, one at a time: max abs diff "
          f"{float((reference_exact - reference_default).abs().max()):.1e} "
          f"(embedding magnitude up to {float(reference_default.abs().max()):.1f})")


if __name__ == "__main__":
    main()
