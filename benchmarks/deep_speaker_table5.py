"""Seed 001's Table 5 (and 6, 8) in miniature: Deep Speaker ResCNN and GRU trained with softmax only,
triplet only, and softmax pre-training + triplet fine-tuning, on Speech Commands split by speaker.

Every system is trained through the shipped configs (``configs/deep_speaker_{rescnn,gru}.yaml`` and
the ``configs/deep_speaker_triplet.yaml`` overlay) with the CLI, at ``--width`` (the paper's size is
1; 0.25 trains on a CPU in minutes), its best checkpoint by validation EER is tested on the 36
held-out test speakers (EER, and identification accuracy of 1 positive + 99 negatives per anchor),
and then, from the embeddings of the two "softmax + triplet" models:

* Table 6: fusion by embedding sum and by mean/variance-normalised score sum (``speakerzoo score
  A.h5 B.h5 --fusion ...``);
* Table 8: enrolment from 1, 2, 3 and 5 utterances (``speakerzoo score --enrol-utterances``),
  each anchor against its own speaker and 30 others (the test part has only 36 speakers).

    python benchmarks/deep_speaker_table5.py --root runs/table5             # trains 6 systems, then tests
    python benchmarks/deep_speaker_table5.py --root runs/table5 --test-only # tests what is there
    python benchmarks/deep_speaker_table5.py --root runs/table5 --archs rescnn --negatives semi-hard

Runs already trained (their ``last.ckpt`` exists) are not trained again. Use a quiet machine and
``OMP_NUM_THREADS`` equal to the free cores; ``--parallel 2`` trains two systems at a time with one
thread each.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from runs import REPO, best_checkpoint, fit_once, test_checkpoint

ARCHS = ("rescnn", "gru")
SYSTEMS = ("softmax", "triplet_only", "triplet")  # "triplet" = softmax pre-training + triplet


def version(system: str, negatives: str) -> str:
    """The run folder of a system: triplet systems mined otherwise than the seed's hardest
    negative get their own (``triplet-semi-hard``); the softmax stage is shared."""
    return system if system == "softmax" or negatives == "hardest" else f"{system}-{negatives}"


def config_args(arch: str, system: str, root: Path, args: argparse.Namespace) -> list[str]:
    cfg = ["-c", str(REPO / f"configs/deep_speaker_{arch}.yaml")]
    if system != "softmax":
        cfg += ["-c", str(REPO / "configs/deep_speaker_triplet.yaml"), f"--model.init_args.negatives={args.negatives}"]
    cfg += [f"--model.init_args.width={args.width}", f"--data.init_args.corpus={args.corpus}",
            f"--trainer.logger.init_args.save_dir={root}",
            f"--trainer.logger.init_args.version={version(system, args.negatives)}"]
    if system == "triplet":
        cfg.append(f"--model.init_args.init_from={last(root, arch, 'softmax')}")
    cfg += [f"--{k}" for k in args.extra]
    if system != "softmax":
        cfg += [f"--{k}" for k in args.triplet_extra]
    return cfg


def run_dir(root: Path, arch: str, system: str) -> Path:
    return root / f"deep_speaker_{arch}" / system / "checkpoints"


def last(root: Path, arch: str, system: str) -> Path:
    return run_dir(root, arch, system) / "last.ckpt"


def best(root: Path, arch: str, system: str) -> Path:
    return best_checkpoint(run_dir(root, arch, system))


def train(arch: str, system: str, root: Path, args: argparse.Namespace, threads: int) -> None:
    name = version(system, args.negatives)
    fit_once(config_args(arch, system, root, args), run_dir(root, arch, name), root / f"{arch}_{name}.log", threads)


def test(checkpoint: Path, corpus: Path) -> dict[str, float]:
    return test_checkpoint(checkpoint, corpus, split="speaker", eval_max_seconds=1.0)


def score(*argv: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "speakerzoo.cli", "score", *argv, "--json"], check=True,
                         capture_output=True, text=True, cwd=REPO)
    return json.loads(out.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=REPO / "runs" / "table5", help="where the runs go")
    parser.add_argument("--corpus", type=Path, default=REPO / "data" / "speech_commands.h5")
    parser.add_argument("--width", type=float, default=0.25, help="model width multiplier (paper: 1)")
    parser.add_argument("--parallel", type=int, default=2, help="systems trained at once, one thread each")
    parser.add_argument("--test-only", action="store_true", help="do not train, test the runs under --root")
    parser.add_argument("--extra", nargs="*", default=[], metavar="KEY=VALUE",
                        help="more CLI overrides for every run, without the leading --, e.g. model.init_args.momentum=0.9")
    parser.add_argument("--triplet-extra", nargs="*", default=[], metavar="KEY=VALUE",
                        help="more overrides for the triplet runs only, e.g. model.init_args.lr=0.005")
    parser.add_argument("--negatives", choices=("hardest", "semi-hard", "batch-hard-soft"), default="hardest",
                        help="what the triplet stages mine (default: hardest, the seed's); other choices train "
                             "into their own run folders and reuse the softmax stage")
    parser.add_argument("--archs", nargs="+", choices=ARCHS, default=list(ARCHS))
    args = parser.parse_args(argv)
    root = args.root.resolve()

    if not args.test_only:
        threads = max(1, (os.cpu_count() or 2) // args.parallel)

        def chain(arch: str) -> None:  # the fine-tuning stage starts from the softmax checkpoint
            train(arch, "softmax", root, args, threads)
            train(arch, "triplet", root, args, threads)

        with ThreadPoolExecutor(args.parallel) as pool:
            jobs = [pool.submit(chain, a) for a in args.archs]
            jobs += [pool.submit(train, a, "triplet_only", root, args, threads) for a in args.archs]
            for job in jobs:
                job.result()

    rows = []
    for arch in args.archs:
        for system in SYSTEMS:
            result = test(best(root, arch, version(system, args.negatives)), args.corpus)
            rows.append((arch, system, result["test/eer"], result["test/ident_acc"]))
    names = {"softmax": "softmax", "triplet_only": "triplet", "triplet": "softmax (pre-train) + triplet"}
    print(f"negatives: {args.negatives}\n\n| system | test EER | ACC (1 of 100) |\n|---|---:|---:|")
    for arch, system, e, acc in rows:
        print(f"| {'ResCNN' if arch == 'rescnn' else 'GRU'}, {names[system]} | {100 * e:.2f} % | {100 * acc:.1f} % |")
    if set(args.archs) != set(ARCHS):
        return 0  # the fusion and enrolment tables need both architectures

    # Tables 6 and 8 from the embeddings of the two softmax + triplet systems.
    emb = {}
    for arch in ARCHS:
        emb[arch] = root / f"{arch}_test_embeddings.h5"
        if not emb[arch].is_file():
            subprocess.run([sys.executable, "-m", "speakerzoo.cli", "embed", str(args.corpus), "--split", "speaker", "--checkpoint",
                            str(best(root, arch, version("triplet", args.negatives))), "--part", "test", "--output", str(emb[arch]), "--quiet"],
                           check=True, cwd=REPO)
    corpus = ["--corpus", str(args.corpus)]
    print("\n| system | EER (pairs) | ACC (1 of 100) |\n|---|---:|---:|")
    for label, files, fusion in (("ResCNN", [emb["rescnn"]], []), ("GRU", [emb["gru"]], []),
                                 ("embedding fusion", [emb["rescnn"], emb["gru"]], ["--fusion", "embedding"]),
                                 ("score fusion", [emb["rescnn"], emb["gru"]], ["--fusion", "score"])):
        result = score(*map(str, files), *corpus, *fusion)
        print(f"| {label} | {100 * result['eer']:.2f} % | {100 * result['ident_acc']:.1f} % |")
    # The test part has 36 speakers, 32 of them with 5 or more utterances: each anchor is scored
    # against its own speaker and 30 others (the paper: 99), every speaker enrolled from n utterances.
    print("\n| enrolment utterances | ResCNN EER / ACC | GRU EER / ACC |\n|---:|---|---|")
    tables = {arch: score(str(emb[arch]), *corpus, "--enrol-utterances", "1,2,3,5", "--negatives", "30")
              for arch in ARCHS}
    for row, other in zip(tables["rescnn"]["enrolment"], tables["gru"]["enrolment"]):
        print(f"| {row['utterances']} | {100 * row['eer']:.2f} % / {100 * row['ident_acc']:.1f} % "
              f"| {100 * other['eer']:.2f} % / {100 * other['ident_acc']:.1f} % |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
