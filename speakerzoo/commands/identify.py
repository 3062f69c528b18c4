"""``speakerzoo identify``: who is speaking? The top-k enrolled speakers of each test file.

Speakers are enrolled with ``--enrol``, ``--enrol-dir`` or ``--enrol-embeddings``
(:mod:`speakerzoo.commands.enrol`); each test file is scored against every one by cosine
similarity and the ``--top-k`` best are listed, highest first. With a threshold
(``--threshold``, else the checkpoint's validation EER threshold ``model.eer_threshold``) each
candidate is also marked accepted or not, so that a file whose best candidate is rejected is
an unknown speaker (open-set identification).

Without enrolment, ``--closed-set`` identifies among the checkpoint's own training speakers
with its classification head: the candidates' scores are the head's softmax probabilities
(averaged over segments with ``--segment-seconds``), not calibrated ones.

``--mc-passes K`` reports each score as the mean ± std over ``K`` Monte-Carlo dropout passes
of the test file (seed 002 §5); candidates are ranked by the mean.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from typing import Any

from speakerzoo.argtypes import positive_int
from speakerzoo.commands.enrol import (
    run_command,
    Embedder,
    EnrolError,
    add_enrol_arguments,
    add_inference_arguments,
    add_model_arguments,
    check_mc,
    enrol,
    format_score,
    has_enrolment,
    load_model,
    resolve_threshold,
    seeded,
    segments_note,
)
from speakerzoo.zoo.uncertainty import head_probabilities, rank

__all__ = ["build_parser", "main", "run"]

EXAMPLES = """examples:
  speakerzoo identify -c best.ckpt --enrol-dir speakers/ unknown1.wav unknown2.wav
  speakerzoo identify -c best.ckpt --enrol alice=a1.wav,a2.wav --enrol bob=b1.wav --top-k 2 unknown.wav
  speakerzoo identify -c best.ckpt --enrol-embeddings emb/speakers.h5 --mc-passes 20 --json unknown.wav
  speakerzoo identify -c best.ckpt --closed-set --top-k 3 unknown.wav   # among the model's training speakers
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="speakerzoo identify",
        description=textwrap.fill(
            "Speaker identification with a trained model: the --top-k enrolled speakers whose cosine score with each "
            "test file is highest (enrol with --enrol, --enrol-dir or --enrol-embeddings), marked accepted when a "
            "threshold is known (--threshold or the checkpoint's validation EER threshold). --closed-set instead "
            "ranks the checkpoint's training speakers by the softmax of its classification head. Audio of any rate, "
            "mono or stereo, is mixed to mono and resampled to the model's rate. --mc-passes K reports score ± std "
            "over K Monte-Carlo dropout passes."
        , width=100),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="test audio file(s)")
    add_model_arguments(parser)
    parser.add_argument("--closed-set", action="store_true",
                        help="no enrolment: rank the checkpoint's training speakers by its classification head")
    parser.add_argument("--top-k", type=positive_int, default=5, metavar="K",
                        help="candidates listed per file (default: 5; at most the number of speakers)")
    parser.add_argument("--threshold", type=float, metavar="T",
                        help="enrolled speakers: accept scores >= T (default: the checkpoint's validation EER threshold)")
    add_enrol_arguments(parser)
    add_inference_arguments(parser)
    return parser



