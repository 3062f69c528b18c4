"""How each stage of the corpus-to-score pipeline grows with the corpus: synthetic corpora of
10 k, 100 k and 1 M utterances (VoxCeleb2 has 1.1 M).

For each size N (about 183 utterances per speaker, as in VoxCeleb2; clips of 0.1-0.2 s at
16 kHz so that the files stay small, lengths drawn so that few are equal):

1. **prepare** - N wav files listed in a manifest, prepared as shards of N/20 files with 2
   workers (``speakerzoo prepare manifest ... --shard-files``), *killed with SIGKILL once 90 % of
   the shards are written*, then run again with the same command, which keeps the finished
   shards; at the smallest size the result is checked against an uninterrupted single-file run
   (per-utterance digests equal);
2. **open** - ``Corpus(index)``;
3. **setup** - ``SpeakerDataModule.setup("fit")`` (speaker split, P x K = 32 x 2);
4. **epoch start** - the train sampler's first batch of an epoch (rank 0 of 8);
5. **validation** - ``Trainer.validate`` of a tiny SE-CNN-BiGRU (embeds the val utterances the
   trials use, scores the trials);
6. **embed** - ``embed_to_file`` of the speaker split's test part with that model
   (``batching="auto"``: equal lengths on a CPU; the clip lengths repeat, so batches are full);
7. **AS-norm score** - ``score_embeddings`` of the test trials with AS-norm (top 200) against a
   cohort of 30 k train utterances, from an embeddings file of all N utterances.

Each stage from 2 on runs in a fresh process, after its imports and inputs; its memory is the
peak RSS above the RSS at its start (Linux ``VmHWM``, reset through ``/proc/self/clear_refs``).
Prepare reports the largest RSS of any of its processes. Every stage is timed
on 2 torch threads. The table's last columns give the growth from the second-largest to the
largest size (time ratio / size ratio: 1.0 is linear) and the extrapolation to 1.1 M.

    python benchmarks/scale.py                       # 10k 100k 1M (about 40 min on 2 cores)
    python benchmarks/scale.py --sizes 10000 100000  # quicker
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SR = 16000
PER_SPEAKER = 183
VOXCELEB2 = 1_100_000
STAGES = ("prepare", "open", "setup", "epoch start", "validation", "embed", "AS-norm score")


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> float:
    """Reset this process' peak RSS (VmHWM) to its current RSS (Linux: clear_refs 5); returns the RSS."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_mb("VmRSS")


def _wav_bytes(pcm: np.ndarray) -> bytes:
    data = pcm.astype("<i2").tobytes()
    return (b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, SR, SR * 2, 2, 16)
            + b"data" + struct.pack("<I", len(data)) + data)


