"""ScoreCalibrator: recovers the true LLR where it is known, makes actual costs approach the
minimum ones on held-out trials, takes quality measures, and its file refuses what it must."""

from __future__ import annotations

import json
import math

import pytest
import torch

from speakerzoo.calibration import CalibrationError, ScoreCalibrator
from speakerzoo.scoring import act_dcf, bayes_threshold, cllr, min_cllr, min_dcf


def gaussian_trials(seed: int, n: int = 20000, targets: float = 0.2, mu=(0.1, 0.6), sigma: float = 0.15):
    """Cosine-like scores: non-targets N(mu0, sigma²), targets N(mu1, sigma²); their true LLR is
    affine: ((mu1 - mu0) s - (mu1² - mu0²) / 2) / sigma²."""
    g = torch.Generator().manual_seed(seed)
    labels = (torch.rand(n, generator=g) < targets).long()
    scores = mu[0] + (mu[1] - mu[0]) * labels + sigma * torch.randn(n, generator=g, dtype=torch.float64)
    slope = (mu[1] - mu[0]) / sigma**2
    offset = -(mu[1] ** 2 - mu[0] ** 2) / (2 * sigma**2)
    return scores, labels, slope, offset


def test_the_fit_recovers_the_true_llr_of_gaussian_scores() -> None:
    scores, labels, slope, offset = gaussian_trials(0)
    cal = ScoreCalibrator.fit(scores, labels)
    assert cal.weights[0] == pytest.approx(slope, rel=0.05)
    assert cal.bias == pytest.approx(offset, rel=0.05)
    assert cal.info == {"targets": int(labels.sum()), "nontargets": int((1 - labels).sum())}


def test_calibration_fitted_on_val_brings_test_costs_to_their_minimum() -> None:
    val_scores, val_labels, *_ = gaussian_trials(1)
    test_scores, test_labels, *_ = gaussian_trials(2)
    # A model's raw scores: well separated, but on a scale of their own (read as LLRs they
    # are over-confident and shifted: the true slope is 22 and offset -7.8).
    raw_val, raw_test = 60 * val_scores + 2, 60 * test_scores + 2
    cal = ScoreCalibrator.fit(raw_val, val_labels)
    llr = cal.llr(raw_test)
    assert cllr(raw_test, test_labels) > 1  # the raw scores read as LLRs mislead
    assert cllr(llr, test_labels) < 1
    assert cllr(llr, test_labels) - min_cllr(llr, test_labels) < 0.01  # calibration loss, bits
    for p_target in (0.01, 0.05):
        actual, best = act_dcf(llr, test_labels, p_target), min_dcf(llr, test_labels, p_target)
        assert actual <= 1.1 * best, (p_target, actual, best)
        assert act_dcf(raw_test, test_labels, p_target) > 1.5 * best  # uncalibrated decisions cost more


def test_an_affine_change_of_the_scores_does_not_change_the_llrs() -> None:
    scores, labels, *_ = gaussian_trials(3, n=3000)
    a = ScoreCalibrator.fit(scores, labels).llr(scores)
    b = ScoreCalibrator.fit(3 * scores + 1, labels).llr(3 * scores + 1)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_quality_measures_get_their_own_weight() -> None:
    g = torch.Generator().manual_seed(4)
    n = 40000
    s = torch.randn(n, generator=g, dtype=torch.float64)
    q = torch.randn(n, generator=g, dtype=torch.float64)
    labels = (torch.rand(n, generator=g, dtype=torch.float64) < torch.sigmoid(2.0 * s + 0.8 * q - 1.0)).long()
    cal = ScoreCalibrator.fit(s, labels, quality=q, quality_names=["log_duration"])
    assert cal.quality == ["log_duration"]
    assert cal.weights[0] == pytest.approx(2.0, rel=0.08)
    assert cal.weights[1] == pytest.approx(0.8, rel=0.1)
    assert cllr(cal.llr(s, q), labels) < cllr(ScoreCalibrator.fit(s, labels).llr(s), labels)
    with pytest.raises(CalibrationError, match="quality measure"):
        cal.llr(s)
    with pytest.raises(CalibrationError, match="differs per trial"):
        cal.score_threshold(0.0)


def test_posterior_and_score_threshold_follow_the_prior_and_costs() -> None:
    scores, labels, *_ = gaussian_trials(5, n=5000)
    cal = ScoreCalibrator.fit(scores, labels)
    theta = bayes_threshold(0.01, c_miss=1.0, c_fa=1.0)
    t = cal.score_threshold(theta)
    assert float(cal.llr(torch.tensor([t], dtype=torch.float64))) == pytest.approx(theta)
    at = torch.tensor([t], dtype=torch.float64)
    assert float(cal.posterior(at, 0.01)) == pytest.approx(0.5)  # at the Bayes threshold, equal costs: 50 %
    assert float(cal.posterior(at, 0.5)) > 0.95  # the same score at an even prior


def test_separated_trials_give_a_finite_fit_and_one_class_is_refused() -> None:
    s = torch.tensor([0.1, 0.2, 0.8, 0.9], dtype=torch.float64)
    cal = ScoreCalibrator.fit(s, torch.tensor([0, 0, 1, 1]))
    assert all(map(math.isfinite, [*cal.weights, cal.bias])) and cal.weights[0] > 0
    with pytest.raises(CalibrationError, match="target and non-target"):
        ScoreCalibrator.fit(s, torch.ones(4))
    with pytest.raises(CalibrationError, match="finite"):
        ScoreCalibrator.fit(torch.tensor([0.1, float("nan")]), torch.tensor([0, 1]))


def test_the_file_round_trips_and_refuses_another_model_or_damage(tmp_path) -> None:
    scores, labels, *_ = gaussian_trials(6, n=2000)
    cal = ScoreCalibrator.fit(scores, labels)
    cal.info["checkpoint_sha256"] = "ab" * 32
    path = cal.save(tmp_path / "cal.json")
    again = ScoreCalibrator.load(path, checkpoint_sha256="ab" * 32)
    assert again == cal
    torch.testing.assert_close(again.llr(scores), cal.llr(scores))
    with pytest.raises(CalibrationError, match="another checkpoint"):
        ScoreCalibrator.load(path, checkpoint_sha256="cd" * 32)
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(CalibrationError, match="broken.json: not a readable calibration file"):
        ScoreCalibrator.load(tmp_path / "broken.json")
    data = json.loads(path.read_text())
    data["weights"] = [1.0, 2.0]
    (tmp_path / "damaged.json").write_text(json.dumps(data))
    with pytest.raises(CalibrationError, match="damaged.json: damaged calibration file"):
        ScoreCalibrator.load(tmp_path / "damaged.json")
    (tmp_path / "other.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(CalibrationError, match="not a speakerzoo calibration file"):
        ScoreCalibrator.load(tmp_path / "other.json")
    with pytest.raises(CalibrationError, match="no such calibration file"):
        ScoreCalibrator.load(tmp_path / "missing.json")
