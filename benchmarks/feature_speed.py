"""Feature extraction speed: speakerzoo's Frontend against torchaudio's per-utterance MelSpectrogram.

Both run in the same process on the same real clips (Speech Commands, 16 kHz, 1 s),
one utterance at a time, and speakerzoo's Frontend also batched. Target: speakerzoo at
least 0.6x torchaudio's per-utterance speed (the Frontend adds per-utterance length
masking and normalisation on top of the same transform).

    python benchmarks/feature_speed.py [--clips 1000] [--preset fbank80]
"""

from __future__ import annotations

import argparse
import glob
import time
from pathlib import Path

import torch
import torchaudio

from speakerzoo.audio import load_audio
from speakerzoo.features import Frontend

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "speech_commands_test"


def timed(fn, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=1000)
    ap.add_argument("--preset", default="fbank80", help="feature preset (fbank80, fbank64, mfcc26, logmel64)")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()

    files = sorted(glob.glob(str(args.data / "*" / "*.wav")))[: args.clips]
    waves = [torch.from_numpy(load_audio(f, 16000)[0]) for f in files]
    seconds = sum(w.numel() for w in waves) / 16000
    frontend = Frontend(args.preset, 16000)
    reference = torchaudio.transforms.MelSpectrogram(
        16000, n_fft=frontend.n_fft, win_length=frontend.win_length, hop_length=frontend.hop_length,
        n_mels=frontend.config.n_mels,
    )

    def run_reference():
        for w in waves:
            torch.log(reference(w) + 1e-6)

    def run_frontend():
        for w in waves:
            frontend(w[None], torch.tensor([w.numel()]))

    def run_batched():
        for i in range(0, len(waves), args.batch):
            chunk = waves[i:i + args.batch]
            lengths = torch.tensor([w.numel() for w in chunk])
            frontend(torch.nn.utils.rnn.pad_sequence(chunk, batch_first=True), lengths)

    with torch.inference_mode():
        run_reference()  # warm-up
        rows = [
            ("torchaudio MelSpectrogram + log, per utterance", timed(run_reference)),
            (f"speakerzoo Frontend({args.preset}), per utterance", timed(run_frontend)),
            (f"speakerzoo Frontend({args.preset}), batches of {args.batch}", timed(run_batched)),
        ]
    base = rows[0][1]
    print(f"{len(waves)} Speech Commands clips, {seconds:.0f} s of audio, torch threads: {torch.get_num_threads()}\n")
    print("| extractor | utterances/s | audio s per wall s | speed vs torchaudio |")
    print("|---|---:|---:|---:|")
    for name, t in rows:
        print(f"| {name} | {len(waves) / t:,.0f} | {seconds / t:,.0f} | {base / t:.2f}x |")


if __name__ == "__main__":
    main()
