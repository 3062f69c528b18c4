"""``speakerzoo score``: cosine scoring of a trial list with the embeddings of ``speakerzoo embed``.

Trials come from a corpus file (``--corpus C.h5 --split speaker --part test``: its verification
pairs, and its identification rows for identification accuracy) or from a text file
(``--trials FILE``) with one trial per line, either ``enrol test [label]`` or VoxCeleb's
``label enrol test`` (detected; labels ``1``/``0`` or ``target``/``nontarget``; ids may keep
their audio extension, ``id10270/x6uYqmx31kE/00001.wav``).

Scores are cosine similarities, optionally normalised with a cohort of embeddings of other
speakers (``--cohort``, e.g. the training part embedded with the same checkpoint):
``--mean-norm`` subtracts the cohort mean from every embedding and length-normalises again;
``--asnorm`` applies adaptive symmetric score normalisation (AS-norm1) with the ``--top-k``
highest cohort scores of each side. Reports EER, minDCF, identification accuracy, the
threshold for a chosen false-accept rate, and draws a DET curve on normal-deviate axes.
The numbers are those of :mod:`speakerzoo.scoring`, the same functions that compute the
models' ``val/`` and ``test/`` metrics; the work is :mod:`speakerzoo.inference.score_files`.

System combination (Deep Speaker §5.1.3): several embeddings files, one per model, of the
same utterances (``speakerzoo score A.h5 B.h5 --corpus C.h5 --fusion score|embedding``).
``--fusion embedding`` length-normalises each model's embedding of an utterance, adds them and
length-normalises the sum (:func:`~speakerzoo.scoring.fuse_embeddings`; the models must have the
same embedding size), then scores as usual. ``--fusion score`` scores each model on its own and
adds the scores after standardising each model's scores by their mean and standard deviation
over the whole trial list (:func:`~speakerzoo.scoring.fuse_scores`; for identification over each
model's whole ``[rows, candidates]`` score matrix). Score normalisation with a cohort is not
combined with fusion.

Enrolment from several utterances (Deep Speaker §5.1.5, Table 8): ``--enrol-utterances 1,2,3,5``
with ``--corpus`` evaluates, instead of the corpus' trials, identification rows built from the
utterances of the corpus part: each anchor utterance against its own speaker and ``--negatives``
(default 99) other speakers, each speaker's embedding the average of ``n`` enrolment
utterances (never the anchor), for every ``n`` with the same anchors and negative speakers
(:func:`~speakerzoo.scoring.enrolment_trials`, seeded by ``--seed``). Reports the EER over
all row scores and the identification accuracy per ``n``; works with fusion.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path
from typing import Any

from speakerzoo.commands.argtypes import fraction, number_at_least
from speakerzoo.commands.common import run_command
from speakerzoo.commands.trial_options import add_cost_arguments, add_trial_arguments, calibration_lines, scoring_options
from speakerzoo.inference.score_files import check_cohort_options, score_embeddings, score_enrolment
from speakerzoo.inference.trials import ScoreError

__all__ = ["build_parser", "main", "run"]


EXAMPLES = """examples:
  speakerzoo score emb/test.h5 --corpus data/speech_commands.h5 --split speaker --part test --det det.png
  speakerzoo score emb/test.h5 --corpus data/speech_commands.h5 --mean-norm --cohort emb/train.h5
  speakerzoo score emb/test.h5 --corpus data/speech_commands.h5 --asnorm --cohort emb/train.h5 --top-k 200
  speakerzoo score emb/vox1.h5 --trials veri_test2.txt --scores scores.txt --json
  speakerzoo score emb/resnet.h5 emb/gru.h5 --corpus data/speech_commands.h5 --fusion score
  speakerzoo score emb/test.h5 --corpus data/speech_commands.h5 --enrol-utterances 1,2,3,5
  speakerzoo score emb/resnet.h5 emb/gru.h5 --corpus data/speech_commands.h5 --fusion embedding --enrol-utterances 1,5
