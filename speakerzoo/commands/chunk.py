"""``speakerzoo chunk``: cut a prepared corpus into fixed-length chunks (seed paper 004).

The command line of :func:`speakerzoo.datamodules.chunks.chunk_corpus`; exit codes and errors as
every command (:func:`speakerzoo.commands.common.run_command`). The library's warnings (speakers
left with no or a single chunk) are printed as ``speakerzoo chunk: warning: ...``. An interruption
leaves OUT.h5 as it was.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

from speakerzoo.commands.argtypes import non_negative_float, positive_float, positive_int
from speakerzoo.commands.common import run_command, warn
from speakerzoo.datamodules.chunks import TAILS, chunk_corpus
from speakerzoo.datamodules.corpus import Corpus
from speakerzoo.datamodules.splits import PARTS
from speakerzoo.features import PRESETS

__all__ = ["build_parser", "main", "run", "summary"]

_EXAMPLE = "speakerzoo chunk data/fsdd.h5 --seconds 3 --output data/fsdd_3s.h5"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="speakerzoo chunk",
        description=(
            "Cut a prepared corpus into chunks of a fixed length (seed paper 004: speaker identification on "
            "3, 5 and 10 s of speech) and write them as a new corpus file, one utterance per chunk, with its "
            "own splits and trials. Short clips are joined per speaker before cutting (a chunk may span "
            "several clips); long recordings are cut one by one (--join). The 16-bit audio is copied "
            "exactly; noise clips are copied whole. The output is written under a temporary name and only "
            "replaces OUT.h5 when complete."
        ),
        epilog=(f"examples:\n  {_EXAMPLE}\n"
                "  speakerzoo chunk data/libri.h5 --seconds 10 --join no --tail drop -o data/libri_10s.h5"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("corpus", type=Path, metavar="CORPUS.h5", help="prepared corpus to cut (speakerzoo prepare)")
    parser.add_argument("--seconds", type=positive_float, required=True, metavar="S",
                        help="chunk length in seconds, e.g. 3, 5 or 10 (required)")
    parser.add_argument("--output", "-o", type=Path, required=True, metavar="OUT.h5",
                        help="corpus file to write (required; not the input)")
    parser.add_argument("--join", choices=("auto", "yes", "no"), default="auto",
                        help="join each speaker's utterances before cutting (yes), cut each on its own (no), or "
                             "join when the median utterance is shorter than a chunk (auto, the default)")
    parser.add_argument("--tail", choices=TAILS, default="keep",
                        help="keep the last piece shorter than a chunk as a short chunk, or drop it (default: keep)")
    parser.add_argument("--split-ratios", nargs=3, type=non_negative_float, default=[0.7, 0.15, 0.15],
                        metavar=("TRAIN", "VAL", "TEST"),
                        help="proportions of the train/val/test parts, by chunk and by speaker (default: 0.7 0.15 0.15)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the splits and trials (default: 0)")
    parser.add_argument("--features", nargs="+", default=[], metavar="NAME",
                        help=f"feature presets to cache for the chunks "
                             f"({', '.join(k for k in PRESETS if k != 'waveform')}); default: none")
    parser.add_argument("--max-trial-anchors", type=positive_int, default=2000, metavar="N",
                        help="most trial anchors per val/test part (default: 2000)")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar; print only the output path")
    return parser


def summary(path: str | Path) -> str:
    """One paragraph about a chunked corpus: speakers, chunks, full-length chunks and tails, hours, parts."""
    corpus = Corpus(path)
    try:
        spk = corpus.speaker
        speech = spk >= 0
        chunk_samples = int(corpus.settings.get("chunk_samples", 0))
        full = int((corpus.num_samples[speech] == chunk_samples).sum())
        hours = float(corpus.duration[speech].astype(np.float64).sum()) / 3600
        parts = ", ".join(f"{p} {len(corpus.split('utterance', p))}" for p in PARTS)
        noise = int((~speech).sum())
        no_trials = [p for p in PARTS[1:] if not len(corpus.trials("utterance", p)[0])]
        warning = (f" Warning: the {' and '.join(no_trials)} part(s) of the utterance split have no trials (they need "
                   f"two speakers, one with two chunks there); use shorter chunks." if no_trials else "")
        return (f"chunked {corpus.settings.get('chunked_from', '?')} into {path}: {len(corpus.speakers)} speakers, "
                f"{int(speech.sum())} chunks of {corpus.settings.get('chunk_seconds', 0):g} s "
                f"({full} full-length, {int(speech.sum()) - full} shorter tails; "
                f"{'joined per speaker' if corpus.settings.get('join') else 'each utterance cut alone'}, "
                f"tail={corpus.settings.get('tail')}), {hours:.3f} h at {corpus.sample_rate} Hz"
                f"{f', {noise} noise clips copied whole' if noise else ''}; utterance split: {parts} chunks.{warning}")
    finally:
        corpus.close()


def run(args: argparse.Namespace) -> str:
    """Chunk as ``args`` say; the report to print (with ``--quiet``, the output path). The library's
    warnings are printed whether it ends, fails or is interrupted."""
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            path = chunk_corpus(args.corpus, args.output, args.seconds, join=args.join, tail=args.tail,
                                ratios=args.split_ratios, seed=args.seed, features=args.features,
                                max_trial_anchors=args.max_trial_anchors, progress=not args.quiet)
    finally:
        for w in caught:
            warn("chunk", w.message)
    return str(path) if args.quiet else summary(path)


def main(argv: list[str] | None = None) -> int:
    """``speakerzoo chunk ...``; returns the exit code (0 done, 2 error, 130 interrupted)."""
    return run_command("chunk", argv, build_parser, run, str,
                       interrupted=lambda args: f"{args.output} was left as it was")


if __name__ == "__main__":
    sys.exit(main())
