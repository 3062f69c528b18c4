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
models' ``val/`` and ``test/`` metrics.

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
import json
import math
import sys
import textwrap
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from speakerzoo.argtypes import number_at_least, parse_or_exit_code, positive_float
from speakerzoo.commands.embed import EmbeddingError, EmbeddingFile
from speakerzoo.plots import Mark, det_figure
from speakerzoo.scoring import (
    OperatingPoint,
    as_norm,
    cohort_stats,
    cosine_scores,
    det_curve,
    eer,
    eer_threshold,
    enrolment_metrics,
    enrolment_scores,
    enrolment_trials,
    fuse_embeddings,
    fuse_scores,
    identification_hits_from_scores,
    mean_normalize,
    min_dcf,
    min_dcf_threshold,
    threshold_at_far,
)

__all__ = ["TrialList", "ScoreError", "parse_trials", "read_trials", "corpus_trials", "corpus_part", "Scorer",
           "evaluate", "evaluate_enrolment", "draw_det", "build_parser", "main"]

_TARGET = {"1", "target", "tgt", "true"}
_NONTARGET = {"0", "nontarget", "non-target", "imp", "impostor", "false"}


class ScoreError(RuntimeError):
    """Scoring cannot go on; the message says why."""


# --------------------------------------------------------------------------- trials


@dataclass
class TrialList:
    """Trials by utterance id.

    Attributes:
        enrol, test: ``M`` utterance ids per side.
        labels: ``[M]`` int64 (1 target, 0 non-target), or ``None`` for an unlabelled list.
        ident: ``A`` rows of ids ``(anchor, positive, negative_1, ...)``, possibly none.
        source: where the trials came from, in words.
    """

    enrol: list[str]
    test: list[str]
    labels: Tensor | None
    ident: list[list[str]]
    source: str


def _label(token: str) -> int | None:
    t = token.lower()
    return 1 if t in _TARGET else 0 if t in _NONTARGET else None


def parse_trials(lines: Iterable[str], known: Callable[[str], bool] | None = None,
                 where: str = "trials") -> tuple[list[str], list[str], list[int] | None, str]:
    """Parse trial lines: ``enrol test``, ``enrol test label`` or ``label enrol test``.

    The layout is detected from all lines: the column that always holds a label
    (``1 0 target nontarget``) is the label. If both the first and the last column always do
    (ids that look like labels), ``known(utt_id)`` decides which reading names known
    utterances. Blank lines and ``#`` comments are skipped.

    Returns ``(enrol, test, labels or None, layout)``.

    Example::

        >>> parse_trials(["1 a.wav b.wav", "0 a.wav c.wav"])
        (['a.wav', 'a.wav'], ['b.wav', 'c.wav'], [1, 0], 'label enrol test')
    """
    rows: list[tuple[int, list[str]]] = []
    for n, line in enumerate(lines, start=1):
        line = line.strip()
        if line and not line.startswith("#"):
            rows.append((n, line.split()))
    if not rows:
        raise ScoreError(f"{where}: no trials (expected lines 'enrol test [label]' or 'label enrol test')")
    widths = {len(tokens) for _, tokens in rows}
    if len(widths) != 1 or widths.pop() not in (2, 3):
        n, tokens = next((n, t) for n, t in rows if len(t) != len(rows[0][1]) or len(t) not in (2, 3))
        raise ScoreError(f"{where}:{n}: expected 2 or 3 columns on every line ('enrol test [label]' or "
                         f"'label enrol test'), got {len(tokens)}: {' '.join(tokens)!r}")
    if len(rows[0][1]) == 2:
        return [t[0] for _, t in rows], [t[1] for _, t in rows], None, "enrol test"
    last = all(_label(t[2]) is not None for _, t in rows)
    first = all(_label(t[0]) is not None for _, t in rows)
    if last and first and known is not None:
        last = all(known(t[0]) and known(t[1]) for _, t in rows)
        first = not last
    if last and not first:
        return [t[0] for _, t in rows], [t[1] for _, t in rows], [_label(t[2]) for _, t in rows], "enrol test label"
    if first and not last:
        return [t[1] for _, t in rows], [t[2] for _, t in rows], [_label(t[0]) for _, t in rows], "label enrol test"
    if first and last:
        raise ScoreError(f"{where}: both the first and the last column hold labels; cannot tell the layout")
    n, tokens = next((n, t) for n, t in rows if _label(t[0]) is None and _label(t[2]) is None)
    raise ScoreError(f"{where}:{n}: no label (1/0/target/nontarget) in the first or last column: {' '.join(tokens)!r}")


