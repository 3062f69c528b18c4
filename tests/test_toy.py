"""The synthetic toy corpus: deterministic, the requested shape, and speaker identity in the signal."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch

from speakerzoo.datamodules.corpus import Corpus
from speakerzoo.datamodules.toy import GENERATOR, prepare_toy
from speakerzoo.features import Frontend

SPEAKERS, UTTERANCES = 12, 6


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    return {
        "a": prepare_toy(root / "a.h5", SPEAKERS, UTTERANCES, seed=0, progress=False),
        "b": prepare_toy(root / "b.h5", SPEAKERS, UTTERANCES, seed=0, progress=False),
        "other": prepare_toy(root / "other.h5", SPEAKERS, UTTERANCES, seed=1, progress=False),
    }


def _read(path):
    with h5py.File(path, "r") as h5:
        data = {name: h5[name][:] for name in ("audio", "offsets", "speaker", "utt_id", "transcript", "duration")}
        data["splits"] = {m: {p: h5[f"splits/{m}/{p}"][:] for p in ("train", "val", "test")}
                          for m in ("speaker", "utterance")}
        data["pairs"] = h5["trials/speaker/val/pairs"][:]
        attrs = {**dict(h5.attrs), "speakers": list(h5["speakers"].asstr()[:]), "settings": h5["settings"].asstr()[0]}
    return data, attrs


def test_same_seed_gives_identical_files(toy):
    a, attrs_a = _read(toy["a"])
    b, attrs_b = _read(toy["b"])
    assert a["audio"].dtype == np.int16
    assert a["audio"].tobytes() == b["audio"].tobytes()  # byte for byte
    for key in ("offsets", "speaker", "utt_id", "transcript", "duration", "pairs"):
        np.testing.assert_array_equal(a[key], b[key])
    for mode in a["splits"]:
        for part in a["splits"][mode]:
            np.testing.assert_array_equal(a["splits"][mode][part], b["splits"][mode][part])
    assert attrs_a["speakers"] == attrs_b["speakers"]
    assert attrs_a["settings"] == attrs_b["settings"]


def test_other_seed_differs(toy):
    a, attrs_a = _read(toy["a"])
    o, _ = _read(toy["other"])
    n = min(len(a["audio"]), len(o["audio"]))
    assert not np.array_equal(a["audio"][:n], o["audio"][:n])
    assert list(a["transcript"]) != list(o["transcript"])
    # the voices themselves differ, not only the content
    voices_a = json.loads(attrs_a["settings"])["voices"]
    voices_o = json.loads(_read(toy["other"])[1]["settings"])["voices"]
    assert [v["f0"] for v in voices_a] != [v["f0"] for v in voices_o]


def test_shape_names_durations_and_settings(toy):
    c = Corpus(toy["a"])
    assert len(c.speakers) == SPEAKERS and len(c) == SPEAKERS * UTTERANCES
    assert c.speakers == [f"toy{i:02d}" for i in range(SPEAKERS)]
    assert np.bincount(c.speaker).tolist() == [UTTERANCES] * SPEAKERS
    assert c.sample_rate == 16000
    assert c.duration.min() >= 1.5 and c.duration.max() <= 3.0
    assert c.duration.std() > 0.1  # really varied
    texts = c.texts("transcript")
    assert all(t and set(t) <= set("abcdefghijklmnopqrstuvwxyz ") for t in texts)
    assert len(set(texts)) == len(texts)
    assert c.settings["generator"] == GENERATOR
    assert c.settings["seed"] == 0 and c.settings["speakers"] == SPEAKERS
    assert len(c.settings["voices"]) == SPEAKERS
    peak = max(np.abs(c.audio(i)).max() for i in range(len(c)))
    assert 0.05 < peak <= 1.0


def test_identity_is_in_the_voice_not_in_the_level(toy):
    """Nearest speaker centroid of mean MFCCs on held-out utterances: far above chance;
    the same with the utterance level alone: about chance (loudness is equalised)."""
    c = Corpus(toy["a"])
    frontend = Frontend("mfcc26", c.sample_rate)
    mfcc, level = [], []
    for i in range(len(c)):
        wave = torch.from_numpy(c.audio(i))
        feats, frames = frontend(wave[None])
        mfcc.append(feats[0, : frames[0], 1:].mean(0).numpy())  # c0 left out: it is the level
        level.append([np.log(np.sqrt(np.mean(c.audio(i) ** 2)))])
    spk = c.speaker
    held_out = (np.arange(len(c)) % UTTERANCES) >= 4  # 2 of 6 utterances per speaker

    def accuracy(x):
        x = (x - x.mean(0)) / x.std(0)
        centroids = np.stack([x[~held_out & (spk == s)].mean(0) for s in range(SPEAKERS)])
        dist = ((x[held_out][:, None] - centroids[None]) ** 2).sum(-1)
        return float((dist.argmin(1) == spk[held_out]).mean())

    chance = 1 / SPEAKERS
    assert accuracy(np.stack(mfcc)) >= 0.5, "speaker identity is not in the spectrum"
    assert accuracy(np.asarray(level)) <= chance + 0.25, "the utterance level gives the speaker away"


def test_refuses_too_few_speakers(tmp_path):
    with pytest.raises(ValueError, match="at least 2 speakers"):
        prepare_toy(tmp_path / "x.h5", speakers=1, utterances=3, progress=False)
    assert not (tmp_path / "x.h5").exists()
