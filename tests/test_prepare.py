"""Preparing real corpora (FSDD, Speech Commands) and synthetic layouts into corpus files.

Expected values are computed here from the files on disk (glob, soundfile), independently
of the importers under test.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pytest
import soundfile as sf
import torch

from speakerzoo import __version__
from speakerzoo.audio import load_audio
from speakerzoo.commands.prepare import main
from speakerzoo.datamodules import sources
from speakerzoo.datamodules.corpus import Corpus
from speakerzoo.datamodules.prepare import prepare
from speakerzoo.datamodules.splits import MODES, PARTS
from speakerzoo.features import Frontend, frame_count

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


# -- helpers -----------------------------------------------------------------------------------


def _rows(corpus: Corpus) -> dict[str, int]:
    """Source path -> corpus index."""
    return {p: i for i, p in enumerate(corpus.texts("path"))}


def _noise_split(path: Path) -> np.ndarray:
    with h5py.File(path, "r") as h5:
        return h5["splits/noise"][:]


def _split_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every split and trial array of a corpus, through the public reader."""
    corpus = Corpus(path)
    out = {}
    for mode in MODES:
        for part in PARTS:
            out[f"splits/{mode}/{part}"] = corpus.split(mode, part)
            if part != "train":
                out[f"pairs/{mode}/{part}"], out[f"ident/{mode}/{part}"] = corpus.trials(mode, part)
    return out


def _speaker_names(corpus: Corpus) -> list[str | None]:
    return [corpus.speakers[s] if s >= 0 else None for s in corpus.speaker]


def _fsdd_on_disk(root: Path) -> dict[str, tuple[str, str]]:
    """path -> (speaker, transcript), from the file names."""
    out = {}
    for p in sorted((root / "recordings").glob("*.wav")):
        digit, speaker, _ = p.stem.split("_")
        out[str(p.resolve())] = (speaker, WORDS[int(digit)])
    return out


def _speech_commands_on_disk(root: Path) -> dict[str, tuple[str | None, str]]:
    """path -> (speaker or None, transcript), from the folder and file names."""
    out = {}
    for p in sorted(root.glob("*/*.wav")):
        folder, name = p.parent.name, p.name
        if folder == "_silence_":
            out[str(p.resolve())] = (None, "")
        elif folder == "_unknown_":
            word, speaker = name.split("_")[:2]
            assert name.endswith(".wav.wav")
            out[str(p.resolve())] = (speaker, word)
        else:
            out[str(p.resolve())] = (name.split("_nohash_")[0], folder)
    return out


def _write_wav(path: Path, seconds: float, rate: int, seed: int, channels: int = 1, fmt: str | None = None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    tone = 0.3 * np.sin(2 * np.pi * (150 + 40 * seed) * t)
    data = np.stack([tone + 0.05 * rng.standard_normal(n) for _ in range(channels)], axis=1)
    pcm = np.clip(np.round(data * 32767), -32768, 32767).astype(np.int16)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, pcm if channels > 1 else pcm[:, 0], rate, subtype="PCM_16", format=fmt)
    return pcm


# -- FSDD ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fsdd_8k(fsdd_root: Path, tmp_path_factory) -> Path:
    """FSDD at its native 8 kHz, through the command line (one prepare per module)."""
    out = tmp_path_factory.mktemp("fsdd8k") / "fsdd8k.h5"
    rc = main(["fsdd", str(fsdd_root), "--output", str(out), "--sample-rate", "8000", "--features", "mfcc26",
               "--workers", "2", "--quiet"])
    assert rc == 0
    return out


def test_fsdd_counts_speakers_and_transcripts(fsdd_prepared, fsdd_root):
    expected = _fsdd_on_disk(fsdd_root)
    corpus = Corpus(fsdd_prepared.path)
    rows = _rows(corpus)
    assert len(expected) == 3000
    assert len(corpus) == len(expected)
    assert set(rows) == set(expected)
    assert sorted(corpus.speakers) == sorted({spk for spk, _ in expected.values()})
    names, transcripts, utt_ids = _speaker_names(corpus), corpus.texts("transcript"), corpus.texts("utt_id")
    for path, (speaker, word) in expected.items():
        i = rows[path]
        assert names[i] == speaker
        assert transcripts[i] == word
        assert utt_ids[i] == Path(path).stem
    summary = fsdd_prepared.summary
    assert (summary.speakers, summary.utterances, summary.noise_clips) == (6, 3000, 0)
    assert summary.resampled_from == {8000: 3000}
    assert summary.skipped == [] and summary.stereo_mixed == 0
    assert summary.single_file_speakers == []
    assert len(_noise_split(fsdd_prepared.path)) == 0