def read_trials(path: str | Path, known: Callable[[str], bool] | None = None) -> TrialList:
    """A text trial list (see :func:`parse_trials`)."""
    path = Path(path)
    if not path.is_file():
        raise ScoreError(f"{path}: no such trial list")
    enrol, test, labels, layout = parse_trials(path.read_text(encoding="utf-8-sig").splitlines(), known, str(path))
    return TrialList(enrol, test, None if labels is None else torch.tensor(labels, dtype=torch.int64), [],
                     f"{path} ({layout})")


def corpus_trials(corpus_path: str | Path, split: str = "speaker", part: str = "test") -> TrialList:
    """The verification pairs and identification rows of one part of a corpus, by utterance id."""
    from speakerzoo.datamodules.corpus import Corpus

    corpus = Corpus(corpus_path)
    try:
        pairs, ident = corpus.trials(split, part)
        ids = corpus.texts("utt_id")
    finally:
        corpus.close()
    return TrialList(
        enrol=[ids[i] for i in pairs[:, 0]],
        test=[ids[i] for i in pairs[:, 1]],
        labels=torch.as_tensor(pairs[:, 2], dtype=torch.int64),
        ident=[[ids[i] for i in row] for row in ident],
        source=f"corpus {corpus_path}, split {split}, part {part}",
    )


def corpus_part(corpus_path: str | Path, split: str = "speaker", part: str = "test") -> tuple[list[str], Tensor]:
    """The utterance ids and ``[N]`` int64 speaker numbers (-1: no speaker) of one part of a corpus, in corpus order."""
    from speakerzoo.datamodules.corpus import Corpus

    corpus = Corpus(corpus_path)
    try:
        index = np.sort(corpus.split(split, part))
        ids = corpus.texts("utt_id")
        speakers = torch.as_tensor(corpus.speaker[index], dtype=torch.int64)
    finally:
        corpus.close()
    return [ids[i] for i in index], speakers


# --------------------------------------------------------------------------- scoring


