"""Sharded, resumable corpus preparation (speakerzoo.datamodules.shards) on real FSDD recordings:
a sharded corpus equals the single file, a kill -9 at 90 % resumes keeping the finished shards,
parts written by separate runs join, and crops read little more than they use."""

from __future__ import annotations

import csv
import dataclasses
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from speakerzoo.datamodules import Corpus, CorpusError, CorpusWriter, SpeakerDataModule, corpus as corpus_module, sources
from speakerzoo.datamodules.chunks import chunk_corpus
from speakerzoo.datamodules.prepare import bounded_imap, prepare
from speakerzoo.datamodules.shards import ShardProgress, shard_folder, shard_path

SPEAKERS = ("george", "jackson", "nicolas")


@pytest.fixture(scope="module")
def records(fsdd_root):
    # 3 speakers x 50 clips, in a fixed order
    chosen = [r for r in sources.fsdd(fsdd_root) if r.speaker in SPEAKERS]
    return sorted(chosen, key=lambda r: r.utt_id)[::10]


@pytest.fixture(scope="module")
def single(records, tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "one.h5"
    prepare(records, out, sample_rate=8000, features=["mfcc26"], workers=0, progress=False)
    return out


def _same_corpus(a: Path, b: Path) -> None:
    x, y = Corpus(a), Corpus(b)
    assert x.utterance_digests() == y.utterance_digests()
    assert x.speakers == y.speakers and np.array_equal(x.speaker, y.speaker)
    for mode in ("utterance", "speaker"):
        for part in ("train", "val", "test"):
            assert np.array_equal(x.split(mode, part), y.split(mode, part))
            if part != "train":
                assert all(np.array_equal(p, q) for p, q in zip(x.trials(mode, part), y.trials(mode, part)))


def test_a_sharded_corpus_is_the_single_file_corpus(records, single, tmp_path):
    out = tmp_path / "sharded.h5"
    summary = prepare(records, out, sample_rate=8000, features=["mfcc26"], workers=2, shard_files=40, progress=False)
    assert summary.shards == 4 and summary.utterances == len(records) and "4 file(s) with audio" in str(summary)
    assert sorted(p.name for p in shard_folder(out).iterdir()) == [f"0000{k}.h5" for k in range(4)]
    _same_corpus(single, out)
    sharded = Corpus(out)
    assert sharded.sharded and sharded.shard_first.tolist() == [0, 40, 80, 120, 150]
    # readers see one corpus: a crop across the corpus, the in-memory copy, the DataModule, chunking
    assert np.array_equal(sharded.pcm(97, 100, 900), Corpus(single).pcm(97, 100, 900))
    assert Corpus(out, in_memory=True).utterance_digests() == sharded.utterance_digests()
    batches = []
    for path in (single, out):
        dm = SpeakerDataModule(str(path), split="utterance", speakers_per_batch=3, utterances_per_speaker=2,
                               crop_seconds=0.5, num_workers=0, eval_batch_size=4, features="mfcc26")
        dm.setup("fit")
        batches.append(list(dm.train_dataloader()))
    assert len(batches[0]) == len(batches[1]) > 0
    for p, q in zip(*batches):
        assert all(torch.equal(p[k], q[k]) for k in p)
    # what embed and score read: the same utterances, audio and trials
    from speakerzoo.inference.file_embedding import load_item
    from speakerzoo.inference.inputs import find_inputs
    from speakerzoo.inference.trials import corpus_trials

    found = [find_inputs(path, "utterance", "test") for path in (single, out)]
    assert [i.utt_id for i in found[0].items] == [i.utt_id for i in found[1].items] and found[1].items
    assert all(np.array_equal(load_item(a, found[0].corpus, 8000), load_item(b, found[1].corpus, 8000))
               for a, b in zip(found[0].items, found[1].items))
    for f in found:
        f.close()
    x, y = corpus_trials(out, "utterance", "test"), corpus_trials(single, "utterance", "test")
    assert (x.enrol, x.test, x.ident) == (y.enrol, y.test, y.ident) and torch.equal(x.labels, y.labels)
    chunked = chunk_corpus(out, tmp_path / "chunks.h5", 2.0, progress=False)
    reference = chunk_corpus(single, tmp_path / "chunks_ref.h5", 2.0, progress=False)
    assert Corpus(chunked).utterance_digests() == Corpus(reference).utterance_digests()


def _manifest(records, path: Path) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "speaker", "transcript", "utt_id"])
        for r in records:
            w.writerow([r.path, r.speaker, r.transcript, r.utt_id])
    return path


