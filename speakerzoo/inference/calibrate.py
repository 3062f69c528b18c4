"""Fitting a score calibration on labelled trials of embeddings files (middle floor):
``speakerzoo calibrate`` is :func:`calibrate_embeddings`. The calibrator is
:class:`speakerzoo.calibration.ScoreCalibrator`; the trials are scored exactly as
``speakerzoo score`` scores them (:func:`speakerzoo.inference.score_files.scored_trials`), so a
calibration fitted here applies to what ``score --calibration`` computes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from speakerzoo.calibration import CalibrationError, ScoreCalibrator
from speakerzoo.inference.score_files import (
    DURATION_QUALITY,
    calibrated_metrics,
    calibration_info,
    draw_bayes_error,
    scored_trials,
    trial_quality,
)
from speakerzoo.scoring import eer

__all__ = ["calibrate_embeddings", "default_output"]


def default_output(embeddings: Sequence[str | Path]) -> Path:
    """``EMB.calibration.json`` beside the first embeddings file."""
    first = Path(embeddings[0])
    return first.with_name(first.stem + ".calibration.json")


def calibrate_embeddings(
    embeddings: Sequence[str | Path],
    output: str | Path | None = None,
    p_effective: float = 0.5,
    p_target: float = 0.01,
    c_miss: float = 1.0,
    c_fa: float = 1.0,
    plot: str | Path | None = None,
    quality: bool = False,
    **scoring: Any,
) -> dict[str, Any]:
    """Fit a calibration on the labelled trials of a corpus part (default ``part="val"``, never
    the part it will be judged on) or of a trial list, scored with ``embeddings`` as
    :func:`~speakerzoo.inference.score_files.scored_trials` does (``scoring``: its keyword
    arguments); write it to ``output`` (default :func:`default_output`) and return it with its
    metrics on the fitting trials (and their Bayes error plot in ``plot``). With ``quality``, the
    log durations of the enrolment and test utterances enter the fit too (corpus trials only)."""
    scored = scored_trials(embeddings, **{"part": "val", **scoring})
    labels = scored.labels("calibration")
    measures = trial_quality(scored, DURATION_QUALITY) if quality else None
    calibrator = ScoreCalibrator.fit(scored.scores, labels, quality=measures,
                                     quality_names=DURATION_QUALITY if quality else (), p_effective=p_effective)
    if calibrator.weights[0] <= 0:
        raise CalibrationError(
            f"on {scored.trial_list.source} higher scores are not more often targets (EER "
            f"{100 * eer(scored.scores, labels):.1f} %): these embeddings do not tell the speakers apart; "
            "calibrate a trained model")
    calibrator.info.update(calibration_info(scored))
    path = calibrator.save(default_output(embeddings) if output is None else output)
    metrics = calibrated_metrics(calibrator, scored.scores, labels, p_target, c_miss, c_fa, measures)
    if plot is not None:
        metrics["plot"] = str(draw_bayes_error(plot, calibrator.llr(scored.scores, measures), labels, p_target,
                                               title=f"{Path(embeddings[0]).name}: the fitting trials"))
    return {
        "calibration": str(path),
        "embeddings": " + ".join(str(p) for p in embeddings),
        "trials": scored.trial_list.source,
        "normalisation": scored.normalisation,
        "fusion": scored.fused,
        "weights": calibrator.weights,
        "quality": calibrator.quality,
        "bias": calibrator.bias,
        "p_effective": p_effective,
        "targets": calibrator.info["targets"],
        "nontargets": calibrator.info["nontargets"],
        "on_fitting_trials": metrics,
    }