class Scorer:
    """Cosine scores of embedding rows, optionally mean-normalised and AS-normalised.

    Arguments:
        emb: ``[N, D]`` embeddings.
        cohort: ``[C, D]`` cohort embeddings (needed by ``mean_norm`` and ``asnorm_top_k``).
        mean_norm: subtract the cohort mean (of the raw cohort embeddings) from ``emb`` and the
            cohort, then length-normalise (:func:`~speakerzoo.scoring.mean_normalize`).
        asnorm_top_k: apply AS-norm with this many top cohort scores per side; ``None``: no AS-norm.

    Without normalisation the scores are exactly those of :func:`speakerzoo.scoring.score_trials`.
    """

    def __init__(self, emb: Tensor, cohort: Tensor | None = None, mean_norm: bool = False,
                 asnorm_top_k: int | None = None):
        if (mean_norm or asnorm_top_k is not None) and cohort is None:
            raise ScoreError("--mean-norm and --asnorm need cohort embeddings (--cohort COHORT.h5)")
        emb = emb.float()
        if mean_norm:
            mean = cohort.double().mean(dim=0).float()
            self.emb = mean_normalize(emb, mean)
            cohort = mean_normalize(cohort.float(), mean)
        else:
            self.emb = F.normalize(emb, dim=-1)
        self.cohort = None if cohort is None else cohort.float()
        self.top_k = asnorm_top_k
        self._stats: tuple[Tensor, Tensor] | None = None

    def _cohort_stats(self) -> tuple[Tensor, Tensor]:
        if self._stats is None:
            self._stats = cohort_stats(self.emb, self.cohort, self.top_k)
        return self._stats

    def pairs(self, enrol: Tensor, test: Tensor) -> Tensor:
        """``[M]`` scores of rows ``enrol[i]`` against ``test[i]``."""
        scores = (self.emb[enrol] * self.emb[test]).sum(-1)
        if self.top_k is None:
            return scores
        mu, sd = self._cohort_stats()
        return as_norm(scores, (mu[enrol], sd[enrol]), (mu[test], sd[test]))

    def ident_scores(self, rows: Tensor, chunk: int = 1024) -> Tensor:
        """``[A, C - 1]`` scores of ``[A, C]`` rows ``(anchor, positive, negatives...)``: the anchor
        against each candidate, the positive in column 0."""
        scores = []
        for r in rows.split(chunk):
            s = cosine_scores(self.emb[r[:, 0]].unsqueeze(1), self.emb[r[:, 1:]])  # [a, C - 1]
            if self.top_k is not None:
                mu, sd = self._cohort_stats()
                s = as_norm(s, (mu[r[:, :1]], sd[r[:, :1]]), (mu[r[:, 1:]], sd[r[:, 1:]]))
            scores.append(s)
        return torch.cat(scores) if scores else self.emb.new_zeros(0, max(rows.shape[1] - 1, 0))

    def ident_hits(self, rows: Tensor, chunk: int = 1024) -> Tensor:
        """``[A]`` bool for ``[A, C]`` rows ``(anchor, positive, negatives...)``: the positive scores highest."""
        hits = [identification_hits_from_scores(self.ident_scores(r, chunk)) for r in rows.split(chunk)]
        return torch.cat(hits) if hits else torch.zeros(0, dtype=torch.bool)


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def evaluate(scores: Tensor, labels: Tensor, ident_hits: Tensor | None = None, p_target: float = 0.01,
             c_miss: float = 1.0, c_fa: float = 1.0, far: float = 0.01) -> dict[str, Any]:
    """EER, minDCF, identification accuracy and the operating point at ``far``, as plain numbers."""
    result: dict[str, Any] = {
        "pairs": int(labels.numel()),
        "targets": int((labels == 1).sum()),
        "nontargets": int((labels == 0).sum()),
        "eer": eer(scores, labels),
        "eer_threshold": _finite(eer_threshold(scores, labels)),
        "min_dcf": min_dcf(scores, labels, p_target, c_miss, c_fa),
        "min_dcf_threshold": _finite(min_dcf_threshold(scores, labels, p_target, c_miss, c_fa)),
        "dcf_parameters": {"p_target": p_target, "c_miss": c_miss, "c_fa": c_fa},
    }
    point: OperatingPoint = threshold_at_far(scores, labels, far)
    result["at_far"] = {"far_asked": far, "threshold": _finite(point.threshold), "far": point.p_fa,
                        "miss": point.p_miss}
    if ident_hits is not None and ident_hits.numel():
        result["ident_rows"] = int(ident_hits.numel())
        result["ident_acc"] = float(ident_hits.double().mean())
    return result


def evaluate_enrolment(tables: list[Tensor], speakers: Tensor, counts: Iterable[int], negatives: int = 99,
                       seed: int = 0) -> dict[str, Any]:
    """EER and identification accuracy with speakers enrolled from ``n`` utterances, for each ``n`` in ``counts``.

    Arguments:
        tables: one ``[N, D_k]`` embedding table per model, row ``i`` = utterance ``i`` of ``speakers``;
            several are combined by score fusion (fuse embeddings first for embedding fusion).
        speakers: ``[N]`` int64 speaker numbers (-1: no speaker).
        counts, negatives, seed: as :func:`speakerzoo.scoring.enrolment_trials`.

    Returns:
        ``{"anchors", "anchor_speakers", "enrolment": [{"utterances", "anchors", "eer", "ident_acc"}, ...]}``
        (fractions; ``n`` ascending).
    """
    anchors, sets = enrolment_trials(speakers, list(counts), negatives=negatives, seed=seed)
    rows = []
    for n in sorted(sets):
        per_model = [enrolment_scores(t, anchors, sets[n]) for t in tables]
        scores = per_model[0] if len(per_model) == 1 else fuse_scores(per_model)
        e, acc = enrolment_metrics(scores)
        rows.append({"utterances": n, "anchors": int(anchors.numel()), "eer": e, "ident_acc": acc})
    return {"anchors": int(anchors.numel()), "anchor_speakers": int(torch.unique(speakers[anchors]).numel()),
            "enrolment": rows}


