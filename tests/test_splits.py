"""Splits and trials on label arrays (the corpus tests check them on the real corpora)."""

import numpy as np

from speakerzoo.datamodules.splits import (
    group_by_speaker,
    identification_width,
    make_trials,
    split_by_speaker,
    split_by_utterance,
)


def test_small_speakers_feed_val_and_test_alike():
    rng = np.random.default_rng(1)
    speaker = np.repeat(np.arange(200), rng.integers(3, 9, 200))
    parts = split_by_utterance(speaker, seed=0)
    n_val, n_test = len(parts["val"]), len(parts["test"])
    assert abs(n_val - n_test) < 0.25 * (n_val + n_test) / 2, (n_val, n_test)
    # every speaker keeps training data, parts are disjoint and cover every utterance
    assert set(speaker[parts["train"]]) == set(range(200))
    joined = np.concatenate(list(parts.values()))
    assert len(joined) == len(np.unique(joined)) == len(speaker)


def test_speaker_split_is_disjoint_and_seeded():
    speaker = np.repeat(np.arange(40), 5)
    a, b, c = split_by_speaker(speaker, seed=0), split_by_speaker(speaker, seed=0), split_by_speaker(speaker, seed=1)
    assert all(np.array_equal(a[p], b[p]) for p in a)
    assert any(not np.array_equal(a[p], c[p]) for p in a)
    spk = {p: set(speaker[i]) for p, i in a.items()}
    assert not (spk["train"] & spk["val"]) and not (spk["train"] & spk["test"]) and not (spk["val"] & spk["test"])
    assert [len(spk[p]) for p in ("train", "val", "test")] == [28, 6, 6]


def test_trials_labels_and_negatives():
    speaker = np.repeat(np.arange(6), 4)
    idx = np.arange(len(speaker))
    pairs, ident = make_trials(speaker, idx, seed=0, negatives=9)
    assert pairs.shape == (2 * len(idx), 3) and ident.shape == (len(idx), 11)
    assert np.array_equal(pairs[:, 2], (speaker[pairs[:, 0]] == speaker[pairs[:, 1]]).astype(int))
    assert (pairs[:, 0] != pairs[:, 1]).all()
    assert (speaker[ident[:, 1]] == speaker[ident[:, 0]]).all() and (ident[:, 1] != ident[:, 0]).all()
    assert (speaker[ident[:, 2:]] != speaker[ident[:, :1]]).all()
    assert make_trials(np.zeros(5, int), np.arange(5))[0].shape == (0, 3)  # one speaker: no trials


def test_trial_rows_never_repeat_a_negative_and_shorten_in_small_parts():
    # 3 speakers x 4: an anchor has only 8 other-speaker utterances, fewer than the 99 asked for.
    speaker = np.repeat(np.arange(3), 4)
    pairs, ident = make_trials(speaker, np.arange(12), seed=0)
    assert identification_width(speaker, np.arange(12)) == 8
    assert ident.shape == (12, 2 + 8)
    for row in ident:
        assert len(set(row[2:].tolist())) == 8  # every other-speaker utterance once
        assert (speaker[row[2:]] != speaker[row[0]]).all()
    # An unbalanced part: the largest speaker sets the width for every row.
    speaker = np.array([0] * 10 + [1] * 3 + [2] * 2)
    _, ident = make_trials(speaker, np.arange(15), negatives=99)
    assert ident.shape[1] == 2 + 5
    assert all(len(set(r[2:].tolist())) == 5 for r in ident)


def test_trials_group_by_speaker_once_and_scale_linearly():
    """Every utterance of a 300k-utterance part as an anchor (the former per-anchor scan of the
    whole part, O(A x N), took minutes here; the time itself is measured in benchmarks/scale.py)."""
    rng = np.random.default_rng(0)
    speaker = rng.permutation(np.repeat(np.arange(2000), 150))
    idx = np.arange(len(speaker))
    pairs, ident = make_trials(speaker, idx, seed=0, max_anchors=None)
    assert ident.shape == (len(speaker), 101) and pairs.shape == (2 * len(speaker), 3)
    assert (speaker[ident[:, 2:]] != speaker[ident[:, :1]]).all()
    assert (speaker[ident[:, 1]] == speaker[ident[:, 0]]).all() and (ident[:, 1] != ident[:, 0]).all()
    distinct = np.sort(ident[:, 2:], axis=1)
    assert (np.diff(distinct, axis=1) > 0).all()


def test_group_by_speaker_keeps_index_order_and_leaves_noise_out():
    speaker = np.array([2, -1, 0, 2, 0, 1])
    speakers, starts, members = group_by_speaker(speaker)
    assert speakers.tolist() == [0, 1, 2] and starts.tolist() == [0, 2, 3, 5]
    assert members.tolist() == [2, 4, 5, 0, 3]
