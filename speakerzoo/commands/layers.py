"""``speakerzoo layers``: speaker information in every wav2vec2 layer (seed 003, Figure 1).

Each transformer layer's output ``C^k`` is mean-pooled over time into an embedding of the
utterance, and the corpus' verification trials are scored with the cosine of those
embeddings, layer by layer: one EER (and identification accuracy) per layer. The model is a
trained :class:`~speakerzoo.zoo.wav2vec2_mtl.Wav2Vec2MultiTask` checkpoint or a wav2vec2
directory in transformers' format (the seed's "pre-trained" curve).
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from speakerzoo.commands.argtypes import positive_float, positive_int
from speakerzoo.atomic import replaced_on_success
from speakerzoo.inference.loading import device_from_name
from speakerzoo.commands.common import run_command
from speakerzoo.datamodules.corpus import CorpusError
from speakerzoo.datamodules.datamodule import SpeakerDataModule
from speakerzoo.scoring import eer, score_trials
from speakerzoo.zoo.wav2vec2_mtl import Wav2Vec2MultiTask

EXAMPLES = """examples:
  speakerzoo layers --checkpoint runs/speakerzoo/version_0/checkpoints/best.ckpt --corpus data/speech_commands.h5
  speakerzoo layers --pretrained ~/models/wav2vec2-base --corpus data/voxceleb1.h5 --plot layers.png
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="speakerzoo layers",
        description=textwrap.fill(
            "Speaker verification EER of every transformer layer of a wav2vec2 model: each layer's output is "
            "mean-pooled into an utterance embedding and the corpus' trials are scored by cosine (the seed's "
            "Figure 1).", width=100),
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", "-c", metavar="CKPT", help="a Wav2Vec2MultiTask checkpoint (or registered name)")
    source.add_argument("--pretrained", type=Path, metavar="DIR",
                        help="a wav2vec2 directory in transformers' format (save_pretrained), e.g. wav2vec2-base")
    parser.add_argument("--corpus", type=Path, required=True, metavar="C.h5", help="corpus with trials (speakerzoo prepare)")
    parser.add_argument("--split", choices=("speaker", "utterance"), default="speaker",
                        help="split whose trials are scored (default: speaker, open set)")
    parser.add_argument("--part", choices=("val", "test"), default="test", help="part scored (default: test)")
    parser.add_argument("--max-seconds", type=positive_float, default=10.0, metavar="S",
                        help="centre-crop longer utterances to S seconds (default: 10)")
    parser.add_argument("--batch-size", type=positive_int, default=8, metavar="N", help="utterances per batch (default: 8)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available, else cpu)")
    parser.add_argument("--output", type=Path, metavar="FILE.json", help="also write the results to this JSON file")
    parser.add_argument("--plot", type=Path, metavar="FILE.png", help="draw EER per layer into this image")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    return parser


def load_wav2vec2(checkpoint: str | None, pretrained: Path | None) -> Wav2Vec2MultiTask:
    """The model to analyse, in eval mode: a checkpoint's, or bare pretrained weights (no heads)."""
    if pretrained is not None:
        return Wav2Vec2MultiTask(pretrained=str(pretrained)).eval()
    return Wav2Vec2MultiTask.from_pretrained(checkpoint)


@torch.inference_mode()
def layer_eers(model: Wav2Vec2MultiTask, corpus: str | Path, split: str = "speaker", part: str = "test",
               max_seconds: float | None = 10.0, batch_size: int = 8, device: torch.device | str = "cpu",
               progress: bool = True) -> list[dict[str, float]]:
    """``[{"layer": k, "eer": ..., "ident_acc": ...}]`` for k = 1..L (fractions, not percent)."""
    data = SpeakerDataModule(str(corpus), split=split, eval_max_seconds=max_seconds, eval_batch_size=batch_size,
                             num_workers=0, min_utterances_per_speaker=1)
    if data.sample_rate != model.sample_rate:
        raise CorpusError(f"{corpus} is at {data.sample_rate} Hz but the model takes {model.sample_rate} Hz; prepare "
                          f"it with --sample-rate {model.sample_rate}")
    trials = data.trials(part)
    if not len(trials.pairs):
        raise CorpusError(f"{corpus}: the {part!r} part of the {split!r} split has no verification trials")
    model = model.to(device).eval()
    loader = data.val_dataloader() if part == "val" else data.test_dataloader()
    indices, embeddings = [], []
    for batch in tqdm(loader, desc="layers", unit="batch", disable=not progress, leave=False):
        batch = {k: v.to(device) for k, v in batch.items()}
        embeddings.append(model.embed_unpadded(batch, model.layer_means).float().cpu())
        indices.append(batch["index"].cpu())
    data.teardown()
    index, emb = torch.cat(indices), torch.cat(embeddings)  # emb: [utterances, layers, hidden]
    results = []
    for k in range(emb.shape[1]):
        scores, labels, hits = score_trials(index, emb[:, k], trials)
        results.append({"layer": k + 1, "eer": eer(scores, labels),
                        "ident_acc": float(hits.float().mean()) if hits.numel() else float("nan")})
    return results


def draw(results: list[dict[str, float]], path: Path, title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot([r["layer"] for r in results], [100 * r["eer"] for r in results], marker="o")
    ax.set_xlabel("transformer layer")
    ax.set_ylabel("EER (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with replaced_on_success(path) as tmp:
        fig.savefig(tmp, format="png")


def run(args: argparse.Namespace) -> dict[str, Any]:
    model = load_wav2vec2(args.checkpoint, args.pretrained)
    source = str(args.pretrained or args.checkpoint)
    results = layer_eers(model, args.corpus, args.split, args.part, args.max_seconds, args.batch_size,
                         device_from_name(args.device), progress=not args.quiet)
    report = {"model": source, "corpus": str(args.corpus), "split": args.split, "part": args.part,
              "speaker_layer": model.speaker_layer, "pooling": "mean", "layers": results}
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        with replaced_on_success(args.output) as tmp:
            tmp.write_text(json.dumps(report, indent=2))
    if args.plot:
        draw(results, args.plot, f"{source} on {Path(args.corpus).name} ({args.split} split, {args.part})")
    return report


def text(report: dict[str, Any]) -> str:
    lines = [f"{report['model']}: mean-pooled layer outputs on {report['corpus']} "
             f"({report['split']} split, {report['part']})", "  layer   EER %   ident. acc. %"]
    for r in report["layers"]:
        mark = "  <- speaker head" if r["layer"] == report["speaker_layer"] else ""
        lines.append(f"  {r['layer']:>5}  {100 * r['eer']:6.2f}  {100 * r['ident_acc']:13.2f}{mark}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``speakerzoo layers ...``; returns the exit code (0 done, 2 error, 130 interrupted)."""
    return run_command("layers", argv, build_parser, run, text)


if __name__ == "__main__":
    sys.exit(main())
