"""The enrolled-speaker store: ``speakerzoo enrol`` adds, replaces and removes speakers and
profiles in one file for one checkpoint; ``identify --store`` scores a speaker by its best
profile; a store of another checkpoint, a damaged store and an interrupted update are handled."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import pytest
import torch

from speakerzoo import SpeakerRecognizer
from speakerzoo.commands import enrol as enrol_cmd
from speakerzoo.commands import identify as identify_cmd
from speakerzoo.inference.bank import ProfileBank, SpeakerBank
from speakerzoo.inference.enrolment import EnrolError
from speakerzoo.inference.speaker_store import read_store


def wav(fsdd_root: Path, digit: int, speaker: str, index: int) -> str:
    return str(fsdd_root / "recordings" / f"{digit}_{speaker}_{index}.wav")


def run_json(module, capsys, *args) -> dict:
    code = module.main([*map(str, args), "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


def test_enrol_profiles_replace_remove_and_identify_by_the_best_profile(fsdd_tiny_ecapa, fsdd_root, tmp_path, capsys):
    ck, store = fsdd_tiny_ecapa, tmp_path / "speakers.h5"
    alice = [wav(fsdd_root, d, "jackson", 10) for d in (1, 2)]
    alice_phone = [wav(fsdd_root, d, "jackson", 11) for d in (3, 4, 5)]
    bob = [wav(fsdd_root, d, "nicolas", 10) for d in (1, 2)]
    made = run_json(enrol_cmd, capsys, store, "-c", ck, "-q", "--enrol", f"alice={','.join(alice)}",
                    "--enrol", f"bob={','.join(bob)}")
    assert made["created"] and made["speakers"] == {"alice": {"default": 2}, "bob": {"default": 2}}
    added = run_json(enrol_cmd, capsys, store, "-c", ck, "-q", "--enrol", f"alice={','.join(alice_phone)}",
                     "--profile", "phone")
    assert not added["created"] and added["speakers"]["alice"] == {"default": 2, "phone": 3}

    # a speaker scores its best profile: the maximum of the two centroids' scores
    rec = SpeakerRecognizer.from_pretrained(ck, device="cpu", progress=False)
    rec.enrol_store(store)
    assert isinstance(rec.enrolment.bank, ProfileBank)
    probe = wav(fsdd_root, 7, "jackson", 20)
    e = rec.embed_file(probe)
    by_profile = SpeakerBank.from_utterances({
        "default": torch.stack([rec.embed_file(p) for p in alice]),
        "phone": torch.stack([rec.embed_file(p) for p in alice_phone]),
    }).scores(e[None])[0]
    found = {c["speaker"]: c["score"] for c in
             run_json(identify_cmd, capsys, probe, "-c", ck, "--store", store, "-q")["results"][0]["candidates"]}
    assert found["alice"] == pytest.approx(float(by_profile.max()), abs=1e-6)

    replaced = run_json(enrol_cmd, capsys, store, "-c", ck, "-q", "--enrol", f"alice={alice[0]}", "--replace")
    assert replaced["speakers"]["alice"] == {"phone": 3, "default": 1}
    removed = run_json(enrol_cmd, capsys, store, "-c", ck, "-q", "--remove", "alice:phone", "--remove", "bob")
    assert removed["speakers"] == {"alice": {"default": 1}}
    listed = run_json(enrol_cmd, capsys, store, "-c", ck, "--list")
    assert listed["speakers"] == removed["speakers"] and not listed["written"]
    assert isinstance(read_store(store).bank, SpeakerBank)

    code = enrol_cmd.main([str(store), "-c", str(ck), "--remove", "carol"])
    assert code == 2 and "unknown speaker 'carol'" in capsys.readouterr().err


def test_a_store_round_trips_bitwise_and_is_refused_for_another_checkpoint(fsdd_tiny_ecapa, fsdd_root, tmp_path,
                                                                             capsys):
    rec = SpeakerRecognizer.from_pretrained(fsdd_tiny_ecapa, device="cpu", progress=False)
    rec.enrol("alice", [wav(fsdd_root, 1, "theo", 10), wav(fsdd_root, 2, "theo", 10)])
    rec.enrol("alice", [wav(fsdd_root, 3, "theo", 10)], profile="far")
    rec.enrol("bob", [wav(fsdd_root, 1, "lucas", 10)])
    path = rec.save_store(tmp_path / "s.h5")
    again = SpeakerRecognizer.from_pretrained(fsdd_tiny_ecapa, device="cpu", progress=False)
    again.enrol_store(path)
    assert again.enrolment.names == rec.enrolment.names
    assert again.enrolment.profile_list("alice") == ["default", "default", "far"]
    assert torch.equal(again.enrolment.bank.embeddings, rec.enrolment.bank.embeddings)

    with h5py.File(path, "a") as h5:
        h5.attrs["checkpoint_sha256"] = "0" * 64
    with pytest.raises(EnrolError, match="enrolled with another checkpoint"):
        again.enrol_store(path)
    code = identify_cmd.main([wav(fsdd_root, 7, "theo", 30), "-c", str(fsdd_tiny_ecapa), "--store", str(path)])
    assert code == 2 and f"{path} holds speakers enrolled with another checkpoint" in capsys.readouterr().err


def test_a_failed_update_keeps_the_previous_store_and_damage_is_named(fsdd_tiny_ecapa, fsdd_root, tmp_path, capsys,
                                                                       monkeypatch):
    store = tmp_path / "s.h5"
    assert enrol_cmd.main([str(store), "-c", str(fsdd_tiny_ecapa), "-q", "--enrol",
                           f"alice={wav(fsdd_root, 1, 'george', 10)}"]) == 0
    before = store.read_bytes()
    real = h5py.Group.create_dataset

    def failing(self, name, *args, **kwargs):
        if name == "profile":
            raise OSError("disk full")
        return real(self, name, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", failing)
    code = enrol_cmd.main([str(store), "-c", str(fsdd_tiny_ecapa), "-q", "--enrol", f"bob={wav(fsdd_root, 1, 'lucas', 10)}"])
    monkeypatch.undo()
    assert code == 2 and "disk full" in capsys.readouterr().err
    assert store.read_bytes() == before and list(tmp_path.iterdir()) == [store]  # no temporary left behind

    (tmp_path / "bad.h5").write_bytes(before[: len(before) // 3])
    code = identify_cmd.main([wav(fsdd_root, 7, "george", 30), "-c", str(fsdd_tiny_ecapa), "--store",
                              str(tmp_path / "bad.h5")])
    assert code == 2 and "bad.h5: not a readable speaker store" in capsys.readouterr().err


def test_identification_says_unknown_when_nobody_enrolled_passes(fsdd_tiny_ecapa, fsdd_root, tmp_path, capsys):
    from speakerzoo.inference.recognizer import UNKNOWN

    rec = SpeakerRecognizer.from_pretrained(fsdd_tiny_ecapa, device="cpu", progress=False)
    rec.enrol("alice", [wav(fsdd_root, d, "yweweler", 10) for d in (1, 2, 3)])
    rec.enrol("bob", [wav(fsdd_root, d, "lucas", 10) for d in (1, 2, 3)])
    probe = wav(fsdd_root, 8, "yweweler", 25)
    best = rec.identify(probe, top_k=1)[0]
    assert rec.who(probe, threshold=best.score - 1e-6) == best.speaker
    assert rec.who(probe, threshold=best.score + 1e-3) == UNKNOWN
    bare = SpeakerRecognizer(rec.model, checkpoint=None, progress=False)  # no stored threshold to decide by
    bare.model.eer_threshold = None
    bare.enrol("alice", [wav(fsdd_root, 1, "yweweler", 10)])
    assert bare.who(probe) is None
    store = rec.save_store(tmp_path / "s.h5")
    assert identify_cmd.main([probe, "-c", str(fsdd_tiny_ecapa), "--store", str(store), "--threshold", "0.999",
                              "-q"]) == 0
    assert "identified: unknown (no enrolled speaker reaches the threshold)" in capsys.readouterr().out


def test_a_store_changed_after_writing_fails_its_checksum(fsdd_tiny_ecapa, fsdd_root, tmp_path):
    rec = SpeakerRecognizer.from_pretrained(fsdd_tiny_ecapa, device="cpu", progress=False)
    rec.enrol("alice", [wav(fsdd_root, 1, "theo", 10)])
    path = rec.save_store(tmp_path / "s.h5")
    with h5py.File(path, "a") as h5:  # a name changed in place, its digest not
        digest = h5["speaker"].attrs["sha256"]
        del h5["speaker"]
        h5.create_dataset("speaker", data=["mallory"], dtype=h5py.string_dtype())
        h5["speaker"].attrs["sha256"] = digest
    with pytest.raises(EnrolError, match="s.h5 is damaged"):
        read_store(path)