def _training_speakers(model: Any) -> list[str]:
    names = getattr(model, "speaker_names", None)
    count = int(getattr(model, "num_speakers", 0) or 0)
    return [str(n) for n in names] if names else [f"class {i}" for i in range(count)]


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Identify as ``args`` say; the result as the JSON object ``--json`` prints."""
    enrolled = has_enrolment(args)
    if enrolled and args.closed_set:
        raise EnrolError("--closed-set ranks the checkpoint's training speakers; drop it to identify among the "
                         "enrolled speakers, or drop the --enrol options")
    model, checkpoint = load_model(args.checkpoint, args.device)
    has_head = getattr(model, "head", None) is not None
    if not enrolled and not args.closed_set:
        if has_head:
            names = _training_speakers(model)
            shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
            offer = (f", or --closed-set to identify among the checkpoint's {len(names)} training speakers "
                     f"({shown}) with its classification head")
        else:
            offer = " (this checkpoint has no classification head, so --closed-set is not available)"
        raise EnrolError(f"no speakers to identify: enrol some with --enrol NAME=FILE[,FILE...], --enrol-dir DIR or "
                         f"--enrol-embeddings FILE.h5{offer}")
    if args.closed_set:
        if not has_head:
            raise EnrolError(f"{checkpoint} has no classification head (num_speakers=0): --closed-set is not available; "
                             "enrol speakers instead")
        if args.threshold is not None:
            raise EnrolError("--threshold applies to cosine scores of enrolled speakers, not to --closed-set probabilities")
    check_mc(model, args.mc_passes)
    embedder = Embedder(model, args.segment_seconds, args.segment_hop, progress=not args.quiet)
    if args.closed_set:
        names, threshold, source, counts = _training_speakers(model), None, "", None
        bank = None
    else:
        enrolment = enrol(args, embedder, checkpoint)
        assert enrolment is not None
        bank, names, counts = enrolment.bank, enrolment.bank.names, enrolment.counts()
        threshold, source = resolve_threshold(args.threshold, model)
    top_k = min(int(args.top_k), len(names))
    with seeded(args.seed, model.device):
        recs = embedder.embed_files(args.files, passes=args.mc_passes, roles=["test file"] * len(args.files))
    results = []
    for path, rec in zip(args.files, recs):
        if bank is not None:
            mean, std = bank.score_stats(rec.per_pass)
        else:
            probs = head_probabilities(model, rec.samples.to(model.device)).double().mean(dim=1)  # [K, C]
            mean, std = probs.mean(dim=0), probs.std(dim=0, correction=0)
        ranked = rank(names, mean, std, threshold, top_k=top_k)
        results.append({"test": str(path), "segments": rec.segments,
                        "candidates": [{"rank": i + 1, **v.to_dict()} for i, v in enumerate(ranked)]})
    return {
        "mode": "closed-set" if args.closed_set else "enrolled",
        "score": "softmax probability of the classification head" if args.closed_set else "cosine",
        "checkpoint": str(checkpoint),
        "speakers": len(names),
        "enrolled": counts,
        "top_k": top_k,
        "threshold": threshold,
        "threshold_source": source or None,
        "mc_passes": int(args.mc_passes),
        "segment_seconds": args.segment_seconds,
        "results": results,
    }


def _text(result: dict[str, Any]) -> str:
    mc = result["mc_passes"] > 0
    what = ("training speakers of the checkpoint (softmax probability of its head)"
            if result["mode"] == "closed-set" else "enrolled speakers (cosine score)")
    lines = [f"top {result['top_k']} of {result['speakers']} {what}"]
    if result["threshold"] is not None:
        lines.append(f"threshold {result['threshold']:.4f} ({result['threshold_source']})")
    if mc:
        lines.append(f"scores: mean ± std over {result['mc_passes']} MC-dropout passes")
    width = max(7, *(len(c["speaker"]) for r in result["results"] for c in r["candidates"]))
    score_width = 17 if mc else 7
    for r in result["results"]:
        segs = segments_note(r["segments"], result["segment_seconds"])
        header = f"  rank  {'speaker':<{width}}  {'score':<{score_width}}"
        lines += ["", f"{r['test']}{segs}", (header + ("  decision" if result["threshold"] is not None else "")).rstrip()]
        for c in r["candidates"]:
            row = f"  {c['rank']:>4}  {c['speaker']:<{width}}  {format_score(c['score'], c['score_std'], mc):<{score_width}}"
            if c["accepted"] is not None:
                row += "  " + ("accept" if c["accepted"] else "reject")
            lines.append(row.rstrip())
        if r["candidates"] and r["candidates"][0]["accepted"] is False:
            lines.append("  no enrolled speaker reaches the threshold: an unknown speaker?")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``speakerzoo identify ...``; returns the exit code (0 done, 2 error, 130 interrupted)."""
    return run_command("identify", argv, build_parser, run, _text)


if __name__ == "__main__":
    sys.exit(main())
