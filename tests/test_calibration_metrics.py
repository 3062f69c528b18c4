"""Calibration metrics of speakerzoo.scoring against brute-force references: Cllr, PAV (isotonic
regression by enumerating every monotone block partition), minCllr, actual DCF and the Bayes
threshold."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from speakerzoo.scoring import act_dcf, bayes_threshold, cllr, min_cllr, min_dcf, pav, pav_llr


def random_trials(seed: int, n: int = 200, targets: float = 0.3, separation: float = 1.5):
    g = torch.Generator().manual_seed(seed)
    labels = (torch.rand(n, generator=g) < targets).long()
    labels[0], labels[1] = 1, 0
    scores = torch.randn(n, generator=g, dtype=torch.float64) + separation * labels
    return scores, labels


def cllr_reference(llr, labels) -> float:
    t = [math.log2(1 + math.exp(-x)) for x, y in zip(llr.tolist(), labels.tolist()) if y]
    n = [math.log2(1 + math.exp(x)) for x, y in zip(llr.tolist(), labels.tolist()) if not y]
    return (sum(t) / len(t) + sum(n) / len(n)) / 2


def isotonic_reference(scores, labels) -> np.ndarray:
    """Every split of the sorted trials into contiguous blocks, each fitted by its mean; of the
    splits whose means do not decrease, the one closest to the labels in squared error."""
    order = np.argsort(scores)
    y = np.asarray(labels, dtype=float)[order]
    n = len(y)
    best, best_fit = math.inf, None
    for cuts in itertools.product([0, 1], repeat=n - 1):
        edges = [0] + [i + 1 for i, c in enumerate(cuts) if c] + [n]
        means = [y[a:b].mean() for a, b in zip(edges[:-1], edges[1:])]
        if any(m2 < m1 for m1, m2 in zip(means[:-1], means[1:])):
            continue
        fit = np.concatenate([np.full(b - a, m) for (a, b), m in zip(zip(edges[:-1], edges[1:]), means)])
        sse = float(((fit - y) ** 2).sum())
        if sse < best - 1e-12:
            best, best_fit = sse, fit
    out = np.empty(n)
    out[order] = best_fit
    return out


@pytest.mark.parametrize("seed", range(5))
def test_cllr_matches_the_formula_evaluated_trial_by_trial(seed: int) -> None:
    scores, labels = random_trials(seed)
    llr = 2.0 * scores - 1.0
    assert cllr(llr, labels) == pytest.approx(cllr_reference(llr, labels), rel=1e-12)


def test_cllr_of_no_information_is_one_and_of_confident_errors_is_large() -> None:
    labels = torch.tensor([1, 1, 0, 0])
    assert cllr(torch.zeros(4, dtype=torch.float64), labels) == 1.0
    right = torch.tensor([20.0, 20.0, -20.0, -20.0], dtype=torch.float64)
    assert cllr(right, labels) < 1e-8
    assert cllr(-right, labels) == pytest.approx(20 / math.log(2), rel=1e-6)  # log2(1 + e^20) ~ 20 / ln 2
    assert cllr(torch.tensor([1e4, 1e4, -1e4, -1e4], dtype=torch.float64), labels) == 0.0  # no overflow


@pytest.mark.parametrize("seed", range(12))
def test_pav_is_the_isotonic_regression_found_by_enumeration(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 9
    labels = rng.integers(0, 2, n)
    labels[:2] = (1, 0)
    scores = rng.normal(size=n) + labels
    fit = pav(torch.from_numpy(scores), torch.from_numpy(labels)).numpy()
    np.testing.assert_allclose(fit, isotonic_reference(scores, labels), atol=1e-12)


def test_pav_gives_equal_scores_one_value_and_never_decreases() -> None:
    scores = torch.tensor([0.1, 0.5, 0.5, 0.5, 0.9, 0.2, 0.7], dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 0, 1, 1, 0])
    fit = pav(scores, labels)
    tied = fit[scores == 0.5]
    assert torch.all(tied == tied[0])
    order = torch.argsort(scores)
    assert torch.all(fit[order][1:] >= fit[order][:-1])
    # the pooled mean of every level set equals the labels' mean there (isotonic regression's property)
    for value in fit.unique():
        assert labels[fit == value].double().mean() == pytest.approx(float(value))


@pytest.mark.parametrize("seed", range(5))
def test_min_cllr_is_below_the_cllr_of_every_affine_calibration(seed: int) -> None:
    scores, labels = random_trials(seed)
    best = min_cllr(scores, labels)
    assert 0 < best < 1
    for a, b in itertools.product([0.5, 1.0, 2.0, 3.0, 5.0], [-3.0, -1.5, 0.0, 1.5]):
        assert best <= cllr(a * scores + b, labels) + 1e-12
    # monotone maps do not change it; the LLRs of PAV reach it
    assert min_cllr(torch.exp(scores), labels) == pytest.approx(best, rel=1e-12)
    assert cllr(pav_llr(scores, labels), labels) == pytest.approx(best, rel=1e-12)


def test_min_cllr_of_separated_scores_is_zero_and_of_useless_scores_near_one() -> None:
    assert min_cllr(torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64), torch.tensor([0, 0, 1, 1])) == 0.0
    g = torch.Generator().manual_seed(0)
    labels = (torch.rand(4000, generator=g) < 0.5).long()
    useless = torch.randn(4000, generator=g, dtype=torch.float64)
    assert 0.97 < min_cllr(useless, labels) <= 1.0


@pytest.mark.parametrize("p_target", [0.01, 0.05, 0.5])
def test_act_dcf_is_the_cost_of_the_bayes_decisions_counted_by_hand(p_target: float) -> None:
    scores, labels = random_trials(3, n=300)
    llr = 2.0 * scores - 2.0
    threshold = math.log((1 - p_target) / p_target)
    assert bayes_threshold(p_target) == pytest.approx(threshold)
    misses = sum(1 for x, y in zip(llr.tolist(), labels.tolist()) if y and x < threshold)
    false_alarms = sum(1 for x, y in zip(llr.tolist(), labels.tolist()) if not y and x >= threshold)
    n_t, n_n = int(labels.sum()), int((1 - labels).sum())
    cost = (p_target * misses / n_t + (1 - p_target) * false_alarms / n_n) / min(p_target, 1 - p_target)
    assert act_dcf(llr, labels, p_target) == pytest.approx(cost, rel=1e-12)
    assert act_dcf(llr, labels, p_target) >= min_dcf(llr, labels, p_target) - 1e-12


def test_bayes_threshold_weighs_the_costs_and_refuses_impossible_priors() -> None:
    assert bayes_threshold(0.5) == 0.0
    assert bayes_threshold(0.5, c_miss=10.0, c_fa=1.0) == pytest.approx(-math.log(10))
    with pytest.raises(ValueError, match="p_target"):
        bayes_threshold(1.0)
    with pytest.raises(ValueError, match="costs must be positive"):
        bayes_threshold(0.1, c_miss=0.0)


@pytest.mark.parametrize("seed", range(3))
def test_the_bayes_error_curve_is_act_dcf_and_min_dcf_across_priors(seed: int) -> None:
    from speakerzoo.scoring import bayes_error_curve

    scores, labels = random_trials(seed, n=400)
    llr = 3.0 * scores - 2.5
    eta = torch.tensor([-4.0, -2.0, -0.5, 0.0, 1.0, 3.0], dtype=torch.float64)
    actual, minimum = bayes_error_curve(llr, labels, eta)
    for i, e in enumerate(eta.tolist()):
        p = 1 / (1 + math.exp(-e))
        assert float(actual[i]) == pytest.approx(act_dcf(llr, labels, p), rel=1e-9, abs=1e-12)
        # the PAV-calibrated decisions reach the best threshold: the minimum DCF
        assert float(minimum[i]) == pytest.approx(min_dcf(llr, labels, p), rel=1e-9, abs=1e-12)
        assert float(minimum[i]) <= float(actual[i]) + 1e-12


def test_open_set_identification_counts_probes_by_hand() -> None:
    from speakerzoo.scoring import open_set_identification

    g = torch.Generator().manual_seed(7)
    scores = torch.rand(60, 5, generator=g, dtype=torch.float64)
    truth = torch.randint(0, 5, (60,), generator=g)
    truth[40:] = -1  # 20 impostors
    scores[torch.arange(40), truth[:40]] += 0.4  # enrolled speakers score higher on their own column
    point = open_set_identification(scores, truth, far=0.1)
    best, col = scores.max(dim=1)
    t = point.threshold
    imp_accepted = sum(1 for i in range(40, 60) if best[i] >= t)
    hits = sum(1 for i in range(40) if best[i] >= t and col[i] == truth[i])
    assert point.far == imp_accepted / 20 <= 0.1
    assert point.dir == hits / 40
    # the lowest such threshold: any lower candidate would let more impostors through
    lower = [float(v) for v in best.unique() if float(v) < t]
    if lower:
        assert sum(1 for i in range(40, 60) if best[i] >= max(lower)) / 20 > 0.1
    # at a given threshold
    fixed = open_set_identification(scores, truth, threshold=0.9)
    assert fixed.far == sum(1 for i in range(40, 60) if best[i] >= 0.9) / 20
    with pytest.raises(ValueError, match="impostor"):
        open_set_identification(scores[:40], truth[:40])