def test_fsdd_native_rate_is_bit_exact(fsdd_8k, fsdd_root):
    corpus = Corpus(fsdd_8k)
    assert corpus.sample_rate == 8000
    assert corpus.settings["resampled_from"] == {}
    paths = corpus.texts("path")
    assert len(paths) == 3000
    for i, path in enumerate(paths):
        pcm, rate = sf.read(path, dtype="int16")
        assert rate == 8000
        np.testing.assert_array_equal(corpus.audio(i), pcm.astype(np.float32) / 32768.0, err_msg=path)
    assert np.allclose(corpus.duration, corpus.num_samples / 8000)


def test_fsdd_resampled_matches_load_audio(fsdd_prepared, fsdd_8k):
    corpus, native = Corpus(fsdd_prepared.path), Corpus(fsdd_8k)
    assert corpus.sample_rate == 16000
    # Same files in the same order; 8 kHz -> 16 kHz doubles every length exactly.
    assert corpus.texts("path") == native.texts("path")
    np.testing.assert_array_equal(corpus.num_samples, 2 * native.num_samples)
    np.testing.assert_allclose(corpus.duration, native.duration, rtol=1e-6)
    paths = corpus.texts("path")
    for i in range(0, len(corpus), 15):
        expected, rate = load_audio(paths[i], 16000)
        assert rate == 8000
        got = corpus.audio(i)
        assert got.shape == expected.shape
        assert np.abs(got - np.clip(expected, -1, 32767 / 32768)).max() <= 1 / 32768, paths[i]


# -- Speech Commands ---------------------------------------------------------------------------


def test_speech_commands_counts_noise_and_transcripts(speech_commands_prepared, speech_commands_root):
    expected = _speech_commands_on_disk(speech_commands_root)
    corpus = Corpus(speech_commands_prepared.path)
    rows = _rows(corpus)
    assert set(rows) == set(expected)  # LICENSE, README, .DS_Store are not audio
    assert len(corpus) == len(expected) == 4890
    speakers = {spk for spk, _ in expected.values() if spk is not None}
    assert sorted(corpus.speakers) == sorted(speakers)
    names, transcripts = _speaker_names(corpus), corpus.texts("transcript")
    for path, (speaker, word) in expected.items():
        assert (names[rows[path]], transcripts[rows[path]]) == (speaker, word), path
    # _unknown_ words come from the file name (double extension stripped from the utt_id too)
    utt_ids = corpus.texts("utt_id")
    unknown = [i for i, u in enumerate(utt_ids) if u.startswith("_unknown_/")]
    assert len(unknown) == len(list((speech_commands_root / "_unknown_").glob("*.wav")))
    assert all(not utt_ids[i].endswith(".wav") for i in unknown)
    # noise: speaker -1 and splits/noise
    silence = {str(p.resolve()) for p in (speech_commands_root / "_silence_").glob("*.wav")}
    noise = np.flatnonzero(corpus.speaker == -1)
    assert {corpus.texts("path")[i] for i in noise} == silence
    np.testing.assert_array_equal(_noise_split(speech_commands_prepared.path), noise)
    summary = speech_commands_prepared.summary
    assert summary.noise_clips == len(silence) == 408
    assert summary.utterances == len(expected) - len(silence)
    assert summary.speakers == len(speakers)
    assert summary.resampled_from == {} and summary.skipped == []


def test_speech_commands_single_file_speakers_are_reported(speech_commands_prepared, speech_commands_root):
    counts = Counter(spk for spk, _ in _speech_commands_on_disk(speech_commands_root).values() if spk is not None)
    singles = sorted(s for s, n in counts.items() if n == 1)
    assert singles, "the test set is known to hold speakers with a single clip"
    assert sorted(speech_commands_prepared.summary.single_file_speakers) == singles
    assert "single file" in str(speech_commands_prepared.summary)


def test_speech_commands_audio_is_bit_exact(speech_commands_prepared):
    corpus = Corpus(speech_commands_prepared.path, in_memory=True)
    for i, path in enumerate(corpus.texts("path")):
        pcm, rate = sf.read(path, dtype="int16")
        assert rate == 16000
        np.testing.assert_array_equal(corpus.audio(i), pcm.astype(np.float32) / 32768.0, err_msg=path)
    np.testing.assert_allclose(corpus.duration, corpus.num_samples / 16000)


