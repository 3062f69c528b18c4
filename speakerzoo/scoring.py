"""Scoring of speaker embeddings (ground floor): trials, cosine scores, EER, minDCF, identification,
score normalisation (cohort mean, AS-norm), deployment thresholds, system combination of several
models (embedding and score fusion) and speakers enrolled from several utterances.

Imports nothing of ours; the DataModules hand trials to models as :class:`Trials`.

Conventions:

* a trial is *accepted* when its score is ``>= threshold``; thresholds range over every
  distinct score and ``+inf`` (reject everything), so each operating point of the
  empirical DET curve is visited exactly once and equal scores always move together;
* the functional metrics (:func:`eer`, :func:`min_dcf`, ...) return python floats; the
  EER is a fraction in ``[0, 1]`` (not percent) and minDCF is the *normalised* detection
  cost (``1.0`` = no better than always rejecting / always accepting);
* the torchmetrics classes (:class:`EqualErrorRate`, :class:`MinDCF`) return 0-d float64
  tensors, as torchmetrics does, with the same values.

Example::

    >>> import torch
    >>> scores = torch.tensor([0.9, 0.8, 0.3, 0.7, 0.2, 0.1], dtype=torch.float64)
    >>> labels = torch.tensor([1, 1, 1, 0, 0, 0])
    >>> eer(scores, labels)
    0.3333333333333333
    >>> eer_threshold(scores, labels)  # accept score >= 0.3: P_fa = 1/3, P_miss = 0
    0.3
    >>> round(min_dcf(scores, labels, p_target=0.5), 4)
    0.3333
"""

from __future__ import annotations

from dataclasses import dataclass
import math
from collections.abc import Iterable
from typing import Any, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat


@dataclass
class Trials:
    """Evaluation trials over utterances of one corpus split, by corpus utterance index.

    Attributes:
        pairs: ``[M, 3]`` int64 rows ``(enrol, test, label)``, label 1 for the same speaker
            and 0 for different speakers (verification).
        ident: ``[A, 2 + W]`` int64 rows ``(anchor, positive, negative_1 .. negative_W)``, W = 99 or fewer:
            one anchor scored against one utterance of its own speaker and 99 of other
            speakers (Deep Speaker, seed 001 §4.1; identification accuracy is the share of
            rows whose positive scores highest).
    """

    pairs: Tensor
    ident: Tensor

    def utterances(self) -> Tensor:
        """Sorted unique utterance indices that the trials need embeddings for."""
        return torch.unique(torch.cat([self.pairs[:, :2].reshape(-1), self.ident.reshape(-1)]))


# --------------------------------------------------------------------------- cosine scores


def cosine_scores(emb_a: Tensor, emb_b: Tensor) -> Tensor:
    """Row-wise cosine similarity of ``[..., D]`` embeddings (broadcasting) -> ``[...]``."""
    return (F.normalize(emb_a, dim=-1) * F.normalize(emb_b, dim=-1)).sum(-1)


def mean_normalize(emb: Tensor, cohort_mean: Tensor) -> Tensor:
    """Score normalisation by the mean of a cohort: subtract it, then length-normalise.

    ``cohort_mean`` is the ``[D]`` mean of (training) embeddings computed the same way as
    ``emb`` (wespeaker's ``mean_vec`` subtraction); cosine scores of the results are the
    normalised scores.

    Example::

        >>> e = torch.tensor([[2.0, 1.0], [0.0, 3.0]])
        >>> mean_normalize(e, torch.tensor([1.0, 1.0]))
        tensor([[ 1.0000,  0.0000],
                [-0.4472,  0.8944]])
    """
    return F.normalize(emb - cohort_mean, dim=-1)


# --------------------------------------------------------------------------- DET curve, EER, minDCF


