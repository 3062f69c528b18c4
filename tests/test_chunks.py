"""Cutting a prepared corpus into fixed-length chunks (seed 004: speaker ID on 3, 5 and 10 s).

The planner is checked on small arrays against hand-worked boundaries and, on random
arrays, against the source samples themselves (nothing lost, duplicated or reordered).
The writer is checked on the real FSDD corpus: the int16 audio is read with h5py from both
files, and the expected chunk counts, lengths, paths and transcripts are computed here from
the source's lengths, independently of the planner.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from speakerzoo.commands.chunk import main
from speakerzoo.datamodules import SpeakerDataModule, chunks
from speakerzoo.datamodules.chunks import Chunk, chunk_corpus, plan_chunks
from speakerzoo.datamodules.corpus import Corpus, CorpusError, CorpusWriter
from speakerzoo.datamodules.splits import MODES, PARTS

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SR = 16000


# -- helpers -----------------------------------------------------------------------------------


def _raw(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(int16 audio, offsets, speaker) exactly as stored."""
    with h5py.File(path, "r") as h5:
        return h5["audio"][:], h5["offsets"][:], h5["speaker"][:].astype(np.int64)


def _speaker_audio(path: Path) -> dict[int, np.ndarray]:
    """Speaker id -> its utterances' int16 audio concatenated in corpus order."""
    audio, offsets, speaker = _raw(path)
    return {int(s): np.concatenate([audio[offsets[i]:offsets[i + 1]] for i in np.flatnonzero(speaker == s)])
            for s in np.unique(speaker[speaker >= 0])}


def _covered(plan: list[Chunk], offsets: np.ndarray) -> dict[int, np.ndarray]:
    """Speaker -> the global source sample numbers of its chunks, concatenated in plan order."""
    out: dict[int, list[np.ndarray]] = {}
    for c in plan:
        out.setdefault(c.speaker, []).extend(offsets[u] + np.arange(a, b) for u, a, b in c.pieces)
    return {s: np.concatenate(v) for s, v in out.items()}


def _write_synthetic(path: Path, utterances: list[tuple[str | None, int]], rate: int = 8000, seed: int = 0) -> Path:
    """A small corpus of random int16 PCM: ``(speaker or None for noise, samples)`` per utterance."""
    rng = np.random.default_rng(seed)
    with CorpusWriter(path, rate, settings={"source": "synthetic"}) as w:
        for i, (spk, n) in enumerate(utterances):
            pcm = rng.integers(-32768, 32768, size=n).astype(np.int16)
            w.add(pcm, speaker=spk, utt_id=f"{spk or 'noise'}/{i}", path=f"/src/{i}.wav",
                  transcript=f"word{i}" if spk else "", session=f"s{i}")
        w.finish(seed=0)
    return path


def _folder_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# -- the planner -------------------------------------------------------------------------------

# speaker 0: clips 0, 1, 3 (5 + 3 + 2 = 10 samples); speaker 1: clip 2 (7); clip 4 is noise.
LENGTHS = np.array([5, 3, 7, 2, 6])
SPEAKER = np.array([0, 0, 1, 0, -1])


def test_plan_join_cuts_each_speakers_stream_with_chunks_spanning_clips():
    plan = plan_chunks(LENGTHS, SPEAKER, chunk_samples=4, join=True, tail="keep")
    assert [(c.speaker, c.pieces) for c in plan] == [
        (0, ((0, 0, 4),)),
        (0, ((0, 4, 5), (1, 0, 3))),  # spans clips 0 and 1
        (0, ((3, 0, 2),)),            # the speaker's tail
        (1, ((2, 0, 4),)),
        (1, ((2, 4, 7),)),
    ]
    assert [c.num_samples for c in plan] == [4, 4, 2, 4, 3]
    assert all(isinstance(v, int) for c in plan for piece in c.pieces for v in piece)