# --------------------------------------------------------------------------- DET image

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


# --------------------------------------------------------------------------- command line

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


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a fraction in [0, 1]: {text}")
    return value


def _prior(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1): {text}")
    return value


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
    parser.add_argument("embeddings", type=Path, nargs="+", metavar="EMB.h5",
                        help="embeddings file from `speakerzoo embed`; several (one per model, the same utterances) "
                             "are combined by --fusion")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--corpus", type=Path, metavar="C.h5", help="score this corpus' trials")
    source.add_argument("--trials", type=Path, metavar="FILE", help="score this text trial list")
    parser.add_argument("--split", choices=("speaker", "utterance"), default="speaker",
                        help="corpus trials: the split (default: speaker)")
    parser.add_argument("--part", choices=("val", "test"), default="test", help="corpus trials: the part (default: test)")
    fusion = parser.add_argument_group("system combination (several embeddings files)")
    fusion.add_argument("--fusion", choices=("score", "embedding"),
                        help="score: add each model's scores standardised over the trial list; embedding: add the "
                             "length-normalised embeddings and normalise the sum (same embedding size needed)")
    enrol = parser.add_argument_group("enrolment from several utterances (with --corpus)")
    enrol.add_argument("--enrol-utterances", type=_counts, metavar="N[,N...]",
                       help="instead of the corpus trials: EER and identification accuracy with every speaker "
                            "enrolled from N of its utterances (their average embedding), e.g. 1,2,3,5; anchors "
                            "are the utterances of speakers with more than the largest N")
    enrol.add_argument("--negatives", type=number_at_least(int, 1), metavar="K",
                       help="other speakers each anchor is compared with (default: 99)")
    enrol.add_argument("--seed", type=int, help="seed of the anchors' enrolment sets and negatives (default: 0)")
    norm = parser.add_argument_group("score normalisation")
    norm.add_argument("--cohort", type=Path, metavar="COHORT.h5",
                      help="embeddings of other speakers (e.g. the training part, same checkpoint)")
    norm.add_argument("--cohort-speakers", action="store_true",
                      help="use one mean embedding per cohort speaker instead of every cohort utterance (as wespeaker)")
    norm.add_argument("--mean-norm", action="store_true", help="subtract the cohort mean embedding, re-normalise")
    norm.add_argument("--asnorm", action="store_true", help="adaptive symmetric score normalisation (AS-norm1)")
    norm.add_argument("--top-k", type=number_at_least(int, 2), default=200, metavar="K", help="AS-norm: top cohort scores kept (default: 200)")
    metrics = parser.add_argument_group("metrics")
    metrics.add_argument("--p-target", type=_prior, default=0.01, help="minDCF prior of a target trial (default: 0.01)")
    metrics.add_argument("--c-miss", type=positive_float, default=1.0, help="minDCF cost of a miss (default: 1)")
    metrics.add_argument("--c-fa", type=positive_float, default=1.0, help="minDCF cost of a false accept (default: 1)")
    metrics.add_argument("--far", type=_fraction, default=0.01,
                         help="report the threshold whose false-accept rate is at most this (default: 0.01)")
    out = parser.add_argument_group("output")
    out.add_argument("--det", type=Path, metavar="DET.png", help="draw the DET curve into this image")
    out.add_argument("--scores", type=Path, metavar="FILE", help="write 'enrol test score [label]' lines")
    out.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    return parser


def _error(message: str) -> int:
    print(f"speakerzoo score: error: {message}", file=sys.stderr)
    return 2