# -- splits and trials ---------------------------------------------------------------------------

CORPORA = ["fsdd_corpus", "speech_commands_corpus"]


@pytest.mark.parametrize("name", CORPORA)
def test_splits_partition_the_speech(name, request):
    corpus = Corpus(request.getfixturevalue(name))
    spk = corpus.speaker
    speech = set(np.flatnonzero(spk >= 0).tolist())
    for mode in ("utterance", "speaker"):
        parts = {p: corpus.split(mode, p) for p in ("train", "val", "test")}
        seen = np.concatenate(list(parts.values()))
        assert len(seen) == len(set(seen.tolist())), f"{mode}: parts overlap"
        assert set(seen.tolist()) == speech, f"{mode}: parts do not cover the speech (or include noise)"
        assert all(len(parts[p]) for p in parts), f"{mode}: an empty part"
        if mode == "speaker":
            groups = [set(spk[parts[p]].tolist()) for p in parts]
            assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
        else:  # closed set: every val/test speaker also has training utterances
            train = set(spk[parts["train"]].tolist())
            assert set(spk[parts["val"]].tolist()) <= train and set(spk[parts["test"]].tolist()) <= train


@pytest.mark.parametrize("name", CORPORA)
def test_trials_labels_are_right(name, request):
    corpus = Corpus(request.getfixturevalue(name))
    spk = corpus.speaker
    found = 0
    for mode in ("utterance", "speaker"):
        for part in ("val", "test"):
            members = corpus.split(mode, part)
            pairs, ident = corpus.trials(mode, part)
            if len(np.unique(spk[members])) < 2:
                assert len(pairs) == 0 and len(ident) == 0  # e.g. FSDD by speaker: one speaker per part
                continue
            found += 1
            assert len(pairs) > 0 and len(ident) > 0
            assert np.isin(pairs[:, :2], members).all() and np.isin(ident, members).all()
            np.testing.assert_array_equal(pairs[:, 2], (spk[pairs[:, 0]] == spk[pairs[:, 1]]).astype(np.int64))
            assert pairs[:, 2].sum() * 2 == len(pairs)  # balanced
            assert (pairs[:, 0] != pairs[:, 1]).all()
            assert ident.shape[1] == 101
            assert (spk[ident[:, 1]] == spk[ident[:, 0]]).all() and (ident[:, 1] != ident[:, 0]).all()
            assert (spk[ident[:, 2:]] != spk[ident[:, :1]]).all()
            assert (spk[ident] >= 0).all()
    assert found >= 2


def test_seed_fixes_the_splits(fsdd_root, tmp_path, fsdd_prepared, fsdd_8k):
    # Two full prepares (16 kHz fixture, 8 kHz through the CLI) with seed 0: identical splits and trials.
    a, b = _split_arrays(fsdd_prepared.path), _split_arrays(fsdd_8k)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    # A small subset prepared with seed 0 twice and with seed 1.
    records = sources.fsdd(fsdd_root)[::20]
    out = {}
    for name, seed in (("s0", 0), ("s0_again", 0), ("s1", 1)):
        prepare(records, tmp_path / f"{name}.h5", sample_rate=8000, seed=seed, workers=0, progress=False)
        out[name] = _split_arrays(tmp_path / f"{name}.h5")
    for key in out["s0"]:
        np.testing.assert_array_equal(out["s0"][key], out["s0_again"][key], err_msg=key)
    differs = [k for k in out["s0"] if k.startswith("splits") and not np.array_equal(out["s0"][k], out["s1"][k])]
    assert differs, "seed 1 gave the same splits as seed 0"
    assert Corpus(tmp_path / "s1.h5").settings["split_seed"] == 1 and Corpus(tmp_path / "s0.h5").settings["split_seed"] == 0


# -- cached features and settings ------------------------------------------------------------------


@pytest.mark.parametrize("name", CORPORA + ["fsdd_8k"])
def test_cached_features_equal_the_frontend(name, request):
    corpus = Corpus(request.getfixturevalue(name))
    assert corpus.feature_configs, "the fixture caches features"
    for key, config in corpus.feature_configs.items():
        frontend = Frontend(key, corpus.sample_rate)
        assert frontend.config == config
        np.testing.assert_array_equal(corpus.num_frames(key),
                                      [frame_count(int(n), corpus.sample_rate, config) for n in corpus.num_samples])
        for i in np.linspace(0, len(corpus) - 1, 40).astype(int):
            wave = torch.from_numpy(corpus.audio(int(i)))
            with torch.inference_mode():
                feats, frames = frontend(wave[None], torch.tensor([wave.numel()]))
            cached = corpus.features(key, int(i))
            assert cached.shape == (int(frames[0]), config.dim)
            torch.testing.assert_close(torch.from_numpy(cached), feats[0, : int(frames[0])], rtol=1e-5, atol=1e-5)


