"""Train the zoo's shipped checkpoints: every embedding model on all the real speech of
``../shared/data`` as one 16 kHz corpus, split by speaker, tested on speakers it never heard.

1. Pools the Speech Commands v0.02 test set (about 240 speakers, 16 kHz) and the Free Spoken
   Digit Dataset (6 speakers, 8 kHz, resampled to 16 kHz; its speakers are named ``fsdd-NAME``)
   into ``ROOT/pooled16k.h5`` (``speakerzoo.datamodules.prepare``), split 70/15/15 by speaker.
2. Trains each model through its shipped config and the CLI (``speakerzoo fit``), with the corpus
   and epochs of this script; the best checkpoint is chosen by validation EER (ModelCheckpoint).
3. Tests each best checkpoint on the test speakers: EER, minDCF (p=0.01) and identification
   accuracy (1 of 100).
4. With ``--ship``: strips each best checkpoint to float16 weights
   (``speakerzoo checkpoints strip --half``) into ``checkpoints/NAME.ckpt`` and registers it in
   ``checkpoints/registry.yaml`` with its measured test EER.

    python benchmarks/train_zoo.py --root runs/zoo                 # prepare, train, test
    python benchmarks/train_zoo.py --root runs/zoo --ship          # ... and ship the checkpoints
    python benchmarks/train_zoo.py --root runs/zoo --models ecapa  # one model

Trained models (their ``last.ckpt`` exists) are not trained again. Use a quiet machine and set
``OMP_NUM_THREADS`` to the free cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from runs import REPO, best_checkpoint, fit_once, test_checkpoint, write_results

DATA = REPO.parent / "shared" / "data"
LICENCE = "Speech Commands v0.02: CC BY 4.0 (Warden, 2018); Free Spoken Digit Dataset: CC BY-SA 4.0"
CORPUS = ("Speech Commands v0.02 test set + FSDD, 16 kHz, 1-second words and digits; "
          "split by speaker (70/15/15, seed 0), tested on the unseen test speakers")

# name -> (registry name, config, CLI overrides). Epochs fit a 2-core CPU in about a quarter hour each.
MODELS = {
    "ecapa": ("ecapa-c256-sc16k", "configs/ecapa_speech_commands.yaml", ["--trainer.max_epochs=20"]),
    "se_cnn_bigru": ("se-cnn-bigru-sc16k", "configs/se_cnn_bigru.yaml",
                     ["--trainer.max_epochs=16", "--trainer.accelerator=cpu", "--trainer.precision=32-true",
                      "--model.init_args.t_max_epochs=16"]),
    "deep_speaker_gru": ("deep-speaker-gru-sc16k", "configs/deep_speaker_gru.yaml",
                         ["--model.init_args.width=0.5", "--trainer.accelerator=cpu"]),
}


def pooled_records() -> list:
    """Speech Commands and FSDD as one list of utterances; FSDD speakers and ids prefixed ``fsdd-``."""
    from speakerzoo.datamodules.sources import fsdd, speech_commands

    digits = [dataclasses.replace(u, speaker=f"fsdd-{u.speaker}", utt_id=f"fsdd/{u.utt_id}")
              for u in fsdd(DATA / "fsdd")]
    return speech_commands(DATA / "speech_commands_test") + digits


def prepare_corpus(path: Path) -> Path:
    from speakerzoo.datamodules.prepare import prepare

    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        summary = prepare(pooled_records(), path, sample_rate=16000, seed=0)
        print(summary)
    return path


def checkpoints_of(root: Path, model: str) -> Path:
    return root / model / "train" / "checkpoints"


def train(model: str, corpus: Path, root: Path, threads: int) -> None:
    _, config, overrides = MODELS[model]
    args = ["-c", str(REPO / config), f"--data.init_args.corpus={corpus}",
            f"--trainer.logger.init_args.save_dir={root}", f"--trainer.logger.init_args.name={model}",
            "--trainer.logger.init_args.version=train", *overrides]
    print(f"training {model} ...", flush=True)
    fit_once(args, checkpoints_of(root, model), root / model / "fit.log", threads)


def epochs_of(model: str) -> str:
    """The max_epochs a model is trained for: this script's override, else its config's."""
    import yaml

    _, config, overrides = MODELS[model]
    override = next((o.split("=")[1] for o in overrides if o.startswith("--trainer.max_epochs=")), None)
    return override or str(yaml.safe_load((REPO / config).read_text())["trainer"]["max_epochs"])


def ship(model: str, best: Path, metrics: dict, epochs: str) -> dict:
    """Strip ``best`` to float16 under ``checkpoints/`` and register it; returns the entry as YAML."""
    from speakerzoo.zoo.registry import add_entry
    from speakerzoo.zoo.strip import strip_checkpoint

    name, config, _ = MODELS[model]
    out = REPO / "checkpoints" / f"{name}.ckpt"
    strip_checkpoint(best, out, half=True)
    notes = (f"python benchmarks/train_zoo.py --ship ({config}, {epochs}); best {best.name} by validation EER; "
             f"test minDCF(0.01) {metrics['test/mindcf']:.3f}, identification 1-of-100 "
             f"{metrics['test/ident_acc']:.1%}; float16 weights")
    entry = add_entry(name, out, CORPUS, metrics["test/eer"], registry=REPO / "checkpoints" / "registry.yaml",
                      notes=notes, licence=LICENCE, overwrite=True)
    return entry.to_yaml()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=REPO / "runs" / "zoo", help="where corpus and runs go")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--ship", action="store_true", help="strip the best checkpoints into checkpoints/ and register them")
    parser.add_argument("--threads", type=int, default=2, help="OpenMP threads of each training run")
    args = parser.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {sorted(MODELS)}")
    root = args.root.resolve()
    corpus = prepare_corpus(root / "pooled16k.h5")
    results = {}
    for model in models:
        train(model, corpus, root, args.threads)
        best = best_checkpoint(checkpoints_of(root, model))
        metrics = test_checkpoint(best, corpus, split="speaker", eval_max_seconds=1.0)
        results[model] = {"checkpoint": str(best), **metrics}
        epochs = epochs_of(model)
        if args.ship:
            results[model]["registry"] = ship(model, best, metrics, f"{epochs} epochs")
        print(json.dumps(results[model], indent=2), flush=True)
    rows = ["| model | registry name | parameters | test EER | minDCF (p=0.01) | identification (1 of 100) |",
            "|---|---|---:|---:|---:|---:|"]
    for model, r in results.items():
        rows.append(f"| {model} | {MODELS[model][0]} | {r['parameters'] / 1e6:.2f} M | {r['test/eer']:.2%} | "
                    f"{r['test/mindcf']:.3f} | {r['test/ident_acc']:.1%} |")
    write_results(root, "\n".join(rows), results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
