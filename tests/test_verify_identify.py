"""`speakerzoo verify` and `speakerzoo identify`, run in-process on real FSDD recordings with a tiny ECAPA
(dropout 0.3) trained briefly on 4 utterances per digit and speaker and saved as a Lightning checkpoint.

Enrolment and test files are other FSDD recordings (index 40-49) than the training ones (0-3)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import lightning
import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F

from speakerzoo.commands import embed as embed_cmd
from speakerzoo.inference import recognizer as recognizer_module
from speakerzoo.commands import identify as identify_cmd
from speakerzoo.commands import verify as verify_cmd
from speakerzoo.embeddings import EmbeddingFile, EmbeddingWriter
from speakerzoo.zoo import ECAPA
from speakerzoo.inference.segments import segment_bounds

FSDD = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fsdd"
SPEAKERS = ["george", "jackson", "lucas", "nicolas", "theo", "yweweler"]
TINY = dict(channels=[32, 32, 32, 32, 96], embedding_dim=32, attention_channels=16, se_channels=16)


def rec(digit: int, speaker: str, n: int) -> str:
    return str(FSDD / "recordings" / f"{digit}_{speaker}_{n}.wav")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _trainer(**kw) -> lightning.Trainer:
    return lightning.Trainer(use_distributed_sampler=False, logger=False, enable_checkpointing=False, accelerator="cpu",
                             enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                             limit_val_batches=0, **kw)


@pytest.fixture(scope="module")
def checkpoint(fsdd_tiny_ecapa) -> Path:
    return fsdd_tiny_ecapa


@pytest.fixture(scope="module")
def plain_checkpoint(tmp_path_factory, checkpoint) -> Path:
    """An (untrained) ECAPA without dropout, saved by Lightning without training."""
    torch.manual_seed(0)
    model = ECAPA(num_speakers=0, **TINY)
    trainer = _trainer(max_steps=1)
    trainer.strategy.connect(model)
    path = tmp_path_factory.mktemp("plain") / "plain.ckpt"
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def speaker_dir(tmp_path_factory, checkpoint) -> Path:
    """<speaker>/<file>.wav: two held-out recordings per speaker."""
    root = tmp_path_factory.mktemp("speakers")
    for s in SPEAKERS:
        (root / s).mkdir()
        for d, n in ((1, 40), (7, 41)):
            shutil.copy(rec(d, s, n), root / s)
    return root


def run(module, args, capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    code = module.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def run_json(module, args, capsys) -> dict:
    code, out, err = run(module, [*args, "--json", "--quiet"], capsys)
    assert code == 0, err
    return json.loads(out)


# ----------------------------------------------------------------------------- verify


def test_a_file_against_itself_scores_one_and_is_accepted(checkpoint, capsys):
    code, out, err = run(verify_cmd, ["-c", checkpoint, rec(5, "lucas", 42), rec(5, "lucas", 42), "--threshold", 0.5],
                         capsys)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[-1] == "ACCEPT" and "--threshold" in out
    result = run_json(verify_cmd, ["-c", checkpoint, rec(5, "lucas", 42), rec(5, "lucas", 42), "--threshold", 0.5], capsys)
    (trial,) = result["trials"]
    assert trial["score"] == pytest.approx(1.0, abs=1e-5) and trial["decision"] == "ACCEPT" and result["mode"] == "pair"


def test_pair_scores_are_cosines_of_speakerzoo_embed_outputs(checkpoint, speaker_dir, tmp_path, capsys):
    out = tmp_path / "emb.h5"
    code, _, err = run(embed_cmd, [speaker_dir, "--checkpoint", checkpoint, "--output", out, "--quiet"], capsys)
    assert code == 0, err
    emb = EmbeddingFile(out)
    row = {Path(p).name: i for i, p in enumerate(emb.paths)}
    pairs = [("1_george_40.wav", "7_george_41.wav"), ("1_george_40.wav", "1_theo_40.wav"),
             ("7_yweweler_41.wav", "1_lucas_40.wav")]
    for a, b in pairs:
        result = run_json(verify_cmd, ["-c", checkpoint, *(speaker_dir / f.split("_")[1] / f for f in (a, b))], capsys)
        expected = float(F.cosine_similarity(emb.embedding[row[a]], emb.embedding[row[b]], dim=0))
        assert result["trials"][0]["score"] == pytest.approx(expected, abs=2e-6)
        assert result["threshold"] is None and result["trials"][0]["decision"] is None


def test_same_speaker_scores_higher_than_different_speakers(checkpoint, speaker_dir, capsys):
    tests = [rec(d, s, 45) for s in SPEAKERS for d in (0, 3, 8)]
    result = run_json(verify_cmd, ["-c", checkpoint, "--enrol-dir", speaker_dir, *tests], capsys)
    assert result["mode"] == "bank" and result["enrolled"] == {s: 2 for s in SPEAKERS}
    assert len(result["trials"]) == len(tests) * len(SPEAKERS)
    same = [t["score"] for t in result["trials"] if Path(t["test"]).name.split("_")[1] == t["speaker"]]
    diff = [t["score"] for t in result["trials"] if Path(t["test"]).name.split("_")[1] != t["speaker"]]
    assert len(same) == len(tests)
    assert np.mean(same) > np.mean(diff) + 0.2, (np.mean(same), np.mean(diff))


def test_claimed_speaker_threshold_from_the_checkpoint_and_without_one(checkpoint, monkeypatch, capsys):
    enrol = ["--enrol", f"nicolas={rec(2, 'nicolas', 40)},{rec(4, 'nicolas', 41)}", "--enrol", f"theo={rec(2, 'theo', 40)}"]
    code, out, err = run(verify_cmd, ["-c", checkpoint, *enrol, "--speaker", "nicolas", rec(9, "nicolas", 47)], capsys)
    assert code == 0, err
    assert "no decision" in out and "--threshold" in out and "ACCEPT" not in out and "REJECT" not in out
    assert "speaker    nicolas (2 enrolment utterance(s))" in out

    load = recognizer_module.load_model

    def with_threshold(*args, **kw):
        model = load(*args, **kw)
        model.eer_threshold = -1.0  # what the lead's base class restores from a validated checkpoint
        return model

    monkeypatch.setattr(recognizer_module, "load_model", with_threshold)
    code, out, err = run(verify_cmd, ["-c", checkpoint, *enrol, "--speaker", "theo", rec(9, "nicolas", 47)], capsys)
    assert code == 0, err
    assert "validation EER threshold stored in the checkpoint" in out and out.strip().endswith("ACCEPT")
    result = run_json(verify_cmd, ["-c", checkpoint, *enrol, "--speaker", "theo", "--threshold", 1.01,
                                   rec(9, "nicolas", 47)], capsys)
    assert result["threshold"] == 1.01 and result["threshold_source"] == "--threshold"
    assert [t["decision"] for t in result["trials"]] == ["REJECT"]


def test_mc_passes_give_a_reproducible_spread(checkpoint, plain_checkpoint, capsys):
    args = ["-c", checkpoint, rec(6, "jackson", 40), rec(6, "jackson", 44), "--mc-passes", 6, "--threshold", 0.3]
    first, again = run_json(verify_cmd, args, capsys), run_json(verify_cmd, args, capsys)
    other = run_json(verify_cmd, [*args, "--seed", 1], capsys)
    assert first == again and first["trials"][0]["score_std"] > 0 and first["mc_passes"] == 6
    assert other["trials"][0]["score"] != first["trials"][0]["score"]
    code, out, _ = run(verify_cmd, args[:-2], capsys)
    assert code == 0 and "± " in out and "6 MC-dropout passes" in out
    code, _, err = run(verify_cmd, ["-c", plain_checkpoint, rec(6, "jackson", 40), rec(6, "jackson", 44),
                                    "--mc-passes", 4], capsys)
    assert code == 2 and "MC dropout needs dropout layers; ECAPA" in err


def test_long_recordings_are_embedded_from_segments_and_odd_audio_is_conditioned(checkpoint, tmp_path, capsys):
    # a 3-4 s recording of one speaker, written as stereo at 22.05 kHz
    wave = np.concatenate([sf.read(rec(d, "theo", 46), dtype="float32")[0] for d in range(10)])
    long_8k = tmp_path / "theo_long.wav"
    sf.write(long_8k, wave, 8000)
    import torchaudio  # resample as a different device would have recorded it

    stereo = torchaudio.functional.resample(torch.from_numpy(wave), 8000, 22050).numpy()
    odd = tmp_path / "theo_long_stereo_22k.wav"
    sf.write(odd, np.stack([stereo, 0.5 * stereo], axis=1), 22050)
    enrol = ["--enrol", f"theo={rec(1, 'theo', 40)},{rec(2, 'theo', 41)}", "--enrol", f"lucas={rec(1, 'lucas', 40)}"]
    result = run_json(verify_cmd, ["-c", checkpoint, *enrol, long_8k, "--segment-seconds", 1.0, "--segment-hop", 0.5],
                      capsys)
    n = len(segment_bounds(2 * len(wave), 16000, 8000))
    assert [t["segments"] for t in result["trials"]] == [n, n] and n > 4
    scores = {t["speaker"]: t["score"] for t in result["trials"]}
    assert scores["theo"] > scores["lucas"]
    pair = run_json(verify_cmd, ["-c", checkpoint, long_8k, odd], capsys)
    assert pair["trials"][0]["score"] > 0.95  # the same speech, other rate and channels


# ----------------------------------------------------------------------------- identify


def test_identify_ranks_the_enrolled_speaker_first(checkpoint, speaker_dir, capsys):
    tests = [rec(1, s, 40) for s in SPEAKERS]  # the enrolled files themselves
    enrol = [a for s, t in zip(SPEAKERS, tests) for a in ("--enrol", f"{s}={t}")]
    result = run_json(identify_cmd, ["-c", checkpoint, *enrol, "--top-k", 3, *tests], capsys)
    assert result["mode"] == "enrolled" and result["top_k"] == 3 and result["speakers"] == 6
    for speaker, r in zip(SPEAKERS, result["results"]):
        cands = r["candidates"]
        assert [c["rank"] for c in cands] == [1, 2, 3]
        assert cands[0]["speaker"] == speaker and cands[0]["score"] == pytest.approx(1.0, abs=1e-5)
        scores = [c["score"] for c in cands]
        assert scores == sorted(scores, reverse=True)
    clamped = run_json(identify_cmd, ["-c", checkpoint, "--enrol-dir", speaker_dir, "--top-k", 50, tests[0]], capsys)
    assert clamped["top_k"] == 6 and len(clamped["results"][0]["candidates"]) == 6
    code, out, err = run(identify_cmd, ["-c", checkpoint, "--enrol-dir", speaker_dir, "--top-k", 2, "--mc-passes", 4,
                                        *tests[:2]], capsys)
    assert code == 0, err
    rows = [line for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert len(rows) == 4 and all(" ± " in row for row in rows)


def test_enrolment_from_an_embeddings_file_equals_enrolment_from_audio(checkpoint, speaker_dir, tmp_path, capsys):
    emb = tmp_path / "speakers.h5"
    assert run(embed_cmd, [speaker_dir, "--checkpoint", checkpoint, "--output", emb, "--quiet"], capsys)[0] == 0
    tests = [rec(4, "george", 48), rec(4, "yweweler", 48)]
    from_audio = run_json(identify_cmd, ["-c", checkpoint, "--enrol-dir", speaker_dir, "--top-k", 6, *tests], capsys)
    from_file = run_json(identify_cmd, ["-c", checkpoint, "--enrol-embeddings", emb, "--top-k", 6, *tests], capsys)
    for a, b in zip(from_audio["results"], from_file["results"]):
        assert [c["speaker"] for c in a["candidates"]] == [c["speaker"] for c in b["candidates"]]
        assert [c["score"] for c in a["candidates"]] == pytest.approx([c["score"] for c in b["candidates"]], abs=1e-5)
    assert from_file["enrolled"] == {s: 2 for s in SPEAKERS}


def test_closed_set_identification_with_the_head(checkpoint, capsys):
    code, _, err = run(identify_cmd, ["-c", checkpoint, rec(3, "lucas", 44)], capsys)
    assert code == 2 and "--closed-set" in err and "6 training speakers" in err
    result = run_json(identify_cmd, ["-c", checkpoint, "--closed-set", "--top-k", 6, rec(3, "lucas", 44)], capsys)
    cands = result["results"][0]["candidates"]
    assert result["mode"] == "closed-set" and sorted(c["speaker"] for c in cands) == SPEAKERS
    assert sum(c["score"] for c in cands) == pytest.approx(1.0, abs=1e-5)
    assert [c["score"] for c in cands] == sorted((c["score"] for c in cands), reverse=True)
    mc = run_json(identify_cmd, ["-c", checkpoint, "--closed-set", "--top-k", 2, "--mc-passes", 4, rec(3, "lucas", 44)],
                  capsys)
    assert len(mc["results"][0]["candidates"]) == 2 and mc["results"][0]["candidates"][0]["score_std"] > 0


# ----------------------------------------------------------------------------- bad input


def test_bad_inputs_name_the_file_and_the_fix(checkpoint, plain_checkpoint, speaker_dir, tmp_path, capsys):
    good = rec(0, "george", 42)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    silent = tmp_path / "no_samples.wav"
    sf.write(silent, np.zeros(0, dtype=np.float32), 8000)
    tiny = tmp_path / "tiny.wav"
    sf.write(tiny, np.full(20, 0.3, dtype=np.float32), 16000)  # loud, but 20 samples
    lonely = tmp_path / "dir"
    shutil.copytree(speaker_dir, lonely)
    (lonely / "carol").mkdir()
    other_dim = tmp_path / "other_dim.h5"
    with EmbeddingWriter(other_dim) as w:
        w.add(torch.randn(2, 8), ["a", "b"], ["alice", "bob"], ["a.wav", "b.wav"])
        w.finish({"model_class": "speakerzoo.zoo.ecapa.ECAPA"})
    other_model = tmp_path / "other_model.h5"
    assert run(embed_cmd, [speaker_dir, "--checkpoint", plain_checkpoint, "--output", other_model, "-q"], capsys)[0] == 0
    cases = [
        (verify_cmd, [tmp_path / "missing.wav", good], ["missing.wav", "no such file", "enrolment file"]),
        (verify_cmd, [good, empty], ["empty.wav", "empty file", "test file"]),
        (verify_cmd, [good, silent], ["no_samples.wav", "no samples"]),
        (verify_cmd, [good, tiny], ["tiny.wav", "too short for the model"]),
        (verify_cmd, [good], ["give two files"]),
        (verify_cmd, ["--enrol", "alice=", good], ["'alice' has no files", "--enrol alice=FILE"]),
        (verify_cmd, ["--enrol", f"alice={good}", "--speaker", "bob", good], ["'bob' is not enrolled", "alice"]),
        (identify_cmd, ["--enrol-dir", lonely, good], ["carol", "no audio files", "remove the folder"]),
        (identify_cmd, ["--enrol-embeddings", other_dim, good], ["other_dim.h5", "8-d", "32-d", "speakerzoo embed"]),
        (identify_cmd, ["--enrol-embeddings", other_model, good], ["other_model.h5", "another checkpoint",
                                                                     "speakerzoo embed SPEAKERS_DIR --checkpoint"]),
        (identify_cmd, ["--enrol", f"alice={empty}", good], ["empty.wav", "speaker 'alice'"]),
        (identify_cmd, ["--enrol-dir", speaker_dir, "--closed-set", good], ["--closed-set"]),
    ]
    for module, args, words in cases:
        code, out, err = run(module, ["-c", checkpoint, *args], capsys)
        assert code == 2, (args, out)
        for word in words:
            assert word in err, (word, err)


def test_help_has_examples(capsys):
    for module in (verify_cmd, identify_cmd):
        code, out, _ = run(module, ["--help"], capsys)
        assert code == 0 and "examples:" in out and "--mc-passes" in out and "--enrol-dir" in out


def test_silence_is_refused_not_verified_as_one_speaker(checkpoint, tmp_path, capsys):
    # Two all-zero recordings (other lengths, other rates) used to give score 1.0000 ACCEPT.
    zeros_a, zeros_b = tmp_path / "zeros_a.wav", tmp_path / "zeros_b.flac"
    sf.write(zeros_a, np.zeros(16000, dtype=np.float32), 16000)
    sf.write(zeros_b, np.zeros(20000, dtype=np.float32), 8000)
    code, out, err = run(verify_cmd, ["-c", checkpoint, zeros_a, zeros_b], capsys)
    assert code == 2 and "ACCEPT" not in out
    assert "zeros_a.wav: silent: its loudest 25 ms is at -inf dBFS" in err
    # A real recording with its channels cancelling (L = -R) mixes to silence: said so.
    speech, rate = sf.read(rec(0, "george", 42), dtype="float32")
    cancelling = tmp_path / "cancelling.wav"
    sf.write(cancelling, np.stack([speech, -speech], axis=1), rate)
    code, out, err = run(verify_cmd, ["-c", checkpoint, rec(0, "george", 43), cancelling], capsys)
    assert code == 2 and "cancelling.wav: silent once its 2 channels are mixed to mono" in err
    assert "keep one channel" in err
    # The same recording in one channel, or quiet (-45 dBFS loudest frame, as FSDD's quietest), is speech.
    quiet = tmp_path / "quiet.wav"
    sf.write(quiet, speech / np.abs(speech).max() * 10 ** (-40 / 20), rate)
    code, out, err = run(verify_cmd, ["-c", checkpoint, rec(0, "george", 43), quiet], capsys)
    assert code == 0, err
