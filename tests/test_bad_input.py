"""Damaged and awkward input: what is skipped, what is fixed on the way, what stops preparation.

Truncated WAV files: libsndfile (soundfile) does not raise on a WAV whose header declares
more audio than the file holds; it returns the samples that are there (checked below, so
a change of libsndfile's behaviour shows up here). ``prepare`` skips such files with the
reason ``truncated`` (a damaged copy, see :mod:`speakerzoo.datamodules.prepare`), and keeps
WAVs written as a stream whose header size is the placeholder ``0xFFFFFFFF``.
"""

from __future__ import annotations

import hashlib
import os
import re
import runpy
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speakerzoo.audio import AudioError, load_audio
from speakerzoo.commands.prepare import main
from speakerzoo.datamodules import sources
from speakerzoo.datamodules.corpus import Corpus, CorpusError, CorpusWriter
from speakerzoo.datamodules.prepare import PrepareError, prepare
from speakerzoo.datamodules.toy import prepare_toy

RATE = 16000


def _pcm(seconds: float, rate: int, seed: int, channels: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(round(seconds * rate))
    t = np.arange(n) / rate
    cols = [0.25 * np.sin(2 * np.pi * (120 + 30 * seed + 50 * c) * t) + 0.05 * rng.standard_normal(n) for c in range(channels)]
    return np.clip(np.round(np.stack(cols, axis=1) * 32767), -32768, 32767).astype(np.int16)


def _wav(path: Path, seconds: float = 0.25, rate: int = RATE, seed: int = 0, channels: int = 1) -> np.ndarray:
    pcm = _pcm(seconds, rate, seed, channels)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, pcm, rate, subtype="PCM_16")
    return pcm


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def messy(tmp_path: Path) -> dict[str, Path]:
    """A speaker folder with good files and every kind of bad one."""
    root = tmp_path / "messy"
    files = {
        "a1": root / "alice" / "a1.wav", "a2": root / "alice" / "a2.wav", "a3": root / "alice" / "a3.wav",
        "b1": root / "bob" / "b1.wav", "b2": root / "bob" / "b2.wav",
        "empty": root / "bob" / "empty.wav", "text": root / "bob" / "notes.wav",
        "stereo": root / "carol" / "stereo.wav", "c2": root / "carol" / "c2.wav",
        "narrow": root / "dave" / "narrow.wav", "d2": root / "dave" / "d2.wav",
        "trunc": root / "erin" / "cut.wav", "e2": root / "erin" / "e2.wav",
    }
    for seed, key in enumerate(["a1", "a2", "a3", "b1", "b2", "c2", "d2", "trunc", "e2"]):
        _wav(files[key], seed=seed)
    _wav(files["stereo"], seed=11, channels=2)
    _wav(files["narrow"], rate=8000, seconds=0.5, seed=12)
    files["empty"].write_bytes(b"")
    files["text"].write_text("these are my notes, not a recording\n" * 20)
    _truncate(files["trunc"])
    return {"root": root, **files}


BAD = ("empty", "text", "trunc")


def test_soundfile_reads_a_truncated_wav_without_error(messy):
    full = _pcm(0.25, RATE, seed=7)  # what cut.wav held before it was cut
    data, rate = sf.read(messy["trunc"], dtype="int16")
    assert 0 < len(data) < len(full)  # libsndfile silently returns the part that is there
    np.testing.assert_array_equal(data, full[: len(data), 0])


def test_bad_files_are_skipped_with_their_reason(messy, tmp_path):
    records = sources.folder(messy["root"])
    assert len(records) == 13
    summary = prepare(records, tmp_path / "out.h5", workers=2, progress=False)
    reasons = dict(summary.skipped)
    assert set(reasons) == {str(messy[k].resolve()) for k in BAD}
    assert "empty" in reasons[str(messy["empty"].resolve())]
    assert "unreadable as audio" in reasons[str(messy["text"].resolve())]
    assert reasons[str(messy["trunc"].resolve())].startswith("truncated")
    corpus = Corpus(tmp_path / "out.h5")
    assert len(corpus) == 10 and summary.utterances == 10
    assert sorted(corpus.speakers) == ["alice", "bob", "carol", "dave", "erin"]
    assert [tuple(s) for s in corpus.settings["skipped"]] == summary.skipped
    assert corpus.settings["skipped_count"] == 3
    text = str(summary)
    assert "skipped          3 file(s)" in text and str(messy["text"].resolve()) in text
    assert "1 from 8000 Hz" in text and "1 file(s) mixed to mono" in text
    # erin kept one file: reported, not fatal
    assert summary.single_file_speakers == ["erin"]


