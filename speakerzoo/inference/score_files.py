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
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from speakerzoo.embeddings import EmbeddingFile
from speakerzoo.inference.trials import ScoreError, corpus_part, corpus_trials, read_trials
from speakerzoo.plots import Mark, det_figure
from speakerzoo.scoring import (
    Scorer,
    det_curve,
    evaluate_enrolment,
    evaluate_trials,
    fuse_embeddings,
    fuse_scores,
    identification_hits_from_scores,
    speaker_means,
)

__all__ = ["check_cohort_options", "draw_det", "load_cohort", "model_tables", "score_embeddings", "score_enrolment"]


def check_cohort_options(cohort: str | Path | None, mean_norm: bool, asnorm: bool) -> None:
    """A cohort is given exactly when mean-norm or AS-norm is asked for."""
    if (mean_norm or asnorm) and cohort is None:
        raise ScoreError("--mean-norm and --asnorm need --cohort COHORT.h5 (embeddings of other speakers)")
    if cohort is not None and not (mean_norm or asnorm):
        raise ScoreError("--cohort is used by --mean-norm and --asnorm; give one of them (or drop --cohort)")


def score_embeddings(
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
    p_target: float = 0.01,
    c_miss: float = 1.0,
    c_fa: float = 1.0,
    far: float = 0.01,
    det: str | Path | None = None,
    scores_file: str | Path | None = None,
) -> dict[str, Any]:
    """Score the trials of a ``corpus`` part, or of a text trial list ``trials``, with the
    embeddings files ``embeddings`` (several: one per model, combined by ``fusion``, ``"score"`` or
    ``"embedding"``); optionally normalised with a ``cohort`` embeddings file (``mean_norm``,
    ``asnorm`` with ``top_k``). Returns EER, minDCF, identification accuracy and the operating
    point at ``far`` (:func:`~speakerzoo.scoring.evaluate_trials`), what was scored, and the paths
    of the ``det`` image and the ``scores_file`` when asked for."""
    check_cohort_options(cohort, mean_norm, asnorm)
    emb, tables, fused = model_tables(embeddings, fusion, normalised=cohort is not None or mean_norm or asnorm)
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
    if scores_file is not None:
        scores_file = Path(scores_file)
        scores_file.parent.mkdir(parents=True, exist_ok=True)
        with open(scores_file, "w", encoding="utf-8") as f:
            for i, (e, t) in enumerate(zip(trial_list.enrol, trial_list.test)):
                label = "" if trial_list.labels is None else f" {int(trial_list.labels[i])}"
                f.write(f"{e} {t} {float(scores[i]):.6f}{label}\n")
    if trial_list.labels is None:
        raise ScoreError(f"{trials} has no labels: scores were "
                         f"{'written to ' + str(scores_file) if scores_file else 'computed'}, but there is "
                         f"no EER without target/non-target labels")
    labels = trial_list.labels
    if not 0 < int(labels.sum()) < labels.numel():
        raise ScoreError(f"the trials need both target and non-target pairs; got {int(labels.sum())} targets "
                         f"of {labels.numel()}")
    result = evaluate_trials(scores, labels, hits, p_target, c_miss, c_fa, far)
    names = " + ".join(str(p) for p in embeddings)
    result = {"embeddings": names, "trials": trial_list.source, "fusion": fused, "normalisation": normalisation,
              **result}
    if det is not None:
        what = " + ".join(norm) if norm else (fused if fused != "none" else "no score normalisation")
        result["det"] = str(draw_det(det, scores, labels, result,
                                     title=f"{' + '.join(Path(p).name for p in embeddings)}: {what}"))
    if scores_file is not None:
        result["scores_file"] = str(scores_file)
    return result


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
    first, tables, fusion = model_tables(embeddings, fusion)
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
                 normalised: bool = False) -> tuple[EmbeddingFile, list[Tensor], str]:
    """The first embeddings file (its utterance ids index the tables), one embedding table per
    model to score (rows in the first file's order; one table after embedding fusion) and the
    fusion in words. ``normalised``: a cohort normalisation was asked for (not combined with fusion)."""
    files = [EmbeddingFile(p) for p in embeddings]
    if len(files) == 1:
        if fusion is not None:
            raise ScoreError(f"--fusion {fusion} combines several embeddings files (one per model); "
                             f"give two or more, or drop --fusion")
        return files[0], [files[0].embedding], "none"
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
        return first, [fuse_embeddings(tables)], f"embedding fusion of {len(files)} models"
    return first, tables, f"score fusion of {len(files)} models"


def _rates_at(scores: Tensor, labels: Tensor, threshold: float | None) -> tuple[float, float]:
    p_fa, p_miss, thr = det_curve(scores, labels)
    t = math.inf if threshold is None else threshold
    i = int(torch.searchsorted(thr, torch.tensor([t], dtype=thr.dtype))[0].clamp(max=thr.numel() - 1))
    return float(p_fa[i]), float(p_miss[i])


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
