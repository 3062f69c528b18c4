"""``speakerzoo calibrate`` on the validation part of real speech (FSDD, a tiny ECAPA trained in
the session), then ``speakerzoo score --calibration`` on the test part: calibrated scores carry
information on held-out trials, the numbers are the library's, and a calibration is refused for
scores made another way."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from speakerzoo.calibration import ScoreCalibrator
from speakerzoo.commands import calibrate as calibrate_cmd
from speakerzoo.commands import embed as embed_cmd
from speakerzoo.commands import score as score_cmd
from speakerzoo.inference.score_files import scored_trials
from speakerzoo.scoring import act_dcf, cllr


@pytest.fixture(scope="module")
def parts(fsdd_tiny_ecapa: Path, tmp_path_factory) -> dict[str, Path]:
    corpus = fsdd_tiny_ecapa.parent / "fsdd_small.h5"
    folder = tmp_path_factory.mktemp("calibrate")
    out = {"corpus": corpus, "checkpoint": fsdd_tiny_ecapa}
    for part in ("val", "test"):
        out[part] = folder / f"{part}.h5"
        assert embed_cmd.main([str(corpus), "--split", "utterance", "--part", part, "-c", str(fsdd_tiny_ecapa),
                               "-o", str(out[part]), "-q"]) == 0
    return out


def run_json(module, capsys, *args) -> dict:
    assert module.main([*map(str, args), "--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def test_calibrated_on_val_the_test_scores_are_informative_llrs(parts, capsys) -> None:
    fitted = run_json(calibrate_cmd, capsys, parts["val"], "--corpus", parts["corpus"], "--split", "utterance",
                      "--part", "val")
    cal_path = Path(fitted["calibration"])
    assert cal_path == parts["val"].with_name("val.calibration.json") and cal_path.is_file()
    assert fitted["weights"][0] > 0 and fitted["targets"] > 0 and fitted["nontargets"] > 0
    assert fitted["on_fitting_trials"]["cllr"] < 1

    result = run_json(score_cmd, capsys, parts["test"], "--corpus", parts["corpus"], "--split", "utterance",
                      "--part", "test", "--calibration", cal_path, "--p-target", "0.05")
    cal = result["calibration"]
    assert cal["file"] == str(cal_path)
    assert cal["cllr"] < 1  # held-out trials: the LLRs carry information
    assert 0 <= cal["min_cllr"] <= cal["cllr"]
    assert cal["act_dcf"] >= cal["min_dcf"]
    assert cal["min_dcf"] == pytest.approx(result["min_dcf"])  # a monotone map keeps the minimum DCF

    # the same numbers through the library
    scored = scored_trials([parts["test"]], corpus=parts["corpus"], split="utterance", part="test")
    calibrator = ScoreCalibrator.load(cal_path)
    llr = calibrator.llr(scored.scores)
    labels = scored.labels()
    assert cal["cllr"] == pytest.approx(cllr(llr, labels), rel=1e-12)
    assert cal["act_dcf"] == pytest.approx(act_dcf(llr, labels, 0.05), rel=1e-12)
    # the decision threshold in score units maps back to the Bayes threshold
    threshold = cal["bayes_threshold_score"]
    assert float(calibrator.llr(scored.scores.new_tensor([threshold]))) == pytest.approx(cal["bayes_threshold_llr"])
    info = json.loads(cal_path.read_text())["info"]
    assert info["checkpoint_sha256"] and info["normalisation"] == [] and "part val" in info["trials"]

    assert score_cmd.main([str(parts["test"]), "--corpus", str(parts["corpus"]), "--split", "utterance",
                           "--calibration", str(cal_path)]) == 0
    table = capsys.readouterr().out
    assert "Cllr" in table and "accept when LLR >=" in table and "actual DCF" in table


def test_a_calibration_is_refused_for_other_scores(parts, tmp_path, capsys) -> None:
    cal_path = tmp_path / "val.json"
    run_json(calibrate_cmd, capsys, parts["val"], "--corpus", parts["corpus"], "--split", "utterance",
             "--output", cal_path)
    # scores normalised with a cohort are other scores
    code = score_cmd.main([str(parts["test"]), "--corpus", str(parts["corpus"]), "--split", "utterance",
                           "--calibration", str(cal_path), "--mean-norm", "--cohort", str(parts["val"])])
    err = capsys.readouterr().err
    assert code == 2 and f"{cal_path} was fitted on scores with score normalisation none" in err
    assert "speakerzoo calibrate" in err
    # another checkpoint's calibration
    data = json.loads(cal_path.read_text())
    data["info"]["checkpoint_sha256"] = "0" * 64
    other = tmp_path / "other.json"
    other.write_text(json.dumps(data))
    code = score_cmd.main([str(parts["test"]), "--corpus", str(parts["corpus"]), "--split", "utterance",
                           "--calibration", str(other)])
    err = capsys.readouterr().err
    assert code == 2 and "fitted on the scores of another checkpoint" in err


def test_calibrating_needs_labelled_trials(parts, tmp_path, capsys) -> None:
    from speakerzoo.embeddings import EmbeddingFile

    ids = EmbeddingFile(parts["val"]).utt_id
    unlabelled = tmp_path / "pairs.txt"
    unlabelled.write_text("".join(f"{a} {b}\n" for a, b in zip(ids[:5], ids[5:10])))
    code = calibrate_cmd.main([str(parts["val"]), "--trials", str(unlabelled), "--output", str(tmp_path / "cal.json")])
    err = capsys.readouterr().err
    assert code == 2 and "has no labels: there is no calibration without target/non-target labels" in err
    assert not (tmp_path / "cal.json").exists()


def test_the_python_api_and_verify_decide_by_the_calibrations_bayes_threshold(parts, fsdd_root, tmp_path, capsys):
    from speakerzoo import SpeakerRecognizer
    from speakerzoo.commands import identify as identify_cmd
    from speakerzoo.commands import verify as verify_cmd
    from speakerzoo.scoring import bayes_threshold

    cal_path = tmp_path / "val.json"
    run_json(calibrate_cmd, capsys, parts["val"], "--corpus", parts["corpus"], "--split", "utterance",
             "--output", cal_path)
    calibrator = ScoreCalibrator.load(cal_path)
    rec = SpeakerRecognizer.from_pretrained(parts["checkpoint"], device="cpu", progress=False)
    eer_threshold = rec.threshold
    threshold = rec.use_calibration(cal_path, p_target=0.05)
    assert rec.threshold == threshold != eer_threshold
    assert float(calibrator.llr(torch.tensor([threshold], dtype=torch.float64))) == pytest.approx(bayes_threshold(0.05))
    a, b = fsdd_root / "recordings" / "7_jackson_30.wav", fsdd_root / "recordings" / "7_jackson_31.wav"
    score, same = rec.verify_files(a, b)
    assert same == (score >= threshold)
    trial = rec.verification_report([b], enrol_file=a)["trials"][0]
    assert trial["llr"] == pytest.approx(float(calibrator.llr(torch.tensor([score], dtype=torch.float64))))
    assert 0 < trial["posterior"] < 1

    assert verify_cmd.main([str(a), str(b), "-c", str(parts["checkpoint"]), "--calibration", str(cal_path),
                            "--p-target", "0.05", "-q"]) == 0
    out = capsys.readouterr().out
    assert "LLR" in out and "P(same)" in out and f"Bayes decision of {cal_path} at p_target 0.05" in out

    # a calibration of normalised scores does not hold for verification's plain cosine
    normed = tmp_path / "normed.json"
    run_json(calibrate_cmd, capsys, parts["val"], "--corpus", parts["corpus"], "--split", "utterance",
             "--mean-norm", "--cohort", parts["test"], "--output", normed)
    code = verify_cmd.main([str(a), str(b), "-c", str(parts["checkpoint"]), "--calibration", str(normed), "-q"])
    assert code == 2 and "fitted on normalised or fused scores" in capsys.readouterr().err
    code = identify_cmd.main([str(a), "-c", str(parts["checkpoint"]), "--closed-set", "--calibration", str(cal_path)])
    assert code == 2 and "not to --closed-set" in capsys.readouterr().err


def test_the_bayes_error_plot_is_drawn_for_calibrated_scores_only(parts, tmp_path, capsys) -> None:
    cal_path = tmp_path / "val.json"
    fitted = run_json(calibrate_cmd, capsys, parts["val"], "--corpus", parts["corpus"], "--split", "utterance",
                      "--output", cal_path, "--plot", tmp_path / "fit.png")
    assert (tmp_path / "fit.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert fitted["on_fitting_trials"]["plot"] == str(tmp_path / "fit.png")
    result = run_json(score_cmd, capsys, parts["test"], "--corpus", parts["corpus"], "--split", "utterance",
                      "--calibration", cal_path, "--plot", tmp_path / "test.png")
    assert result["calibration"]["plot"] == str(tmp_path / "test.png")
    assert (tmp_path / "test.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code = score_cmd.main([str(parts["test"]), "--corpus", str(parts["corpus"]), "--split", "utterance",
                           "--plot", str(tmp_path / "no.png")])
    assert code == 2 and "give --calibration CAL.json too" in capsys.readouterr().err
    assert not (tmp_path / "no.png").exists()


def test_duration_quality_and_calibrated_scores_files(parts, tmp_path, capsys) -> None:
    from speakerzoo.commands import verify as verify_cmd
    from speakerzoo.inference.score_files import DURATION_QUALITY, trial_quality

    cal_path = tmp_path / "q.json"
    fitted = run_json(calibrate_cmd, capsys, parts["val"], "--corpus", parts["corpus"], "--split", "utterance",
                      "--quality", "duration", "--output", cal_path)
    assert fitted["quality"] == list(DURATION_QUALITY) and len(fitted["weights"]) == 3
    scores_path = tmp_path / "scores.txt"
    result = run_json(score_cmd, capsys, parts["test"], "--corpus", parts["corpus"], "--split", "utterance",
                      "--calibration", cal_path, "--scores", scores_path, "--p-target", "0.05")
    cal = result["calibration"]
    assert cal["quality"] == list(DURATION_QUALITY) and cal["bayes_threshold_score"] is None  # it differs per trial
    scored = scored_trials([parts["test"]], corpus=parts["corpus"], split="utterance", part="test")
    calibrator = ScoreCalibrator.load(cal_path)
    quality = trial_quality(scored, calibrator.quality)
    seconds = scored.trial_list.seconds[0]
    assert seconds.min() > 0.1 and seconds.max() > 1.5 * seconds.min()  # FSDD durations differ
    llr = calibrator.llr(scored.scores, quality)
    assert cal["cllr"] == pytest.approx(cllr(llr, scored.labels()), rel=1e-12)
    lines = scores_path.read_text().splitlines()
    assert len(lines) == len(scored.scores)
    enrol, test, score, line_llr, posterior, label = lines[0].split()
    assert float(line_llr) == pytest.approx(float(llr[0]), abs=1e-4)
    assert float(posterior) == pytest.approx(float(torch.sigmoid(llr[0] + math.log(0.05 / 0.95))), abs=1e-6)
    assert label in ("0", "1") and float(score) == pytest.approx(float(scored.scores[0]), abs=1e-6)
    # a text trial list has no durations; verification computes no quality measures
    trials = tmp_path / "trials.txt"
    trials.write_text("".join(f"{e} {t} {int(y)}\n" for e, t, y in zip(scored.trial_list.enrol[:20],
                                                                       scored.trial_list.test[:20],
                                                                       scored.labels()[:20])))
    code = score_cmd.main([str(parts["test"]), "--trials", str(trials), "--calibration", str(cal_path)])
    assert code == 2 and "duration quality measures need the utterances' durations" in capsys.readouterr().err
    code = verify_cmd.main(["a.wav", "b.wav", "-c", str(parts["checkpoint"]), "--calibration", str(cal_path), "-q"])
    assert code == 2 and "quality measures" in capsys.readouterr().err  # refused before any audio is read


def test_an_unlabelled_list_is_scored_into_a_file_with_llrs(parts, tmp_path, capsys) -> None:
    cal_path = tmp_path / "c.json"
    run_json(calibrate_cmd, capsys, parts["val"], "--corpus", parts["corpus"], "--split", "utterance",
             "--output", cal_path)
    scored = scored_trials([parts["test"]], corpus=parts["corpus"], split="utterance", part="test")
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("".join(f"{e} {t}\n" for e, t in zip(scored.trial_list.enrol[:7], scored.trial_list.test[:7])))
    out = tmp_path / "scores.txt"
    result = run_json(score_cmd, capsys, parts["test"], "--trials", pairs, "--calibration", cal_path, "--scores", out)
    assert result["labelled"] is False and result["pairs"] == 7 and "eer" not in result
    rows = [line.split() for line in out.read_text().splitlines()]
    assert len(rows) == 7 and all(len(r) == 5 for r in rows)  # enrol test score llr posterior
    calibrator = ScoreCalibrator.load(cal_path)
    assert float(rows[0][3]) == pytest.approx(float(calibrator.llr(scored.scores[:1])), abs=1e-4)
    code = score_cmd.main([str(parts["test"]), "--trials", str(pairs)])
    assert code == 2 and "give --scores FILE" in capsys.readouterr().err
