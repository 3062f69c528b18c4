"""Seed 000's experiments in miniature on a real corpus (Bird et al., Tables II, III and IV).

Every speaker of the corpus in turn is the *subject*; the task is to tell the subject's single
26-MFCC frames from every other speaker's (the background), with errors weighted by class
prominence. Only ``--subject-utterances`` of the subject's training clips are used (the paper's
few seconds of a user against a large background); validation and test keep all clips, and no
clip gives frames to two parts. For each subject:

* **baseline** (synthetic 0): the FrameDNN (26-30-7-29-2) from random init on the real frames;
* for each generator (char-LSTM, GPT-2 on characters from scratch): the generator learns the
  subject's training frames as text and writes 10,000 synthetic frames; for each size (2,500 /
  5,000 / 7,500 / 10,000, the first frames of that file) a FrameDNN is **pre-trained** on the
  real training frames plus that many synthetic frames of the subject, and its best weights
  start a FrameDNN **fine-tuned** on the real frames alone (same data as the baseline; only the
  initial weights differ). Every DNN trains until 25 epochs bring no lower validation loss, and
  its best epoch is tested;
* **control** (not in the paper): the same two stages without synthetic frames (pre-train on
  the real frames, fine-tune on them), which tells a gain of synthetic data from a gain of
  training twice;
* **classical baselines** (Table IV): linear SVM (Weka's SMO default is a linear kernel),
  logistic regression, random forest, Gaussian naive Bayes (scikit-learn: ``pip install
  -e ".[baselines]"``), on the same real frames.

``--table2`` adds the generator benchmark: every LSTM size (64/128/256/512 units x 1-3 layers)
and the GPT-2 trained for ``--table2-epochs`` on the frames of all subjects together, with the
best loss and its epoch.

    python benchmarks/synthetic_transfer.py --corpus data/fsdd8k.h5 --root runs/synthetic_transfer --table2

Scores are those of the paper: accuracy and the weighted-average F1, precision and recall (each
class's score weighted by its frames), plus the macro F1. Results go to ``ROOT/results.md`` and
``ROOT/results.json``, TensorBoard runs (every DNN and generator) to ``ROOT/tb``. A subject whose
``ROOT/SUBJECT/results.json`` exists only runs the generators it lacks, so that
``--generators gpt2`` after a ``--generators lstm`` run adds the GPT-2 column to the same tables.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

SIZES = (2500, 5000, 7500, 10000)
GENERATORS = ("lstm", "gpt2")
METRICS = ("acc", "f1", "precision", "recall", "f1_macro")
#: The paper's 12 LSTM settings of Table II: units x layers.
LSTM_GRID = [(units, layers) for units in (64, 128, 256, 512) for layers in (1, 2, 3)]


def _quiet() -> None:
    import logging

    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)


def fit_dnn(data, root: Path, subject: str, name: str, *, init_from: str | None = None, seed: int = 0,
            patience: int = 25, max_epochs: int = 1000, test: bool = True) -> dict:
    """Train a FrameDNN on ``data`` until ``patience`` epochs bring no lower validation loss; test
    its best epoch. Returns the test scores, the epochs run and the best checkpoint."""
    import lightning
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from lightning.pytorch.loggers import TensorBoardLogger

    from speakerzoo.zoo import FrameDNN

    lightning.seed_everything(seed, verbose=False)
    model = FrameDNN(num_speakers=data.num_speakers, sample_rate=data.sample_rate, frontend=data.features,
                     speaker_names=data.speaker_names, init_from=init_from)
    best = ModelCheckpoint(dirpath=root / subject / "checkpoints", filename=name, monitor="val/loss", mode="min",
                           enable_version_counter=False)
    trainer = lightning.Trainer(
        accelerator="cpu", devices=1, max_epochs=max_epochs, logger=TensorBoardLogger(root / "tb", name=subject, version=name),
        callbacks=[EarlyStopping("val/loss", patience=patience), best], enable_progress_bar=False,
        enable_model_summary=False, log_every_n_steps=10)
    trainer.fit(model, data)
    result = {"epochs": trainer.current_epoch, "checkpoint": best.best_model_path}
    if test:
        scores = trainer.test(model, data, ckpt_path="best", verbose=False)[0]
        result.update({k: float(scores[f"test/{k}"]) for k in METRICS})
    return result


def two_stages(pretrain_data, real, root: Path, subject: str, tag: str, seed: int, patience: int) -> dict:
    """Pre-train on ``pretrain_data``, then train on ``real`` from the best pre-trained weights;
    the second run's test scores and both runs' epochs."""
    pre = fit_dnn(pretrain_data, root, subject, f"pretrain_{tag}", seed=seed, patience=patience, test=False)
    tuned = fit_dnn(real, root, subject, f"finetune_{tag}", init_from=pre["checkpoint"], seed=seed, patience=patience)
    return {"pretrain_epochs": pre["epochs"], **tuned}


def classical_baselines(data, seed: int = 0) -> dict[str, dict]:
    """Table IV's classical models on the real frames, scored like the DNN."""
    import torch
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.naive_bayes import GaussianNB
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    from speakerzoo.zoo.frame_dnn import frame_metrics

    x_train, y_train, _ = data.part_frames("train")
    x_test, y_test, _ = data.part_frames("test")
    models = {
        "SVM (linear)": make_pipeline(StandardScaler(), LinearSVC(class_weight="balanced", random_state=seed)),
        "Logistic Regression": make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=2000)),
        "Random Forest": RandomForestClassifier(n_estimators=100, class_weight="balanced", random_state=seed, n_jobs=1),
        "Naive Bayes": GaussianNB(),
    }
    results = {}
    for name, model in models.items():
        start = time.time()
        model.fit(x_train, y_train)
        metrics = frame_metrics(data.num_speakers)
        metrics.update(torch.from_numpy(model.predict(x_test)), torch.from_numpy(y_test))
        results[name] = {k: float(v) for k, v in metrics.compute().items()} | {"seconds": time.time() - start}
    return results


