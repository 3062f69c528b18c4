"""``speakerzoo calibrate``: fit a score calibration (cosine scores to log-likelihood ratios) on
labelled trials, so that ``speakerzoo score --calibration`` can report calibrated scores, their
Cllr and actual DCF, and the Bayes decision for a prior and costs.

The trials are a corpus part (default ``--part val``: calibrate on validation, judge on test) or
a labelled trial list, scored exactly as ``speakerzoo score`` scores them, with the same
``--fusion`` and cohort normalisation options; a calibration holds only for scores made that
way from the same checkpoint(s), which it records and ``score`` checks. The work is
:func:`speakerzoo.inference.calibrate.calibrate_embeddings`; the calibrator
:class:`speakerzoo.calibration.ScoreCalibrator`.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path
from typing import Any

from speakerzoo.commands.argtypes import probability
from speakerzoo.commands.common import run_command
from speakerzoo.commands.trial_options import add_cost_arguments, add_trial_arguments, calibration_lines, scoring_options
from speakerzoo.inference.calibrate import calibrate_embeddings

__all__ = ["build_parser", "main", "run"]

EXAMPLES = """examples:
  speakerzoo embed data/speech_commands.h5 --part val -c best.ckpt -o emb/val.h5
  speakerzoo calibrate emb/val.h5 --corpus data/speech_commands.h5 --part val          # writes emb/val.calibration.json
  speakerzoo score emb/test.h5 --corpus data/speech_commands.h5 --calibration emb/val.calibration.json --p-target 0.05
  speakerzoo calibrate emb/mine.h5 --trials my_labelled_pairs.txt --output mine.calibration.json
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="speakerzoo calibrate",
        description=textwrap.fill(
            "Fit a score calibration on labelled trials: a linear logistic regression from the cosine score to a "
            "log-likelihood ratio (LLR), weighted at --p-effective (Brümmer and du Preez, 'Application-independent "
            "evaluation of speaker detection'). Score the trials of another part with `speakerzoo score "
            "--calibration` to get calibrated scores, their Cllr and actual DCF, and the decision threshold for "
            "your prior and costs. Trials and scoring options are those of `speakerzoo score`; the calibration "
            "records them and the checkpoint, and holds only for scores made the same way.", width=100),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_trial_arguments(parser, part="val")
    fit = parser.add_argument_group("fit")
    fit.add_argument("--p-effective", type=probability, default=0.5,
                     help="prior at which targets and non-targets are weighted in the fit (default: 0.5, equal weight)")
    fit.add_argument("--quality", choices=("duration",),
                     help="also fit weights for the log durations of the enrolment and test utterances (corpus "
                          "trials); `score --calibration` then computes them too")
    fit.add_argument("--output", "-o", type=Path, metavar="CAL.json",
                     help="calibration file to write (default: EMB.calibration.json beside the first embeddings file)")
    metrics = parser.add_argument_group("metrics on the fitting trials")
    add_cost_arguments(metrics)
    metrics.add_argument("--plot", type=Path, metavar="BAYES.png",
                         help="draw the Bayes error plot of the calibrated fitting trials")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser


def run(args: argparse.Namespace) -> dict[str, Any]:
    return calibrate_embeddings(args.embeddings, output=args.output, **scoring_options(args),
                                p_effective=args.p_effective, p_target=args.p_target, c_miss=args.c_miss,
                                c_fa=args.c_fa, plot=args.plot, quality=args.quality == "duration")


def render(result: dict[str, Any]) -> str:
    w = result["weights"]
    return "\n".join([
        f"wrote {result['calibration']}",
        f"  fitted on      {result['trials']} : {result['targets']} target, {result['nontargets']} non-target pairs "
        f"(p_effective {result['p_effective']:g})",
        f"  embeddings     {result['embeddings']}",
        f"  normalisation  {result['normalisation']}",
        *([f"  fusion         {result['fusion']}"] if result["fusion"] != "none" else []),
        f"  LLR =          {w[0]:.4f} x score"
        + "".join(f" {'+' if v >= 0 else '-'} {abs(v):.4f} x {q}" for v, q in zip(w[1:], result["quality"]))
        + f" {'+' if result['bias'] >= 0 else '-'} {abs(result['bias']):.4f}",
        "",
        "on the fitting trials (judge it on other ones: speakerzoo score --calibration):",
        *calibration_lines(result["on_fitting_trials"]),
    ])


def main(argv: list[str] | None = None) -> int:
    """``speakerzoo calibrate ...``; returns the exit code (0 done, 2 error)."""
    return run_command("calibrate", argv, build_parser, run, render)


if __name__ == "__main__":
    sys.exit(main())