def test_settings_are_recorded(fsdd_prepared, fsdd_8k, fsdd_root):
    s = Corpus(fsdd_prepared.path).settings
    assert Corpus(fsdd_prepared.path).sample_rate == 16000 and s["normalize"] is False and s["trim"] is False
    assert s["features"] == ["fbank80", "mfcc26"] and s["split_seed"] == 0 and s["split_ratios"] == [0.7, 0.15, 0.15]
    assert s["skipped"] == [] and s["skipped_count"] == 0 and s["resampled_from"] == {"8000": 3000}
    with h5py.File(fsdd_prepared.path) as h5:
        assert h5.attrs["speakerzoo_version"] == __version__
    assert s["sources"] == [str((fsdd_root / "recordings").resolve())]
    cli = Corpus(fsdd_8k).settings
    assert cli["sources"] == [{"kind": "fsdd", "path": str(fsdd_root.resolve())}]
    assert cli["command"].startswith("speakerzoo prepare fsdd") and cli["features"] == ["mfcc26"]


# -- importers on synthetic layouts ------------------------------------------------------------------


def test_librispeech_layout(tmp_path):
    root = tmp_path / "LibriSpeech" / "dev-clean"
    texts = {"84-121123-0000": "GO DO YOU HEAR", "84-121123-0001": "BUT IN LESS THAN FIVE MINUTES",
             "174-50561-0000": "FORGOTTEN TOO THE NAME OF GILLIAN"}
    waves = {}
    for seed, (utt, text) in enumerate(sorted(texts.items())):
        spk, chapter, _ = utt.split("-")
        waves[utt] = _write_wav(root / spk / chapter / f"{utt}.flac", 0.3, 16000, seed, fmt="FLAC")
    for spk, chapter in {("84", "121123"), ("174", "50561")}:
        lines = [f"{u} {t}" for u, t in texts.items() if u.startswith(f"{spk}-{chapter}-")]
        (root / spk / chapter / f"{spk}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")
    records = sources.librispeech(tmp_path / "LibriSpeech")  # the parent of the subsets works too
    assert [r.utt_id for r in records] == ["174-50561-0000", "84-121123-0000", "84-121123-0001"]
    assert [(r.speaker, r.session, r.transcript) for r in records] == [
        ("174", "50561", texts["174-50561-0000"]), ("84", "121123", texts["84-121123-0000"]),
        ("84", "121123", texts["84-121123-0001"])]
    summary = prepare(records, tmp_path / "libri.h5", workers=0, progress=False)
    corpus = Corpus(tmp_path / "libri.h5")
    assert summary.speakers == 2 and summary.utterances == 3
    assert corpus.texts("session") == ["50561", "121123", "121123"]
    assert corpus.texts("transcript") == [r.transcript for r in records]
    for i, r in enumerate(records):  # FLAC, 16-bit: lossless
        np.testing.assert_array_equal(corpus.audio(i), waves[r.utt_id][:, 0] / 32768.0)


def test_voxceleb_layout_and_m4a(tmp_path):
    root = tmp_path / "vox1_test_wav" / "wav"
    for seed, rel in enumerate(["id10270/5r0dWxy17C8/00001.wav", "id10270/5r0dWxy17C8/00002.wav",
                                "id10270/zjwijMp0Qyw/00001.wav", "id10271/1gtz-CUIygI/00001.wav"]):
        _write_wav(root / rel, 0.2, 16000, seed)
    records = sources.voxceleb(tmp_path / "vox1_test_wav")
    assert [r.utt_id for r in records] == ["id10270/5r0dWxy17C8/00001", "id10270/5r0dWxy17C8/00002",
                                           "id10270/zjwijMp0Qyw/00001", "id10271/1gtz-CUIygI/00001"]
    assert [r.speaker for r in records] == ["id10270"] * 3 + ["id10271"]
    assert [r.session for r in records] == ["5r0dWxy17C8", "5r0dWxy17C8", "zjwijMp0Qyw", "1gtz-CUIygI"]
    # An .m4a with a converted twin is fine; one without is a clear error naming ffmpeg.
    (root / "id10270/5r0dWxy17C8/00001.m4a").write_bytes(b"\x00\x00\x00\x20ftypM4A ")
    assert len(sources.voxceleb(root)) == 4
    (root / "id10271/1gtz-CUIygI/00002.m4a").write_bytes(b"\x00\x00\x00\x20ftypM4A ")
    with pytest.raises(sources.SourceError, match="ffmpeg") as err:
        sources.voxceleb(root)
    assert "00002.m4a" in str(err.value)
    vox2 = tmp_path / "vox2" / "aac"
    (vox2 / "id00012" / "21Uxsk56VDQ").mkdir(parents=True)
    (vox2 / "id00012" / "21Uxsk56VDQ" / "00001.m4a").write_bytes(b"\x00\x00\x00\x20ftypM4A ")
    with pytest.raises(sources.SourceError, match="(?i)convert them first with ffmpeg"):
        sources.voxceleb(tmp_path / "vox2")
    assert main(["voxceleb", str(tmp_path / "vox2"), "--output", str(tmp_path / "v2.h5")]) == 2