def _check_binary(scores: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    scores = torch.as_tensor(scores).detach().flatten()
    labels = torch.as_tensor(labels, device=scores.device).detach().flatten()
    if scores.shape != labels.shape:
        raise ValueError(f"scores and labels differ in size: {scores.numel()} vs {labels.numel()}")
    if not scores.is_floating_point():
        scores = scores.double()
    labels = labels.bool()
    n_pos = int(labels.sum())
    if n_pos == 0 or n_pos == labels.numel():
        raise ValueError(
            f"need both target and non-target trials to score; got {n_pos} targets out of {labels.numel()} trials"
        )
    return scores, labels


def det_curve(scores: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Empirical DET curve: false-alarm and miss rates at every distinct threshold.

    Arguments:
        scores: ``[N]`` trial scores (higher = more likely the same speaker).
        labels: ``[N]`` 1/True for target trials, 0/False for non-target trials.

    Returns:
        ``(p_fa, p_miss, thresholds)``, float64 tensors of length ``distinct scores + 1``,
        thresholds ascending: the lowest score (accept all: ``p_fa = 1, p_miss = 0``) up to
        ``+inf`` (reject all: ``p_fa = 0, p_miss = 1``). Accepting means ``score >= threshold``.

    Example::

        >>> p_fa, p_miss, t = det_curve(torch.tensor([0.1, 0.5, 0.5, 0.9], dtype=torch.float64), torch.tensor([0, 1, 0, 1]))
        >>> t.tolist(), p_fa.tolist(), p_miss.tolist()
        ([0.1, 0.5, 0.9, inf], [1.0, 0.5, 0.0, 0.0], [0.0, 0.0, 0.5, 1.0])
    """
    # Written by hand rather than with torchmetrics' ``binary_roc``: that function treats
    # scores outside [0, 1] as logits and applies a sigmoid first, which in float32
    # saturates normalised scores (AS-norm scores of 20 and more all become 1.0) and so
    # merges distinct scores into ties, changing the EER. Sorting the raw scores is exact.
    #
    # speechbrain's ``speechbrain.utils.metric_stats.EER``/``minDCF`` do not match the
    # definition used here. Measured on random scores (200 trials, 30% targets, 30 seeds):
    # ``EER`` differed from the brute-force value in 27/30 cases, by up to 0.005 absolute (it
    # accepts with ``score > t``, adds midpoints between scores as thresholds, and returns the
    # *average* of FAR and FRR where they are closest, with a python loop over thresholds);
    # ``minDCF`` differed in 30/30 because it returns the *unnormalised* cost (divided by
    # ``min(c_miss * p_target, c_fa * (1 - p_target))`` it matched in 30/30, but its thresholds
    # lack the accept-all point, which is optimal for large p_target), and it builds a
    # [thresholds x trials] matrix (quadratic memory on VoxCeleb-size trial lists).
    scores, labels = _check_binary(scores, labels)
    order = torch.argsort(scores, descending=True, stable=True)
    s = scores[order]
    y = labels[order]
    tp = torch.cumsum(y, 0, dtype=torch.float64)  # accepted targets when accepting s[: i + 1]
    fp = torch.cumsum(~y, 0, dtype=torch.float64)
    n_pos, n_neg = tp[-1], fp[-1]
    # Only the last position of each run of equal scores is an operating point: equal
    # scores are accepted or rejected together.
    last = torch.ones_like(y)
    last[:-1] = s[:-1] != s[1:]
    tp, fp, thr = tp[last], fp[last], s[last].double()
    zero = tp.new_zeros(1)
    # Prepend the reject-all point (threshold +inf), then flip the descending arrays so that
    # thresholds ascend: index 0 = lowest score (accept all) ... last = +inf (reject all).
    tp = torch.cat([zero, tp]).flip(0)
    fp = torch.cat([zero, fp]).flip(0)
    thr = torch.cat([torch.full_like(zero, float("inf")), thr]).flip(0)
    p_fa = fp / n_neg
    p_miss = 1.0 - tp / n_pos
    return p_fa, p_miss, thr


def _eer(scores: Tensor, labels: Tensor) -> tuple[float, float]:
    p_fa, p_miss, thr = det_curve(scores, labels)
    worst = torch.maximum(p_fa, p_miss)
    i = int(torch.argmin(worst))
    return float(worst[i]), float(thr[i])


def eer(scores: Tensor, labels: Tensor) -> float:
    """Equal error rate as a fraction in ``[0, 1]``: ``min_t max(P_fa(t), P_miss(t))``.

    On an empirical DET curve the two rates rarely cross exactly; this is the smallest
    error rate at which both stay below it (no interpolation).
    """
    return _eer(scores, labels)[0]


def eer_threshold(scores: Tensor, labels: Tensor) -> float:
    """Threshold (accept ``score >= t``) at the :func:`eer` operating point; the lowest if several."""
    return _eer(scores, labels)[1]


def normalized_dcf(p_miss: Tensor, p_fa: Tensor, p_target: float | Tensor, c_miss: float = 1.0,
                   c_fa: float = 1.0) -> Tensor:
    """NIST's normalised detection cost of miss and false-alarm rates: ``(c_miss p_target P_miss +
    c_fa (1 - p_target) P_fa) / min(c_miss p_target, c_fa (1 - p_target))``, 1 for a system that
    always rejects or always accepts. ``p_target`` may be a tensor of priors (broadcast)."""
    p = torch.as_tensor(p_target, dtype=torch.float64)
    return (c_miss * p * p_miss + c_fa * (1 - p) * p_fa) / torch.minimum(c_miss * p, c_fa * (1 - p))


def _min_dcf(scores: Tensor, labels: Tensor, p_target: float, c_miss: float, c_fa: float) -> tuple[float, float]:
    p_fa, p_miss, thr = det_curve(scores, labels)
    cost = normalized_dcf(p_miss, p_fa, p_target, c_miss, c_fa)
    i = int(torch.argmin(cost))
    return float(cost[i]), float(thr[i])


def min_dcf(scores: Tensor, labels: Tensor, p_target: float = 0.01, c_miss: float = 1.0, c_fa: float = 1.0) -> float:
    """Normalised minimum detection cost (NIST SRE): over thresholds ``t``, the minimum of
    ``(c_miss * P_miss(t) * p_target + c_fa * P_fa(t) * (1 - p_target)) / min(c_miss * p_target, c_fa * (1 - p_target))``.
    """
    return _min_dcf(scores, labels, p_target, c_miss, c_fa)[0]


def min_dcf_threshold(
    scores: Tensor, labels: Tensor, p_target: float = 0.01, c_miss: float = 1.0, c_fa: float = 1.0
) -> float:
    """Threshold (accept ``score >= t``) at the :func:`min_dcf` operating point; the lowest if several."""
    return _min_dcf(scores, labels, p_target, c_miss, c_fa)[1]


class OperatingPoint(NamedTuple):
    """One point of a DET curve: accept ``score >= threshold``; the error rates there are fractions."""

    threshold: float
    p_fa: float
    p_miss: float


def threshold_at_far(scores: Tensor, labels: Tensor, far: float = 0.01) -> OperatingPoint:
    """The deployment threshold for a false-accept rate of at most ``far``.

    Of the thresholds whose measured false-accept rate is ``<= far``, the one with the largest
    such rate; of several with that rate, the lowest (it misses fewest targets). Returns the
    threshold and the false-accept and miss rates measured there; the threshold is ``+inf``
    (reject everything) when no score lets a non-target through at or below ``far``.

    Example::

        >>> s = torch.tensor([0.9, 0.8, 0.6, 0.7, 0.5, 0.2, 0.1], dtype=torch.float64)
        >>> y = torch.tensor([1, 1, 1, 0, 0, 0, 0])
        >>> threshold_at_far(s, y, far=0.25)  # accept >= 0.6: 1 of 4 non-targets passes (0.7)
        OperatingPoint(threshold=0.6, p_fa=0.25, p_miss=0.0)
        >>> t, p_fa, p_miss = threshold_at_far(s, y, far=0.2)  # no non-target may pass: accept >= 0.8
        >>> t, p_fa, round(p_miss, 4)
        (0.8, 0.0, 0.3333)
    """
    if not 0.0 <= far <= 1.0:
        raise ValueError(f"far must be a fraction in [0, 1], not {far}")
    p_fa, p_miss, thr = det_curve(scores, labels)
    # Thresholds ascend and p_fa never rises with them: the first point at or below ``far`` has
    # the largest such rate and, of the points sharing it, the lowest threshold.
    i = int(torch.nonzero(p_fa <= far)[0])  # the reject-all point (p_fa = 0) always qualifies
    return OperatingPoint(float(thr[i]), float(p_fa[i]), float(p_miss[i]))


def det_plot_data(scores: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """DET curve on normal-deviate axes, as a standard DET plot draws it.

    Returns ``(x, y)``: ``x = Φ⁻¹(P_fa)`` and ``y = Φ⁻¹(P_miss)`` (probit) at every operating
    point of :func:`det_curve`, thresholds ascending, so ``x`` never rises and ``y`` never falls.
    Rates of 0 and 1 give ``-inf`` and ``+inf``: clip them to the plot's axis limits.

    Example::

        >>> x, y = det_plot_data(torch.tensor([0.1, 0.5, 0.5, 0.9], dtype=torch.float64), torch.tensor([0, 1, 0, 1]))
        >>> x.tolist(), y.tolist()
        ([inf, 0.0, -inf, -inf], [-inf, -inf, 0.0, inf])
    """
    p_fa, p_miss, _ = det_curve(scores, labels)
    return torch.special.ndtri(p_fa), torch.special.ndtri(p_miss)


# --------------------------------------------------------------------------- calibration metrics
#
# Scores as log-likelihood ratios (N. Brümmer, J. du Preez, "Application-independent evaluation of
# speaker detection", Computer Speech and Language 20, 2006): Cllr, its minimum over monotone
# maps of the scores (PAV), and the actual detection cost of the Bayes decisions an LLR implies.
# Cllr and the actual DCF are written here (torchmetrics and speechbrain have neither); the
# isotonic regression under minCllr is scipy's.


def bayes_threshold(p_target: float = 0.01, c_miss: float = 1.0, c_fa: float = 1.0) -> float:
    """The LLR above which accepting costs less than rejecting, for a prior ``p_target`` and the
    costs of a miss and a false alarm: ``log(c_fa * (1 - p_target) / (c_miss * p_target))``."""
    if not 0.0 < p_target < 1.0:
        raise ValueError(f"p_target must be in (0, 1), not {p_target}")
    if c_miss <= 0 or c_fa <= 0:
        raise ValueError(f"the costs must be positive, got c_miss={c_miss}, c_fa={c_fa}")
    return math.log(c_fa * (1.0 - p_target) / (c_miss * p_target))


def cllr(llr: Tensor, labels: Tensor) -> float:
    """Log-likelihood-ratio cost in bits: ``(mean_targets log2(1 + e^-llr) + mean_nontargets
    log2(1 + e^llr)) / 2``. 0 is perfect; 1 is what an LLR of 0 for every trial costs (no
    information); above 1, the LLRs mislead.

    Example::

        >>> cllr(torch.zeros(4, dtype=torch.float64), torch.tensor([1, 0, 1, 0]))
        1.0
    """
    llr, labels = _check_binary(llr, labels)
    llr = llr.double()
    target = F.softplus(-llr[labels]).mean()  # softplus(x) = log(1 + e^x), exact at large |x|
    nontarget = F.softplus(llr[~labels]).mean()
    return float((target + nontarget) / (2 * math.log(2)))


def pav(scores: Tensor, labels: Tensor) -> Tensor:
    """The posterior probability of a target, per trial, that the pool-adjacent-violators
    algorithm fits to the labels: the non-decreasing function of the score closest to the labels
    in squared error (isotonic regression), equal scores pooled. float64, in the input order."""
    from scipy.optimize import isotonic_regression  # scipy's pool-adjacent-violators

    scores, labels = _check_binary(scores, labels)
    s = scores.detach().double().cpu().numpy()
    y = labels.cpu().numpy().astype(np.float64)
    order = np.argsort(s, kind="stable")
    s, y = s[order], y[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # runs of equal scores are pooled first
    counts = np.diff(np.r_[starts, len(s)])
    run_means = isotonic_regression(np.add.reduceat(y, starts) / counts, weights=counts.astype(np.float64)).x
    fit = np.empty(len(s))
    fit[order] = np.repeat(run_means, counts)
    return torch.from_numpy(fit)


def pav_llr(scores: Tensor, labels: Tensor) -> Tensor:
    """The LLRs of the best monotone map of ``scores`` (:func:`pav`'s posteriors divided by the
    prior of the trial list itself); ``±inf`` where a block holds only one class."""
    scores, labels = _check_binary(scores, labels)
    prior = float(labels.double().mean())
    return torch.special.logit(pav(scores, labels)) - math.log(prior / (1 - prior))


def min_cllr(scores: Tensor, labels: Tensor) -> float:
    """The Cllr that a perfect calibration of ``scores`` would reach (:func:`cllr` of
    :func:`pav_llr`): what the scores can tell, whatever their scale. ``cllr(llr) - min_cllr(llr)``
    is the calibration loss.

    Example::

        >>> s = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
        >>> min_cllr(s, torch.tensor([0, 0, 1, 1]))  # perfectly separated
        0.0
    """
    return cllr(pav_llr(scores, labels), labels)


def act_dcf(llr: Tensor, labels: Tensor, p_target: float = 0.01, c_miss: float = 1.0, c_fa: float = 1.0) -> float:
    """Normalised actual detection cost of accepting ``llr >= bayes_threshold(p_target, c_miss, c_fa)``:
    the cost of the decisions the LLRs make themselves, normalised as :func:`min_dcf` (which
    chooses the best threshold after the fact, so ``act_dcf >= min_dcf``)."""
    llr, labels = _check_binary(llr, labels)
    accept = llr >= bayes_threshold(p_target, c_miss, c_fa)
    return float(normalized_dcf((~accept[labels]).double().mean(), accept[~labels].double().mean(), p_target, c_miss, c_fa))


def bayes_error_curve(llr: Tensor, labels: Tensor, prior_log_odds: Tensor) -> tuple[Tensor, Tensor]:
    """Normalised DCF (``c_miss = c_fa = 1``) over a range of priors, as a Bayes error plot shows it
    (Brümmer and du Preez 2006): at each prior log-odds ``eta``, the actual cost of accepting
    ``llr >= -eta`` and the minimum cost, that of the best monotone recalibration
    (:func:`pav_llr`) decided the same way. float64, one value per ``prior_log_odds``.

    Example::

        >>> llr = torch.tensor([2.0, 1.0, -1.0, -2.0], dtype=torch.float64)
        >>> actual, minimum = bayes_error_curve(llr, torch.tensor([1, 1, 0, 0]), torch.tensor([0.0]))
        >>> float(actual[0]), float(minimum[0])
        (0.0, 0.0)
    """
    llr, labels = _check_binary(llr, labels)
    eta = torch.as_tensor(prior_log_odds, dtype=torch.float64).flatten()

    def cost(values: Tensor) -> Tensor:
        target = torch.sort(values[labels].double()).values
        nontarget = torch.sort(values[~labels].double()).values
        threshold = (-eta).contiguous()
        p_miss = torch.searchsorted(target, threshold, side="left").double() / target.numel()  # llr < -eta
        p_fa = 1 - torch.searchsorted(nontarget, threshold, side="left").double() / nontarget.numel()  # llr >= -eta
        return normalized_dcf(p_miss, p_fa, torch.sigmoid(eta))

    return cost(llr), cost(pav_llr(llr, labels))


class OpenSetPoint(NamedTuple):
    """Open-set identification at one threshold (accept a probe's best match when its score is
    ``>= threshold``): the detection and identification rate of probes of enrolled speakers (best
    match right *and* accepted) and the false-alarm rate of impostor probes (best match accepted)."""

    threshold: float
    dir: float
    far: float


def open_set_identification(scores: Tensor, truth: Tensor, far: float | None = 0.01,
                            threshold: float | None = None) -> OpenSetPoint:
    """Open-set identification (ISO/IEC 19795-1's detection and identification rate): ``scores``
    ``[probes, enrolled]``, ``truth`` ``[probes]`` the column of each probe's own speaker or -1 for
    an impostor (a speaker who is not enrolled). At the given ``threshold``, or else at the lowest
    threshold whose false-alarm rate is at most ``far`` (thresholds range over the probes' best
    scores and ``+inf``, as :func:`threshold_at_far`'s do).

    Example::

        >>> s = torch.tensor([[0.9, 0.1], [0.2, 0.7], [0.6, 0.3], [0.4, 0.2]])
        >>> open_set_identification(s, torch.tensor([0, 0, -1, -1]), far=0.5)   # accept >= 0.6: one impostor of two
        OpenSetPoint(threshold=0.6000000238418579, dir=0.5, far=0.5)
    """
    scores = torch.as_tensor(scores).detach()
    truth = torch.as_tensor(truth, device=scores.device).long().flatten()
    if scores.dim() != 2 or scores.shape[0] != truth.numel() or scores.shape[1] < 1:
        raise ValueError(f"expected scores [probes, enrolled] and truth [probes]; got {tuple(scores.shape)} and "
                         f"{tuple(truth.shape)}")
    impostor = truth < 0
    if not impostor.any() or impostor.all():
        raise ValueError("open-set identification needs probes of enrolled speakers and impostor probes")
    if int(truth.max()) >= scores.shape[1]:
        raise ValueError(f"truth names column {int(truth.max())} of {scores.shape[1]} enrolled speakers")
    best, column = scores.double().max(dim=1)
    right = (~impostor) & (column == truth.clamp(min=0))
    if threshold is None:
        if far is None or not 0.0 <= far <= 1.0:
            raise ValueError(f"far must be a fraction in [0, 1], not {far}")
        candidates = torch.cat([best.unique(), best.new_tensor([math.inf])])  # ascending
        imp = torch.sort(best[impostor]).values
        rates = 1 - torch.searchsorted(imp, candidates, side="left").double() / imp.numel()  # share >= t
        threshold = float(candidates[int(torch.nonzero(rates <= far)[0])])
    accepted = best >= threshold
    return OpenSetPoint(float(threshold), float((right & accepted)[~impostor].double().mean()),
                        float(accepted[impostor].double().mean()))


# --------------------------------------------------------------------------- score normalisation


def cohort_stats(emb: Tensor, cohort: Tensor, top_k: int = 200, chunk: int = 1024) -> tuple[Tensor, Tensor]:
    """Mean and standard deviation of each embedding's ``top_k`` highest cosine scores against a cohort.

    The statistics of adaptive score normalisation (AS-norm; Matějka et al., Interspeech 2017;
    wespeaker's ``score_norm.py``): the cohort is a set of embeddings of speakers that are not
    in the trials (e.g. the training part); the standard deviation is the population one
    (``ddof = 0``, as ``numpy.std``).

    Arguments:
        emb: ``[N, D]`` embeddings (enrolment or test side).
        cohort: ``[C, D]`` cohort embeddings, ``C >= 2``.
        top_k: cohort scores kept per embedding (all ``C`` when ``top_k >= C``); at least 2.
        chunk: rows of ``emb`` scored at a time (bounds memory at ``chunk x C``: 123 MB for a 30 k cohort).

    Returns:
        ``(mean [N], std [N])`` in the dtype of the inputs.
    """
    if top_k < 2:
        raise ValueError(f"top_k must be at least 2 (a standard deviation needs two scores), not {top_k}")
    if cohort.dim() != 2 or cohort.shape[0] < 2:
        raise ValueError(f"the cohort must be [C >= 2, D] embeddings; got shape {tuple(cohort.shape)}")
    if emb.dim() != 2 or emb.shape[1] != cohort.shape[1]:
        raise ValueError(f"embeddings {tuple(emb.shape)} and cohort {tuple(cohort.shape)} differ in dimension")
    k = min(int(top_k), cohort.shape[0])
    c = F.normalize(cohort, dim=-1)
    means, stds = [], []
    for start in range(0, emb.shape[0], chunk):
        s = F.normalize(emb[start : start + chunk], dim=-1) @ c.T
        top = torch.topk(s, k, dim=1).values
        means.append(top.mean(dim=1))
        stds.append(top.std(dim=1, correction=0))
    if not means:
        empty = emb.new_zeros(0)
        return empty, empty.clone()
    return torch.cat(means), torch.cat(stds)


def as_norm(scores: Tensor, enrol_stats: tuple[Tensor, Tensor], test_stats: tuple[Tensor, Tensor]) -> Tensor:
    """Adaptive symmetric score normalisation (AS-norm1):
    ``((s - mu_e) / sd_e + (s - mu_t) / sd_t) / 2``.

    ``enrol_stats`` and ``test_stats`` are ``(mean, std)`` from :func:`cohort_stats` of the
    enrolment and the test embedding of each score, shaped to broadcast with ``scores``
    (``[M]`` for ``[M]`` trial pairs; ``[A, 1]`` and ``[A, C]`` for ``[A, C]`` identification scores).

    Example::

        >>> as_norm(torch.tensor([0.5]), (torch.tensor([0.1]), torch.tensor([0.2])), (torch.tensor([0.3]), torch.tensor([0.1])))
        tensor([2.])
    """
    (mu_e, sd_e), (mu_t, sd_t) = enrol_stats, test_stats
    return 0.5 * ((scores - mu_e) / sd_e + (scores - mu_t) / sd_t)


# --------------------------------------------------------------------------- identification


def identification_hits(anchor_emb: Tensor, candidate_emb: Tensor, chunk: int = 1024) -> Tensor:
    """Whether each anchor's positive candidate (column 0) scores strictly highest.

    Arguments:
        anchor_emb: ``[A, D]``.
        candidate_emb: ``[A, C, D]`` with the positive in column 0 and ``C - 1 >= 1`` negatives.
        chunk: rows scored at a time (bounds memory for long trial lists).

    Returns:
        ``[A]`` bool; a tie with a negative counts as a miss.
    """
    if candidate_emb.dim() != 3 or candidate_emb.shape[1] < 2 or candidate_emb.shape[0] != anchor_emb.shape[0]:
        raise ValueError(
            f"expected anchors [A, D] and candidates [A, C>=2, D]; got {tuple(anchor_emb.shape)} and {tuple(candidate_emb.shape)}"
        )
    hits = []
    for start in range(0, anchor_emb.shape[0], chunk):
        a = anchor_emb[start : start + chunk]
        c = candidate_emb[start : start + chunk]
        s = cosine_scores(a.unsqueeze(1), c)  # [a, C]
        hits.append(s[:, 0] > s[:, 1:].amax(dim=1))
    if not hits:
        return torch.zeros(0, dtype=torch.bool, device=anchor_emb.device)
    return torch.cat(hits)


def identification_hits_from_scores(scores: Tensor) -> Tensor:
    """``[A, C]`` scores with the positive candidate in column 0 -> ``[A]`` bool: it scores strictly
    highest (a tie with a negative is a miss, as in :func:`identification_hits`). For normalised
    scores (e.g. :func:`as_norm`), where cosine of embeddings no longer ranks the candidates."""
    if scores.dim() != 2 or scores.shape[1] < 2:
        raise ValueError(f"expected [A, C>=2] scores, got shape {tuple(scores.shape)}")
    return scores[:, 0] > scores[:, 1:].amax(dim=1)


def identification_accuracy(anchor_emb: Tensor, candidate_emb: Tensor) -> float:
    """Share of rows in which the positive (column 0 of ``[A, C, D]`` candidates) scores strictly highest.

    Example::

        >>> anchors = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> cands = torch.tensor([[[1.0, 0.1], [0.0, 1.0], [1.0, 0.5]],
        ...                       [[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]])
        >>> identification_accuracy(anchors, cands)
        0.5
    """
    hits = identification_hits(anchor_emb, candidate_emb)
    if hits.numel() == 0:
        raise ValueError("no identification rows to score")
    return float(hits.double().mean())


# --------------------------------------------------------------------------- trials


def _positions(index: Tensor, wanted: Tensor) -> tuple[Tensor, Tensor]:
    """Row of ``index`` holding each corpus index in ``wanted`` and whether it is there at all."""
    sorted_index, order = torch.sort(index)
    pos = torch.searchsorted(sorted_index, wanted).clamp(max=max(index.numel() - 1, 0))
    if index.numel() == 0:
        return pos, torch.zeros_like(wanted, dtype=torch.bool)
    found = sorted_index[pos] == wanted
    return order[pos], found


def subset_trials(trials: Trials, index: Tensor) -> Trials:
    """Keep only the trial rows whose utterances are all in ``index`` (e.g. a partial validation pass)."""
    index = index.to(trials.pairs.device)
    _, pair_ok = _positions(index, trials.pairs[:, :2].reshape(-1))
    _, ident_ok = _positions(index, trials.ident.reshape(-1))
    return Trials(
        pairs=trials.pairs[pair_ok.view(-1, 2).all(dim=1)],
        ident=trials.ident[ident_ok.view(trials.ident.shape[0], -1).all(dim=1)] if trials.ident.numel() else trials.ident,
    )


def score_trials(index: Tensor, emb: Tensor, trials: Trials) -> tuple[Tensor, Tensor, Tensor]:
    """Score verification pairs and identification rows from the embeddings of some utterances.

    Arguments:
        index: ``[K]`` corpus utterance index of each embedding row.
        emb: ``[K, D]`` embeddings (not necessarily normalised).
        trials: trials over corpus utterance indices; every utterance they name must be in ``index``.

    Returns:
        ``(pair_scores [M] float, pair_labels [M] int64, ident_hits [A] bool)``; the
        identification accuracy is ``ident_hits.float().mean()`` (hits rather than the mean,
        so that shards of rows can be summed across processes).

    Example::

        >>> emb = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]], dtype=torch.float64)
        >>> trials = Trials(pairs=torch.tensor([[10, 11, 1], [10, 12, 0]]), ident=torch.tensor([[10, 11, 12]]))
        >>> s, y, hits = score_trials(torch.tensor([10, 11, 12]), emb, trials)
        >>> s.round(decimals=4).tolist(), y.tolist(), hits.tolist()
        ([0.9939, 0.0], [1, 0], [True])
    """
    device = emb.device
    index = index.to(device)
    pairs = trials.pairs.to(device)
    ident = trials.ident.to(device)
    wanted = torch.cat([pairs[:, :2].reshape(-1), ident.reshape(-1)])
    rows, found = _positions(index, wanted)
    if not bool(found.all()):
        missing = torch.unique(wanted[~found])
        raise ValueError(
            f"{missing.numel()} utterances named by the trials have no embedding "
            f"(e.g. corpus indices {missing[:5].tolist()}); use subset_trials() to score the rest"
        )
    e = F.normalize(emb.float() if emb.dtype in (torch.float16, torch.bfloat16) else emb, dim=-1)
    n_pair = pairs.shape[0] * 2
    pair_rows = rows[:n_pair].view(-1, 2)
    pair_scores = (e[pair_rows[:, 0]] * e[pair_rows[:, 1]]).sum(-1)
    if ident.numel():
        ident_rows = rows[n_pair:].view(ident.shape)
        hits = torch.cat(
            [
                identification_hits(e[r[:, 0]], e[r[:, 1:]])
                for r in ident_rows.split(1024)
            ]
        )
    else:
        hits = torch.zeros(0, dtype=torch.bool, device=device)
    return pair_scores, pairs[:, 2].long(), hits


# --------------------------------------------------------------------------- system combination


def fuse_embeddings(embeddings: Sequence[Tensor]) -> Tensor:
    """Embedding fusion of several models (Deep Speaker §5.1.3): length-normalise each model's
    embeddings, add them, and length-normalise the sum; cosine scores of the result are the fused scores.

    Arguments:
        embeddings: one ``[N, D]`` tensor per model, rows in the same utterance order; every
            model must give the same size ``D`` (otherwise fuse scores, :func:`fuse_scores`).

    Returns:
        ``[N, D]`` unit-length embeddings (float32 for half-precision inputs).

    Example::

        >>> a = torch.tensor([[3.0, 0.0], [0.0, 2.0]])
        >>> b = torch.tensor([[0.0, 1.0], [0.0, 5.0]])
        >>> fuse_embeddings([a, b])  # normalise(normalise(a) + normalise(b))
        tensor([[0.7071, 0.7071],
                [0.0000, 1.0000]])
    """
    embeddings = list(embeddings)
    if not embeddings:
        raise ValueError("fuse_embeddings needs the embeddings of at least one model")
    shapes = [tuple(e.shape) for e in embeddings]
    if len(set(shapes)) != 1 or embeddings[0].dim() < 1:
        raise ValueError(f"embedding fusion adds the models' embeddings, so they must have the same shape; got "
                         f"{', '.join(map(str, shapes))} (fuse scores instead when the sizes differ)")
    total = None
    for e in embeddings:
        e = F.normalize(e.float() if e.dtype in (torch.float16, torch.bfloat16) else e, dim=-1)
        total = e if total is None else total + e
    return F.normalize(total, dim=-1)


def standardize_scores(scores: Tensor) -> Tensor:
    """``(scores - mean) / std`` over *all* the given scores (one model's scores of one trial list).

    The first step of score fusion (Deep Speaker §5.1.3: "we first normalize the scores using
    mean and variance calculated from all scores"): pass every score of the trial list being
    fused at once (all verification pairs; or a whole ``[A, C]`` identification score matrix),
    so that each model's scores are shifted and scaled by one pair of numbers and the ranking
    within a model is unchanged. The statistics are computed in float64 and the standard
    deviation is the population one (``ddof = 0``); when all scores are equal (``std = 0``) the
    result is all zeros (the model then adds nothing to a fusion). Returns the input's dtype for
    float32/float64 scores, float64 otherwise.

    Example::

        >>> standardize_scores(torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64))
        tensor([-1.3416, -0.4472,  0.4472,  1.3416], dtype=torch.float64)
    """
    scores = torch.as_tensor(scores)
    if scores.numel() == 0:
        raise ValueError("no scores to standardize")
    x = scores.double()
    mean = x.mean()
    std = x.std(correction=0)
    z = x - mean
    if float(std) > 0.0:
        z = z / std
    return z.to(scores.dtype if scores.dtype in (torch.float32, torch.float64) else torch.float64)


def fuse_scores(scores: Sequence[Tensor]) -> Tensor:
    """Score fusion of several models (Deep Speaker §5.1.3): the sum of each model's
    :func:`standardize_scores` (mean and std over all of that model's scores, so pass whole trial
    lists, not batches). Every tensor must have the same shape, element ``i`` of each being the
    same trial.

    Example::

        >>> a = torch.tensor([0.9, 0.1, 0.5], dtype=torch.float64)   # a model with a wide score range
        >>> b = torch.tensor([0.52, 0.50, 0.60], dtype=torch.float64)  # one with a narrow range
        >>> standardize_scores(a) + standardize_scores(b)
        tensor([ 0.7618, -2.1506,  1.3887], dtype=torch.float64)
        >>> fuse_scores([a, b])
        tensor([ 0.7618, -2.1506,  1.3887], dtype=torch.float64)
    """
    scores = [torch.as_tensor(s) for s in scores]
    if not scores:
        raise ValueError("fuse_scores needs the scores of at least one model")
    shapes = [tuple(s.shape) for s in scores]
    if len(set(shapes)) != 1:
        raise ValueError(f"score fusion adds the models' scores of the same trials, so they must have the same "
                         f"shape; got {', '.join(map(str, shapes))}")
    total = standardize_scores(scores[0])
    for s in scores[1:]:
        z = standardize_scores(s)
        total = total.to(torch.promote_types(total.dtype, z.dtype)) + z
    return total


# --------------------------------------------------------------------------- enrolment with several utterances


def enrolment_trials(speakers: Tensor, counts: Sequence[int], negatives: int = 99,
                     seed: int = 0) -> tuple[Tensor, dict[int, Tensor]]:
    """Identification rows with speakers enrolled from ``n`` utterances each (Deep Speaker §5.1.5, Table 8).

    For every anchor utterance: its own speaker enrolled from ``n`` *other* utterances of that
    speaker (never the anchor itself), and ``negatives`` other speakers enrolled from ``n`` of
    their utterances each. Scoring them (:func:`enrolment_scores`) compares the anchor with each
    speaker's average embedding.

    The comparison across the counts ``n`` is paired: the same anchors, the same negative
    speakers per anchor and nested enrolment sets (``n = 2`` adds one utterance to the set of
    ``n = 1``, ...) for every ``n``, so only the number of enrolment utterances changes.
    Therefore, with ``m = max(counts)``, anchors are all utterances of speakers with at least
    ``m + 1`` utterances, and negatives are drawn (without replacement) from the other speakers
    with at least ``m`` utterances.

    Arguments:
        speakers: ``[N]`` int64 speaker label of each utterance (row ``i`` = utterance ``i``);
            negative labels (no speaker, e.g. noise clips) are left out.
        counts: enrolment utterances per speaker to build rows for, e.g. ``(1, 2, 3, 5)``.
        negatives: other speakers per anchor (99 in the paper).
        seed: seed of the ``numpy.random.Generator`` that draws everything; the same
            arguments give the same rows.

    Returns:
        ``(anchors, rows)``: ``anchors`` ``[A]`` int64 utterance numbers (ascending) and, for
        each ``n`` in ``counts``, ``rows[n]`` ``[A, 1 + negatives, n]`` int64 utterance
        numbers of the enrolment sets, column 0 the anchor's own speaker.

    Raises:
        ValueError: no speaker has ``m + 1`` utterances, or fewer than ``negatives`` other
            speakers have ``m`` (the message says how many qualify).

    Example::

        >>> spk = torch.tensor([0, 0, 0, 1, 1, 2, 2])
        >>> anchors, rows = enrolment_trials(spk, counts=[1, 2], negatives=1)
        >>> anchors.tolist()  # speaker 0 alone has 2 + 1 utterances
        [0, 1, 2]
        >>> rows[2].shape  # [anchors, 1 + negatives, n]
        torch.Size([3, 2, 2])
        >>> bool((rows[2][:, :, :1] == rows[1]).all())  # nested sets: n = 1 is the start of n = 2
        True
    """
    counts = sorted({int(n) for n in counts})
    if not counts or counts[0] < 1:
        raise ValueError(f"enrolment counts must be positive integers, got {list(counts)}")
    if negatives < 1:
        raise ValueError(f"need at least one negative speaker per anchor, not {negatives}")
    top = counts[-1]
    spk = np.asarray(torch.as_tensor(speakers).cpu(), dtype=np.int64).reshape(-1)
    labels, sizes = np.unique(spk[spk >= 0], return_counts=True)
    anchor_speakers = labels[sizes >= top + 1]
    pool = labels[sizes >= top]
    if anchor_speakers.size == 0:
        raise ValueError(f"enrolling with {top} utterances needs speakers with at least {top + 1} utterances "
                         f"(the anchor and {top} others); the most any speaker has is "
                         f"{int(sizes.max()) if sizes.size else 0}: use smaller enrolment counts")
    if pool.size - 1 < negatives:
        fix = f"use {pool.size - 1} negatives or fewer (or smaller enrolment counts)" if pool.size > 1 else \
            "use smaller enrolment counts"
        raise ValueError(f"only {pool.size - 1} other speakers have at least {top} utterances to enrol as "
                         f"negatives, {negatives} asked for: {fix}")
    rng = np.random.default_rng(seed)
    # Utterances grouped by speaker (ascending within each): speaker k of the pool owns
    # grouped[start[k] : start[k] + size[k]].
    grouped = np.argsort(spk, kind="stable")
    start = np.searchsorted(spk[grouped], pool)
    size = sizes[sizes >= top]  # of the pool's speakers
    anchors = np.flatnonzero(np.isin(spk, anchor_speakers))
    own = np.searchsorted(pool, spk[anchors])  # the anchor's speaker, as a position in the pool
    place = np.empty_like(grouped)
    place[grouped] = np.arange(grouped.size)
    rank = place[anchors] - start[own]  # the anchor's position among its speaker's utterances
    # Own speaker: ``top`` of its other utterances (positions past the anchor's shift by one).
    p = _distinct_draws(rng, size[own] - 1, top)
    own_sets = grouped[start[own][:, None] + p + (p >= rank[:, None])]
    # Negatives: ``negatives`` other speakers of the pool, then ``top`` utterances of each.
    q = _distinct_draws(rng, np.full(anchors.size, pool.size - 1), negatives)
    q = q + (q >= own[:, None])
    p = _distinct_draws(rng, size[q].reshape(-1), top).reshape(anchors.size, negatives, top)
    negative_sets = grouped[start[q][:, :, None] + p]
    full = torch.from_numpy(np.concatenate([own_sets[:, None, :], negative_sets], axis=1).astype(np.int64))
    return torch.from_numpy(anchors.astype(np.int64)), {n: full[:, :, :n].contiguous() for n in counts}


def _distinct_draws(rng: np.random.Generator, m: np.ndarray, k: int) -> np.ndarray:
    """``[len(m), k]``: in row ``i``, ``k`` distinct integers of ``[0, m[i])`` (``m[i] >= k``), a uniform
    random subset in uniform random order, so that every prefix is a uniform random subset too.
    Floyd's algorithm, vectorised over rows: memory and time grow with ``k``, not with ``m``."""
    m = np.asarray(m, dtype=np.int64)
    out = np.empty((m.size, k), dtype=np.int64)
    for i in range(k):
        j = m - k + i
        t = rng.integers(0, j + 1)
        taken = (out[:, :i] == t[:, None]).any(axis=1)
        out[:, i] = np.where(taken, j, t)
    return rng.permuted(out, axis=1)


def enrolment_scores(emb: Tensor, anchors: Tensor, rows: Tensor, chunk: int = 256) -> Tensor:
    """Cosine scores of anchors against speakers enrolled from several utterances.

    Each enrolment set's embeddings are length-normalised, averaged and length-normalised
    again (the speaker embedding is the average of its enrolment utterances' embeddings,
    Deep Speaker §5.1.5); the score is its cosine with the anchor's embedding.

    Arguments:
        emb: ``[N, D]`` embeddings, row ``i`` = utterance ``i`` of :func:`enrolment_trials`.
        anchors: ``[A]`` anchor utterance numbers.
        rows: ``[A, C, n]`` enrolment sets (column 0 the anchor's speaker).
        chunk: anchors scored at a time (bounds memory at ``chunk x C x n x D``).

    Returns:
        ``[A, C]`` scores; feed them to :func:`enrolment_metrics`.

    Example::

        >>> emb = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, 3.0], [1.0, 1.0]])
        >>> enrolment_scores(emb, torch.tensor([4]), torch.tensor([[[0, 2], [1, 3]]]))
        tensor([[1.0000, 1.0000]])
    """
    if rows.dim() != 3 or rows.shape[0] != anchors.numel():
        raise ValueError(f"expected anchors [A] and enrolment rows [A, C, n]; got {tuple(anchors.shape)} and "
                         f"{tuple(rows.shape)}")
    e = F.normalize(emb.float() if emb.dtype in (torch.float16, torch.bfloat16) else emb, dim=-1)
    anchors, rows = anchors.to(e.device), rows.to(e.device)
    out = [
        (e[a].unsqueeze(1) * F.normalize(e[r].mean(dim=2), dim=-1)).sum(-1)
        for a, r in zip(anchors.split(chunk), rows.split(chunk))
    ]
    return torch.cat(out) if out else e.new_zeros(0, rows.shape[1])


def enrolment_metrics(scores: Tensor) -> tuple[float, float]:
    """EER and identification accuracy of ``[A, C]`` identification scores, column 0 the anchor's speaker.

    The EER is over all ``A x C`` scores, column 0 target and the other columns non-target
    trials (Deep Speaker §4.1); the accuracy is the share of rows whose column 0 scores
    strictly highest (:func:`identification_hits_from_scores`). Both are fractions.

    Example::

        >>> enrolment_metrics(torch.tensor([[0.9, 0.2, 0.3], [0.4, 0.6, 0.1]]))  # accept >= 0.4: 1 of 4 non-targets
        (0.25, 0.5)
    """
    if scores.dim() != 2 or scores.shape[0] == 0 or scores.shape[1] < 2:
        raise ValueError(f"expected [A >= 1, C >= 2] scores, got shape {tuple(scores.shape)}")
    labels = torch.zeros(scores.shape, dtype=torch.int64, device=scores.device)
    labels[:, 0] = 1
    hits = identification_hits_from_scores(scores)
    return eer(scores.flatten(), labels.flatten()), float(hits.double().mean())


# --------------------------------------------------------------------------- normalised scoring and metric reports


class Scorer:
    """Cosine scores of embedding rows, optionally mean-normalised and AS-normalised.

    Arguments:
        emb: ``[N, D]`` embeddings.
        cohort: ``[C, D]`` cohort embeddings (needed by ``mean_norm`` and ``asnorm_top_k``).
        mean_norm: subtract the cohort mean (of the raw cohort embeddings) from ``emb`` and the
            cohort, then length-normalise (:func:`~speakerzoo.scoring.mean_normalize`).
        asnorm_top_k: apply AS-norm with this many top cohort scores per side; ``None``: no AS-norm.

    Without normalisation the scores are exactly those of :func:`score_trials`.
    """

    def __init__(self, emb: Tensor, cohort: Tensor | None = None, mean_norm: bool = False,
                 asnorm_top_k: int | None = None):
        if (mean_norm or asnorm_top_k is not None) and cohort is None:
            raise ValueError("mean normalisation and AS-norm need cohort embeddings (--cohort COHORT.h5)")
        emb = emb.float()
        if mean_norm:
            mean = cohort.double().mean(dim=0).float()
            self.emb = mean_normalize(emb, mean)
            cohort = mean_normalize(cohort.float(), mean)
        else:
            self.emb = F.normalize(emb, dim=-1)
        self.cohort = None if cohort is None else cohort.float()
        self.top_k = asnorm_top_k
        # AS-norm statistics, computed only for the rows some trial uses and kept for later calls:
        # an embeddings file of 1 M rows scored against a 30 k cohort for 50 k trials took 723 s and
        # 3.9 GB when every row was normalised (issue 24).
        self._mean = self._std = self._known = None

    def _cohort_stats(self, rows: Tensor) -> tuple[Tensor, Tensor]:
        """AS-norm ``(mean, std)`` of the rows ``rows`` (any shape), computing those not yet known."""
        if self._known is None:
            n = self.emb.shape[0]
            self._mean, self._std = self.emb.new_zeros(n), self.emb.new_zeros(n)
            self._known = torch.zeros(n, dtype=torch.bool)
        wanted = torch.unique(rows.reshape(-1))
        missing = wanted[~self._known[wanted]]
        if missing.numel():
            self._mean[missing], self._std[missing] = cohort_stats(self.emb[missing], self.cohort, self.top_k)
            self._known[missing] = True
        return self._mean[rows], self._std[rows]

    def pairs(self, enrol: Tensor, test: Tensor) -> Tensor:
        """``[M]`` scores of rows ``enrol[i]`` against ``test[i]``."""
        scores = (self.emb[enrol] * self.emb[test]).sum(-1)
        if self.top_k is None:
            return scores
        return as_norm(scores, self._cohort_stats(enrol), self._cohort_stats(test))

    def ident_scores(self, rows: Tensor, chunk: int = 1024) -> Tensor:
        """``[A, C - 1]`` scores of ``[A, C]`` rows ``(anchor, positive, negatives...)``: the anchor
        against each candidate, the positive in column 0."""
        scores = []
        for r in rows.split(chunk):
            s = cosine_scores(self.emb[r[:, 0]].unsqueeze(1), self.emb[r[:, 1:]])  # [a, C - 1]
            if self.top_k is not None:
                s = as_norm(s, self._cohort_stats(r[:, :1]), self._cohort_stats(r[:, 1:]))
            scores.append(s)
        return torch.cat(scores) if scores else self.emb.new_zeros(0, max(rows.shape[1] - 1, 0))

    def ident_hits(self, rows: Tensor, chunk: int = 1024) -> Tensor:
        """``[A]`` bool for ``[A, C]`` rows ``(anchor, positive, negatives...)``: the positive scores highest."""
        hits = [identification_hits_from_scores(self.ident_scores(r, chunk)) for r in rows.split(chunk)]
        return torch.cat(hits) if hits else torch.zeros(0, dtype=torch.bool)


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def evaluate_trials(scores: Tensor, labels: Tensor, ident_hits: Tensor | None = None, p_target: float = 0.01,
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


def speaker_means(embeddings: Tensor, speakers: Sequence[str]) -> tuple[Tensor, list[str]]:
    """One mean embedding per named speaker (rows with ``""`` left out), speakers sorted by name:
    the cohort of ``--cohort-speakers`` (as wespeaker scores with speaker-level cohorts)."""
    names = sorted({s for s in speakers if s})
    index = {s: i for i, s in enumerate(names)}
    rows = [i for i, s in enumerate(speakers) if s]
    groups = torch.tensor([index[speakers[i]] for i in rows], dtype=torch.int64)
    sums = torch.zeros(len(names), embeddings.shape[1], dtype=torch.float64)
    sums.index_add_(0, groups, embeddings[rows].double())
    means = sums / torch.bincount(groups, minlength=len(names)).unsqueeze(1)
    return means.float(), names


# --------------------------------------------------------------------------- torchmetrics


class _TrialMetric(Metric):
    """Collects trial scores and labels; ``cat`` reduction makes it DDP-safe (each rank may hold a shard)."""

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("labels", default=[], dist_reduce_fx="cat")

    def update(self, scores: Tensor, labels: Tensor) -> None:  # type: ignore[override]
        scores = scores.detach().flatten()
        if scores.dtype in (torch.float16, torch.bfloat16):
            scores = scores.float()
        self.scores.append(scores)
        self.labels.append(labels.detach().flatten().long())

    def _all(self) -> tuple[Tensor, Tensor]:
        return dim_zero_cat(self.scores), dim_zero_cat(self.labels)


class EqualErrorRate(_TrialMetric):
    """:func:`eer` as a torchmetrics ``Metric`` (fraction in ``[0, 1]``, 0-d float64 tensor).

    Example::

        >>> m = EqualErrorRate()
        >>> m.update(torch.tensor([0.9, 0.8, 0.3]), torch.tensor([1, 1, 1]))
        >>> m.update(torch.tensor([0.7, 0.2, 0.1]), torch.tensor([0, 0, 0]))
        >>> m.compute()
        tensor(0.3333, dtype=torch.float64)
    """

    def compute(self) -> Tensor:
        return torch.tensor(eer(*self._all()), dtype=torch.float64)


class MinDCF(_TrialMetric):
    """:func:`min_dcf` as a torchmetrics ``Metric`` (0-d float64 tensor).

    Arguments:
        p_target, c_miss, c_fa: detection cost parameters (VoxSRC: 0.05, 1, 1; NIST SRE 2010: 0.001 or 0.01).
    """

    def __init__(self, p_target: float = 0.01, c_miss: float = 1.0, c_fa: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.p_target, self.c_miss, self.c_fa = p_target, c_miss, c_fa

    def compute(self) -> Tensor:
        return torch.tensor(min_dcf(*self._all(), self.p_target, self.c_miss, self.c_fa), dtype=torch.float64)