def run_subject(subject: str, args: argparse.Namespace) -> dict:
    """Every run of one subject; kept in ``ROOT/SUBJECT/results.json``."""
    _quiet()
    from lightning.pytorch.loggers import TensorBoardLogger

    from speakerzoo.commands.synthesize import synthesize
    from speakerzoo.datamodules import FrameDataModule

    root = Path(args.root)
    done = root / subject / "results.json"
    result = json.loads(done.read_text()) if done.is_file() else None
    missing = [g for g in args.generators if result is None or g not in result["generators"]]
    if result is not None and not missing:
        return result
    (root / subject).mkdir(parents=True, exist_ok=True)
    common = dict(subject=subject, subject_utterances=args.subject_utterances, seed=args.seed)
    real = FrameDataModule(args.corpus, **common)
    if result is None:  # a finished subject only gains the generators it lacks
        result = {"subject": subject, "train_frames": real.class_counts().tolist(), "runs": [], "generators": {}}
        for repeat in range(args.repeats):
            seed = args.seed + repeat
            result["runs"].append({"generator": None, "synthetic": 0, "repeat": repeat,
                                   **fit_dnn(real, root, subject, f"baseline_r{repeat}", seed=seed, patience=args.patience)})
    runs, generators = result["runs"], result["generators"]
    for generator in missing:
        path = root / subject / f"synthetic_{generator}.h5"
        settings = dict(epochs=args.lstm_epochs, lstm_units=args.lstm_units, lstm_layers=args.lstm_layers, lr=args.lr) \
            if generator == "lstm" else dict(epochs=args.gpt2_epochs, seq_len=args.gpt2_seq_len, batch_size=args.gpt2_batch_size,
                                             lr=args.gpt2_lr, gpt2=dict(n_layer=args.gpt2_layers, n_embd=args.gpt2_width, n_head=4))
        start = time.time()
        _, losses, sampled = synthesize(
            args.corpus, subject, path, num_frames=max(args.sizes), architecture=generator, seed=args.seed,
            logger=TensorBoardLogger(root / "tb", name=subject, version=f"generator_{generator}"),
            subject_utterances=args.subject_utterances, decimals=args.decimals, **settings)
        loss, epoch = losses.best("train")
        generators[generator] = {"best_train_loss": loss, "best_epoch": epoch, "val_loss": losses.best("val")[0],
                                 "blocks": sampled.blocks, "kept_per_block": sampled.kept_per_block,
                                 "malformed_lines": sampled.malformed, "seconds": time.time() - start, **settings}
        for size in args.sizes:
            pretrain_data = FrameDataModule(args.corpus, synthetic=str(path), synthetic_frames=size, **common)
            for repeat in range(args.repeats):
                seed = args.seed + repeat
                runs.append({"generator": generator, "synthetic": size, "repeat": repeat,
                             **two_stages(pretrain_data, real, root, subject, f"{generator}{size}_r{repeat}", seed,
                                          args.patience)})
    if args.baselines and "classical" not in result:
        result["classical"] = classical_baselines(real, args.seed)
    done.write_text(json.dumps(result, indent=1))
    return result