def _cohort(path: Path, emb: EmbeddingFile, per_speaker: bool, trial_ids: set[str]) -> tuple[Tensor, str]:
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
    names = sorted({s for s in cohort.speaker if s})
    if len(names) < 2:
        raise ScoreError(f"{path}: --cohort-speakers needs speaker names for at least 2 speakers in the cohort file")
    index = {s: i for i, s in enumerate(names)}
    rows = [i for i, s in enumerate(cohort.speaker) if s]
    groups = torch.tensor([index[cohort.speaker[i]] for i in rows])
    sums = torch.zeros(len(names), cohort.embedding.shape[1], dtype=torch.float64)
    sums.index_add_(0, groups, cohort.embedding[rows].double())
    means = sums / torch.bincount(groups, minlength=len(names)).unsqueeze(1)
    return means.float(), f"{len(names)} speaker means of {path}"


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
    for key, what in (("det", "DET curve"), ("scores_file", "scores")):
        if result.get(key):
            lines.append(f"  {what:<14} {result[key]}")
    return "\n".join(lines)


def _models(args: argparse.Namespace) -> tuple[EmbeddingFile, list[Tensor], str]:
    """The first embeddings file (its utterance ids index the tables), one embedding table per
    model to score (rows in the first file's order; one table after embedding fusion) and the
    fusion in words."""
    files = [EmbeddingFile(p) for p in args.embeddings]
    if len(files) == 1:
        if args.fusion is not None:
            raise ScoreError(f"--fusion {args.fusion} combines several embeddings files (one per model); "
                             f"give two or more, or drop --fusion")
        return files[0], [files[0].embedding], "none"
    names = ", ".join(str(f.path) for f in files)
    if args.fusion is None:
        raise ScoreError(f"{len(files)} embeddings files given ({names}): say how to combine them with "
                         f"--fusion score or --fusion embedding (or give one file)")
    if args.cohort is not None or args.mean_norm or args.asnorm:
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
                  f"fusing a model with itself adds nothing", file=sys.stderr)
    tables = [first.embedding] + [f.embedding[f.rows(first.utt_id)] for f in files[1:]]
    if args.fusion == "embedding":
        sizes = {str(f.path): f.embedding.shape[1] for f in files}
        if len(set(sizes.values())) > 1:
            raise ScoreError("--fusion embedding adds the models' embeddings, so they need the same size; got "
                             + ", ".join(f"{d}-d in {p}" for p, d in sizes.items()) + ": use --fusion score")
        return first, [fuse_embeddings(tables)], f"embedding fusion of {len(files)} models"
    return first, tables, f"score fusion of {len(files)} models"


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


def _score_enrolment(args: argparse.Namespace) -> dict[str, Any]:
    """``--enrol-utterances``: Table 8 of Deep Speaker on the corpus part."""
    if args.corpus is None:
        raise ScoreError("--enrol-utterances builds its trials from the utterances of a corpus part: give "
                         "--corpus C.h5 (with --split and --part) instead of --trials")
    refused = [name for name, given in (("--det", args.det), ("--scores", args.scores), ("--cohort", args.cohort),
                                        ("--mean-norm", args.mean_norm), ("--asnorm", args.asnorm)) if given]
    if refused:
        raise ScoreError(f"{', '.join(refused)} apply to verification pairs, not to --enrol-utterances; drop "
                         f"{'it' if len(refused) == 1 else 'them'}")
    first, tables, fusion = _models(args)
    negatives = 99 if args.negatives is None else args.negatives
    seed = 0 if args.seed is None else args.seed
    ids, speakers = corpus_part(args.corpus, args.split, args.part)
    try:
        rows = first.rows(ids)
    except KeyError as err:
        raise ScoreError(f"{err.args[0]} (--enrol-utterances needs embeddings of every utterance of "
                         f"split {args.split}, part {args.part})") from None
    source = f"corpus {args.corpus}, split {args.split}, part {args.part}"
    try:
        result = evaluate_enrolment([t[rows] for t in tables], speakers, args.enrol_utterances, negatives, seed)
    except ValueError as err:
        raise ScoreError(f"{source}: {err}; the options are --negatives K and --enrol-utterances N,...") from None
    return {"embeddings": " + ".join(str(p) for p in args.embeddings), "trials": source, "fusion": fusion,
            "negatives": negatives, "seed": seed, **result}


