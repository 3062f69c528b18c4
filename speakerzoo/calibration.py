"""Score calibration (ground floor): cosine scores to log-likelihood ratios by linear logistic
regression, and the decisions they imply for a user's prior and costs.

A raw cosine score says "higher is more alike" and nothing more: its scale depends on the model
and on the data, and a threshold chosen for one application (the validation EER's) is wrong for
another. A calibrated score is a log-likelihood ratio (LLR),
``log p(score | same speaker) / p(score | different speakers)``, which means the same thing for
every model. With it, a user states a prior ``p_target`` and the costs of a miss and a false
alarm, and the Bayes decision is ``accept when LLR >= log(c_fa (1 - p_target) / (c_miss p_target))``
(:func:`speakerzoo.scoring.bayes_threshold`); the posterior probability of "same speaker" is
``sigmoid(LLR + logit(p_target))``.

The map is affine, ``LLR = a * score + b`` (plus one weight per quality measure, such as the log
duration of the enrolment and test audio), fitted by prior-weighted logistic regression: the
cross-entropy of targets and non-targets weighted as ``p_effective`` and ``1 - p_effective``
(N. Brümmer, J. du Preez, "Application-independent evaluation of speaker detection", Computer
Speech and Language 20, 2006; the FoCal toolkit's recipe). It is solved with torch's L-BFGS on
float64: torch has no logistic-regression class, and scikit-learn (whose ``LogisticRegression``
would take the weighting as ``sample_weight``) is not a dependency for a dozen lines.

Example::

    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> labels = (torch.rand(2000, generator=g) < 0.3).long()
    >>> scores = 0.2 * torch.randn(2000, generator=g, dtype=torch.float64) + 0.3 * labels
    >>> cal = ScoreCalibrator.fit(scores, labels)
    >>> cal.weights[0] > 0
    True
    >>> llr = cal.llr(scores)
    >>> from speakerzoo.scoring import cllr
    >>> cllr(llr, labels) < 1.0   # bits below 1: the LLRs carry information
    True
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from speakerzoo.atomic import replaced_on_success

__all__ = ["CalibrationError", "ScoreCalibrator", "FORMAT"]

FORMAT = "speakerzoo-calibration"
VERSION = 1


class CalibrationError(ValueError):
    """A calibration that cannot be fitted, read or used; the message names the file and the fix."""


def _as_features(scores: Tensor, quality: Tensor | None, n_quality: int) -> Tensor:
    scores = torch.as_tensor(scores).detach().double().flatten()
    if quality is None:
        if n_quality:
            raise CalibrationError(f"this calibration was fitted with {n_quality} quality measure(s); give them too")
        return scores[:, None]
    quality = torch.as_tensor(quality).detach().double()
    if quality.dim() == 1:
        quality = quality[:, None]
    if quality.shape != (scores.numel(), n_quality):
        raise CalibrationError(f"expected quality measures of shape ({scores.numel()}, {n_quality}), "
                               f"got {tuple(quality.shape)}")
    return torch.cat([scores[:, None], quality], dim=1)


@dataclass
class ScoreCalibrator:
    """``LLR = weights · [score, quality...] + bias``; see the module docstring.

    Attributes:
        weights: one per input, the score's first.
        bias: the offset.
        quality: the names of the quality measures after the score (empty: the score alone).
        p_effective: the prior the fit weighted targets with.
        info: what it was fitted on (trial counts, source, checkpoint), kept in the file.
    """

    weights: list[float]
    bias: float
    quality: list[str] = field(default_factory=list)
    p_effective: float = 0.5
    info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def fit(cls, scores: Tensor, labels: Tensor, quality: Tensor | None = None,
            quality_names: Sequence[str] = (), p_effective: float = 0.5, l2: float = 1e-6) -> "ScoreCalibrator":
        """Fit on trials with labels (1 target, 0 non-target): a corpus's validation trials or
        the user's own labelled list, never the trials it will be judged on.

        Arguments:
            scores: ``[N]`` raw scores.
            labels: ``[N]`` 1/0.
            quality: optional ``[N, Q]`` quality measures (e.g. log durations), named by ``quality_names``.
            p_effective: the prior at which the cross-entropy is weighted (0.5: targets and
                non-targets count equally, whatever their numbers).
            l2: a small ridge on the weights, so that perfectly separated trials still give a
                finite fit.
        """
        if not 0.0 < p_effective < 1.0:
            raise CalibrationError(f"p_effective must be in (0, 1), not {p_effective}")
        if quality is not None:
            quality = torch.as_tensor(quality)
            quality = quality[:, None] if quality.dim() == 1 else quality
        x = _as_features(scores, quality, 0 if quality is None else quality.shape[1])
        n_quality = x.shape[1] - 1
        y = torch.as_tensor(labels).detach().flatten().bool()
        if y.numel() != x.shape[0]:
            raise CalibrationError(f"scores and labels differ in size: {x.shape[0]} vs {y.numel()}")
        n_t, n_n = int(y.sum()), int((~y).sum())
        if n_t == 0 or n_n == 0:
            raise CalibrationError(f"calibration needs target and non-target trials; got {n_t} targets and {n_n} non-targets")
        if not torch.isfinite(x).all():
            raise CalibrationError("calibration needs finite scores and quality measures")
        names = list(quality_names) or [f"quality{i}" for i in range(n_quality)]
        if len(names) != n_quality:
            raise CalibrationError(f"{n_quality} quality measure(s) but {len(names)} name(s)")
        # Standardise the inputs for a well-conditioned problem; fold the scaling back afterwards.
        mean, std = x.mean(0), x.std(0).clamp_min(1e-12)
        z = (x - mean) / std
        offset = math.log(p_effective / (1 - p_effective))
        w = torch.zeros(z.shape[1], dtype=torch.float64, requires_grad=True)
        b = torch.zeros((), dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.LBFGS([w, b], lr=1.0, max_iter=200, tolerance_grad=1e-10, tolerance_change=1e-12,
                                      line_search_fn="strong_wolfe")

        def objective() -> Tensor:
            optimizer.zero_grad()
            logit = z @ w + b + offset
            loss = (p_effective * F.softplus(-logit[y]).mean() + (1 - p_effective) * F.softplus(logit[~y]).mean()
                    + l2 * (w * w).sum())
            loss.backward()
            return loss

        optimizer.step(objective)
        with torch.no_grad():
            weights = w / std
            bias = b - (weights * mean).sum()
        info = {"targets": n_t, "nontargets": n_n}
        return cls([float(v) for v in weights], float(bias), names, float(p_effective), info)

    def llr(self, scores: Tensor, quality: Tensor | None = None) -> Tensor:
        """The calibrated LLR of each score (float64)."""
        x = _as_features(scores, quality, len(self.quality))
        return x @ torch.tensor(self.weights, dtype=torch.float64) + self.bias

    def posterior(self, scores: Tensor, p_target: float, quality: Tensor | None = None) -> Tensor:
        """P(same speaker | score) at the prior ``p_target``."""
        if not 0.0 < p_target < 1.0:
            raise CalibrationError(f"p_target must be in (0, 1), not {p_target}")
        return torch.sigmoid(self.llr(scores, quality) + math.log(p_target / (1 - p_target)))

    def check_scoring(self, normalisation: Sequence[str], fusion: str, source: str = "the calibration") -> None:
        """Refuse scores made another way than the ones it was fitted on (the ``normalisation`` and
        ``fusion`` its ``info`` records; a calibration holds for one way of scoring)."""
        fix = "fit one on these scores with `speakerzoo calibrate` (same embeddings options, other trials)"
        for key, mine, what in (("normalisation", list(normalisation), "score normalisation"),
                                ("fusion", fusion, "fusion")):
            if key in self.info and self.info[key] != mine:
                theirs = " + ".join(self.info[key]) if isinstance(self.info[key], list) else self.info[key]
                now = " + ".join(mine) if isinstance(mine, list) else mine
                raise CalibrationError(f"{source} was fitted on scores with {what} {theirs or 'none'}, these have "
                                       f"{now or 'none'}: a calibration holds for one way of scoring; {fix}")

    def score_threshold(self, llr_threshold: float) -> float:
        """The raw score whose LLR is ``llr_threshold`` (no quality measures, positive weight):
        the decision threshold in the units of the uncalibrated score."""
        if self.quality:
            raise CalibrationError("with quality measures the decision threshold differs per trial; compare LLRs instead")
        if self.weights[0] <= 0:
            raise CalibrationError(f"the calibration's score weight is {self.weights[0]:.3g} <= 0: higher scores do not "
                                   "mean more alike on the trials it was fitted on; fit it on other trials")
        return (llr_threshold - self.bias) / self.weights[0]

    # ------------------------------------------------------------------ the file

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "weights": self.weights, "bias": self.bias,
                "quality": self.quality, "p_effective": self.p_effective, "info": self.info}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "calibration") -> "ScoreCalibrator":
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise CalibrationError(f"{source}: not a speakerzoo calibration file; make one with `speakerzoo calibrate`")
        if data.get("version") != VERSION:
            raise CalibrationError(f"{source}: calibration version {data.get('version')}, this speakerzoo reads "
                                   f"{VERSION}; fit it again with `speakerzoo calibrate`")
        try:
            weights = [float(v) for v in data["weights"]]
            quality = [str(q) for q in data.get("quality", [])]
            calibrator = cls(weights, float(data["bias"]), quality, float(data.get("p_effective", 0.5)),
                             dict(data.get("info", {})))
        except (KeyError, TypeError, ValueError) as err:
            raise CalibrationError(f"{source}: damaged calibration file ({err}); fit it again with "
                                   "`speakerzoo calibrate`") from None
        if len(weights) != 1 + len(quality) or not all(map(math.isfinite, [*weights, calibrator.bias])):
            raise CalibrationError(f"{source}: damaged calibration file (weights {weights}, quality {quality}); "
                                   "fit it again with `speakerzoo calibrate`")
        return calibrator

    def save(self, path: str | Path) -> Path:
        """Write the calibration as JSON (complete or not at all)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with replaced_on_success(path) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path, checkpoint_sha256: str | None = None) -> "ScoreCalibrator":
        """Read a calibration file; with ``checkpoint_sha256``, refuse one fitted on another model's scores."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CalibrationError(f"{path}: no such calibration file; make it with `speakerzoo calibrate`") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CalibrationError(f"{path}: not a readable calibration file ({err}); fit it again with "
                                   "`speakerzoo calibrate`") from None
        calibrator = cls.from_dict(data, str(path))
        fitted_for = calibrator.info.get("checkpoint_sha256")
        if checkpoint_sha256 and fitted_for and fitted_for != checkpoint_sha256:
            raise CalibrationError(f"{path} was fitted on the scores of another checkpoint (sha256 {fitted_for[:12]}…, "
                                   f"these are of {checkpoint_sha256[:12]}…); a calibration holds for one model only: "
                                   "fit one for this model with `speakerzoo calibrate`")
        return calibrator