def test_plan_without_join_cuts_every_utterance_alone():
    plan = plan_chunks(LENGTHS, SPEAKER, chunk_samples=4, join=False, tail="keep")
    assert [(c.speaker, c.pieces) for c in plan] == [
        (0, ((0, 0, 4),)), (0, ((0, 4, 5),)), (0, ((1, 0, 3),)), (0, ((3, 0, 2),)),
        (1, ((2, 0, 4),)), (1, ((2, 4, 7),)),
    ]
    assert all(len(c.pieces) == 1 for c in plan)


def test_plan_tail_drop_leaves_only_full_chunks():
    joined = plan_chunks(LENGTHS, SPEAKER, 4, join=True, tail="drop")
    assert [c.pieces for c in joined] == [((0, 0, 4),), ((0, 4, 5), (1, 0, 3)), ((2, 0, 4),)]
    alone = plan_chunks(LENGTHS, SPEAKER, 4, join=False, tail="drop")
    assert [c.pieces for c in alone] == [((0, 0, 4),), ((2, 0, 4),)]
    # exact multiples have no tail to drop: keep and drop agree
    assert plan_chunks([4, 8], [0, 0], 4, join=True, tail="drop") == plan_chunks([4, 8], [0, 0], 4, join=True)
    assert len(plan_chunks([4, 8], [0, 0], 4, join=True)) == 3


def test_plan_leaves_noise_and_empty_utterances_out_and_groups_interleaved_speakers():
    plan = plan_chunks([3, 9, 0, 4, 5], [1, -1, 0, 0, 1], 4, join=True)
    assert all(u not in (1, 2) for c in plan for u, _, _ in c.pieces)  # noise, empty clip
    assert [(c.speaker, c.pieces) for c in plan] == [
        (0, ((3, 0, 4),)),
        (1, ((0, 0, 3), (4, 0, 1))), (1, ((4, 1, 5),)),
    ]
    assert plan_chunks([5, 6], [-1, -1], 4, join=True) == []
    assert plan_chunks([], [], 4, join=False) == []


@pytest.mark.parametrize("join", [True, False])
def test_plan_every_sample_exactly_once_in_order(join):
    rng = np.random.default_rng(7)
    for trial in range(40):
        n = int(rng.integers(1, 30))
        lengths = rng.integers(0, 25, size=n)
        speaker = rng.integers(-1, 4, size=n)
        chunk = int(rng.integers(1, 12))
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        keep = plan_chunks(lengths, speaker, chunk, join=join, tail="keep")
        covered = _covered(keep, offsets)
        expected = {int(s): np.concatenate([np.arange(offsets[u], offsets[u + 1]) for u in np.flatnonzero(speaker == s)])
                    for s in np.unique(speaker[speaker >= 0])}
        expected = {s: v for s, v in expected.items() if len(v)}
        assert covered.keys() == expected.keys(), trial
        for s in expected:
            np.testing.assert_array_equal(covered[s], expected[s])  # nothing lost, duplicated or reordered
        # only the last chunk of a stream (speaker when joined, utterance otherwise) may be short
        stream = [c.speaker if join else c.pieces[0][0] for c in keep]
        for i, c in enumerate(keep):
            assert 0 < c.num_samples <= chunk and all(b > a for _, a, b in c.pieces)
            if i + 1 < len(keep) and stream[i + 1] == stream[i]:
                assert c.num_samples == chunk
        drop = plan_chunks(lengths, speaker, chunk, join=join, tail="drop")
        assert drop == [c for c in keep if c.num_samples == chunk]


def test_plan_refuses_bad_arguments():
    with pytest.raises(ValueError, match="chunk_samples"):
        plan_chunks([5], [0], 0, join=True)
    with pytest.raises(ValueError, match="chunk_samples"):
        plan_chunks([5], [0], 2.5, join=True)
    with pytest.raises(ValueError, match="tail"):
        plan_chunks([5], [0], 2, join=True, tail="pad")
    with pytest.raises(ValueError, match="same length"):
        plan_chunks([5, 6], [0], 2, join=True)


