"""``speakerzoo identify``: who is speaking? The top-k enrolled speakers of each test file.

Speakers are enrolled with ``--enrol``, ``--enrol-dir`` or ``--enrol-embeddings``
(:mod:`speakerzoo.commands.options`); each test file is scored against every one by cosine
similarity and the ``--top-k`` best are listed, highest first. With a threshold
(``--threshold``, else the checkpoint's validation EER threshold ``model.eer_threshold``) each
candidate is also marked accepted or not, so that a file whose best candidate is rejected is
an unknown speaker (open-set identification).

Without enrolment, ``--closed-set`` identifies among the checkpoint's own training speakers
with its classification head: the candidates' scores are the head's softmax probabilities
(averaged over segments with ``--segment-seconds``), not calibrated ones.

``--mc-passes K`` reports each score as the mean ± std over ``K`` Monte-Carlo dropout passes
of the test file (seed 002 §5); candidates are ranked by the mean.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from typing import Any

from speakerzoo.commands.argtypes import positive_int
from speakerzoo.commands.common import run_command
from speakerzoo.commands.options import (
    add_enrol_arguments,
    add_inference_arguments,
    add_model_arguments,
    llr_note,
    enrol_from_args,
    format_score,
    has_enrolment,
    recognizer_from_args,
    segments_note,
)
from speakerzoo.inference.enrolment import EnrolError, check_mc
from speakerzoo.inference.recognizer import UNKNOWN

__all__ = ["build_parser", "main", "run"]

EXAMPLES = """examples:
  speakerzoo identify -c best.ckpt --enrol-dir speakers/ unknown1.wav unknown2.wav
  speakerzoo identify -c best.ckpt --enrol alice=a1.wav,a2.wav --enrol bob=b1.wav --top-k 2 unknown.wav
  speakerzoo identify -c best.ckpt --enrol-embeddings emb/speakers.h5 --mc-passes 20 --json unknown.wav
  speakerzoo identify -c best.ckpt --closed-set --top-k 3 unknown.wav   # among the model's training speakers
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="speakerzoo identify",
        description=textwrap.fill(
            "Speaker identification with a trained model: the --top-k enrolled speakers whose cosine score with each "
            "test file is highest (enrol with --enrol, --enrol-dir or --enrol-embeddings), marked accepted when a "
            "threshold is known (--threshold or the checkpoint's validation EER threshold). --closed-set instead "
            "ranks the checkpoint's training speakers by the softmax of its classification head. Audio of any rate, "
            "mono or stereo, is mixed to mono and resampled to the model's rate. --mc-passes K reports score ± std "
            "over K Monte-Carlo dropout passes."
        , width=100),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="test audio file(s)")
    add_model_arguments(parser)
    parser.add_argument("--closed-set", action="store_true",
                        help="no enrolment: rank the checkpoint's training speakers by its classification head")
    parser.add_argument("--top-k", type=positive_int, default=5, metavar="K",
                        help="candidates listed per file (default: 5; at most the number of speakers)")
    parser.add_argument("--threshold", type=float, metavar="T",
                        help="enrolled speakers: accept scores >= T (default: the checkpoint's validation EER threshold)")
    add_enrol_arguments(parser)
    add_inference_arguments(parser)
    return parser



def run(args: argparse.Namespace) -> dict[str, Any]:
    """Identify as ``args`` say; the result as the JSON object ``--json`` prints
    (:meth:`~speakerzoo.inference.SpeakerRecognizer.identification_report`)."""
    enrolled = has_enrolment(args)
    if args.closed_set and args.calibration is not None:
        raise EnrolError("--calibration applies to cosine scores of enrolled speakers, not to --closed-set probabilities")
    if enrolled and args.closed_set:
        raise EnrolError("--closed-set ranks the checkpoint's training speakers; drop it to identify among the "
                         "enrolled speakers, or drop the --enrol options")
    rec = recognizer_from_args(args)
    if not enrolled and not args.closed_set:
        if getattr(rec.model, "head", None) is not None:
            names = rec.training_speakers()
            shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
            offer = (f", or --closed-set to identify among the checkpoint's {len(names)} training speakers "
                     f"({shown}) with its classification head")
        else:
            offer = " (this checkpoint has no classification head, so --closed-set is not available)"
        raise EnrolError(f"no speakers to identify: enrol some with --enrol NAME=FILE[,FILE...], --enrol-dir DIR or "
                         f"--enrol-embeddings FILE.h5{offer}")
    if enrolled:
        check_mc(rec.model, args.mc_passes)  # before anything is embedded
        enrol_from_args(rec, args)
    return rec.identification_report(args.files, top_k=args.top_k, threshold=args.threshold, mc_passes=args.mc_passes,
                                     seed=args.seed, closed_set=args.closed_set)


def _text(result: dict[str, Any]) -> str:
    mc = result["mc_passes"] > 0
    what = ("training speakers of the checkpoint (softmax probability of its head)"
            if result["mode"] == "closed-set" else "enrolled speakers (cosine score)")
    lines = [f"top {result['top_k']} of {result['speakers']} {what}"]
    if result["threshold"] is not None:
        lines.append(f"threshold {result['threshold']:.4f} ({result['threshold_source']})")
    if mc:
        lines.append(f"scores: mean ± std over {result['mc_passes']} MC-dropout passes")
    width = max(7, *(len(c["speaker"]) for r in result["results"] for c in r["candidates"]))
    score_width = 17 if mc else 7
    for r in result["results"]:
        segs = segments_note(r["segments"], result["segment_seconds"])
        header = f"  rank  {'speaker':<{width}}  {'score':<{score_width}}"
        lines += ["", f"{r['test']}{segs}", (header + ("  decision" if result["threshold"] is not None else "")).rstrip()]
        for c in r["candidates"]:
            row = f"  {c['rank']:>4}  {c['speaker']:<{width}}  {format_score(c['score'], c['score_std'], mc):<{score_width}}"
            if c["accepted"] is not None:
                row += "  " + ("accept" if c["accepted"] else "reject")
            row += llr_note(c, result["p_target"])
            lines.append(row.rstrip())
        if r.get("identified") == UNKNOWN:
            lines.append(f"  identified: {UNKNOWN} (no enrolled speaker reaches the threshold)")
        elif r.get("identified") is not None and result["mode"] != "closed-set":
            lines.append(f"  identified: {r['identified']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``speakerzoo identify ...``; returns the exit code (0 done, 2 error, 130 interrupted)."""
    return run_command("identify", argv, build_parser, run, _text)


if __name__ == "__main__":
    sys.exit(main())
