"""Peak memory of ``speakerzoo embed`` on one long recording, by its length.

Makes recordings of 5 s up to ``--minutes`` of real speech (FSDD's george, repeated, at 16 kHz)
and embeds each, alone, in a fresh process; prints the peak resident memory of that process.
Recordings longer than ``speakerzoo.inference.engine.LONG_RECORDING_SECONDS`` are embedded in
segments, so the model's share stays flat and what grows is the decoded waveform (4 bytes a
sample at the model's rate).

Run (any trained checkpoint at 16 kHz, e.g. the README's main job)::

    python benchmarks/long_recording_memory.py --checkpoint runs/speakerzoo/version_0/checkpoints/last.ckpt
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

from speakerzoo.audio import load_audio

FSDD = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fsdd" / "recordings"
CHILD = """import atexit, resource, sys
atexit.register(lambda: print("MAXRSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr))
from speakerzoo.__main__ import main
sys.argv = ["speakerzoo", *sys.argv[1:]]
main()
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--minutes", type=float, nargs="+", default=[0.0833, 10, 30, 120])
    args = parser.parse_args()
    clips = [load_audio(p, 16000)[0] for p in sorted(FSDD.glob("*_george_*.wav"))]
    speech = np.concatenate(clips)
    print("| recording | peak memory of `speakerzoo embed` |\n|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for minutes in args.minutes:
            n = int(minutes * 60 * 16000)
            folder = Path(tmp) / f"m{minutes:g}" / "speaker"
            folder.mkdir(parents=True)
            sf.write(folder / "long.wav", np.tile(speech, n // len(speech) + 1)[:n], 16000, subtype="PCM_16")
            proc = subprocess.run([sys.executable, "-c", CHILD, "embed", str(folder.parent), "--checkpoint",
                                   args.checkpoint, "--output", str(Path(tmp) / f"m{minutes:g}.h5"), "--quiet"],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(proc.stderr)
            peak = int(proc.stderr.rsplit("MAXRSS_KB", 1)[1].split()[0])
            print(f"| {minutes * 60:g} s | {peak / 1e6:.2f} GB |")


if __name__ == "__main__":
    main()
