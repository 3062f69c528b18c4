"""Arguments that ``speakerzoo score`` and ``speakerzoo calibrate`` share (top floor): the
embeddings files and their trials, system combination, cohort normalisation and the costs of
errors, and the text of calibrated metrics. Both score the trials with :func:`speakerzoo.inference.score_files.scored_trials`;
:func:`scoring_options` hands it their values."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from speakerzoo.commands.argtypes import number_at_least, positive_float, probability

__all__ = ["add_cost_arguments", "add_trial_arguments", "calibration_lines", "scoring_options"]


def add_trial_arguments(parser: argparse.ArgumentParser, part: str) -> None:
    """The embeddings files, ``--corpus``/``--trials``, ``--split``, ``--part`` (default ``part``),
    ``--fusion`` and the cohort normalisation options."""
    parser.add_argument("embeddings", type=Path, nargs="+", metavar="EMB.h5",
                        help="embeddings file from `speakerzoo embed`; several (one per model, the same utterances) "
                             "are combined by --fusion")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--corpus", type=Path, metavar="C.h5", help="score this corpus' trials")
    source.add_argument("--trials", type=Path, metavar="FILE", help="score this text trial list")
    parser.add_argument("--split", choices=("speaker", "utterance"), default="speaker",
                        help="corpus trials: the split (default: speaker)")
    parser.add_argument("--part", choices=("val", "test"), default=part, help=f"corpus trials: the part (default: {part})")
    fusion = parser.add_argument_group("system combination (several embeddings files)")
    fusion.add_argument("--fusion", choices=("score", "embedding"),
                        help="score: add each model's scores standardised over the trial list; embedding: add the "
                             "length-normalised embeddings and normalise the sum (same embedding size needed)")
    norm = parser.add_argument_group("score normalisation")
    norm.add_argument("--cohort", type=Path, metavar="COHORT.h5",
                      help="embeddings of other speakers (e.g. the training part, same checkpoint)")
    norm.add_argument("--cohort-speakers", action="store_true",
                      help="use one mean embedding per cohort speaker instead of every cohort utterance (as wespeaker)")
    norm.add_argument("--mean-norm", action="store_true", help="subtract the cohort mean embedding, re-normalise")
    norm.add_argument("--asnorm", action="store_true", help="adaptive symmetric score normalisation (AS-norm1)")
    norm.add_argument("--top-k", type=number_at_least(int, 2), default=200, metavar="K",
                      help="AS-norm: top cohort scores kept (default: 200)")


def add_cost_arguments(group: argparse._ArgumentGroup) -> None:
    """``--p-target``, ``--c-miss``, ``--c-fa``: the prior of a target trial and the costs of errors."""
    group.add_argument("--p-target", type=probability, default=0.01,
                       help="prior of a target trial, for minDCF and the Bayes decision (default: 0.01)")
    group.add_argument("--c-miss", type=positive_float, default=1.0, help="cost of a miss (default: 1)")
    group.add_argument("--c-fa", type=positive_float, default=1.0, help="cost of a false accept (default: 1)")


def scoring_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of :func:`~speakerzoo.inference.score_files.scored_trials` in ``args``."""
    return {"corpus": args.corpus, "trials": args.trials, "split": args.split, "part": args.part,
            "fusion": args.fusion, "cohort": args.cohort, "cohort_speakers": args.cohort_speakers,
            "mean_norm": args.mean_norm, "asnorm": args.asnorm, "top_k": args.top_k}


def calibration_lines(cal: dict[str, Any]) -> list[str]:
    """The calibrated metrics of :func:`~speakerzoo.inference.score_files.calibrated_metrics` as text lines."""
    dcf = cal["dcf_parameters"]
    costs = f"p_target {dcf['p_target']:g}, C_miss {dcf['c_miss']:g}, C_fa {dcf['c_fa']:g}"
    score = cal["bayes_threshold_score"]
    return [
        f"  calibrated with {cal['file']}" if "file" in cal else "  calibrated scores (LLRs)",
        f"  {'Cllr':<26} {cal['cllr']:>9.4f} bits  (below 1: informative; minCllr {cal['min_cllr']:.4f} = "
        f"after a perfect calibration)",
        f"  {'actual DCF':<26} {cal['act_dcf']:>9.4f}       (minDCF {cal['min_dcf']:.4f}; {costs})",
        f"  {'decision':<26} accept when LLR >= {cal['bayes_threshold_llr']:.3f}"
        + (f" (score >= {score:.4f})" if score is not None else ""),
        *([f"  {'Bayes error plot':<26} {cal['plot']}"] if cal.get("plot") else []),
    ]