def _state(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.glob("*.h5")}


def test_a_prepare_killed_at_90_percent_resumes_with_the_same_content(records, single, tmp_path):
    listing = _manifest(records, tmp_path / "list.csv")
    out = tmp_path / "resumed.h5"
    command = [sys.executable, "-m", "speakerzoo", "prepare", "manifest", str(listing), "--output", str(out),
               "--sample-rate", "8000", "--features", "mfcc26", "--shard-files", "5", "--workers", "1", "-q"]
    run = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    folder = shard_folder(out)
    deadline = time.monotonic() + 240
    while len(list(folder.glob("*.h5"))) < 27 and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    run.send_signal(signal.SIGKILL)  # the parent only, as an OOM killer or a scheduler does
    run.wait()
    kept = _state(folder)
    assert 27 <= len(kept) < 30 and not out.exists(), "the run was not killed between 90 % and the end"
    time.sleep(0.5)  # the orphaned worker gets SIGTERM from the kernel (PR_SET_PDEATHSIG)
    done = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    after = _state(folder)
    assert all(after[name] == kept[name] for name in kept)  # finished shards were kept, not rewritten
    assert len(after) == 30 and not [p for p in folder.iterdir() if ".tmp-" in p.name or p.name.endswith(".lock")]
    _same_corpus(single, out)
    # a third run with the same command rewrites nothing but the index
    again = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert again.returncode == 0 and _state(folder) == after


def test_parts_written_by_separate_runs_join_into_the_corpus(records, single, tmp_path):
    out = tmp_path / "parts.h5"
    first = prepare(records, out, sample_rate=8000, features=["mfcc26"], workers=0, shard_files=25, part=(0, 2),
                    progress=False)
    assert isinstance(first, ShardProgress) and first.written == [0, 2, 4] and first.finished == 3
    assert not out.exists() and "without --part" in str(first)
    stale = shard_folder(out) / ".00002.h5.lock"  # what a writer killed between its rename and its unlock leaves
    stale.write_text("999999")
    second = prepare(records, out, sample_rate=8000, features=["mfcc26"], workers=2, shard_files=25, part=(1, 2),
                     progress=False)
    assert second.shards == 6  # the run that finished the last shard joined them
    assert not stale.exists()  # no process held it: removed
    _same_corpus(single, out)


def test_changed_inputs_or_settings_redo_only_what_they_change(records, tmp_path):
    out = tmp_path / "c.h5"
    prepare(records, out, sample_rate=8000, workers=0, shard_files=50, progress=False)
    before = _state(shard_folder(out))
    changed = list(records)
    changed[60] = dataclasses.replace(changed[60], transcript="changed")
    prepare(changed, out, sample_rate=8000, workers=0, shard_files=50, progress=False, seed=3)
    after = _state(shard_folder(out))
    assert [name for name in before if after[name] != before[name]] == ["00001.h5"]
    assert Corpus(out).texts("transcript")[60] == "changed" and Corpus(out).settings["split_seed"] == 3
    copy = tmp_path / "copy.wav"
    shutil.copy(changed[120].path, copy)
    changed[120] = dataclasses.replace(changed[120], path=copy)
    prepare(changed, out, sample_rate=8000, workers=0, shard_files=50, progress=False, seed=3)
    after = _state(shard_folder(out))
    shutil.copy(changed[121].path, copy)  # another recording under the same name: its shard is made again
    prepare(changed, out, sample_rate=8000, workers=0, shard_files=50, progress=False, seed=3)
    replaced = _state(shard_folder(out))
    assert [name for name in after if replaced[name] != after[name]] == ["00002.h5"]
    assert np.array_equal(Corpus(out).pcm(120), Corpus(out).pcm(121))
    after = replaced
    prepare(changed, out, sample_rate=16000, workers=0, shard_files=50, progress=False)  # new content
    assert all(_state(shard_folder(out))[n] != after[n] for n in after) and Corpus(out).sample_rate == 16000