def run_control(subject: str, args: argparse.Namespace) -> list[dict]:
    """The control the paper lacks: the same two stages with *no* synthetic frames (pre-train on the
    real frames, then fine-tune on them from those weights), so that a gain of the transfer runs can
    be told apart from a gain of training twice. Kept in ``ROOT/SUBJECT/control.json``."""
    _quiet()
    from speakerzoo.datamodules import FrameDataModule

    root = Path(args.root)
    done = root / subject / "control.json"
    if done.is_file():
        return json.loads(done.read_text())
    real = FrameDataModule(args.corpus, subject=subject, subject_utterances=args.subject_utterances, seed=args.seed)
    runs = [{"generator": "control", "synthetic": 0, "repeat": repeat,
             **two_stages(real, real, root, subject, f"control_r{repeat}", args.seed + repeat, args.patience)}
            for repeat in range(args.repeats)]
    done.write_text(json.dumps(runs, indent=1))
    return runs


def run_table2(args: argparse.Namespace, subjects: list[str]) -> list[dict]:
    """Table II: every generator setting trained on the frames of all ``subjects`` together (every
    speaker of the corpus, whatever ``--subjects`` says)."""
    _quiet()
    from lightning.pytorch.loggers import TensorBoardLogger

    from speakerzoo.commands.synthesize import train_generator
    from speakerzoo.datamodules import FrameDataModule
    from speakerzoo.frame_text import frames_to_text

    root = Path(args.root)
    done = root / "table2.json"
    if done.is_file():
        return json.loads(done.read_text())
    texts = []
    for subject in subjects:  # the same number of frames of every subject, in clip order
        frames = FrameDataModule(args.corpus, subject=subject, seed=args.seed).subject_frames("train")
        texts.append(frames_to_text(frames[: args.table2_frames], np.ones(min(len(frames), args.table2_frames), int),
                                    decimals=args.decimals))
    text = "".join(texts)
    rows = []
    settings = [("lstm", dict(lstm_units=u, lstm_layers=n, lr=args.lr), f"LSTM({','.join([str(u)] * n)})") for u, n in LSTM_GRID]
    settings.append(("gpt2", dict(gpt2=dict(n_layer=args.gpt2_layers, n_embd=args.gpt2_width, n_head=4),
                                  seq_len=args.gpt2_seq_len, batch_size=args.gpt2_batch_size, lr=args.gpt2_lr), "GPT-2"))
    for architecture, kwargs, name in settings:
        start = time.time()
        _, losses = train_generator(text, architecture, epochs=args.table2_epochs, seed=args.seed,
                                    logger=TensorBoardLogger(root / "tb", name="table2", version=name), **kwargs)
        loss, epoch = losses.best("train")
        val, val_epoch = losses.best("val")
        rows.append({"model": name, "best_loss": loss, "epoch": epoch, "best_val_loss": val, "val_epoch": val_epoch,
                     "seconds": time.time() - start, "characters": len(text)})
        print(f"table2 {name}: loss {loss:.3f} at epoch {epoch} ({time.time() - start:.0f} s)", flush=True)
    done.write_text(json.dumps(rows, indent=1))
    return rows


# -- the tables ------------------------------------------------------------------------------------

def _mean(runs: list[dict], key: str) -> float:
    return float(np.mean([r[key] for r in runs]))


def _cells(runs: list[dict]) -> str:
    return f"{100 * _mean(runs, 'acc'):.2f} | " + " | ".join(f"{_mean(runs, k):.3f}" for k in ("f1", "precision", "recall"))


