"""Calibration fitted on the validation part, judged on the test part: Cllr, minCllr, and the
actual DCF of the decisions against the minimum DCF, at p_target 0.01 and 0.05.

For each checkpoint: ``speakerzoo embed`` of the val and test parts (kept in ``--work``), then
``speakerzoo calibrate`` on val and ``speakerzoo score --calibration`` on test, through the
library functions those commands call. "Before" reads the raw cosine scores as LLRs (what a
user who takes a score at face value gets) and, beside it, the cost of deciding by the
validation-EER threshold stored in the checkpoint (the default of ``verify`` without a
calibration).

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
from speakerzoo.inference.score_files import scored_trials
from speakerzoo.scoring import act_dcf, cllr, eer, min_cllr, min_dcf
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
    llr = calibrator.llr(raw)
    eer_threshold = SpeakerEmbeddingModule.from_pretrained(str(checkpoint)).eer_threshold
    row = {"model": name, "checkpoint": str(checkpoint), "test_pairs": int(labels.numel()),
           "test_targets": int(labels.sum()), "weights": calibrator.weights, "bias": calibrator.bias,
           "eer": eer(raw, labels), "cllr_raw": cllr(raw, labels), "cllr": cllr(llr, labels), "min_cllr": min_cllr(raw, labels)}
    for p in P_TARGETS:
        eer_accept = raw >= float(eer_threshold) if eer_threshold is not None else None
        row[f"min_dcf@{p}"] = min_dcf(raw, labels, p)
        row[f"act_dcf_raw@{p}"] = act_dcf(raw, labels, p)
        row[f"act_dcf@{p}"] = act_dcf(llr, labels, p)
        if eer_accept is not None:  # decide by the stored EER threshold: llr = +-inf on either side of it
            row[f"dcf_eer_threshold@{p}"] = act_dcf(torch.where(eer_accept, torch.inf, -torch.inf), labels, p)
    return row


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