def test_a_missing_or_replaced_shard_is_an_error_that_says_what_to_do(records, tmp_path):
    out = tmp_path / "s.h5"
    prepare(records, out, sample_rate=8000, workers=0, shard_files=50, progress=False)
    os.replace(shard_path(out, 2), tmp_path / "aside.h5")
    with pytest.raises(CorpusError, match=r"1 of its 3 shard files are missing .*00002\.h5.*same `speakerzoo prepare`"):
        Corpus(out)
    shutil.copy(shard_path(out, 1), shard_path(out, 2))  # another shard under the name
    corpus = Corpus(out)
    assert corpus.pcm(0).size > 0  # shard 0 is intact
    with pytest.raises(CorpusError, match=r"00002\.h5 is not the shard .*s\.h5 was made from"):
        corpus.pcm(120)


def _mark(folder: str, i: int) -> int:
    Path(folder, str(i)).touch()
    return i


def test_the_decode_queue_is_bounded(tmp_path):
    # Pool.imap decodes every file ahead of a slow writer (the whole corpus in memory); here at
    # most `window` chunks are decoded and not yet consumed.
    items = list(range(400))
    pool = multiprocessing.get_context("fork").Pool(2)
    try:
        results = bounded_imap(pool, lambda i: i, [], 4, 3)
        assert list(results) == []
        import functools

        results = bounded_imap(pool, functools.partial(_mark, str(tmp_path)), items, chunksize=4, window=3)
        assert next(results) == 0
        time.sleep(0.5)  # a slow consumer
        assert len(list(tmp_path.iterdir())) <= 3 * 4
        assert [0] + list(results) == items
        assert len(list(tmp_path.iterdir())) == 400
    finally:
        pool.terminate()


def _fetched_ratio(corpus: Corpus, read, length: int, n: int, sizes: np.ndarray, seed: int = 0) -> float:
    """Rows fetched from HDF5 (whole checksum blocks, which are chunks) per row used, for random crops."""
    fetched = []
    original = corpus_module.read_blocks_checked

    def counting(source, crcs, block, start, stop):
        fetched.append(min((((stop - 1) // block) + 1) * block, len(source)) - (start // block) * block)
        return original(source, crcs, block, start, stop)

    rng = np.random.default_rng(seed)
    corpus_module.read_blocks_checked = counting
    try:
        for i in rng.integers(0, len(corpus), n):
            start = int(rng.integers(0, sizes[i] - length))
            assert len(read(int(i), start, start + length)) == length
    finally:
        corpus_module.read_blocks_checked = original
    return sum(fetched) / (n * length)


@pytest.mark.parametrize("rate", [16000, 8000])
def test_two_second_crops_read_at_most_one_and_a_half_times_their_size(tmp_path, rate):
    rng = np.random.default_rng(0)
    path = tmp_path / "long.h5"
    with CorpusWriter(path, rate) as w:
        for i in range(40):
            w.add((rng.standard_normal(rate * 6) * 0.1).astype(np.float32), speaker=f"s{i % 4}", utt_id=str(i))
        w.finish(features=["fbank80"], progress=False)
    corpus = Corpus(path)
    audio = _fetched_ratio(corpus, corpus.pcm, 2 * rate, 300, corpus.num_samples)
    feats = _fetched_ratio(corpus, lambda i, a, b: corpus.features("fbank80", i, a, b), 200, 300,
                           corpus.num_frames("fbank80"))
    assert 1.0 < audio <= 1.5 and 1.0 < feats <= 1.5, (audio, feats)


def test_corpora_with_the_old_large_blocks_are_still_read(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus_module, "AUDIO_BLOCK", 1 << 16)
    monkeypatch.setattr(corpus_module, "FEATURE_BLOCK", 4096)
    rng = np.random.default_rng(1)
    waves = [(rng.standard_normal(70000 + 999 * i) * 0.1).astype(np.float32) for i in range(4)]
    path = tmp_path / "old.h5"
    with CorpusWriter(path, 16000) as w:
        for i, wave in enumerate(waves):
            w.add(wave, speaker=f"s{i % 2}", utt_id=str(i))
        w.finish(features=["fbank80"], progress=False)
    monkeypatch.undo()
    corpus = Corpus(path)
    assert all(np.array_equal(corpus.pcm(i, 65000, 70000), corpus_module.to_pcm16(w)[65000:70000])
               for i, w in enumerate(waves))
    assert corpus.features("fbank80", 3, 10, 20).shape == (10, 80)