def table3(results: list[dict]) -> tuple[str, dict[str, dict]]:
    """Table III as Markdown (means over repeats; a column group per generator the results hold)
    and, per generator, the summary of whether pre-training on its frames helped."""
    gens = [g for g in GENERATORS if any(g in res["generators"] for res in results)]
    head = "| subject | synthetic | " + " | ".join(f"{g.upper()} acc % | F1 | prec. | rec." for g in gens) + " |"
    lines = [head, "|" + "---|" * (2 + 4 * len(gens))]
    summary = {g: {"subjects": 0, "best_is_synthetic": 0, "best_gain_pp": [], "mean_gain_pp": [], "configs_better": 0,
                   "configs": 0, "mean_gain_over_control_pp": []} for g in gens}
    sizes = sorted({r["synthetic"] for res in results for r in res["runs"] if r["synthetic"]})
    for res in results:
        runs = res["runs"]
        base = [r for r in runs if r["synthetic"] == 0]
        base_acc = _mean(base, "acc")
        lines.append(f"| {res['subject']} | 0 | " + " | ".join(_cells(base) for _ in gens) + " |")
        control = res.get("control") or []
        if control:
            lines.append("| | 0, two stages | " + " | ".join(_cells(control) for _ in gens) + " |")
        for size in sizes:
            cells = [_cells(mine) if (mine := [r for r in runs if r["generator"] == g and r["synthetic"] == size]) else
                     "– | – | – | –" for g in gens]
            lines.append(f"| | {size} | " + " | ".join(cells) + " |")
        for g in gens:
            accs = [_mean([r for r in runs if r["generator"] == g and r["synthetic"] == size], "acc")
                    for size in sorted({r["synthetic"] for r in runs if r["generator"] == g})]
            if not accs:
                continue
            mine = summary[g]
            mine["subjects"] += 1
            mine["best_is_synthetic"] += max(accs) > base_acc
            mine["best_gain_pp"].append(100 * (max(accs) - base_acc))
            mine["mean_gain_pp"].append(100 * (float(np.mean(accs)) - base_acc))
            mine["configs_better"] += sum(a > base_acc for a in accs)
            mine["configs"] += len(accs)
            if control:
                mine["control_gain_pp"] = [*mine.get("control_gain_pp", []), 100 * (_mean(control, "acc") - base_acc)]
                mine["mean_gain_over_control_pp"].append(100 * (float(np.mean(accs)) - _mean(control, "acc")))
    base_all = [r for res in results for r in res["runs"] if r["synthetic"] == 0]
    lines.append("| **mean** | 0 | " + " | ".join(_cells(base_all) for _ in gens) + " |")
    lines.append("| **mean** | all sizes | " + " | ".join(
        _cells([r for res in results for r in res["runs"] if r["generator"] == g]) for g in gens) + " |")
    return "\n".join(lines), summary


def summary_text(generator: str, summary: dict) -> str:
    """One generator's Table III summary in words."""
    def pp(values: list[float]) -> str:
        return ", ".join(f"{v:+.2f}" for v in values)

    text = (f"{generator.upper()}: best result with synthetic pre-training for {summary['best_is_synthetic']} of "
            f"{summary['subjects']} subjects; {summary['configs_better']} of {summary['configs']} pre-trained "
            f"configurations beat their subject's baseline; accuracy gain of the best configuration per subject (pp): "
            f"{pp(summary['best_gain_pp'])}; of the mean over all configurations: {pp(summary['mean_gain_pp'])}.")
    if summary.get("control_gain_pp"):
        text += (f" Two stages without synthetic frames against the baseline (pp): {pp(summary['control_gain_pp'])}; "
                 f"mean of the synthetic configurations against that control (pp): "
                 f"{pp(summary['mean_gain_over_control_pp'])}.")
    return text


def table4(results: list[dict]) -> str:
    lines = ["| subject | model | acc % | F1 | prec. | rec. | macro F1 |", "|---|---|---|---|---|---|---|"]
    for res in results:
        rows = [("DNN (no synthetic)", [r for r in res["runs"] if r["synthetic"] == 0])]
        for g in GENERATORS:
            mine = [r for r in res["runs"] if r["generator"] == g]
            if mine:
                sizes = sorted({r["synthetic"] for r in mine}, key=lambda s: -_mean([r for r in mine if r["synthetic"] == s], "acc"))
                rows.append((f"DNN ({g.upper()} TL {sizes[0]})", [r for r in mine if r["synthetic"] == sizes[0]]))
        rows += [(name, [scores]) for name, scores in res.get("classical", {}).items()]
        rows.sort(key=lambda row: -_mean(row[1], "acc"))
        for name, runs in rows:
            lines.append(f"| {res['subject']} | {name} | {_cells(runs)} | {_mean(runs, 'f1_macro'):.3f} |")
    return "\n".join(lines)


