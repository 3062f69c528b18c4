"""``speakerzoo prepare``: decode a folder of audio files once into a corpus file (HDF5).

The command line of :func:`speakerzoo.datamodules.prepare.prepare` (files listed by an importer of
:mod:`speakerzoo.datamodules.sources`) and of
:func:`~speakerzoo.datamodules.prepare.prepare_toy_corpus`; exit codes and errors as every command
(:func:`speakerzoo.commands.common.run_command`). An interruption leaves OUT.h5 as it was.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from speakerzoo.commands.argtypes import non_negative_float, non_negative_int, positive_int
from speakerzoo.commands.common import run_command, warn
from speakerzoo.datamodules.prepare import DEFAULT_WORKERS, prepare, prepare_toy_corpus
from speakerzoo.datamodules.shards import ShardProgress
from speakerzoo.datamodules.sources import SOURCES
from speakerzoo.features import PRESETS

__all__ = ["build_parser", "main", "run"]

# source -> (metavar, one-line help, description, example)
_EXAMPLES = {
    "folder": ("ROOT", "any folder with one sub-folder per speaker",
               "a folder with one sub-folder per speaker: ROOT/<speaker>/**/*.{wav,flac,ogg,mp3}; "
               "the first folder level names the speaker and utt_id is the path without its extension",
               "speakerzoo prepare folder data/my_speakers --output corpora/mine.h5"),
    "manifest": ("CSV", "a CSV list of files (path,speaker[,transcript,session,utt_id])",
                 "a CSV file with a header and columns path,speaker (required) and transcript,session,utt_id "
                 "(optional); relative paths are read from the CSV's folder; an empty speaker cell marks noise",
                 "speakerzoo prepare manifest data/list.csv --output corpora/list.h5 --sample-rate 16000"),
    "fsdd": ("ROOT", "Free Spoken Digit Dataset",
             "the Free Spoken Digit Dataset (its root or recordings/): {digit}_{speaker}_{index}.wav, "
             "8 kHz; transcripts are the digits as words",
             "speakerzoo prepare fsdd ../shared/data/fsdd --output corpora/fsdd.h5 --sample-rate 8000 --features mfcc26"),
    "speech-commands": ("ROOT", "Speech Commands (v0.01/v0.02, full or test set)",
                        "Speech Commands: {word}/{speaker}_nohash_{n}.wav, _unknown_/{word}_{speaker}_nohash_{n}.wav.wav; "
                        "_silence_/ and _background_noise_/ clips are stored as noise without a speaker",
                        "speakerzoo prepare speech-commands ../shared/data/speech_commands_test --output corpora/sc.h5 --features fbank80"),
    "librispeech": ("ROOT", "LibriSpeech (one subset or several)",
                    "LibriSpeech: {speaker}/{chapter}/{speaker}-{chapter}-{utt}.flac with "
                    "{speaker}-{chapter}.trans.txt transcripts; session = chapter",
                    "speakerzoo prepare librispeech LibriSpeech/dev-clean --output corpora/libri-dev.h5 --trim-silence"),
    "voxceleb": ("ROOT", "VoxCeleb1/2 (wav; convert VoxCeleb2 .m4a first)",
                 "VoxCeleb1/2: {id}/{video}/{n}.wav; session = video. VoxCeleb2's AAC .m4a files cannot be "
                 "decoded: convert them to wav with ffmpeg first",
                 "speakerzoo prepare voxceleb vox1_test_wav/wav --output corpora/vox1-test.h5 --workers 8"),
}
_TOY_EXAMPLE = "speakerzoo prepare toy --output corpora/toy.h5 --speakers 40 --utterances 24 --features fbank80"


def _feature_help() -> str:
    names = [k for k in PRESETS if k != "waveform"]
    return f"feature presets to cache beside the audio ({', '.join(names)}); default: none"


def _part(text: str) -> tuple[int, int]:
    try:
        k, m = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected K/M such as 0/4, not {text!r}") from None
    if not (m >= 1 and 0 <= k < m):
        raise argparse.ArgumentTypeError(f"K/M needs 0 <= K < M, not {text!r}")
    return k, m


def build_parser() -> argparse.ArgumentParser:
    examples = "\n".join(f"  {ex}" for *_, ex in _EXAMPLES.values()) + f"\n  {_TOY_EXAMPLE}"
    parser = argparse.ArgumentParser(
        prog="speakerzoo prepare",
        description=(
            "Decode a speech corpus once into an HDF5 corpus file (16-bit PCM at one sample rate, "
            "speakers, transcripts, seeded splits by utterance and by speaker, verification and "
            "identification trials, optional cached features). Unreadable, empty, non-audio and "
            "truncated files are skipped and listed (--strict stops at the first). The output is "
            "written under a temporary name and only replaces OUT.h5 when complete. Large corpora: "
            "--shard-files N writes resumable shards in parallel, joined by the index OUT.h5."
        ),
        epilog="examples:\n" + examples + "\n\nrun `speakerzoo prepare SOURCE --help` for the options of one source.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="source", metavar="SOURCE", required=True,
                                title="sources", description="layout of the files to prepare")

    common = argparse.ArgumentParser(add_help=False)
    opts = common.add_argument_group("options")
    opts.add_argument("--output", "-o", required=True, type=Path, metavar="OUT.h5", help="corpus file to write (required)")
    opts.add_argument("--sample-rate", type=positive_int, default=16000, metavar="HZ",
                      help="sample rate of the stored audio; other rates are resampled (default: 16000)")
    opts.add_argument("--normalize", action="store_true", help="scale every clip to a peak of 0.95")
    opts.add_argument("--trim-silence", action="store_true",
                      help="cut silences longer than 200 ms (frames 40 dB below the loudest), keeping 100 ms margins")
    opts.add_argument("--features", nargs="+", default=[], metavar="NAME", help=_feature_help())
    opts.add_argument("--split-ratios", nargs=3, type=non_negative_float, default=[0.7, 0.15, 0.15], metavar=("TRAIN", "VAL", "TEST"),
                      help="proportions of the train/val/test parts, by utterance and by speaker (default: 0.7 0.15 0.15)")
    opts.add_argument("--seed", type=int, default=0, help="seed of the splits and trials (default: 0)")
    opts.add_argument("--strict", action="store_true", help="stop at the first unusable file instead of skipping it")
    opts.add_argument("--workers", type=non_negative_int, default=DEFAULT_WORKERS, metavar="N",
                      help=f"decoding processes; 0 decodes in this process (default: {DEFAULT_WORKERS})")
    opts.add_argument("--max-trial-anchors", type=positive_int, default=2000, metavar="N",
                      help="most trial anchors per val/test part (default: 2000)")
    opts.add_argument("--min-seconds", type=non_negative_float, default=0.1, metavar="S",
                      help="skip clips shorter than S seconds after decoding and trimming (default: 0.1); "
                           "silent clips are skipped whatever their length")
    opts.add_argument("--shard-files", type=positive_int, default=None, metavar="N",
                      help="write the corpus as shards of N input files in OUT.h5.shards/ plus the index OUT.h5, "
                           "--workers shards at a time; a rerun of the same command keeps the finished shards "
                           "(for large corpora: 10000 files is about 20 h of VoxCeleb2). Default: one file")
    opts.add_argument("--part", type=_part, default=None, metavar="K/M",
                      help="with --shard-files: write only every M-th shard from the K-th (0 <= K < M), one of M "
                           "runs on machines that share the output folder; the run that finds every shard "
                           "finished writes the index")
    opts.add_argument("--quiet", "-q", action="store_true", help="no progress bars; print only the output path")

    for name, (metavar, short, what, example) in _EXAMPLES.items():
        p = sub.add_parser(name, parents=[common], help=short,
                           description=f"{what}.", epilog=f"example:\n  {example}",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("path", type=Path, metavar=metavar, help="the CSV file" if name == "manifest" else "the corpus folder")

    toy = sub.add_parser("toy", help="a deterministic synthetic multi-speaker corpus (for tests and demos)",
                         description="Generate a deterministic synthetic multi-speaker corpus (no files needed).",
                         epilog=f"example:\n  {_TOY_EXAMPLE}", formatter_class=argparse.RawDescriptionHelpFormatter)
    t = toy.add_argument_group("options")
    t.add_argument("--output", "-o", required=True, type=Path, metavar="OUT.h5", help="corpus file to write (required)")
    t.add_argument("--speakers", type=positive_int, default=40, help="number of speakers (default: 40)")
    t.add_argument("--utterances", type=positive_int, default=24, help="utterances per speaker (default: 24)")
    t.add_argument("--seed", type=int, default=0, help="seed of the voices, splits and trials (default: 0)")
    t.add_argument("--sample-rate", type=positive_int, default=16000, metavar="HZ", help="sample rate (default: 16000)")
    t.add_argument("--features", nargs="+", default=[], metavar="NAME", help=_feature_help())
    t.add_argument("--quiet", "-q", action="store_true", help="no progress bars; print only the output path")
    return parser


def run(args: argparse.Namespace, command: str = "speakerzoo prepare") -> str:
    """Prepare as ``args`` say; the report to print (with ``--quiet``, the output path). ``command``:
    the command line, recorded in the corpus settings."""
    if args.source == "toy":
        toy = prepare_toy_corpus(args.output, speakers=args.speakers, utterances=args.utterances, seed=args.seed,
                                 sample_rate=args.sample_rate, features=tuple(args.features),
                                 progress=not args.quiet)
        return str(toy.output) if args.quiet else str(toy)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        records = SOURCES[args.source](args.path)
    for w in caught:
        warn("prepare", w.message)
    summary = prepare(
        records, args.output, sample_rate=args.sample_rate, normalize=args.normalize,
        trim_silence=args.trim_silence, features=args.features, ratios=args.split_ratios, seed=args.seed,
        strict=args.strict, workers=args.workers, max_trial_anchors=args.max_trial_anchors,
        min_seconds=args.min_seconds, progress=not args.quiet,
        settings={"sources": [{"kind": args.source, "path": str(Path(args.path).expanduser().resolve())}],
                  "command": command},
        shard_files=args.shard_files, part=args.part,
    )
    if isinstance(summary, ShardProgress):
        return str(summary)
    if not args.quiet:
        return str(summary)
    if summary.skipped:
        warn("prepare", f"skipped {len(summary.skipped)} unusable file(s); run without --quiet for the list")
    return str(summary.output)


def main(argv: list[str] | None = None) -> int:
    """``speakerzoo prepare ...``; returns the exit code (0 done, 2 error, 130 interrupted)."""
    command = "speakerzoo prepare " + " ".join(argv if argv is not None else sys.argv[1:])
    return run_command("prepare", argv, build_parser, lambda args: run(args, command), str,
                       interrupted=lambda args: f"{args.output} was left as it was")


if __name__ == "__main__":
    sys.exit(main())
