"""Throughput of ``speakerzoo prepare`` on the real corpora: seconds of audio prepared per wall second.

Prepares FSDD (3,000 clips at 8 kHz, resampled to 16 kHz) and the Speech Commands test set
(4,890 one-second clips at 16 kHz) into a temporary folder, once per ``--workers`` value,
and prints a markdown table. Wall time covers listing, decoding, resampling, writing,
splits and trials (and cached features with ``--features``); not interpreter start-up.

    python benchmarks/prepare_throughput.py --workers 0 2
    python benchmarks/prepare_throughput.py --data ../shared/data --workers 0 2 4 --features fbank80
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

from speakerzoo.datamodules import sources
from speakerzoo.datamodules.prepare import prepare

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CORPORA = {"fsdd": ("fsdd", sources.fsdd), "speech_commands": ("speech_commands_test", sources.speech_commands)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"folder holding fsdd/ and speech_commands_test/ (default: {DEFAULT_DATA})")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="decoding processes to compare (default: 0 2)")
    parser.add_argument("--corpora", nargs="+", choices=sorted(CORPORA), default=list(CORPORA))
    parser.add_argument("--sample-rate", type=int, default=16000)
    parser.add_argument("--features", nargs="*", default=[], help="feature presets to cache as well (default: none)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per row; the fastest is reported (default: 1)")
    args = parser.parse_args()

    load = os.getloadavg()[0]  # other work on the machine slows every row alike
    rows = []
    with tempfile.TemporaryDirectory(prefix="speakerzoo-bench-") as tmp:
        for name in args.corpora:
            folder, importer = CORPORA[name]
            root = args.data / folder
            if not root.is_dir():
                raise SystemExit(f"{root}: not found; pass --data with the folder that holds {folder}/")
            for workers in args.workers:
                walls = []
                for _ in range(max(args.repeat, 1)):
                    start = time.perf_counter()
                    records = importer(root)
                    summary = prepare(records, Path(tmp) / f"{name}-{workers}.h5", sample_rate=args.sample_rate,
                                      features=args.features, workers=workers, progress=False)
                    walls.append(time.perf_counter() - start)
                rows.append((name, summary.files, summary.seconds, workers, min(walls)))

    print(f"prepare throughput: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
          f"stored at {args.sample_rate} Hz, features: {', '.join(args.features) or 'none'}, best of {max(args.repeat, 1)}, "
          f"load average before start {load:.2f}")
    print()
    print("| corpus | files | audio (s) | workers | wall (s) | audio s / wall s | files / s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, files, seconds, workers, wall in rows:
        print(f"| {name} | {files} | {seconds:.0f} | {workers} | {wall:.2f} | {seconds / wall:.0f} | {files / wall:.0f} |")


if __name__ == "__main__":
    main()