def main() -> None:
    from speakerzoo.commands.synthesize import GENERATOR_SETTINGS

    lstm, gpt2 = GENERATOR_SETTINGS["lstm"], GENERATOR_SETTINGS["gpt2"]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default="data/fsdd8k.h5", help="corpus with cached mfcc26 (default: %(default)s)")
    parser.add_argument("--root", default="runs/synthetic_transfer")
    parser.add_argument("--subjects", nargs="*", default=None, help="default: every speaker")
    parser.add_argument("--subject-utterances", type=int, default=60)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--generators", nargs="+", choices=GENERATORS, default=list(GENERATORS))
    parser.add_argument("--repeats", type=int, default=1, help="DNN runs per cell, seeds seed..seed+R-1")
    parser.add_argument("--patience", type=int, default=25)
    parser.add_argument("--lstm-units", type=int, default=128)
    parser.add_argument("--lstm-layers", type=int, default=1)
    parser.add_argument("--lstm-epochs", type=int, default=lstm["epochs"])
    parser.add_argument("--gpt2-epochs", type=int, default=gpt2["epochs"])
    parser.add_argument("--gpt2-layers", type=int, default=gpt2["gpt2"]["n_layer"])
    parser.add_argument("--gpt2-width", type=int, default=gpt2["gpt2"]["n_embd"])
    parser.add_argument("--gpt2-seq-len", type=int, default=gpt2["seq_len"],
                        help="training window, and the longest context sampling shows the model")
    parser.add_argument("--gpt2-batch-size", type=int, default=gpt2["batch_size"])
    parser.add_argument("--gpt2-lr", type=float, default=gpt2["lr"])
    parser.add_argument("--decimals", type=int, default=1, help="digits after the point in the frame text")
    parser.add_argument("--lr", type=float, default=lstm["lr"], help="the LSTM's learning rate")
    parser.add_argument("--table2", action="store_true", help="also run the generator benchmark (Table II)")
    parser.add_argument("--table2-epochs", type=int, default=10)
    parser.add_argument("--table2-frames", type=int, default=100, help="frames of each subject in its text")
    parser.add_argument("--no-baselines", dest="baselines", action="store_false",
                        help="skip the scikit-learn models of Table IV")
    parser.add_argument("--parallel", type=int, default=2, help="processes, one thread each")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"
    from speakerzoo.datamodules import Corpus

    subjects = args.subjects or Corpus(args.corpus).speakers
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(args.parallel, mp_context=get_context("spawn")) as pool:
        table2_job = pool.submit(run_table2, args, Corpus(args.corpus).speakers) if args.table2 else None
        results = list(pool.map(run_subject, subjects, [args] * len(subjects)))
        controls = list(pool.map(run_control, subjects, [args] * len(subjects)))
        table2_rows = table2_job.result() if table2_job else None
    for result, control in zip(results, controls):
        result["control"] = control
    text3, summary = table3(results)
    report = [f"# Seed 000 in miniature: {args.corpus}, subject utterances {args.subject_utterances}, "
              f"repeats {args.repeats}", "", "## Table III", "", text3, ""]
    report += [line for g, mine in summary.items() for line in (summary_text(g, mine), "")]
    if args.baselines:
        report += ["## Table IV", "", table4(results), ""]
    if table2_rows:
        report += ["## Table II", "", "| model | best loss | epoch | best val loss | epoch | seconds |",
                   "|---|---|---|---|---|---|"]
        report += [f"| {r['model']} | {r['best_loss']:.3f} | {r['epoch']} | {r['best_val_loss']:.3f} | {r['val_epoch']} "
                   f"| {r['seconds']:.0f} |" for r in table2_rows]
    gens = ["", "## Generators (per subject)", "", "| subject | generator | best train loss | epoch | val loss | "
            "kept frames per 1,000-char block | malformed lines | seconds |", "|---|---|---|---|---|---|---|---|"]
    for res in results:
        for g, info in res["generators"].items():
            gens.append(f"| {res['subject']} | {g} | {info['best_train_loss']:.3f} | {info['best_epoch']} | "
                        f"{info['val_loss']:.3f} | {info['kept_per_block']:.2f} | {info['malformed_lines']} | "
                        f"{info['seconds']:.0f} |")
    report += gens
    (root / "results.md").write_text("\n".join(report) + "\n")
    (root / "results.json").write_text(json.dumps({"args": vars(args), "subjects": results, "table2": table2_rows,
                                                   "summary": summary}, indent=1))
    print("\n".join(report))


if __name__ == "__main__":
    main()
