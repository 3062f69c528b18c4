"""Deterministic splits and trial lists over a corpus' utterances (pure numpy).

Two split modes, both seeded:

* ``utterance``: every speaker's utterances are divided by the ratios (closed-set
  identification: the same speakers in train, val and test). A speaker with too few
  utterances for every part keeps them all in train.
* ``speaker``: the speakers are divided by the ratios (open-set verification: val and test
  speakers are never seen in training).

Trials for a part (Deep Speaker, seed 001 §4.1): for every anchor whose speaker has
another utterance in the part, one positive and 99 negatives of other speakers
(identification rows), and balanced verification pairs (one positive and one negative
per anchor).
"""

from __future__ import annotations

import numpy as np

PARTS = ("train", "val", "test")
MODES = ("utterance", "speaker")


def check_ratios(ratios) -> tuple[float, float, float]:
    """``ratios`` as three floats (train, val, test); ``ValueError`` unless they are finite, not
    negative, and train is positive."""
    values = tuple(float(r) for r in ratios)
    if len(values) != 3 or not all(np.isfinite(values)) or min(values) < 0 or values[0] <= 0:
        raise ValueError(f"split ratios must be three non-negative numbers (train val test) with train > 0, "
                         f"not {list(values)}")
    return values


def _allocate(n: int, ratios: tuple[float, float, float], rng: np.random.Generator) -> list[int]:
    """Split ``n`` items into three counts proportional to ``ratios`` (largest remainder).

    Equal remainders (val and test at equal ratios) are broken at random, so that over many
    small speakers val and test receive the same share instead of val always first.
    """
    r = np.asarray(ratios, dtype=float)
    r = r / r.sum()
    raw = r * n
    counts = np.floor(raw).astype(int)
    order = np.lexsort((rng.random(len(r)), -np.round(raw - counts, 9)))
    for i in order[: n - counts.sum()]:
        counts[i] += 1
    return counts.tolist()


def split_by_utterance(speaker: np.ndarray, ratios=(0.7, 0.15, 0.15), seed: int = 0) -> dict[str, np.ndarray]:
    """Per speaker, shuffle its utterances and divide them by ``ratios``.

    Speakers with fewer than three utterances stay wholly in train, and every speaker
    keeps at least one training utterance, so each test speaker is known to the model.
    Utterances with ``speaker < 0`` (noise clips) are left out.
    """
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {p: [] for p in PARTS}
    for spk in np.unique(speaker[speaker >= 0]):
        utts = rng.permutation(np.flatnonzero(speaker == spk))
        if len(utts) < 3:
            parts["train"].append(utts)
            continue
        n_train, n_val, n_test = _allocate(len(utts), ratios, rng)
        if n_train == 0:
            n_train, n_test = 1, n_test - 1 if n_test else n_test
            n_val = len(utts) - n_train - n_test
        parts["train"].append(utts[:n_train])
        parts["val"].append(utts[n_train:n_train + n_val])
        parts["test"].append(utts[n_train + n_val:])
    return {p: np.sort(np.concatenate(v)) if v else np.zeros(0, np.int64) for p, v in parts.items()}


def split_by_speaker(speaker: np.ndarray, ratios=(0.7, 0.15, 0.15), seed: int = 0) -> dict[str, np.ndarray]:
    """Shuffle the speakers and divide them by ``ratios``; each speaker lies in one part only."""
    rng = np.random.default_rng(seed)
    speakers = rng.permutation(np.unique(speaker[speaker >= 0]))
    n_train, n_val, _ = _allocate(len(speakers), ratios, rng)
    groups = {"train": speakers[:n_train], "val": speakers[n_train:n_train + n_val], "test": speakers[n_train + n_val:]}
    return {p: np.flatnonzero(np.isin(speaker, g)).astype(np.int64) for p, g in groups.items()}


def make_trials(speaker: np.ndarray, indices: np.ndarray, seed: int = 0, negatives: int = 99,
                max_anchors: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Trials over the utterances ``indices`` of a split part.

    Returns ``pairs`` ``[M, 3]`` (enrol, test, label) and ``ident`` ``[A, 2 + negatives]``
    (anchor, positive, negatives...). Anchors are utterances whose speaker has another
    utterance in ``indices``; negatives are drawn without replacement from utterances of
    other speakers (with replacement only if fewer than ``negatives`` exist). Parts with
    fewer than two speakers yield no trials.
    """
    rng = np.random.default_rng(seed)
    indices = np.asarray(indices, dtype=np.int64)
    spk = speaker[indices]
    empty = (np.zeros((0, 3), np.int64), np.zeros((0, 2 + negatives), np.int64))
    if len(np.unique(spk)) < 2:
        return empty
    by_speaker = {s: indices[spk == s] for s in np.unique(spk)}
    anchors = [i for i, s in zip(indices, spk) if len(by_speaker[s]) > 1]
    anchors = np.asarray(anchors, dtype=np.int64)
    if max_anchors is not None and len(anchors) > max_anchors:
        anchors = np.sort(rng.choice(anchors, size=max_anchors, replace=False))
    pairs, ident = [], []
    for a in anchors:
        s = speaker[a]
        same = by_speaker[s][by_speaker[s] != a]
        others = indices[spk != s]
        pos = rng.choice(same)
        neg = rng.choice(others, size=negatives, replace=len(others) < negatives)
        ident.append(np.concatenate([[a, pos], neg]))
        pairs.append((a, pos, 1))
        pairs.append((a, neg[0], 0))
    if not anchors.size:
        return empty
    return np.asarray(pairs, dtype=np.int64), np.asarray(ident, dtype=np.int64)
