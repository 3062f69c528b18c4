"""Seed 004's experiment in miniature: closed-set speaker identification on FSDD cut into 3 s
chunks, ResNet50 on MFCC images against the SE-CNN-BiGRU (seed 002) on the same chunks.

The chunk corpus is made from a prepared FSDD corpus with ``speakerzoo chunk`` (every speaker's
clips joined in order, cut every ``--seconds``, split by chunk within each speaker 70/15/15). Each
system trains through the shipped configs with the CLI; its best checkpoint by validation accuracy
is tested on the held-out chunks: closed-set accuracy and macro F1 of its classifier, and the EER
of cosine trials between the test chunks' embeddings.

* ``resnet50_full``: ``configs/resnet50_mfcc.yaml`` as shipped (no ImageNet weights can be had
  here, so every layer trains);
* ``resnet50_frozen``: the same with the seed's freezing (stage2-4 frozen), which without ImageNet
  weights leaves random filters in the middle of the network;
* ``se_cnn_bigru``: ``configs/se_cnn_bigru.yaml`` with the ``configs/data/fsdd_chunks_3s.yaml`` overlay.

    python benchmarks/chunk_identification.py                      # trains what is missing, then tests
    python benchmarks/chunk_identification.py --test-only
    python benchmarks/chunk_identification.py --seconds 5 --root runs/chunks5s

The ResNet50 runs train under bf16 autocast (1.7x fp32 on this CPU; see train_throughput.py).
Runs already trained (their ``last.ckpt`` exists) are not trained again; ``--parallel 2`` trains
two systems at a time with one thread each. Results go to ``ROOT/results.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from runs import REPO, best_checkpoint, fit_once, test_checkpoint, train_all, write_results


#: system -> (logger name, logger version, config arguments)
SYSTEMS = {
    "resnet50_frozen": ("resnet50_mfcc", "frozen", ["-c", "configs/resnet50_mfcc.yaml", "--trainer.precision=bf16-mixed",
                                                    "--model.init_args.freeze=[stage2,stage3,stage4]"]),
    "resnet50_full": ("resnet50_mfcc", "full", ["-c", "configs/resnet50_mfcc.yaml", "--trainer.precision=bf16-mixed"]),
    "se_cnn_bigru": ("se_cnn_bigru", "default", ["-c", "configs/se_cnn_bigru.yaml", "-c", "configs/data/fsdd_chunks_3s.yaml"]),
}


def chunk_file(args: argparse.Namespace) -> Path:
    """The chunk corpus, made from ``--source`` when it is missing."""
    out = args.chunks or REPO / "data" / f"fsdd_{args.seconds:g}s.h5"
    if not out.is_file():
        from speakerzoo.datamodules.chunks import chunk_corpus

        chunk_corpus(args.source, out, args.seconds, progress=False)
    return out


def run_dir(root: Path, system: str) -> Path:
    name, version, _ = SYSTEMS[system]
    return root / name / version / "checkpoints"


def train(system: str, corpus: Path, args: argparse.Namespace, threads: int) -> None:
    name, version, config = SYSTEMS[system]
    seconds = f"{args.seconds:g}"
    fit_once([*config, f"--data.init_args.corpus={corpus}", f"--data.init_args.crop_seconds={seconds}",
              f"--data.init_args.eval_max_seconds={seconds}", f"--trainer.logger.init_args.save_dir={args.root}",
              f"--trainer.logger.init_args.name={name}", f"--trainer.logger.init_args.version={version}",
              *[f"--{k}" for k in args.extra]],
             run_dir(args.root, system), args.root / f"{system}.log", threads)


def test(system: str, corpus: Path, args: argparse.Namespace) -> dict[str, float]:
    from speakerzoo.callbacks import ClassificationMetrics

    checkpoint = best_checkpoint(run_dir(args.root, system))
    metrics = test_checkpoint(checkpoint, corpus, split="utterance", eval_max_seconds=args.seconds,
                              callbacks=[ClassificationMetrics()])
    metrics["checkpoint"] = str(checkpoint.relative_to(args.root))
    return metrics


def table(results: dict[str, dict], seconds: float) -> str:
    lines = [f"| system ({seconds:g} s chunks, FSDD, 6 speakers) | test accuracy | macro F1 | cosine EER | parameters | checkpoint |",
             "|---|---|---|---|---|---|"]
    for system, m in results.items():
        lines.append(f"| {system} | {100 * m['test/acc']:.1f}% | {100 * m['test/macro_f1']:.1f}% | "
                     f"{100 * m['test/eer']:.2f}% | {m['parameters'] / 1e6:.1f} M | {m['checkpoint']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=REPO / "runs" / "chunks3s", help="where the runs go")
    parser.add_argument("--source", type=Path, default=REPO / "data" / "fsdd.h5", help="prepared FSDD corpus")
    parser.add_argument("--chunks", type=Path, default=None, help="chunk corpus (default: data/fsdd_<seconds>s.h5)")
    parser.add_argument("--seconds", type=float, default=3.0, help="chunk length (default 3)")
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=list(SYSTEMS))
    parser.add_argument("--extra", nargs="*", default=[], metavar="KEY=VALUE",
                        help="more CLI overrides for every run, without the leading --")
    parser.add_argument("--test-only", action="store_true", help="test the trained runs only")
    parser.add_argument("--parallel", type=int, default=1, help="systems trained at once, one thread each")
    args = parser.parse_args(argv)
    args.root = args.root.resolve()
    corpus = chunk_file(args)
    if not args.test_only:
        train_all(lambda system, threads: train(system, corpus, args, threads), args.systems, args.parallel)
    results = {system: test(system, corpus, args) for system in args.systems}
    text = table(results, args.seconds)
    write_results(args.root, text, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
