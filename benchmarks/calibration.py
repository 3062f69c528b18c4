"""Calibration fitted on the validation part, judged on the test part: Cllr, minCllr, and the
actual DCF of the decisions against the minimum DCF, at p_target 0.01 and 0.05; and open-set
identification on the test part with half of its speakers enrolled.

For each checkpoint: ``speakerzoo embed`` of the val and test parts (kept in ``--work``), then
``speakerzoo calibrate`` on val and ``speakerzoo score --calibration`` on test, through the
library functions those commands call. "Before" reads the raw cosine scores as LLRs (what a
user who takes a score at face value gets) and, beside it, the cost of deciding by the
validation-EER threshold stored in the checkpoint (the default of ``verify`` without a
calibration).

Open set: the test speakers with at least 3 utterances, every other one (sorted by name)
enrolled from its first 2 utterances (their mean embedding, as ``speakerzoo identify`` enrols);
probes are the other utterances of enrolled speakers and every utterance of the rest
(impostors). Reported: the detection and identification rate (DIR) at a false-alarm rate of
1 % (threshold chosen on these probes), and DIR and false-alarm rate at the calibration's Bayes
threshold and at the stored EER threshold, the two thresholds ``identify`` can decide by.

    python benchmarks/calibration.py --corpus data/speech_commands.h5 \\
        --checkpoint ECAPA=runs/ecapa_sc/version_0/checkpoints/best-027.ckpt \\
        --checkpoint SECNNBiGRU=runs/se_cnn_bigru/version_0/checkpoints/best-014.ckpt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from runs import write_results
from speakerzoo.calibration import ScoreCalibrator
from speakerzoo.commands import embed as embed_cmd
from speakerzoo.inference.calibrate import calibrate_embeddings
from speakerzoo.inference.score_files import calibrated_metrics, scored_trials
from speakerzoo.embeddings import EmbeddingFile
from speakerzoo.inference.bank import SpeakerBank
from speakerzoo.inference.trials import corpus_part
from speakerzoo.scoring import act_dcf, bayes_threshold, cllr, eer, normalized_dcf, open_set_identification
from speakerzoo.zoo import SpeakerEmbeddingModule

P_TARGETS = (0.01, 0.05)


def embed(checkpoint: Path, corpus: Path, split: str, part: str, out: Path) -> Path:
    if not out.is_file():
        code = embed_cmd.main([str(corpus), "--split", split, "--part", part, "-c", str(checkpoint), "-o", str(out), "-q"])
        if code:
            raise SystemExit(f"embedding {part} with {checkpoint} failed ({code})")
    return out


def evaluate(name: str, checkpoint: Path, corpus: Path, split: str, work: Path) -> dict:
    val = embed(checkpoint, corpus, split, "val", work / f"{name}-val.h5")
    test = embed(checkpoint, corpus, split, "test", work / f"{name}-test.h5")
    fitted = calibrate_embeddings([val], output=work / f"{name}.calibration.json", corpus=corpus, split=split, part="val")
    calibrator = ScoreCalibrator.load(fitted["calibration"])
    scored = scored_trials([test], corpus=corpus, split=split, part="test")
    labels = scored.labels()
    raw = scored.scores.double()
    eer_threshold = SpeakerEmbeddingModule.from_pretrained(str(checkpoint)).eer_threshold
    thresholds = {f"bayes_threshold@{p}": calibrator.score_threshold(bayes_threshold(p)) for p in P_TARGETS}
    thresholds["eer_threshold"] = None if eer_threshold is None else float(eer_threshold)
    calibrated = {p: calibrated_metrics(calibrator, raw, labels, p) for p in P_TARGETS}  # what `score` reports
    row = {"model": name, "checkpoint": str(checkpoint), "test_pairs": int(labels.numel()),
           "test_targets": int(labels.sum()), "weights": calibrator.weights, "bias": calibrator.bias,
           "eer": eer(raw, labels), "cllr_raw": cllr(raw, labels), "cllr": calibrated[P_TARGETS[0]]["cllr"],
           "min_cllr": calibrated[P_TARGETS[0]]["min_cllr"]}
    row["open_set"] = open_set(test, corpus, split, thresholds)
    for p in P_TARGETS:
        row[f"min_dcf@{p}"] = calibrated[p]["min_dcf"]
        row[f"act_dcf_raw@{p}"] = act_dcf(raw, labels, p)  # the raw cosine read as an LLR
        row[f"act_dcf@{p}"] = calibrated[p]["act_dcf"]
        if eer_threshold is not None:  # deciding by the stored EER threshold
            accept = raw >= float(eer_threshold)
            row[f"dcf_eer_threshold@{p}"] = float(normalized_dcf(
                (~accept[labels.bool()]).double().mean(), accept[~labels.bool()].double().mean(), p))
    return row


def open_set(test: Path, corpus: Path, split: str, thresholds: dict[str, float | None]) -> dict:
    """Half of the test speakers enrolled from 2 utterances; DIR and FAR (see the module docstring)."""
    emb = EmbeddingFile(test)
    ids, speakers = corpus_part(corpus, split, "test")
    rows = emb.rows(ids)
    by_speaker: dict[int, list[int]] = {}
    for row, speaker in zip(rows.tolist(), speakers.tolist()):
        if speaker >= 0:
            by_speaker.setdefault(speaker, []).append(row)
    usable = sorted(s for s, r in by_speaker.items() if len(r) >= 3)
    enrolled, impostors = usable[::2], usable[1::2]
    bank = SpeakerBank.from_utterances({str(s): emb.embedding[by_speaker[s][:2]] for s in enrolled})
    probes, truth = [], []
    for column, s in enumerate(enrolled):
        probes += by_speaker[s][2:]
        truth += [column] * len(by_speaker[s][2:])
    for s in impostors:
        probes += by_speaker[s]
        truth += [-1] * len(by_speaker[s])
    scores = bank.scores(emb.embedding[torch.tensor(probes)])
    truth_t = torch.tensor(truth)
    out = {"enrolled": len(enrolled), "impostor_speakers": len(impostors), "genuine_probes": int((truth_t >= 0).sum()),
           "impostor_probes": int((truth_t < 0).sum())}
    out["at_far_1%"] = open_set_identification(scores, truth_t, far=0.01)._asdict()
    for name, t in thresholds.items():
        if t is not None:
            out[name] = open_set_identification(scores, truth_t, threshold=t)._asdict()
    return out


def table(rows: list[dict]) -> str:
    lines = ["| model | test pairs | EER | Cllr raw → calibrated (min) | p_target | minDCF | actDCF raw | actDCF at the EER "
             "threshold | actDCF calibrated | calibrated / min |", "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        for p in P_TARGETS:
            lines.append(
                f"| {r['model']} | {r['test_pairs']} ({r['test_targets']} target) | {100 * r['eer']:.2f} % | {r['cllr_raw']:.3f} → {r['cllr']:.3f} "
                f"({r['min_cllr']:.3f}) | {p:g} | {r[f'min_dcf@{p}']:.3f} | {r[f'act_dcf_raw@{p}']:.3f} | "
                f"{r.get(f'dcf_eer_threshold@{p}', float('nan')):.3f} | {r[f'act_dcf@{p}']:.3f} | "
                f"{r[f'act_dcf@{p}'] / r[f'min_dcf@{p}']:.2f} |")
    lines += ["", "| model | enrolled / impostor speakers | genuine / impostor probes | DIR at FAR 1 % (threshold) | "
              "at the Bayes threshold, p_target 0.01: DIR, FAR | p_target 0.05: DIR, FAR | at the EER threshold: DIR, FAR |",
              "|---|---|---|---|---|---|---|"]
    for r in rows:
        o = r["open_set"]
        cell = lambda key: f"{100 * o[key]['dir']:.1f} %, {100 * o[key]['far']:.1f} %" if key in o else "–"  # noqa: E731
        lines.append(f"| {r['model']} | {o['enrolled']} / {o['impostor_speakers']} | {o['genuine_probes']} / "
                     f"{o['impostor_probes']} | {100 * o['at_far_1%']['dir']:.1f} % ({o['at_far_1%']['threshold']:.3f}) | "
                     f"{cell('bayes_threshold@0.01')} | {cell('bayes_threshold@0.05')} | {cell('eer_threshold')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--split", default="speaker")
    parser.add_argument("--checkpoint", action="append", required=True, metavar="NAME=CKPT")
    parser.add_argument("--work", type=Path, default=Path("runs/calibration"))
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for item in args.checkpoint:
        name, _, path = item.partition("=")
        rows.append(evaluate(name, Path(path), args.corpus, args.split, args.work))
    write_results(args.work, table(rows), {"rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