def test_manifest_layout(tmp_path):
    _write_wav(tmp_path / "audio" / "a.wav", 0.2, 16000, 0)
    _write_wav(tmp_path / "audio" / "b.flac", 0.2, 8000, 1, fmt="FLAC")
    noise = _write_wav(tmp_path / "elsewhere" / "hum.wav", 0.2, 16000, 2)
    (tmp_path / "lists").mkdir()
    csv = tmp_path / "lists" / "train.csv"
    csv.write_text(
        "path,speaker,transcript,session\n"
        "../audio/b.flac,bob,hello there,s2\n"
        "../audio/a.wav,alice,,s1\n"
        f"{tmp_path / 'elsewhere' / 'hum.wav'},,,\n"
        "../audio/missing.wav,carol,,\n"
    )
    records = sources.manifest(csv)
    by_id = {r.utt_id: r for r in records}
    assert [r.utt_id for r in records] == sorted(by_id)
    assert by_id["../audio/a"].path == (tmp_path / "audio" / "a.wav").resolve()
    assert by_id["../audio/b"].transcript == "hello there" and by_id["../audio/b"].session == "s2"
    hum = next(r for r in records if r.path.name == "hum.wav")
    assert hum.speaker is None
    summary = prepare(records, tmp_path / "m.h5", workers=0, progress=False)
    assert [Path(p).name for p, _ in summary.skipped] == ["missing.wav"]
    assert "no such file" in summary.skipped[0][1]
    assert summary.resampled_from == {8000: 1} and summary.noise_clips == 1 and summary.speakers == 2
    corpus = Corpus(tmp_path / "m.h5")
    i = corpus.texts("path").index(str(hum.path))
    assert corpus.speaker[i] == -1
    np.testing.assert_array_equal(corpus.audio(i), noise[:, 0] / 32768.0)
    # explicit utt_id column; required columns; duplicates
    csv2 = tmp_path / "lists" / "ids.csv"
    csv2.write_text("utt_id,speaker,path\nx1,alice,../audio/a.wav\n")
    assert [(r.utt_id, r.speaker) for r in sources.manifest(csv2)] == [("x1", "alice")]
    bad = tmp_path / "lists" / "bad.csv"
    bad.write_text("file,spk\n../audio/a.wav,alice\n")
    with pytest.raises(sources.SourceError, match="path, speaker"):
        sources.manifest(bad)
    dup = tmp_path / "lists" / "dup.csv"
    dup.write_text("path,speaker\n../audio/a.wav,alice\n../audio/a.wav,alice\n")
    with pytest.raises(sources.SourceError, match="more than once"):
        sources.manifest(dup)


def test_folder_layout(tmp_path):
    _write_wav(tmp_path / "alice" / "day1" / "x.wav", 0.1, 16000, 0)
    _write_wav(tmp_path / "alice" / "y.flac", 0.1, 16000, 1, fmt="FLAC")
    _write_wav(tmp_path / "bob" / "z.wav", 0.1, 16000, 2)
    _write_wav(tmp_path / "loose.wav", 0.1, 16000, 3)
    (tmp_path / "bob" / "notes.txt").write_text("not audio")
    (tmp_path / "bob" / ".hidden.wav").write_bytes(b"")
    with pytest.warns(UserWarning, match="outside a speaker folder"):
        records = sources.folder(tmp_path)
    assert [(r.speaker, r.utt_id) for r in records] == [("alice", "alice/day1/x"), ("alice", "alice/y"), ("bob", "bob/z")]
    assert all(r.path.is_absolute() and r.transcript == "" and r.session == "" for r in records)