def test_stereo_is_mixed_to_the_channel_mean(messy, tmp_path):
    records = [r for r in sources.folder(messy["root"]) if r.speaker == "carol"]
    summary = prepare(records, tmp_path / "c.h5", workers=0, progress=False)
    assert summary.stereo_mixed == 1
    corpus = Corpus(tmp_path / "c.h5")
    i = corpus.texts("path").index(str(messy["stereo"].resolve()))
    stereo = _pcm(0.25, RATE, seed=11, channels=2).astype(np.float64) / 32768.0
    assert not np.allclose(stereo[:, 0], stereo[:, 1])
    mean = stereo.mean(axis=1)
    got = corpus.audio(i)
    assert got.shape == mean.shape
    assert np.abs(got - mean).max() <= 0.5 / 32768 + 1e-9  # int16 rounding of the mean, nothing more


def test_mixed_sample_rates_are_stored_at_one_rate(messy, tmp_path):
    records = [r for r in sources.folder(messy["root"]) if r.speaker == "dave"]
    summary = prepare(records, tmp_path / "d.h5", sample_rate=16000, workers=0, progress=False)
    assert summary.resampled_from == {8000: 1}
    corpus = Corpus(tmp_path / "d.h5")
    assert corpus.sample_rate == 16000
    paths = corpus.texts("path")
    narrow, wide = paths.index(str(messy["narrow"].resolve())), paths.index(str(messy["d2"].resolve()))
    assert corpus.duration[narrow] == pytest.approx(0.5) and corpus.num_samples[narrow] == 8000
    assert corpus.duration[wide] == pytest.approx(0.25) and corpus.num_samples[wide] == 4000
    expected, rate = load_audio(messy["narrow"], 16000)
    assert rate == 8000
    assert np.abs(corpus.audio(narrow) - expected).max() <= 1 / 32768
    np.testing.assert_array_equal(corpus.audio(wide), _pcm(0.25, RATE, seed=6)[:, 0] / 32768.0)
    # and downwards: 16 kHz stored at 8 kHz
    summary = prepare(records, tmp_path / "d8.h5", sample_rate=8000, workers=0, progress=False)
    assert summary.resampled_from == {16000: 1}
    assert Corpus(tmp_path / "d8.h5").num_samples.tolist() == [2000, 4000]  # d2.wav, narrow.wav


def test_streamed_wav_with_placeholder_size_is_kept(tmp_path):
    path = tmp_path / "spk" / "streamed.wav"
    pcm = _wav(path, seed=3)
    data = bytearray(path.read_bytes())
    assert data[36:40] == b"data"
    data[4:8] = data[40:44] = struct.pack("<I", 0xFFFFFFFF)  # what a writer to a pipe leaves behind
    path.write_bytes(bytes(data))
    _wav(tmp_path / "spk" / "other.wav", seed=4)
    summary = prepare(sources.folder(tmp_path), tmp_path / "s.h5", workers=0, progress=False)
    assert summary.skipped == []
    corpus = Corpus(tmp_path / "s.h5")
    np.testing.assert_array_equal(corpus.audio(corpus.texts("path").index(str(path.resolve()))), pcm[:, 0] / 32768.0)


def test_strict_stops_at_the_first_bad_file(messy, tmp_path):
    out = tmp_path / "strict.h5"
    with pytest.raises(PrepareError) as err:
        prepare(sources.folder(messy["root"]), out, strict=True, workers=2, progress=False)
    message = str(err.value)
    assert str(messy["empty"].resolve()) in message  # bob/empty.wav comes before bob/notes.wav
    assert "notes.wav" not in message and "cut.wav" not in message
    assert not out.exists() and list(tmp_path.glob("*.tmp-*")) == []
    assert main(["folder", str(messy["root"]), "--output", str(out), "--strict", "--quiet"]) == 2


