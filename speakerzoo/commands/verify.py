"""``speakerzoo verify``: is this the same speaker? Two files, or test files against enrolled speakers.

* ``speakerzoo verify -c CKPT a.wav b.wav``: the cosine score of ``b`` against ``a`` and, with a
  threshold, ``ACCEPT`` or ``REJECT``;
* ``speakerzoo verify -c CKPT --enrol alice=a1.wav,a2.wav --enrol bob=b.wav test.wav [--speaker alice]``:
  each test file scored against every enrolled speaker, or only against the claimed one
  (enrolment options: :mod:`speakerzoo.commands.options`).

A trial is accepted when its score is ``>= threshold``. The threshold is ``--threshold``, else
the validation EER threshold stored in the checkpoint (``model.eer_threshold``); without
either, scores are reported without a decision. ``--mc-passes K`` embeds each test file with
``K`` Monte-Carlo dropout passes (seed 002 §5): the score is the mean of the ``K`` per-pass
scores and ``±`` their standard deviation; the decision uses the mean. The enrolment side is
embedded deterministically, so the spread is that of the test file. ``--segment-seconds``
embeds long recordings from segments (:func:`~speakerzoo.inference.segments.embed_recording`).
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from typing import Any

from speakerzoo.commands.common import run_command
from speakerzoo.commands.options import (
    NO_THRESHOLD_HINT,
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

__all__ = ["build_parser", "main", "run"]

EXAMPLES = """examples:
  # two files: their score, and ACCEPT or REJECT at the checkpoint's EER threshold (or --threshold)
  speakerzoo verify --checkpoint best.ckpt alice_1.wav unknown.wav
  speakerzoo verify --checkpoint best.ckpt alice_1.wav unknown.wav --threshold 0.42 --mc-passes 20
  # a file against enrolled speakers: every one of them, or the claimed one
  speakerzoo verify -c best.ckpt --enrol alice=a1.wav,a2.wav --enrol bob=b.wav test.wav
  speakerzoo verify -c best.ckpt --enrol-dir speakers/ --speaker alice test.wav --json
  speakerzoo verify -c best.ckpt --enrol-embeddings emb/speakers.h5 --speaker alice meeting.wav --segment-seconds 3
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="speakerzoo verify",
        description=textwrap.fill(
            "Speaker verification with a trained model. With two files, score the second against the first. "
            "With enrolled speakers (--enrol, --enrol-dir, --enrol-embeddings), score each file against every "
            "enrolled speaker, or against the one it claims to be (--speaker). Scores are cosine similarities; "
            "a trial is accepted when its score is >= the threshold (--threshold, default: the validation EER "
            "threshold stored in the checkpoint). Audio of any rate, mono or stereo, is mixed to mono and "
            "resampled to the model's rate. --mc-passes K reports score ± std over K Monte-Carlo dropout passes."
        , width=100),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("files", nargs="+", metavar="FILE",
                        help="ENROL TEST (two files), or with enrolled speakers the test file(s)")
    add_model_arguments(parser)
    parser.add_argument("--speaker", metavar="NAME", help="the enrolled speaker the test file(s) claim to be")
    parser.add_argument("--threshold", type=float, metavar="T",
                        help="accept scores >= T (default: the validation EER threshold stored in the checkpoint)")
    add_enrol_arguments(parser)
    add_inference_arguments(parser)
    return parser



def run(args: argparse.Namespace) -> dict[str, Any]:
    """Verify as ``args`` say; the result as the JSON object ``--json`` prints
    (:meth:`~speakerzoo.inference.SpeakerRecognizer.verification_report`)."""
    pair = not has_enrolment(args)
    if pair:
        if args.speaker is not None:
            raise EnrolError(f"--speaker {args.speaker} names an enrolled speaker; enrol speakers with --enrol NAME=FILE, "
                             "--enrol-dir DIR or --enrol-embeddings FILE.h5")
        if len(args.files) != 2:
            raise EnrolError(f"give two files (ENROL TEST), or enrol speakers (--enrol NAME=FILE ...) and give the test "
                             f"file(s); got {len(args.files)} file(s)")
    rec = recognizer_from_args(args)
    check_mc(rec.model, args.mc_passes)  # before anything is embedded
    if pair:
        return rec.verification_report(args.files[1:], enrol_file=args.files[0], threshold=args.threshold,
                                       mc_passes=args.mc_passes, seed=args.seed)
    enrol_from_args(rec, args)
    return rec.verification_report(args.files, claimed=args.speaker, threshold=args.threshold,
                                   mc_passes=args.mc_passes, seed=args.seed)


def _text(result: dict[str, Any]) -> str:
    mc = result["mc_passes"] > 0
    lines: list[str] = []
    spread = f" (mean ± std over {result['mc_passes']} MC-dropout passes)" if mc else ""
    if result["threshold"] is None:
        thr_line = NO_THRESHOLD_HINT
    else:
        thr_line = f"threshold {result['threshold']:.4f} ({result['threshold_source']})"

    def seg(t: dict[str, Any]) -> str:
        return segments_note(t["segments"], result["segment_seconds"])

    if result["mode"] in ("pair", "claim"):
        for i, t in enumerate(result["trials"]):
            if i:
                lines.append("")
            if result["mode"] == "pair":
                lines.append(f"enrol      {t['speaker']}")
            else:
                lines.append(f"speaker    {t['speaker']} ({result['enrolled'][t['speaker']]} enrolment utterance(s))")
            lines += [f"test       {t['test']}{seg(t)}",
                      f"score      {format_score(t['score'], t['score_std'], mc)}{spread}"
                      f"{llr_note(t, result['p_target'])}",
                      thr_line]
            if t["decision"] is not None:
                lines.append(t["decision"])
        return "\n".join(lines)
    width = max(7, *(len(name) for name in result["enrolled"]))
    tests: dict[str, list[dict[str, Any]]] = {}
    for t in result["trials"]:
        tests.setdefault(t["test"], []).append(t)
    lines.append(f"{len(result['enrolled'])} enrolled speakers; {thr_line}")
    if mc:
        lines.append(f"scores: mean ± std over {result['mc_passes']} MC-dropout passes")
    for test, rows in tests.items():
        lines += ["", f"test {test}{seg(rows[0])}", f"  {'speaker':<{width}}  {'score':<{17 if mc else 7}}  decision"]
        for t in rows:
            lines.append(f"  {t['speaker']:<{width}}  {format_score(t['score'], t['score_std'], mc):<{17 if mc else 7}}  "
                         f"{t['decision'] or '-'}{llr_note(t, result['p_target'])}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``speakerzoo verify ...``; returns the exit code (0 done, 2 error, 130 interrupted)."""
    return run_command("verify", argv, build_parser, run, _text)


if __name__ == "__main__":
    sys.exit(main())