def test_toy_source_is_wired(tmp_path):
    out = tmp_path / "toy.h5"
    assert main(["toy", "--output", str(out), "--speakers", "3", "--utterances", "4", "--seed", "5",
                 "--sample-rate", "8000", "--features", "mfcc26", "--quiet"]) == 0
    corpus = Corpus(out)
    assert (len(corpus.speakers), len(corpus), corpus.sample_rate) == (3, 12, 8000)
    assert list(corpus.feature_configs) == ["mfcc26"]


def test_normalize_and_trim_silence(tmp_path):
    rate = 16000
    t = np.arange(rate // 2) / rate
    speech = (0.2 * np.sin(2 * np.pi * 220 * t) * 32767).astype(np.int16)
    quiet = np.zeros(rate, dtype=np.int16)  # 1 s of digital silence between two words
    (tmp_path / "src" / "amy").mkdir(parents=True)
    sf.write(tmp_path / "src" / "amy" / "gap.wav", np.concatenate([speech, quiet, speech]), rate, subtype="PCM_16")
    sf.write(tmp_path / "src" / "amy" / "plain.wav", speech, rate, subtype="PCM_16")
    records = sources.folder(tmp_path / "src")
    prepare(records, tmp_path / "plain.h5", workers=0, progress=False)
    prepare(records, tmp_path / "nt.h5", normalize=True, trim_silence=True, workers=0, progress=False)
    plain, nt = Corpus(tmp_path / "plain.h5"), Corpus(tmp_path / "nt.h5")
    assert plain.num_samples.tolist() == [2 * rate, rate // 2]
    assert nt.num_samples[0] < 2 * rate - rate // 2  # most of the gap is gone (100 ms margins stay)
    assert nt.num_samples[1] == rate // 2  # nothing to trim
    for i in range(2):
        assert np.abs(np.abs(nt.audio(i)).max() - 0.95) <= 1 / 32768
    assert np.abs(plain.audio(1)).max() == pytest.approx(0.2, abs=1e-3)
    assert (nt.settings["normalize"], nt.settings["trim"]) == (True, True)
    assert (plain.settings["normalize"], plain.settings["trim"]) == (False, False)


def test_speaker_names_and_settings_are_datasets_beyond_the_attribute_limit(tmp_path):
    """6,200 speakers with VoxCeleb-style ids: 80 KB of names as one JSON string, over HDF5 1.x's
    64 KiB attribute limit, so the names live in a dataset (issue 24)."""
    from speakerzoo.datamodules.corpus import CorpusWriter
    names = [f"id{i:05d}-voxceleb2-dev" for i in range(6200)]
    path = tmp_path / "many.h5"
    with CorpusWriter(path, sample_rate=8000, settings={"note": "x" * 70_000}) as writer:
        for i, name in enumerate(names):
            writer.add(np.full(40, i % 100, np.int16), speaker=name, utt_id=f"u{i}")
        writer.finish(progress=False)
    corpus = Corpus(path)
    assert corpus.speakers == names and corpus.settings["note"] == "x" * 70_000
    with h5py.File(path, "r") as h5:
        assert "speakers" not in h5.attrs and "settings" not in h5.attrs
        assert sum(len(n) for n in names) > 64 * 1024


def test_a_schema_1_corpus_with_json_attributes_is_still_read(tmp_path):
    import json

    from speakerzoo.datamodules.corpus import CorpusWriter
    path = tmp_path / "old.h5"
    with CorpusWriter(path, sample_rate=8000, settings={"source": "test"}) as writer:
        for i in range(12):
            writer.add(np.full(80, i, np.int16), speaker=f"s{i % 3}", utt_id=f"u{i}")
        writer.finish(progress=False)
    new = Corpus(path)
    with h5py.File(path, "r+") as h5:  # the layout speakerzoo wrote before schema 2
        h5.attrs["speakers"] = json.dumps(list(h5["speakers"].asstr()[:]))
        h5.attrs["settings"] = h5["settings"].asstr()[0]
        del h5["speakers"], h5["settings"]
        h5.attrs["schema_version"] = 1
    old = Corpus(path)
    assert old.speakers == new.speakers == ["s0", "s1", "s2"] and old.settings == new.settings
    assert old.settings["source"] == "test"
    np.testing.assert_array_equal(old.pcm(5), new.pcm(5))
