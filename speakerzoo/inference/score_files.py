"""Scoring embeddings files (middle floor): the trials of a corpus part or a trial list, cosine
scores with optional cohort normalisation (mean-norm, AS-norm) or system combination of several
models, the metrics and a DET image. ``speakerzoo score`` is :func:`score_embeddings` and
:func:`score_enrolment`; the arithmetic is :mod:`speakerzoo.scoring`'s, the same functions that
compute the models' ``val/`` and ``test/`` metrics.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from speakerzoo.atomic import replaced_on_success
from speakerzoo.calibration import CalibrationError, ScoreCalibrator
from speakerzoo.embeddings import EmbeddingFile
from speakerzoo.inference.trials import ScoreError, corpus_part, corpus_trials, read_trials
from speakerzoo.plots import Mark, bayes_error_figure, det_figure
from speakerzoo.scoring import (
    Scorer,
    act_dcf,
    bayes_threshold,
    cllr,
    det_curve,
    evaluate_enrolment,
    evaluate_trials,
    fuse_embeddings,
    fuse_scores,
    identification_hits_from_scores,
    min_cllr,
    min_dcf,
    speaker_means,
)

__all__ = ["ScoredTrials", "calibrated_metrics", "calibration_info", "DURATION_QUALITY", "check_cohort_options", "draw_bayes_error", "draw_det", "load_calibration",
           "load_cohort", "model_tables", "score_embeddings", "score_enrolment", "scored_trials", "trial_quality", "write_scores"]


def check_cohort_options(cohort: str | Path | None, mean_norm: bool, asnorm: bool) -> None:
    """A cohort is given exactly when mean-norm or AS-norm is asked for."""
    if (mean_norm or asnorm) and cohort is None:
        raise ScoreError("--mean-norm and --asnorm need --cohort COHORT.h5 (embeddings of other speakers)")
    if cohort is not None and not (mean_norm or asnorm):
        raise ScoreError("--cohort is used by --mean-norm and --asnorm; give one of them (or drop --cohort)")


@dataclass
class ScoredTrials:
    """The trials of a corpus part or a trial list, scored with one or several embeddings files.

    Attributes:
        files: the embeddings files, the first indexing the tables.
        trial_list: the trials (their ``labels`` may be ``None`` for an unlabelled list).
        scores: ``[pairs]`` scores of the verification pairs.
        hits: identification hits of the corpus' identification rows, or ``None``.
        normalisation: the cohort normalisation in words (``"none"``), as it is recorded in a calibration.
        norm: its parts (``["mean-norm", "AS-norm top-200"]``).
        fused: the system combination in words (``"none"`` for one model).
    """

    files: list[EmbeddingFile]
    trial_list: Any
    scores: Tensor
    hits: Tensor | None
    normalisation: str
    norm: list[str]
    fused: str

    @property
    def checkpoints(self) -> list[str]:
        """The checkpoint sha256 of each embeddings file (``""`` where not recorded)."""
        return [str(f.attrs.get("checkpoint_sha256", "")) for f in self.files]

    def labels(self, what: str = "an EER") -> Tensor:
        """The target (1) / non-target (0) labels; a :class:`ScoreError` without them or without both kinds."""
        labels = self.trial_list.labels
        if labels is None:
            raise ScoreError(f"{self.trial_list.source} has no labels: there is no {what} without target/non-target labels")
        if not 0 < int(labels.sum()) < labels.numel():
            raise ScoreError(f"the trials need both target and non-target pairs; got {int(labels.sum())} targets "
                             f"of {labels.numel()}")
        return labels


def scored_trials(
    embeddings: Sequence[str | Path],
    corpus: str | Path | None = None,
    trials: str | Path | None = None,
    split: str = "speaker",
    part: str = "test",
    fusion: str | None = None,
    cohort: str | Path | None = None,
    cohort_speakers: bool = False,
    mean_norm: bool = False,
    asnorm: bool = False,
    top_k: int = 200,
) -> ScoredTrials:
    """Score the trials of a ``corpus`` part, or of a text trial list ``trials``, with the
    embeddings files ``embeddings`` (several: one per model, combined by ``fusion``, ``"score"`` or
    ``"embedding"``); optionally normalised with a ``cohort`` embeddings file (``mean_norm``,
    ``asnorm`` with ``top_k``)."""
    check_cohort_options(cohort, mean_norm, asnorm)
    files, tables, fused = model_tables(embeddings, fusion, normalised=cohort is not None or mean_norm or asnorm)
    emb = files[0]
    trial_list = corpus_trials(corpus, split, part) if corpus is not None else read_trials(trials, known=emb.__contains__)
    try:
        enrol, test = emb.rows(trial_list.enrol), emb.rows(trial_list.test)
        ident = emb.rows([u for row in trial_list.ident for u in row]).view(len(trial_list.ident), -1) \
            if trial_list.ident else None
    except KeyError as err:
        raise ScoreError(f"{err.args[0]} (were the embeddings made from the utterances of these trials?)") from None
    cohort_emb, cohort_text = (None, "")
    if cohort is not None:
        trial_ids = {emb.utt_id[i] for i in torch.cat([enrol, test]).unique().tolist()}
        cohort_emb, cohort_text = load_cohort(Path(cohort), emb, cohort_speakers, trial_ids)
    scorers = [Scorer(t, cohort_emb, mean_norm=mean_norm, asnorm_top_k=top_k if asnorm else None) for t in tables]
    if len(scorers) == 1:
        scores = scorers[0].pairs(enrol, test)
        hits = scorers[0].ident_hits(ident) if ident is not None else None
    else:  # score fusion: each model's scores standardised over the whole trial list, then added
        scores = fuse_scores([s.pairs(enrol, test) for s in scorers])
        hits = identification_hits_from_scores(fuse_scores([s.ident_scores(ident) for s in scorers])) \
            if ident is not None else None
    norm = (["mean-norm"] if mean_norm else []) + ([f"AS-norm top-{top_k}"] if asnorm else [])
    normalisation = (" + ".join(norm) + f" (cohort: {cohort_text})") if norm else "none"
    return ScoredTrials(files, trial_list, scores, hits, normalisation, norm, fused)


#: The quality measures a calibration can take (``calibrate --quality duration``): the log
#: durations in seconds of the enrolment and the test utterance.
DURATION_QUALITY = ("log_duration_enrol", "log_duration_test")


def trial_quality(scored: ScoredTrials, names: Sequence[str]) -> Tensor:
    """The quality measures ``names`` (of :data:`DURATION_QUALITY`) of every pair, ``[pairs, Q]``."""
    unknown = [n for n in names if n not in DURATION_QUALITY]
    if unknown:
        raise CalibrationError(f"unknown quality measure(s) {unknown}; this speakerzoo knows {list(DURATION_QUALITY)}")
    seconds = scored.trial_list.seconds
    if seconds is None:
        raise ScoreError(f"{scored.trial_list.source}: duration quality measures need the utterances' durations; score "
                         "the trials of a corpus (--corpus C.h5) instead of a text trial list")
    columns = {"log_duration_enrol": seconds[0], "log_duration_test": seconds[1]}
    return torch.stack([columns[n].clamp_min(1e-3).log() for n in names], dim=1)


def write_scores(path: str | Path, scored: ScoredTrials, calibrator: ScoreCalibrator | None = None,
                 quality: Tensor | None = None, p_target: float = 0.01) -> Path:
    """``enrol test score [label]`` lines, one per pair; with a calibration ``enrol test score llr
    posterior [label]`` (the posterior of a target at ``p_target``). Complete or not at all."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    trial_list = scored.trial_list
    llr = post = None
    if calibrator is not None:
        llr = calibrator.llr(scored.scores, quality)
        post = calibrator.posterior(scored.scores, p_target, quality)
    with replaced_on_success(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for i, (e, t) in enumerate(zip(trial_list.enrol, trial_list.test)):
            label = "" if trial_list.labels is None else f" {int(trial_list.labels[i])}"
            calibrated = "" if llr is None else f" {float(llr[i]):.4f} {float(post[i]):.6f}"
            f.write(f"{e} {t} {float(scored.scores[i]):.6f}{calibrated}{label}\n")
    return path


def score_embeddings(
    embeddings: Sequence[str | Path],
    p_target: float = 0.01,
    c_miss: float = 1.0,
    c_fa: float = 1.0,
    far: float = 0.01,
    det: str | Path | None = None,
    scores_file: str | Path | None = None,
    calibration: str | Path | None = None,
    plot: str | Path | None = None,
    **scoring: Any,
) -> dict[str, Any]:
    """:func:`scored_trials` (``scoring``: its keyword arguments, ``corpus=`` or ``trials=`` and
    the rest), then EER, minDCF, identification accuracy and the operating point at
    ``far`` (:func:`~speakerzoo.scoring.evaluate_trials`), what was scored, and the paths of the
    ``det`` image and the ``scores_file`` when asked for. With a ``calibration`` file of
    ``speakerzoo calibrate`` (fitted on other trials of the same model and normalisation), also
    the calibrated scores' Cllr, minCllr and actual DCF, and the Bayes decision threshold for
    ``p_target``, ``c_miss`` and ``c_fa`` (:func:`calibrated_metrics`), and with ``plot`` their
    Bayes error plot (:func:`draw_bayes_error`)."""
    if plot is not None and calibration is None:
        raise ScoreError("--plot draws the Bayes error plot of calibrated scores: give --calibration CAL.json too")
    scored = scored_trials(embeddings, **scoring)
    calibrator = load_calibration(calibration, scored) if calibration is not None else None
    quality = trial_quality(scored, calibrator.quality) if calibrator is not None and calibrator.quality else None
    if scores_file is not None:
        write_scores(scores_file, scored, calibrator, quality, p_target)
    if scored.trial_list.labels is None:  # an unlabelled list: the scores are the result
        if scores_file is None:
            raise ScoreError(f"{scored.trial_list.source} has no labels, so there is no EER: give --scores FILE to "
                             "write the scores (with --calibration, their LLRs too)")
        return {"embeddings": " + ".join(str(p) for p in embeddings), "trials": scored.trial_list.source,
                "fusion": scored.fused, "normalisation": scored.normalisation, "pairs": len(scored.trial_list.enrol),
                "labelled": False, "scores_file": str(scores_file),
                **({"calibration": {"file": str(calibration)}} if calibration is not None else {})}
    labels = scored.labels()
    scores = scored.scores
    result = evaluate_trials(scores, labels, scored.hits, p_target, c_miss, c_fa, far)
    names = " + ".join(str(p) for p in embeddings)
    result = {"embeddings": names, "trials": scored.trial_list.source, "fusion": scored.fused,
              "normalisation": scored.normalisation, **result}
    if calibrator is not None:
        result["calibration"] = {"file": str(calibration),
                                 **calibrated_metrics(calibrator, scores, labels, p_target, c_miss, c_fa, quality)}
        if plot is not None:
            result["calibration"]["plot"] = str(draw_bayes_error(
                plot, calibrator.llr(scores, quality), labels, p_target,
                title=f"{' + '.join(Path(p).name for p in embeddings)} calibrated by {Path(calibration).name}"))
    if det is not None:
        norm = scored.norm
        what = " + ".join(norm) if norm else (scored.fused if scored.fused != "none" else "no score normalisation")
        result["det"] = str(draw_det(det, scores, labels, result,
                                     title=f"{' + '.join(Path(p).name for p in embeddings)}: {what}"))
    if scores_file is not None:
        result["scores_file"] = str(scores_file)
    return result


def calibrated_metrics(calibrator: ScoreCalibrator, scores: Tensor, labels: Tensor, p_target: float = 0.01,
                       c_miss: float = 1.0, c_fa: float = 1.0, quality: Tensor | None = None) -> dict[str, Any]:
    """What the calibrated scores (LLRs) of labelled trials are worth: Cllr (bits; below 1 means
    informative), minCllr (what a perfect calibration would reach), the actual DCF of the Bayes
    decisions at ``p_target``, ``c_miss``, ``c_fa`` beside the minimum DCF, and the Bayes
    threshold as an LLR and as a raw score (``None`` with quality measures: it differs per trial)."""
    llr = calibrator.llr(scores, quality)
    theta = bayes_threshold(p_target, c_miss, c_fa)
    try:
        score_threshold: float | None = calibrator.score_threshold(theta)
    except ValueError:
        score_threshold = None
    return {
        "cllr": cllr(llr, labels),
        "min_cllr": min_cllr(llr, labels),
        "act_dcf": act_dcf(llr, labels, p_target, c_miss, c_fa),
        "min_dcf": min_dcf(llr, labels, p_target, c_miss, c_fa),
        "bayes_threshold_llr": theta,
        "bayes_threshold_score": score_threshold,
        "dcf_parameters": {"p_target": p_target, "c_miss": c_miss, "c_fa": c_fa},
        "quality": list(calibrator.quality),
    }


def calibration_info(scored: ScoredTrials) -> dict[str, Any]:
    """What a calibration fitted on ``scored`` records, so that it is applied only to scores like them."""
    checkpoints = scored.checkpoints
    return {"trials": scored.trial_list.source, "embeddings": [str(f.path) for f in scored.files],
            "checkpoint_sha256": checkpoints[0] if len(checkpoints) == 1 else "", "checkpoints_sha256": checkpoints,
            "model_class": str(scored.files[0].attrs.get("model_class", "")), "normalisation": scored.norm,
            "fusion": scored.fused}


def load_calibration(path: str | Path, scored: ScoredTrials) -> ScoreCalibrator:
    """The calibration in ``path``, refused (naming the file and the fix) when it was fitted on
    scores of other checkpoints, another normalisation or another fusion than ``scored``."""
    checkpoints = scored.checkpoints
    calibrator = ScoreCalibrator.load(path, checkpoint_sha256=checkpoints[0] if len(checkpoints) == 1 else None)
    recorded = calibrator.info.get("checkpoints_sha256")
    if recorded and all(recorded) and all(checkpoints) and list(recorded) != checkpoints:
        raise CalibrationError(f"{path} was fitted on the scores of other checkpoints; fit one on these scores with "
                               "`speakerzoo calibrate` (same embeddings options, other trials)")
    calibrator.check_scoring(scored.norm, scored.fused, str(path))
    return calibrator


def score_enrolment(
    embeddings: Sequence[str | Path],
    corpus: str | Path | None,
    counts: Sequence[int],
    split: str = "speaker",
    part: str = "test",
    fusion: str | None = None,
    negatives: int | None = None,
    seed: int | None = None,
    refused: Sequence[str] = (),
) -> dict[str, Any]:
    """``speakerzoo score --enrol-utterances``: EER and identification accuracy with speakers
    enrolled from ``n`` utterances, for each ``n`` in ``counts``, on a corpus part (Li et al.,
    "Deep Speaker: an End-to-End Neural Speaker Embedding System", Table 8). ``refused``: options
    given that do not apply here (named in the error)."""
    if corpus is None:
        raise ScoreError("--enrol-utterances builds its trials from the utterances of a corpus part: give "
                         "--corpus C.h5 (with --split and --part) instead of --trials")
    if refused:
        raise ScoreError(f"{', '.join(refused)} apply to verification pairs, not to --enrol-utterances; drop "
                         f"{'it' if len(refused) == 1 else 'them'}")
    files, tables, fusion = model_tables(embeddings, fusion)
    first = files[0]
    negatives = 99 if negatives is None else negatives
    seed = 0 if seed is None else seed
    ids, speakers = corpus_part(corpus, split, part)
    try:
        rows = first.rows(ids)
    except KeyError as err:
        raise ScoreError(f"{err.args[0]} (--enrol-utterances needs embeddings of every utterance of "
                         f"split {split}, part {part})") from None
    source = f"corpus {corpus}, split {split}, part {part}"
    try:
        result = evaluate_enrolment([t[rows] for t in tables], speakers, counts, negatives, seed)
    except ValueError as err:
        raise ScoreError(f"{source}: {err}; the options are --negatives K and --enrol-utterances N,...") from None
    return {"embeddings": " + ".join(str(p) for p in embeddings), "trials": source, "fusion": fusion,
            "negatives": negatives, "seed": seed, **result}


def load_cohort(path: Path, emb: EmbeddingFile, per_speaker: bool, trial_ids: set[str]) -> tuple[Tensor, str]:
    """The cohort embeddings (every utterance, or one mean per speaker) and a description."""
    cohort = EmbeddingFile(path)
    overlap = trial_ids.intersection(cohort.utt_id)
    if overlap:
        print(f"speakerzoo score: warning: {len(overlap)} trial utterances are also in the cohort "
              f"(e.g. {sorted(overlap)[0]!r}); a cohort should hold other speakers", file=sys.stderr)
    for key in ("checkpoint_sha256", "model_class"):
        mine, theirs = emb.attrs.get(key, ""), cohort.attrs.get(key, "")
        if mine and theirs and mine != theirs:
            raise ScoreError(f"{path} was embedded with another model than {emb.path} ({key} {theirs} vs {mine}); "
                             f"embed the cohort with the same checkpoint")
    if cohort.embedding.shape[1] != emb.embedding.shape[1]:
        raise ScoreError(f"{path} holds {cohort.embedding.shape[1]}-d embeddings, {emb.path} "
                         f"{emb.embedding.shape[1]}-d")
    if not per_speaker:
        return cohort.embedding, f"{len(cohort)} utterances of {path}"
    if len({s for s in cohort.speaker if s}) < 2:
        raise ScoreError(f"{path}: --cohort-speakers needs speaker names for at least 2 speakers in the cohort file")
    means, names = speaker_means(cohort.embedding, cohort.speaker)
    return means, f"{len(names)} speaker means of {path}"
def model_tables(embeddings: Sequence[str | Path], fusion: str | None = None,
                 normalised: bool = False) -> tuple[list[EmbeddingFile], list[Tensor], str]:
    """The embeddings files (the first one's utterance ids index the tables), one embedding table per
    model to score (rows in the first file's order; one table after embedding fusion) and the
    fusion in words. ``normalised``: a cohort normalisation was asked for (not combined with fusion)."""
    files = [EmbeddingFile(p) for p in embeddings]
    if len(files) == 1:
        if fusion is not None:
            raise ScoreError(f"--fusion {fusion} combines several embeddings files (one per model); "
                             f"give two or more, or drop --fusion")
        return files, [files[0].embedding], "none"
    names = ", ".join(str(f.path) for f in files)
    if fusion is None:
        raise ScoreError(f"{len(files)} embeddings files given ({names}): say how to combine them with "
                         f"--fusion score or --fusion embedding (or give one file)")
    if normalised:
        raise ScoreError("--cohort, --mean-norm and --asnorm work on one embeddings file; they are not combined "
                         "with --fusion (score each model alone to normalise its scores)")
    first = files[0]
    known = set(first.utt_id)
    for other in files[1:]:
        if other.utt_id == first.utt_id:
            continue
        theirs = set(other.utt_id)
        missing = next((u for u in first.utt_id if u not in theirs), None)
        if missing is not None:
            raise ScoreError(f"{first.path} and {other.path} hold different utterances: {missing!r} is in "
                             f"{first.path} but not in {other.path}; embed the same utterances with every model")
        extra = next((u for u in other.utt_id if u not in known), None)
        if extra is not None:
            raise ScoreError(f"{first.path} and {other.path} hold different utterances: {extra!r} is in "
                             f"{other.path} but not in {first.path}; embed the same utterances with every model")
    for other in files[1:]:
        digest, theirs = first.attrs.get("checkpoint_sha256", ""), other.attrs.get("checkpoint_sha256", "")
        if digest and digest == theirs:
            print(f"speakerzoo score: warning: {first.path} and {other.path} were embedded with the same checkpoint; "
                  "fusing a model with itself adds nothing", file=sys.stderr)
    tables = [first.embedding] + [f.embedding[f.rows(first.utt_id)] for f in files[1:]]
    if fusion == "embedding":
        sizes = {str(f.path): f.embedding.shape[1] for f in files}
        if len(set(sizes.values())) > 1:
            raise ScoreError("--fusion embedding adds the models' embeddings, so they need the same size; got "
                             + ", ".join(f"{d}-d in {p}" for p, d in sizes.items()) + ": use --fusion score")
        return files, [fuse_embeddings(tables)], f"embedding fusion of {len(files)} models"
    return files, tables, f"score fusion of {len(files)} models"


def _rates_at(scores: Tensor, labels: Tensor, threshold: float | None) -> tuple[float, float]:
    p_fa, p_miss, thr = det_curve(scores, labels)
    t = math.inf if threshold is None else threshold
    i = int(torch.searchsorted(thr, torch.tensor([t], dtype=thr.dtype))[0].clamp(max=thr.numel() - 1))
    return float(p_fa[i]), float(p_miss[i])


def draw_bayes_error(path: str | Path, llr: Tensor, labels: Tensor, p_target: float, title: str = "") -> Path:
    """The Bayes error plot of calibrated scores (:func:`speakerzoo.plots.bayes_error_figure`) into ``path``."""
    fig = bayes_error_figure(llr, labels, title=title, marks=[p_target], dpi=120)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def draw_det(path: str | Path, scores: Tensor, labels: Tensor, result: dict[str, Any], title: str = "") -> Path:
    """A DET curve (:func:`speakerzoo.plots.det_figure`; PNG, or any format matplotlib writes by
    extension) with the EER, minDCF and fixed-FAR operating points marked."""
    marks = [
        (result["eer_threshold"], "o", "tab:red", f"EER {100 * result['eer']:.2f} %"),
        (result["min_dcf_threshold"], "s", "tab:green",
         f"minDCF {result['min_dcf']:.3f} (p={result['dcf_parameters']['p_target']:g})"),
        (result["at_far"]["threshold"], "^", "tab:purple",
         f"FAR ≤ {100 * result['at_far']['far_asked']:g} %: miss {100 * result['at_far']['miss']:.1f} %"),
    ]
    fig = det_figure(scores, labels, [Mark(*_rates_at(scores, labels, t), m, c, text) for t, m, c, text in marks],
                     title=title, dpi=120)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