# -- the real FSDD corpus ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fsdd_source(fsdd_corpus: Path):
    """(per-speaker int16 audio, per-speaker utterance indices, Corpus) of the source."""
    corpus = Corpus(fsdd_corpus)
    per_speaker = _speaker_audio(fsdd_corpus)
    utts = {s: np.flatnonzero(corpus.speaker == s) for s in per_speaker}
    yield per_speaker, utts, corpus
    corpus.close()


@pytest.fixture(scope="module")
def fsdd_3s(fsdd_corpus: Path, tmp_path_factory) -> Path:
    return chunk_corpus(fsdd_corpus, tmp_path_factory.mktemp("chunks") / "fsdd_3s.h5", 3.0, progress=False)


def test_fsdd_3s_chunks_hold_the_source_audio_exactly(fsdd_3s, fsdd_source):
    source_audio, _, source = fsdd_source
    chunk_audio = _speaker_audio(fsdd_3s)
    assert chunk_audio.keys() == source_audio.keys() == set(range(6))
    for s in source_audio:
        assert chunk_audio[s].dtype == np.int16
        np.testing.assert_array_equal(chunk_audio[s], source_audio[s])  # every int16 sample, in order

    out = Corpus(fsdd_3s)
    assert out.speakers == source.speakers and out.sample_rate == source.sample_rate == SR
    size = 3 * SR
    for s in range(6):
        lengths = out.num_samples[out.speaker == s]
        assert (lengths[:-1] == size).all()  # all but the speaker's last are exactly 3 s
        assert 0 < lengths[-1] <= size
        assert len(lengths) == -(-len(source_audio[s]) // size)
    assert not (out.speaker < 0).any() and len(out.split("utterance", "train")) > 0
    settings = out.settings
    assert settings["chunked_from"] == str(Path(source.path))
    assert settings["chunk_seconds"] == 3.0 and settings["join"] is True and settings["tail"] == "keep"
    assert settings["source_settings"] == source.settings  # auto joined: FSDD clips are ~0.4 s
    assert out.feature_configs == {}  # the source's cached features are not carried over
    out.close()


def test_fsdd_3s_names_paths_and_transcripts_follow_the_pieces(fsdd_3s, fsdd_source):
    _, utts, source = fsdd_source
    src_path, src_text, src_session = source.texts("path"), source.texts("transcript"), source.texts("session")
    out = Corpus(fsdd_3s)
    utt_id, path, transcript, session = (out.texts(k) for k in ("utt_id", "path", "transcript", "session"))
    size = 3 * SR
    for s, name in enumerate(source.speakers):
        rows = np.flatnonzero(out.speaker == s)
        ends = np.cumsum(source.num_samples[utts[s]])  # clip boundaries in the speaker's stream
        starts = ends - source.num_samples[utts[s]]
        for k, row in enumerate(rows):
            lo, hi = k * size, min((k + 1) * size, ends[-1])
            clips = utts[s][(starts < hi) & (ends > lo)]  # clips overlapping the chunk
            assert utt_id[row] == f"{name}/chunk{k:05d}"
            assert path[row] == src_path[clips[0]] and session[row] == src_session[clips[0]]
            assert transcript[row] == " ".join(src_text[c] for c in clips)
    out.close()


def test_fsdd_3s_splits_are_disjoint_and_cover_every_chunk(fsdd_3s):
    out = Corpus(fsdd_3s)
    n = len(out)
    for mode in MODES:
        parts = [out.split(mode, p) for p in PARTS]
        joined = np.concatenate(parts)
        assert len(joined) == len(np.unique(joined)) == n  # disjoint and covering: no chunk in two parts
    for s in range(6):
        for p in PARTS:
            assert (out.speaker[out.split("utterance", p)] == s).any(), (s, p)
    for p in ("val", "test"):
        pairs, ident = out.trials("utterance", p)
        assert len(pairs) and np.isin(pairs[:, :2], out.split("utterance", p)).all()
    out.close()


def test_fsdd_tail_drop_removes_one_short_chunk_per_speaker(fsdd_corpus, fsdd_3s, fsdd_source, tmp_path):
    source_audio, _, _ = fsdd_source
    size = 3 * SR
    dropped = chunk_corpus(fsdd_corpus, tmp_path / "drop.h5", 3.0, tail="drop", progress=False)
    keep, drop = Corpus(fsdd_3s), Corpus(dropped)
    assert drop.settings["tail"] == "drop" and drop.speakers == keep.speakers
    assert (drop.num_samples == size).all()
    with_tail = {s for s, a in source_audio.items() if len(a) % size}
    assert with_tail == set(range(6))  # no FSDD speaker's total is a multiple of 3 s
    for s in range(6):
        assert (drop.speaker == s).sum() == (keep.speaker == s).sum() - (s in with_tail)
    drop_audio = _speaker_audio(dropped)
    for s, a in source_audio.items():
        np.testing.assert_array_equal(drop_audio[s], a[:len(a) // size * size])
    keep.close()
    drop.close()


@pytest.mark.parametrize("seconds", [5, 10])
def test_longer_chunks_are_fewer_and_longer(fsdd_corpus, fsdd_3s, fsdd_source, tmp_path, seconds):
    source_audio, _, _ = fsdd_source
    out = Corpus(chunk_corpus(fsdd_corpus, tmp_path / f"fsdd_{seconds}s.h5", seconds, progress=False))
    three = Corpus(fsdd_3s)
    assert len(out) < len(three) and out.num_samples.max() == seconds * SR
    for s, a in source_audio.items():
        assert (out.speaker == s).sum() == -(-len(a) // (seconds * SR))
    for p in PARTS:
        assert set(out.speaker[out.split("utterance", p)]) == set(range(6))
    out.close()
    three.close()


def test_fsdd_without_join_keeps_every_clip_as_its_own_chunk(fsdd_corpus, fsdd_source, tmp_path):
    _, _, source = fsdd_source
    out = Corpus(chunk_corpus(fsdd_corpus, tmp_path / "alone.h5", 3.0, join="no", progress=False))
    assert out.settings["join"] is False
    order = np.argsort(source.speaker, kind="stable")  # chunks come speaker by speaker
    np.testing.assert_array_equal(out.num_samples, source.num_samples[order])  # every clip < 3 s: one tail each
    paths = source.texts("path")
    assert out.texts("path") == [paths[i] for i in order]
    out.close()


def test_datamodule_trains_on_the_chunks(fsdd_3s, fsdd_source):
    _, _, source = fsdd_source
    dm = SpeakerDataModule(str(fsdd_3s), split="utterance", crop_seconds=3.0, speakers_per_batch=6,
                           utterances_per_speaker=2, num_workers=0)
    assert dm.num_speakers == 6 and dm.speaker_names == source.speakers
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["waveforms"].shape[0] == 12 and batch["waveforms"].shape[1] <= 3 * SR
    assert len(set(batch["speakers"].tolist())) == 6
    dm.teardown("fit")


# -- long recordings, noise clips and errors (a small synthetic corpus) ---------------------------------


@pytest.mark.parametrize("read_whole", [None, 10000])  # 10000: the 20000, 17000, 11000 ones are read in pieces
def test_long_recordings_are_cut_alone_and_noise_is_copied_whole(tmp_path, monkeypatch, read_whole):
    if read_whole is not None:
        monkeypatch.setattr(chunks, "_READ_WHOLE_SAMPLES", read_whole)
    # 8 kHz; chunks of 1 s = 8000 samples; the median utterance (2.5 s) is longer, so auto = no join
    src = _write_synthetic(tmp_path / "long.h5", [("ann", 20000), (None, 3000), ("bob", 8000), ("ann", 9000),
                                                 ("bob", 17000), (None, 11000)])
    out_path = chunk_corpus(src, tmp_path / "long_1s.h5", 1.0, progress=False)
    audio, offsets, speaker = _raw(src)
    out = Corpus(out_path)
    assert out.settings["join"] is False and out.speakers == ["ann", "bob"]
    expected = [20000, 9000, 8000, 17000]  # per speaker, each utterance cut alone
    lengths = [n for total in expected for n in [8000] * (total // 8000) + ([total % 8000] if total % 8000 else [])]
    speech = out.speaker >= 0
    assert out.num_samples[speech].tolist() == lengths  # ann: 8000 8000 4000 | 8000 1000; bob: 8000 | 8000 8000 1000
    out_audio, out_offsets, _ = _raw(out_path)
    pieces = [(0, 0, 8000), (0, 8000, 16000), (0, 16000, 20000), (3, 0, 8000), (3, 8000, 9000),
              (2, 0, 8000), (4, 0, 8000), (4, 8000, 16000), (4, 16000, 17000)]
    for row, (u, a, b) in enumerate(pieces):
        np.testing.assert_array_equal(out_audio[out_offsets[row]:out_offsets[row + 1]],
                                      audio[offsets[u] + a:offsets[u] + b])
    with h5py.File(out_path, "r") as h5:
        noise_rows = h5["splits/noise"][:]
    assert noise_rows.tolist() == [9, 10] and (out.speaker[noise_rows] == -1).all()
    for row, u in zip(noise_rows, (1, 5)):
        np.testing.assert_array_equal(out_audio[out_offsets[row]:out_offsets[row + 1]],
                                      audio[offsets[u]:offsets[u + 1]])
        assert out.texts("utt_id")[row] == f"noise/{u}"
    assert not np.isin(noise_rows, np.concatenate([out.split(m, p) for m in MODES for p in PARTS])).any()
    out.close()


def test_join_yes_on_long_recordings_spans_them(tmp_path):
    src = _write_synthetic(tmp_path / "long.h5", [("ann", 20000), ("ann", 9000)])
    out = Corpus(chunk_corpus(src, tmp_path / "joined.h5", 1.0, join="yes", progress=False))
    assert out.num_samples.tolist() == [8000, 8000, 8000, 5000]
    assert out.texts("transcript")[2] == "word0 word1"  # 4000 samples of each recording
    assert out.texts("path")[2] == "/src/0.wav"
    out.close()


def test_speakers_with_few_chunks_are_warned_about(tmp_path):
    src = _write_synthetic(tmp_path / "few.h5", [("ann", 40000), ("bob", 5000), ("cid", 30000), ("dan", 6000)])
    with pytest.warns(UserWarning, match=r"2 speaker\(s\) have a single chunk"):
        chunk_corpus(src, tmp_path / "keep.h5", 1.0, progress=False)
    with pytest.warns(UserWarning, match=r"2 speaker\(s\) have less audio than one chunk.*bob, dan"):
        path = chunk_corpus(src, tmp_path / "drop.h5", 1.0, tail="drop", progress=False)
    assert Corpus(path).speakers == ["ann", "cid"]


def test_chunk_corpus_refuses_bad_settings(tmp_path):
    src = _write_synthetic(tmp_path / "src.h5", [("ann", 9000), ("bob", 9000)])
    before = src.read_bytes()
    for seconds in (0, -3, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="positive number of seconds"):
            chunk_corpus(src, tmp_path / "out.h5", seconds, progress=False)
    with pytest.raises(ValueError, match="the source corpus itself"):
        chunk_corpus(src, src, 1.0, progress=False)
    (tmp_path / "link.h5").symlink_to(src)
    with pytest.raises(ValueError, match="the source corpus itself"):
        chunk_corpus(src, tmp_path / "link.h5", 1.0, progress=False)
    with pytest.raises(CorpusError, match=r"src\.h5: no chunk of 2 s fits.*shorter chunks or tail='keep'"):
        chunk_corpus(src, tmp_path / "out.h5", 2.0, tail="drop", progress=False)
    with pytest.raises(CorpusError, match="no such corpus file"):
        chunk_corpus(tmp_path / "missing.h5", tmp_path / "out.h5", 1.0, progress=False)
    with pytest.raises(ValueError, match="waveform is always stored"):
        chunk_corpus(src, tmp_path / "out.h5", 1.0, features=["waveform"], progress=False)
    assert src.read_bytes() == before
    assert _folder_files(tmp_path) == ["link.h5", "src.h5"]


# -- the command ---------------------------------------------------------------------------------


def test_command_writes_the_chunks_and_summarises(fsdd_corpus, fsdd_source, tmp_path, capsys):
    source_audio, _, _ = fsdd_source
    out = tmp_path / "fsdd_10s.h5"
    assert main([str(fsdd_corpus), "--seconds", "10", "--output", str(out), "--seed", "3",
                 "--split-ratios", "0.6", "0.2", "0.2", "--max-trial-anchors", "50"]) == 0
    text = capsys.readouterr().out
    corpus = Corpus(out)
    total = sum(-(-len(a) // (10 * SR)) for a in source_audio.values())
    assert len(corpus) == total
    assert f"6 speakers, {total} chunks of 10 s ({total - 6} full-length, 6 shorter tails" in text
    assert f"train {len(corpus.split('utterance', 'train'))}" in text and str(out) in text
    assert corpus.settings["split_seed"] == 3 and corpus.settings["split_ratios"] == [0.6, 0.2, 0.2]
    assert len(corpus.trials("utterance", "val")[1]) <= 50
    corpus.close()

    quiet = tmp_path / "fsdd_5s.h5"
    assert main([str(fsdd_corpus), "--seconds", "5", "-o", str(quiet), "--quiet", "--tail", "drop"]) == 0
    assert capsys.readouterr().out.strip() == str(quiet)
    assert Corpus(quiet).settings["tail"] == "drop"


def test_command_errors_return_2_and_leave_the_output_alone(tmp_path, capsys):
    src = _write_synthetic(tmp_path / "src.h5", [("ann", 9000), ("bob", 9000)])
    out = tmp_path / "out.h5"
    out.write_bytes(b"sentinel: an earlier corpus")
    source_bytes = src.read_bytes()

    def failing(*argv: str) -> str:
        assert main(list(argv)) == 2
        return capsys.readouterr().err

    assert "--seconds" in failing(str(src), "--seconds", "0", "-o", str(out))
    assert "--seconds" in failing(str(src), "--seconds", "nan", "-o", str(out))
    assert "--seconds" in failing(str(src), "-o", str(out))  # required
    err = failing(str(tmp_path / "nowhere.h5"), "--seconds", "1", "-o", str(out))
    assert err.startswith("speakerzoo chunk: error:") and str(tmp_path / "nowhere.h5") in err
    not_corpus = tmp_path / "notes.h5"
    not_corpus.write_text("not hdf5")
    assert str(not_corpus) in failing(str(not_corpus), "--seconds", "1", "-o", str(out))
    assert "the source corpus itself" in failing(str(src), "--seconds", "1", "-o", str(src))
    assert "tail='keep'" in failing(str(src), "--seconds", "5", "-o", str(out), "--tail", "drop")
    assert out.read_bytes() == b"sentinel: an earlier corpus"
    assert src.read_bytes() == source_bytes
    assert _folder_files(tmp_path) == ["notes.h5", "out.h5", "src.h5"]  # no temporary file left behind


def test_command_interrupted_while_writing_returns_130(tmp_path, capsys, monkeypatch):
    src = _write_synthetic(tmp_path / "src.h5", [("ann", 30000), ("bob", 30000)])
    out = tmp_path / "out.h5"
    out.write_bytes(b"sentinel")
    add = CorpusWriter.add
    calls = []

    def interrupt_third(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return add(self, *args, **kwargs)

    monkeypatch.setattr(chunks.CorpusWriter, "add", interrupt_third)
    assert main([str(src), "--seconds", "1", "-o", str(out), "--quiet"]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert out.read_bytes() == b"sentinel"
    assert _folder_files(tmp_path) == ["out.h5", "src.h5"]


def test_command_help_has_the_example(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert "speakerzoo chunk data/fsdd.h5 --seconds 3 --output data/fsdd_3s.h5" in text
    for option in ("--seconds", "--output", "--join", "--tail", "--split-ratios", "--seed", "--features",
                   "--max-trial-anchors", "--quiet"):
        assert option in text