def make_inputs(folder: Path, n: int, seed: int = 0) -> Path:
    """N wav files of speaker-coloured noise, and a manifest of them."""
    rng = np.random.default_rng(seed)
    speakers = max(2, n // PER_SPEAKER)
    tones = rng.uniform(100, 3000, size=(speakers, 3))
    lengths = rng.integers(int(0.1 * SR), int(0.2 * SR), size=n)
    folder.mkdir(parents=True, exist_ok=True)
    listing = folder / "list.csv"
    t = np.arange(int(0.2 * SR)) / SR
    with open(listing, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["path", "speaker", "utt_id"])
        for i in range(n):
            s = i % speakers
            wave = sum(np.sin(2 * np.pi * tones[s, k] * t[: lengths[i]] + rng.uniform(0, 6.3)) for k in range(3))
            wave = 0.2 * wave / 3 + 0.02 * rng.standard_normal(lengths[i])
            sub = folder / f"{i // 10000:03d}"
            sub.mkdir(exist_ok=True)
            path = sub / f"{i:07d}.wav"
            path.write_bytes(_wav_bytes(np.round(wave * 32767)))
            out.writerow([path, f"spk{s:05d}", f"u{i:07d}"])
    return listing


def _prepare_command(listing: Path, out: Path, shard_files: int | None) -> list[str]:
    cmd = [sys.executable, "-m", "speakerzoo", "prepare", "manifest", str(listing), "--output", str(out),
           "--sample-rate", str(SR), "--min-seconds", "0.05", "--workers", "2", "-q"]
    return cmd + (["--shard-files", str(shard_files)] if shard_files else [])


def _children_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def stage_prepare(listing: Path, out: Path, n: int) -> dict:
    shard_files = max(1, n // 20)
    folder = out.with_name(out.name + ".shards")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    run = subprocess.Popen(_prepare_command(listing, out, shard_files), env=env, stdout=subprocess.DEVNULL)
    while run.poll() is None and len(list(folder.glob("*.h5"))) < 18:
        time.sleep(0.05)
    run.send_signal(signal.SIGKILL)
    run.wait()
    killed_at = time.perf_counter() - start
    kept = len(list(folder.glob("*.h5")))
    time.sleep(1.0)  # the orphaned workers end (SIGTERM from the kernel when their parent died)
    resumed = time.perf_counter()
    subprocess.run(_prepare_command(listing, out, shard_files), env=env, check=True, stdout=subprocess.DEVNULL)
    resume = time.perf_counter() - resumed
    return {"wall": killed_at + resume, "peak_mb": _children_peak_mb(), "note":
            f"killed at {killed_at:.0f} s with {kept}/20 shards, resumed in {resume:.0f} s"}


def _tiny_model():
    import torch

    from speakerzoo.zoo.se_cnn_bigru import SECNNBiGRU

    torch.manual_seed(0)
    return SECNNBiGRU(num_speakers=2, sample_rate=SR, channels=[8, 16, 32], hidden=32, projection_dim=32,
                      embedding_dim=16).eval()


def _datamodule(corpus: str):
    from speakerzoo.datamodules import SpeakerDataModule

    return SpeakerDataModule(corpus, split="speaker", speakers_per_batch=32, utterances_per_speaker=2,
                             crop_seconds=0.1, num_workers=0, eval_batch_size=128)


def run_stage(name: str, corpus: str, work: Path) -> dict:
    """One stage in this (fresh) process: wall time and peak RSS above the RSS after imports."""
    import lightning
    import torch

    from speakerzoo.datamodules import Corpus
    from speakerzoo.embeddings import EmbeddingWriter
    from speakerzoo.inference.file_embedding import embed_to_file
    from speakerzoo.inference.inputs import find_inputs
    from speakerzoo.inference.score_files import score_embeddings

    torch.set_num_threads(2)
    note = ""
    if name in ("validation", "embed"):
        model = _tiny_model()
    if name == "AS-norm score":  # inputs, not timed: embeddings of every utterance and a cohort
        c = Corpus(corpus)
        ids, spk = c.texts("utt_id"), [c.speakers[s] for s in c.speaker]
        rng = np.random.default_rng(0)
        centres = rng.standard_normal((len(c.speakers), 192)).astype(np.float32)
        emb = centres[c.speaker] + 0.8 * rng.standard_normal((len(c), 192)).astype(np.float32)
        for path, rows in ((work / "all.h5", np.arange(len(c))), (work / "cohort.h5", c.split("speaker", "train")[:30000])):
            with EmbeddingWriter(path) as w:
                for a in range(0, len(rows), 100000):
                    part = rows[a:a + 100000]
                    w.add(torch.from_numpy(emb[part]), [ids[i] for i in part], [spk[i] for i in part], [""] * len(part))
                w.finish({"model_class": "synthetic"})
    base = _reset_peak()
    start = time.perf_counter()
    if name == "open":
        c = Corpus(corpus)
        note = f"{len(c)} utterances, {len(c.shard_paths)} shard(s)"
    elif name == "setup":
        dm = _datamodule(corpus)
        dm.setup("fit")
    elif name == "epoch start":
        dm = _datamodule(corpus)
        dm.setup("fit")
        start = time.perf_counter()
        loader = dm.train_dataloader()
        sampler = loader.batch_sampler
        sampler.num_replicas, sampler.rank = 8, 0  # what rank 0 of 8 builds (its own batches only)
        sampler.set_epoch(1)
        next(iter(sampler))
        note = f"{len(sampler)} batches per rank"
    elif name == "validation":
        dm = _datamodule(corpus)
        trainer = lightning.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                                    enable_progress_bar=False, enable_model_summary=False)
        result = trainer.validate(model, datamodule=dm, verbose=False)[0]
        note = f"val EER {100 * result.get('val/eer', float('nan')):.1f} % (untrained)"
    elif name == "embed":
        inputs = find_inputs(corpus, "speaker", "test")
        done = embed_to_file(model, inputs.items, work / "test.h5", corpus=inputs.corpus, progress=False,
                             batching="auto", batch_size=128)
        note = f"{done.utterances} utterances, {done.utterances / (time.perf_counter() - start):.0f} utt/s"
    elif name == "AS-norm score":
        result = score_embeddings([work / "all.h5"], corpus=corpus, split="speaker", part="test",
                                  cohort=work / "cohort.h5", asnorm=True, top_k=200)
        note = f"{result.get('pairs', '?')} pairs, EER {100 * result['eer']:.1f} %"
    wall = time.perf_counter() - start
    return {"wall": wall, "peak_mb": max(0.0, _status_mb("VmHWM") - base), "note": note}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument("--run-stage", nargs=3, metavar=("NAME", "CORPUS", "WORK"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_stage:
        name, corpus, work = args.run_stage
        print("RESULT " + json.dumps(run_stage(name, corpus, Path(work))))
        return
    root = args.work or Path(tempfile.mkdtemp(prefix="speakerzoo-scale-"))
    table: dict[int, dict[str, dict]] = {}
    try:
        for n in args.sizes:
            work = root / str(n)
            t = time.perf_counter()
            listing = make_inputs(work / "audio", n)
            print(f"[{n}] wrote {n} wav files in {time.perf_counter() - t:.0f} s", file=sys.stderr)
            index = work / "corpus.h5"
            table[n] = {"prepare": stage_prepare(listing, index, n)}
            if n == min(args.sizes):  # the resumed corpus is the corpus of an uninterrupted run
                from speakerzoo.datamodules import Corpus

                single = work / "single.h5"
                subprocess.run(_prepare_command(listing, single, None), check=True, stdout=subprocess.DEVNULL)
                same = Corpus(index).utterance_digests() == Corpus(single).utterance_digests()
                table[n]["prepare"]["note"] += f"; digests equal to an uninterrupted run: {same}"
                single.unlink()
            shutil.rmtree(work / "audio")
            for stage in STAGES[1:]:
                done = subprocess.run([sys.executable, __file__, "--run-stage", stage, str(index), str(work)],
                                      capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
                lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
                if done.returncode != 0 or not lines:
                    raise SystemExit(f"stage {stage} at {n} failed:\n{done.stderr[-3000:]}")
                table[n][stage] = json.loads(lines[-1][7:])
                print(f"[{n}] {stage}: {table[n][stage]}", file=sys.stderr)
            shutil.rmtree(work)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    sizes = sorted(table)
    print(f"scale benchmark: {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.2f} at the end; "
          f"sizes {', '.join(f'{n:,}' for n in sizes)} utterances\n")
    head = " | ".join(f"{n:,}: s / MB" for n in sizes)
    growth = len(sizes) > 1
    print(f"| stage | {head} |" + (" growth | at 1.1 M (s) |" if growth else ""))
    print("|---|" + "---|" * len(sizes) + ("---|---|" if growth else ""))
    for stage in STAGES:
        cells = " | ".join(f"{table[n][stage]['wall']:.2f} / {table[n][stage]['peak_mb']:.0f}" for n in sizes)
        extra = ""
        if growth:
            a, b = sizes[-2], sizes[-1]
            ratio = (table[b][stage]["wall"] / max(table[a][stage]["wall"], 1e-9)) / (b / a)
            extra = f" {ratio:.2f} | {table[b][stage]['wall'] * VOXCELEB2 / b:.0f} |"
        print(f"| {stage} | {cells} |{extra}")
    print()
    for n in sizes:
        print(f"- {n:,}: " + "; ".join(f"{s}: {table[n][s]['note']}" for s in STAGES if table[n][s]["note"]))


if __name__ == "__main__":
    main()