def main(argv: list[str] | None = None) -> int:
    """``speakerzoo score ...``; returns the exit code (0 done, 2 error)."""
    args = parse_or_exit_code(build_parser(), argv)
    if isinstance(args, int):
        return args
    from speakerzoo.datamodules.corpus import CorpusError

    try:
        if (args.mean_norm or args.asnorm) and args.cohort is None:
            raise ScoreError("--mean-norm and --asnorm need --cohort COHORT.h5 (embeddings of other speakers)")
        if args.cohort is not None and not (args.mean_norm or args.asnorm):
            raise ScoreError("--cohort is used by --mean-norm and --asnorm; give one of them (or drop --cohort)")
        if args.enrol_utterances is not None:
            result = _score_enrolment(args)
            print(json.dumps(result, indent=2) if args.json else _enrolment_table(result))
            return 0
        if args.negatives is not None or args.seed is not None:
            raise ScoreError("--negatives and --seed apply to --enrol-utterances; the corpus trials were drawn "
                             "when the corpus was prepared")
        emb, tables, fusion = _models(args)
        if args.corpus is not None:
            trials = corpus_trials(args.corpus, args.split, args.part)
        else:
            trials = read_trials(args.trials, known=emb.__contains__)
        try:
            enrol, test = emb.rows(trials.enrol), emb.rows(trials.test)
            ident = emb.rows([u for row in trials.ident for u in row]).view(len(trials.ident), -1) \
                if trials.ident else None
        except KeyError as err:
            raise ScoreError(f"{err.args[0]} (were the embeddings made from the utterances of these trials?)") from None
        cohort, cohort_text = (None, "")
        if args.cohort is not None:
            trial_ids = {emb.utt_id[i] for i in torch.cat([enrol, test]).unique().tolist()}
            cohort, cohort_text = _cohort(args.cohort, emb, args.cohort_speakers, trial_ids)
        scorers = [Scorer(t, cohort, mean_norm=args.mean_norm, asnorm_top_k=args.top_k if args.asnorm else None)
                   for t in tables]
        if len(scorers) == 1:
            scores = scorers[0].pairs(enrol, test)
            hits = scorers[0].ident_hits(ident) if ident is not None else None
        else:  # score fusion: each model's scores standardised over the whole trial list, then added
            scores = fuse_scores([s.pairs(enrol, test) for s in scorers])
            hits = identification_hits_from_scores(fuse_scores([s.ident_scores(ident) for s in scorers])) \
                if ident is not None else None
        norm = []
        if args.mean_norm:
            norm.append("mean-norm")
        if args.asnorm:
            norm.append(f"AS-norm top-{args.top_k}")
        normalisation = (" + ".join(norm) + f" (cohort: {cohort_text})") if norm else "none"
        if args.scores is not None:
            args.scores.parent.mkdir(parents=True, exist_ok=True)
            with open(args.scores, "w", encoding="utf-8") as f:
                for i, (e, t) in enumerate(zip(trials.enrol, trials.test)):
                    label = "" if trials.labels is None else f" {int(trials.labels[i])}"
                    f.write(f"{e} {t} {float(scores[i]):.6f}{label}\n")
        if trials.labels is None:
            raise ScoreError(f"{args.trials} has no labels: scores were "
                             f"{'written to ' + str(args.scores) if args.scores else 'computed'}, but there is "
                             f"no EER without target/non-target labels")
        labels = trials.labels
        if not 0 < int(labels.sum()) < labels.numel():
            raise ScoreError(f"the trials need both target and non-target pairs; got {int(labels.sum())} targets "
                             f"of {labels.numel()}")
        result = evaluate(scores, labels, hits, args.p_target, args.c_miss, args.c_fa, args.far)
        names = " + ".join(str(p) for p in args.embeddings)
        result = {"embeddings": names, "trials": trials.source, "fusion": fusion, "normalisation": normalisation,
                  **result}
        if args.det is not None:
            what = " + ".join(norm) if norm else (fusion if fusion != "none" else "no score normalisation")
            result["det"] = str(draw_det(args.det, scores, labels, result,
                                         title=f"{' + '.join(Path(p).name for p in args.embeddings)}: {what}"))
        if args.scores is not None:
            result["scores_file"] = str(args.scores)
    except (ScoreError, EmbeddingError, CorpusError, ValueError, OSError) as err:
        return _error(str(err))
    print(json.dumps(result, indent=2) if args.json else _table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