def test_a_failed_prepare_leaves_the_existing_output_alone(messy, tmp_path, capsys):
    out = tmp_path / "corpus.h5"
    good = [r for r in sources.folder(messy["root"]) if r.speaker == "alice"]
    prepare(good, out, workers=0, progress=False)
    before = _digest(out)
    # strict failure midway: the files of alice, bob, carol and dave are written before erin's cut one
    records = [r for r in sources.folder(messy["root"]) if r.path.name not in ("empty.wav", "notes.wav")]
    assert records[-2].path.name == "cut.wav"
    for workers in (0, 2):
        with pytest.raises(PrepareError, match="cut.wav"):
            prepare(records, out, strict=True, workers=workers, progress=False)
        assert _digest(out) == before
        assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.h5", "messy"]
    assert len(Corpus(out)) == 3


def test_ctrl_c_leaves_the_existing_output_alone(messy, tmp_path, monkeypatch, capsys):
    out = tmp_path / "corpus.h5"
    prepare([r for r in sources.folder(messy["root"]) if r.speaker == "bob"], out, workers=0, progress=False)
    before = _digest(out)
    add = CorpusWriter.add
    calls = []

    def interrupted_add(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return add(self, *args, **kwargs)

    monkeypatch.setattr(CorpusWriter, "add", interrupted_add)
    with pytest.raises(KeyboardInterrupt):
        prepare(sources.folder(messy["root"]), out, workers=2, progress=False)
    assert _digest(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["corpus.h5", "messy"]
    calls.clear()
    assert main(["folder", str(messy["root"]), "--output", str(out), "--quiet", "--workers", "0"]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert _digest(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["corpus.h5", "messy"]


def test_only_bad_files_is_an_error(messy, tmp_path, capsys):
    bad = [r for r in sources.folder(messy["root"]) if r.path.name in ("empty.wav", "notes.wav", "cut.wav")]
    with pytest.raises(PrepareError, match="all 3 files were unusable"):
        prepare(bad, tmp_path / "none.h5", workers=0, progress=False)
    assert list(tmp_path.glob("none.h5*")) == []


def test_missing_folder_is_a_clear_error(tmp_path, capsys):
    missing = tmp_path / "no" / "such" / "corpus"
    for importer in (sources.folder, sources.fsdd, sources.speech_commands, sources.librispeech, sources.voxceleb):
        with pytest.raises(sources.SourceError, match="no such folder") as err:
            importer(missing)
        assert str(missing) in str(err.value)
    with pytest.raises(sources.SourceError, match="no such manifest"):
        sources.manifest(tmp_path / "list.csv")
    for source in ("folder", "fsdd", "speech-commands", "librispeech", "voxceleb", "manifest"):
        assert main([source, str(missing), "--output", str(tmp_path / "x.h5")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(missing) in err and "Traceback" not in err, err
    assert not (tmp_path / "x.h5").exists()


def test_folder_without_audio_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "alice").mkdir()
    (tmp_path / "alice" / "readme.txt").write_text("nothing to hear")
    with pytest.raises(sources.SourceError, match="no audio files") as err:
        sources.folder(tmp_path)
    assert str(tmp_path) in str(err.value) and "<speaker>" in str(err.value)
    with pytest.raises(sources.SourceError, match=r"\{digit\}_\{speaker\}_\{index\}\.wav"):
        sources.fsdd(tmp_path)
    with pytest.raises(sources.SourceError, match="_nohash_"):
        sources.speech_commands(tmp_path)
    assert main(["librispeech", str(tmp_path), "--output", str(tmp_path / "x.h5")]) == 2
    assert "trans.txt" in capsys.readouterr().err


def test_truncated_corpus_file_is_refused(messy, tmp_path):
    out = tmp_path / "whole.h5"
    prepare(sources.folder(messy["root"]), out, workers=0, progress=False)
    assert len(Corpus(out)) == 10
    cut = tmp_path / "cut.h5"
    cut.write_bytes(out.read_bytes()[: out.stat().st_size // 2])
    with pytest.raises(CorpusError) as err:
        Corpus(cut)
    message = str(err.value)
    assert str(cut) in message and "truncated" in message and "prepare it again" in message.lower()


def test_bad_settings_fail_before_any_decoding(messy, tmp_path, capsys):
    records = sources.folder(messy["root"])
    with pytest.raises(PrepareError, match="unknown feature preset 'fbank81'"):
        prepare(records, tmp_path / "x.h5", features=["fbank81"], progress=False)
    with pytest.raises(PrepareError, match="waveform is always stored"):
        prepare(records, tmp_path / "x.h5", features=["waveform"], progress=False)
    with pytest.raises(PrepareError, match="split ratios"):
        prepare(records, tmp_path / "x.h5", ratios=(0, 0.5, 0.5), progress=False)
    with pytest.raises(PrepareError, match="is a folder"):
        prepare(records, tmp_path, progress=False)
    assert main(["folder", str(messy["root"]), "--output", str(tmp_path / "x.h5"), "--features", "nope"]) == 2
    assert "unknown feature preset" in capsys.readouterr().err
    assert main(["folder", str(messy["root"]), "--output", str(tmp_path / "x.h5"), "--split-ratios", "1", "-1", "0"]) == 2
    assert main(["folder", str(messy["root"])]) == 2  # --output is required
    assert "--output" in capsys.readouterr().err
    assert not (tmp_path / "x.h5").exists()


def test_help(capsys, monkeypatch):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for source in ("folder", "manifest", "fsdd", "speech-commands", "librispeech", "voxceleb", "toy"):
        assert f"speakerzoo prepare {source} " in text, source
    assert main(["speech-commands", "--help"]) == 0
    text = capsys.readouterr().out
    assert "--sample-rate" in text and "--strict" in text and "_silence_" in text
    # `python -m speakerzoo.commands.prepare` (run in this process: a new interpreter costs seconds)
    monkeypatch.setattr(sys, "argv", ["prepare", "fsdd", "--help"])
    monkeypatch.delitem(sys.modules, "speakerzoo.commands.prepare")  # as a fresh `-m` run; restored after
    with pytest.raises(SystemExit) as stop:
        runpy.run_module("speakerzoo.commands.prepare", run_name="__main__")
    assert stop.value.code == 0 and "{digit}_{speaker}_{index}.wav" in capsys.readouterr().out


# --------------------------------------------------------------------------- links and special files


def test_a_symlink_loop_lists_each_real_file_once_under_its_own_speaker(tmp_path, recwarn):
    root = tmp_path / "tree"
    real = {"alice/a1.wav": 0, "alice/a2.wav": 1, "alice/deep/a3.wav": 2, "bob/b1.wav": 3, "bob/b2.wav": 4}
    for name, seed in real.items():
        _wav(root / name, seed=seed)
    (root / "alice" / "loop").symlink_to("..")                  # back to the root: a loop
    (root / "alice" / "deep" / "up").symlink_to("../..")        # a loop two levels deep
    (root / "bob" / "alice_too").symlink_to("../alice")         # another way into alice
    (root / "bob" / "b3.wav").symlink_to("../alice/a1.wav")     # alice's clip under bob's name
    outside = tmp_path / "elsewhere" / "carol"                  # data linked in from outside: kept
    _wav(outside / "c1.wav", seed=5)
    (root / "carol").symlink_to(outside)
    records = sources.folder(root)
    got = sorted((r.speaker, r.path.relative_to(root).as_posix()) for r in records)
    assert got == sorted([(n.split("/")[0], n) for n in real] + [("carol", "carol/c1.wav")])
    left = [str(w.message) for w in recwarn if "left out" in str(w.message)]
    assert len(left) == 1 and "left out 4 link(s)" in left[0]
    summary = prepare(records, tmp_path / "out.h5", workers=0, progress=False)
    assert summary.utterances == 6 and summary.skipped == []


def test_a_fifo_named_like_audio_is_skipped_without_opening(messy, tmp_path):
    fifo = messy["root"] / "alice" / "stream.wav"
    os.mkfifo(fifo)
    # In a child process with a time limit: opening a FIFO blocks until a writer comes.
    out = tmp_path / "fifo.h5"
    proc = subprocess.run([sys.executable, "-m", "speakerzoo", "prepare", "folder", str(messy["root"]),
                           "--output", str(out), "--workers", "0", "--quiet"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    corpus = Corpus(out)
    skipped = dict(corpus.settings["skipped"])
    assert skipped[str(fifo.resolve())] == "not a regular file (a FIFO, device or socket); skipped without opening it"
    with pytest.raises(AudioError, match="stream.wav: not a regular file"):
        load_audio(fifo, RATE)  # what embed, verify and identify decode files with


# --------------------------------------------------------------------------- concurrent and killed runs


def _start_prepare(root: Path, output: Path) -> subprocess.Popen:
    """A `prepare` of Speech Commands (some seconds), started and waited for until it writes."""
    proc = subprocess.Popen([sys.executable, "-m", "speakerzoo", "prepare", "speech-commands", str(root),
                             "--output", str(output), "--workers", "1", "--features", "fbank80", "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(output.parent.glob(f"{output.name}.tmp-*")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "prepare wrote no temporary file"
        time.sleep(0.05)
    return proc


def test_a_second_writer_of_one_output_fails_at_once(messy, tmp_path, capsys):
    from speakerzoo.datamodules.corpus import CorpusWriter

    out = tmp_path / "shared.h5"
    with CorpusWriter(out, RATE):  # a run writing `out` now, in this process
        assert main(["folder", str(messy["root"]), "--output", str(out), "--workers", "0", "--quiet"]) == 2
        err = capsys.readouterr().err
        assert f"{out}: another speakerzoo run (pid {os.getpid()}) is writing this file now" in err
        proc = subprocess.run([sys.executable, "-m", "speakerzoo", "prepare", "folder", str(messy["root"]),
                               "--output", str(out), "--quiet"], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and "another speakerzoo run" in proc.stderr
    assert not out.exists()  # the first writer was aborted: nothing half-written, no lock left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["messy"]


def test_sigterm_cleans_up_and_kill_9_leaves_a_file_the_next_run_removes(speech_commands_root, tmp_path):
    out = tmp_path / "sc.h5"
    proc = _start_prepare(speech_commands_root, out)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert f"interrupted; {out} was left as it was" in err
    assert "Traceback" not in err and "BrokenPipe" not in err
    assert list(tmp_path.iterdir()) == []  # no temporary file, no lock

    proc = _start_prepare(speech_commands_root, out)
    proc.kill()
    proc.communicate(timeout=60)
    stale = list(tmp_path.glob("sc.h5.tmp-*"))
    assert len(stale) == 1  # nothing can clean up after kill -9 ...
    with pytest.warns(UserWarning, match=rf"removed {re.escape(str(stale[0]))} .*killed before it could clean up"):
        prepare_toy(out, speakers=3, utterances=2, progress=False)  # ... the next writer of the file does
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sc.h5"]


def test_an_output_that_is_one_of_the_inputs_is_refused_and_the_input_kept(messy, capsys):
    source = messy["a1"]
    before = source.read_bytes()
    assert main(["folder", str(messy["root"]), "--output", str(source), "--workers", "0", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"--output {source} is one of the input files" in err and "new file name" in err
    assert source.read_bytes() == before


# --------------------------------------------------------------------------- degenerate audio


@pytest.mark.parametrize("trim", [False, True])
def test_silent_and_too_short_clips_are_skipped_with_the_reason(messy, tmp_path, trim):
    root = messy["root"]
    sf.write(root / "alice" / "zeros.wav", np.zeros(RATE, dtype=np.int16), RATE)         # 1 s of digital silence
    sf.write(root / "bob" / "hiss.wav", (_pcm(1.0, RATE, seed=3) // 2000).astype(np.int16), RATE)  # ~ -70 dBFS
    _wav(root / "carol" / "blip.wav", seconds=0.05, seed=4)                                # 50 ms
    sf.write(root / "dave" / "one.wav", np.array([[12000]], dtype=np.int16), RATE)        # one sample
    pcm = _pcm(0.5, RATE, seed=6)
    sf.write(root / "erin" / "inverted.wav", np.concatenate([pcm, -pcm], axis=1), RATE)   # L = -R
    summary = prepare(sources.folder(root), tmp_path / "out.h5", workers=0, trim_silence=trim, progress=False)
    reasons = {Path(p).name: r for p, r in summary.skipped}
    assert reasons["zeros.wav"].startswith("silent: its loudest 25 ms is at -inf dBFS")
    assert reasons["hiss.wav"].startswith("silent:")
    assert reasons["blip.wav"].startswith("too short: 0.050 s") and reasons["one.wav"].startswith("too short")
    assert reasons["inverted.wav"].startswith("silent once its 2 channels are mixed to mono")
    corpus = Corpus(tmp_path / "out.h5")
    shortest = min(len(corpus.audio(i)) for i in range(len(corpus)))
    assert shortest >= 0.1 * RATE
    assert len(corpus) == summary.utterances == 10  # messy's 10 good clips, none of the five above


def test_a_float_wav_above_full_scale_is_scaled_not_clipped(tmp_path):
    t = np.arange(RATE) / RATE
    loud = (1.5 * np.sin(2 * np.pi * 180 * t) * np.hanning(RATE)).astype(np.float32)  # peaks at 1.5
    _wav(tmp_path / "src" / "alice" / "quiet.wav", seconds=1.0, seed=1)
    sf.write(tmp_path / "src" / "alice" / "loud.wav", loud, RATE, subtype="FLOAT")
    summary = prepare(sources.folder(tmp_path / "src"), tmp_path / "out.h5", workers=0, progress=False)
    assert summary.scaled_to_full_scale == 1 and "1 file(s) scaled down to full scale" in str(summary)
    corpus = Corpus(tmp_path / "out.h5")
    stored = corpus.audio(corpus.texts("utt_id").index("alice/loud"))
    assert np.abs(stored).max() <= 1.0
    # the shape of the wave is kept (no flattened peaks): the stored clip is the original, scaled
    np.testing.assert_allclose(stored * (1.5 / np.abs(stored).max()), loud, atol=1e-3)  # clipping: off by 0.5


@pytest.mark.parametrize("kind", ["utf16", "huge_cell", "latin1"])
def test_unreadable_manifests_are_named_with_the_fix(messy, tmp_path, kind, capsys):
    csv_path = tmp_path / f"{kind}.csv"
    rows = f"path,speaker\n{messy['a1']},alice\n{messy['b1']},bob\n"
    if kind == "utf16":
        csv_path.write_text(rows, encoding="utf-16")
    elif kind == "huge_cell":
        csv_path.write_text(rows + '"' + "x" * 200_000 + '",carol\n')  # csv's field limit is 131,072
    else:
        csv_path.write_bytes(rows.encode() + "caf\u00e9.wav,d\u00e9sir\u00e9e\n".encode("latin-1"))
    assert main(["manifest", str(csv_path), "--output", str(tmp_path / "out.h5"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert str(csv_path) in err and "Traceback" not in err
    assert {"utf16": "UTF-16 text", "huge_cell": "not a readable CSV manifest", "latin1": "not UTF-8 text"}[kind] in err


# --------------------------------------------------------------------------- damaged files


def test_a_damaged_corpus_is_an_error_not_other_audio(fsdd_root, tmp_path):
    # 1 MB zeroed in the middle of a real corpus used to change 15 utterances silently.
    records = [r for r in sources.fsdd(fsdd_root) if r.speaker in ("george", "jackson")]
    prepare(records, tmp_path / "fsdd.h5", sample_rate=8000, workers=0, progress=False)
    damaged = tmp_path / "damaged.h5"
    data = bytearray((tmp_path / "fsdd.h5").read_bytes())
    middle = len(data) // 2
    data[middle: middle + (1 << 20)] = bytes(1 << 20)
    damaged.write_bytes(bytes(data))
    good, bad = Corpus(tmp_path / "fsdd.h5"), Corpus(damaged)
    failures = []
    for i in range(len(good)):
        try:
            assert np.array_equal(bad.pcm(i), good.pcm(i)), f"utterance {i} differs without an error"
        except CorpusError as error:
            failures.append(str(error))
    assert failures, "the zeroed block hit no utterance"
    assert f"{damaged} is damaged: the audio of utterance" in failures[0] and "fails its checksum" in failures[0]


def test_a_damaged_text_list_is_an_error(messy, tmp_path):
    out = tmp_path / "c.h5"
    prepare(sources.folder(messy["root"]), out, workers=0, progress=False)
    import h5py

    with h5py.File(out, "r+") as h5:  # what a bit flip in the strings heap does: another name
        ids = [s.decode() for s in h5["utt_id"][:]]
        h5["utt_id"][0] = ids[0][::-1]
    with pytest.raises(CorpusError, match=r"c\.h5 is damaged: its utt_id list fails its checksum"):
        Corpus(out).texts("utt_id")
    assert Corpus(out).texts("path")  # the other lists are intact