"""


def _counts(text: str) -> list[int]:
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive utterance counts separated by commas "
                                         f"(e.g. 1,2,3,5): {text}")
    return sorted(set(values))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="speakerzoo score",
        description=textwrap.fill(
            "Score a trial list by cosine similarity of embeddings from `speakerzoo embed`: EER, minDCF, "
            "identification accuracy (corpus trials), the threshold for a chosen false-accept rate, and a DET curve. "
            "Trials come from the corpus the embeddings were made from (--corpus) or from a text file (--trials: "
            "'enrol test [label]' or VoxCeleb's 'label enrol test' per line). "
            "Several embeddings files (one per model, the same utterances) are combined with --fusion: 'embedding' "
            "adds the length-normalised embeddings of the models and normalises the sum, 'score' adds each "
            "model's scores standardised by their mean and standard deviation over the trial list. "
            "--enrol-utterances 1,2,3,5 (with --corpus) evaluates speakers enrolled from n utterances instead: "
            "each anchor utterance against its own speaker and --negatives other speakers, a speaker's embedding "
            "being the average of n of its utterances (EER and identification accuracy per n)."
        , width=100),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_trial_arguments(parser, part="test")
    enrol = parser.add_argument_group("enrolment from several utterances (with --corpus)")
    enrol.add_argument("--enrol-utterances", type=_counts, metavar="N[,N...]",
                       help="instead of the corpus trials: EER and identification accuracy with every speaker "
                            "enrolled from N of its utterances (their average embedding), e.g. 1,2,3,5; anchors "
                            "are the utterances of speakers with more than the largest N")
    enrol.add_argument("--negatives", type=number_at_least(int, 1), metavar="K",
                       help="other speakers each anchor is compared with (default: 99)")
    enrol.add_argument("--seed", type=int, help="seed of the anchors' enrolment sets and negatives (default: 0)")
    metrics = parser.add_argument_group("metrics")
    add_cost_arguments(metrics)
    metrics.add_argument("--far", type=fraction, default=0.01,
                         help="report the threshold whose false-accept rate is at most this (default: 0.01)")
    metrics.add_argument("--calibration", type=Path, metavar="CAL.json",
                         help="a calibration from `speakerzoo calibrate` (fitted on other trials of the same model and "
                              "normalisation): also report Cllr, minCllr, the actual DCF of its Bayes decisions at "
                              "--p-target, --c-miss, --c-fa, and the decision threshold")
    out = parser.add_argument_group("output")
    out.add_argument("--det", type=Path, metavar="DET.png", help="draw the DET curve into this image")
    out.add_argument("--scores", type=Path, metavar="FILE",
                     help="write 'enrol test score [label]' lines ('enrol test score llr posterior [label]' with "
                          "--calibration, the posterior at --p-target)")
    out.add_argument("--plot", type=Path, metavar="BAYES.png",
                     help="with --calibration: draw the Bayes error plot (actual and minimum DCF across priors)")
    out.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    return parser


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Score as ``args`` say; the result as the JSON object ``--json`` prints."""
    check_cohort_options(args.cohort, args.mean_norm, args.asnorm)
    if args.enrol_utterances is not None:
        refused = [name for name, given in (("--det", args.det), ("--scores", args.scores), ("--cohort", args.cohort),
                                            ("--mean-norm", args.mean_norm), ("--asnorm", args.asnorm),
                                            ("--calibration", args.calibration), ("--plot", args.plot)) if given]
        return score_enrolment(args.embeddings, args.corpus, args.enrol_utterances, args.split, args.part,
                               fusion=args.fusion, negatives=args.negatives, seed=args.seed, refused=refused)
    if args.negatives is not None or args.seed is not None:
        raise ScoreError("--negatives and --seed apply to --enrol-utterances; the corpus trials were drawn "
                         "when the corpus was prepared")
    return score_embeddings(args.embeddings, **scoring_options(args), p_target=args.p_target, c_miss=args.c_miss,
                            c_fa=args.c_fa, far=args.far, det=args.det, scores_file=args.scores,
                            calibration=args.calibration, plot=args.plot)


def _table(result: dict[str, Any]) -> str:
    pct = lambda v: f"{100 * v:.2f} %"  # noqa: E731
    thr = lambda v: "reject all" if v is None else f"{v:.4f}"  # noqa: E731
    dcf = result["dcf_parameters"]
    at = result["at_far"]
    rows = [("EER", pct(result["eer"]), thr(result["eer_threshold"]), ""),
            ("minDCF", f"{result['min_dcf']:.4f}", thr(result["min_dcf_threshold"]),
             f"p_target {dcf['p_target']:g}, C_miss {dcf['c_miss']:g}, C_fa {dcf['c_fa']:g}")]
    if "ident_acc" in result:
        rows.append(("identification accuracy", pct(result["ident_acc"]), "-", f"{result['ident_rows']} rows"))
    rows.append((f"miss at FAR <= {100 * at['far_asked']:g} %", pct(at["miss"]), thr(at["threshold"]),
                 f"measured FAR {pct(at['far'])}"))
    lines = [
        f"scored {result['embeddings']}",
        f"  trials         {result['trials']} : {result['pairs']} pairs ({result['targets']} target, "
        f"{result['nontargets']} non-target)",
        f"  normalisation  {result['normalisation']}",
        *([f"  fusion         {result['fusion']}"] if result.get("fusion", "none") != "none" else []),
        "",
        f"  {'metric':<26} {'value':>9}  {'threshold':>10}",
    ]
    lines += [f"  {name:<26} {value:>9}  {t:>10}" + (f"  ({note})" if note else "") for name, value, t, note in rows]
    if "calibration" in result:
        lines += ["", *calibration_lines(result["calibration"])]
    for key, what in (("det", "DET curve"), ("scores_file", "scores")):
        if result.get(key):
            lines.append(f"  {what:<14} {result[key]}")
    return "\n".join(lines)


def _enrolment_table(result: dict[str, Any]) -> str:
    lines = [
        f"enrolment from several utterances: {result['embeddings']}",
        f"  trials   {result['trials']}",
        f"           {result['anchors']} anchors of {result['anchor_speakers']} speakers, each against its own "
        f"speaker and {result['negatives']} others (seed {result['seed']})",
        f"  fusion   {result['fusion']}",
        "",
        f"  {'#utt':>5} {'anchors':>8} {'EER':>9} {'ACC':>9}",
    ]
    lines += [f"  {r['utterances']:>5} {r['anchors']:>8} {100 * r['eer']:>7.2f} % {100 * r['ident_acc']:>7.2f} %"
              for r in result["enrolment"]]
    return "\n".join(lines)


def _unlabelled(result: dict[str, Any]) -> str:
    calibrated = f", with LLRs by {result['calibration']['file']}" if "calibration" in result else ""
    return (f"scored {result['embeddings']}\n  trials         {result['trials']} : {result['pairs']} pairs, no labels "
            f"(no EER)\n  normalisation  {result['normalisation']}\n  scores         {result['scores_file']}{calibrated}")


def render(result: dict[str, Any]) -> str:
    if "enrolment" in result:
        return _enrolment_table(result)
    return _unlabelled(result) if result.get("labelled") is False else _table(result)


def main(argv: list[str] | None = None) -> int:
    """``speakerzoo score ...``; returns the exit code (0 done, 2 error)."""
    return run_command("score", argv, build_parser, run, render)


if __name__ == "__main__":
    sys.exit(main())
