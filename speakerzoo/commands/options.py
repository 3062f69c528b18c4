"""Arguments and text that ``speakerzoo verify`` and ``speakerzoo identify`` share (top floor).

Speakers are enrolled from any mix of

* ``--enrol NAME=FILE[,FILE...]`` (repeatable; a name given twice collects the files of both);
* ``--enrol-dir DIR``: one sub-folder per speaker, ``DIR/<speaker>/**/*.wav``;
* ``--enrol-embeddings FILE.h5``: an embeddings file written by ``speakerzoo embed`` with the
  same checkpoint, rows grouped by its ``speaker`` column;
* ``--store STORE.h5``: a speaker store written by ``speakerzoo enrol`` with the same checkpoint.

The work is :class:`speakerzoo.inference.SpeakerRecognizer`'s; see :mod:`speakerzoo.inference.enrolment`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from speakerzoo.commands.argtypes import non_negative_int, positive_float
from speakerzoo.commands.trial_options import add_cost_arguments
from speakerzoo.inference.recognizer import SpeakerRecognizer

__all__ = ["NO_THRESHOLD_HINT", "add_enrol_arguments", "add_inference_arguments", "add_model_arguments",
           "enrol_from_args", "format_score", "has_enrolment", "llr_note", "parse_enrol", "recognizer_from_args",
           "segments_note"]

NO_THRESHOLD_HINT = ("no decision: the checkpoint stores no EER threshold; give --threshold T (e.g. the EER "
                     "threshold `speakerzoo score` reports on trials embedded with this checkpoint)")



def parse_enrol(text: str) -> tuple[str, list[str]]:
    """``NAME=FILE[,FILE...]`` -> ``(name, files)`` (an argparse ``type=``).

    Example::

        >>> parse_enrol("alice=a1.wav,a2.wav")
        ('alice', ['a1.wav', 'a2.wav'])
    """
    name, sep, files = text.partition("=")
    name = name.strip()
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=FILE[,FILE...], e.g. alice=a1.wav,a2.wav; got {text!r}")
    paths = [f.strip() for f in files.split(",") if f.strip()]
    if not paths:
        raise argparse.ArgumentTypeError(f"speaker {name!r} has no files: give --enrol {name}=FILE[,FILE...]")
    return name, paths


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--checkpoint`` and ``--device``."""
    parser.add_argument("--checkpoint", "-c", required=True, metavar="CKPT",
                        help="checkpoint file (or registered checkpoint name) of an embedding model")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available, else cpu)")


def add_inference_arguments(parser: argparse.ArgumentParser) -> None:
    """MC dropout, segments and output options that verify and identify share."""
    emb = parser.add_argument_group("uncertainty and long recordings")
    emb.add_argument("--mc-passes", type=non_negative_int, default=0, metavar="K",
                     help="score each test file with K Monte-Carlo dropout passes and report score ± std "
                          "(needs a model trained with dropout; default 0: one deterministic pass)")
    emb.add_argument("--seed", type=int, default=0,
                     help="torch seed of the MC dropout masks, so that reruns report the same numbers (default: 0)")
    emb.add_argument("--segment-seconds", type=positive_float, metavar="S",
                     help="embed every file from segments of S seconds (the last one ends at the end of the file) "
                          "and average them: for long recordings (default: each file whole)")
    emb.add_argument("--segment-hop", type=positive_float, metavar="S",
                     help="start a segment every S seconds, at most --segment-seconds (default: no overlap)")
    cal = parser.add_argument_group("calibration")
    cal.add_argument("--calibration", type=Path, metavar="CAL.json",
                     help="a calibration of this checkpoint's scores from `speakerzoo calibrate`: report each score's "
                          "log-likelihood ratio and posterior, and decide by the Bayes threshold for --p-target, "
                          "--c-miss and --c-fa (--threshold, when given, still decides)")
    add_cost_arguments(cal)
    out = parser.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print the results as JSON")
    out.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def add_enrol_arguments(parser: argparse.ArgumentParser) -> None:
    """``--enrol``, ``--enrol-dir``, ``--enrol-embeddings`` (any mix; speakers of one name are merged)."""
    group = parser.add_argument_group("enrolment (any mix; files of one speaker are averaged)")
    group.add_argument("--enrol", action="append", type=parse_enrol, default=[], metavar="NAME=FILE[,FILE...]",
                       help="enrol speaker NAME from these audio files (repeatable)")
    group.add_argument("--enrol-dir", type=Path, action="append", default=[], metavar="DIR",
                       help="enrol every sub-folder of DIR as a speaker (DIR/<speaker>/*.wav)")
    group.add_argument("--enrol-embeddings", type=Path, action="append", default=[], metavar="FILE.h5",
                       help="enrol the speakers of an embeddings file from `speakerzoo embed` made with the same checkpoint")
    group.add_argument("--store", type=Path, action="append", default=[], metavar="STORE.h5",
                       help="enrol the speakers of a store written by `speakerzoo enrol` with the same checkpoint")


def has_enrolment(args: argparse.Namespace) -> bool:
    return bool(args.enrol or args.enrol_dir or args.enrol_embeddings or getattr(args, "store", None))


def recognizer_from_args(args: argparse.Namespace) -> SpeakerRecognizer:
    """The recognizer of ``--checkpoint`` on ``--device``, with the segment and progress options."""
    rec = SpeakerRecognizer.from_pretrained(args.checkpoint, device=args.device, segment_seconds=args.segment_seconds,
                                            segment_hop=args.segment_hop, progress=not args.quiet)
    if args.calibration is not None:
        rec.use_calibration(args.calibration, args.p_target, args.c_miss, args.c_fa)
    return rec


def enrol_from_args(rec: SpeakerRecognizer, args: argparse.Namespace) -> None:
    """Enrol the speakers of ``--store``, ``--enrol``, ``--enrol-dir`` and ``--enrol-embeddings`` into ``rec``."""
    for store in getattr(args, "store", []):
        rec.enrol_store(store)
    if args.enrol or args.enrol_dir or args.enrol_embeddings:
        rec.enrol_from(files=args.enrol, folders=args.enrol_dir, embedding_files=args.enrol_embeddings,
                       profile=getattr(args, "profile", None) or "default")


def segments_note(count: int, seconds: float | None) -> str:
    """``"  (3 segments of 1 s)"`` when files were cut into segments, else ``""``."""
    if not seconds:
        return ""
    return f"  ({count} segment{'s' if count != 1 else ''} of {seconds:g} s)"


def llr_note(entry: dict, p_target: float) -> str:
    """``"  LLR +2.31, P(same) 0.091"`` for a calibrated score, else ``""``."""
    if "llr" not in entry:
        return ""
    return f"  LLR {entry['llr']:+.2f}, P(same) {entry['posterior']:.3f} at p_target {p_target:g}"


def format_score(score: float, std: float, mc: bool, digits: int = 4) -> str:
    """``0.8123`` or ``0.8123 ± 0.0101`` (with MC dropout)."""
    return f"{score:.{digits}f}" + (f" ± {std:.{digits}f}" if mc else "")
