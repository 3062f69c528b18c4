"""Seed 003 at CPU size: single-task against multi-task wav2vec2 on Speech Commands.

Trains ``configs/wav2vec2_mtl_small.yaml`` (a 4-layer wav2vec2 from random weights) once per
mode of :class:`~speakerzoo.datamodules.MultiTaskDataModule`: ``speech`` (CTC alone), ``speaker``
(AAM softmax alone), ``disjoint`` (a speech batch and a speaker batch per step, λ_s = 0.5) and
``joint`` (one batch with both labels), then tests each best checkpoint (chosen by
¼·WER + ¾·EER on val) on the test part: WER of greedy CTC decoding on the words of unseen
speakers and EER on their verification trials. The single-task speech model has no speaker
head, but its layer-n mean pooling is still scored. Writes ``ROOT/results.{md,json}`` and,
per mode, the EER of every layer (``speakerzoo layers``).

    python benchmarks/multitask_small.py --epochs 15 --parallel 2
"""

from __future__ import annotations

import argparse
from pathlib import Path

from runs import REPO, best_checkpoint, fit_once, test_checkpoint, train_all, write_results

MODES = ("speech", "speaker", "disjoint", "joint")
CONFIG = "configs/wav2vec2_mtl_small.yaml"


def checkpoints(root: Path, mode: str) -> Path:
    return root / "wav2vec2_mtl_small" / mode / "checkpoints"


def train(mode: str, args: argparse.Namespace, threads: int) -> None:
    fit_once(["-c", CONFIG, f"--data.init_args.speech_corpus={args.corpus}",
              f"--data.init_args.speaker_corpus={args.corpus}", f"--data.init_args.mode={mode}",
              f"--trainer.max_epochs={args.epochs}", f"--trainer.logger.init_args.save_dir={args.root}",
              "--trainer.logger.init_args.name=wav2vec2_mtl_small", f"--trainer.logger.init_args.version={mode}"],
             checkpoints(args.root, mode), args.root / f"{mode}.log", threads)


def test(mode: str, args: argparse.Namespace) -> dict:
    from speakerzoo.commands.layers import layer_eers
    from speakerzoo.datamodules import MultiTaskDataModule
    from speakerzoo.zoo import Wav2Vec2MultiTask

    checkpoint = best_checkpoint(checkpoints(args.root, mode))
    # Test every model on both tasks: the speech corpus for WER, the speaker trials for EER.
    data = MultiTaskDataModule(speech_corpus=str(args.corpus), speaker_corpus=str(args.corpus), mode="disjoint",
                               eval_max_seconds=None, num_workers=0)
    metrics = test_checkpoint(checkpoint, data=data)
    metrics["checkpoint"] = str(checkpoint.relative_to(args.root))
    model = Wav2Vec2MultiTask.from_pretrained(checkpoint)
    metrics["layers"] = layer_eers(model, args.corpus, part="test", progress=False)
    metrics["speaker_layer"] = model.speaker_layer
    return metrics


def table(results: dict[str, dict]) -> str:
    lines = ["| training (Speech Commands, 4-layer wav2vec2 from scratch) | test WER | test EER | "
             "EER per layer 1-4 (mean pooling) | checkpoint |", "|---|---|---|---|---|"]
    names = {"speech": "single-task speech (CTC)", "speaker": "single-task speaker (AAM)",
             "disjoint": "multi-task, disjoint steps (λ_s = 0.5)", "joint": "multi-task, joint steps (λ_s = 0.5)"}
    for mode, m in results.items():
        per_layer = " / ".join(f"{100 * r['eer']:.1f}" for r in m["layers"])
        lines.append(f"| {names[mode]} | {100 * m['test/wer']:.1f}% | {100 * m['test/eer']:.2f}% | {per_layer} | "
                     f"{m['checkpoint']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=REPO / "runs" / "multitask_small", help="where the runs go")
    parser.add_argument("--corpus", type=Path, default=REPO / "data" / "speech_commands.h5",
                        help="prepared Speech Commands corpus (speakerzoo prepare speech-commands ...)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--parallel", type=int, default=1, help="runs trained at once, one thread each")
    parser.add_argument("--test-only", action="store_true", help="test the trained runs only")
    args = parser.parse_args(argv)
    args.root, args.corpus = args.root.resolve(), args.corpus.resolve()
    if not args.test_only:
        train_all(lambda mode, threads: train(mode, args, threads), args.modes, args.parallel)
    results = {mode: test(mode, args) for mode in args.modes}
    text = table(results)
    write_results(args.root, text, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
