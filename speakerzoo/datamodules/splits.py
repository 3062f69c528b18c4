"""Deterministic splits and trial lists over a corpus' utterances (pure numpy).

Two split modes, both seeded:

* ``utterance``: every speaker's utterances are divided by the ratios (closed-set
  identification: the same speakers in train, val and test). A speaker with too few
  utterances for every part keeps them all in train.
* ``speaker``: the speakers are divided by the ratios (open-set verification: val and test
  speakers are never seen in training).

Trials for a part (Li et al., "Deep Speaker: an End-to-End Neural Speaker Embedding System",
§4.1): for every anchor whose speaker has another utterance in the part, one positive and 99
distinct negatives of other speakers (identification rows), and balanced verification pairs
(one positive and one negative per anchor). A part too small for 99 distinct negatives gets
shorter rows (:func:`identification_width`), never a repeated negative.

Everything groups the utterances by speaker once (a stable sort), so splits and trials cost
O(N log N) in the number of utterances N, not a scan of all utterances per speaker or per
anchor (issue 24: 1 M utterances, 6,000 speakers). The draws are the same as those of the
per-speaker scans this replaced, so corpora prepared before keep their splits and trials.
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


def _grouped_positions(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(speakers, starts, order)`` of a label array without noise: ``order[starts[j]:starts[j + 1]]``
    are the positions of label ``speakers[j]``, ascending (one stable sort)."""
    order = np.argsort(labels, kind="stable")
    speakers, starts = np.unique(labels[order], return_index=True)
    return speakers, np.append(starts, len(order)).astype(np.int64), order


def group_by_speaker(speaker: np.ndarray, indices: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The utterances ``indices`` (default: all) grouped by speaker in one stable sort.

    Returns ``(speakers, starts, members)``: the sorted distinct speaker labels (``>= 0``;
    noise, ``-1``, is left out), and ``members[starts[j]:starts[j + 1]]``, the utterances of
    ``speakers[j]`` in the order they have in ``indices``.
    """
    indices = np.arange(len(speaker), dtype=np.int64) if indices is None else np.asarray(indices, dtype=np.int64)
    indices = indices[np.asarray(speaker)[indices] >= 0]
    speakers, starts, order = _grouped_positions(np.asarray(speaker)[indices])
    return speakers, starts, indices[order]


def split_by_utterance(speaker: np.ndarray, ratios=(0.7, 0.15, 0.15), seed: int = 0) -> dict[str, np.ndarray]:
    """Per speaker, shuffle its utterances and divide them by ``ratios``.

    Speakers with fewer than three utterances stay wholly in train, and every speaker
    keeps at least one training utterance, so each test speaker is known to the model.
    Utterances with ``speaker < 0`` (noise clips) are left out.
    """
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {p: [] for p in PARTS}
    _, starts, members = group_by_speaker(speaker)
    for lo, hi in zip(starts[:-1], starts[1:]):
        utts = rng.permutation(members[lo:hi])
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
    speaker = np.asarray(speaker)
    speakers = rng.permutation(np.unique(speaker[speaker >= 0]))
    n_train, n_val, _ = _allocate(len(speakers), ratios, rng)
    groups = {"train": speakers[:n_train], "val": speakers[n_train:n_train + n_val], "test": speakers[n_train + n_val:]}
    return {p: np.flatnonzero(np.isin(speaker, g)).astype(np.int64) for p, g in groups.items()}


def identification_width(speaker: np.ndarray, indices: np.ndarray, negatives: int = 99) -> int:
    """Negatives per identification row of the part ``indices``: ``negatives``, or fewer where
    some anchor's speaker leaves fewer other-speaker utterances in the part (rows never repeat a
    negative, and all rows of a part have the same width)."""
    _, starts, members = group_by_speaker(speaker, indices)
    return _row_width(np.diff(starts), negatives)


def _row_width(sizes: np.ndarray, negatives: int) -> int:
    """:func:`identification_width` from the part's utterances per speaker."""
    if len(sizes) < 2 or not (sizes > 1).any():
        return negatives
    return int(min(negatives, sizes.sum() - sizes[sizes > 1].max()))


def make_trials(speaker: np.ndarray, indices: np.ndarray, seed: int = 0, negatives: int = 99,
                max_anchors: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Trials over the utterances ``indices`` (sorted, as the splits give them) of a split part.

    Returns ``pairs`` ``[M, 3]`` (enrol, test, label) and ``ident`` ``[A, 2 + W]``
    (anchor, positive, W negatives), where ``W = identification_width(...)``: ``negatives``
    unless the part has fewer other-speaker utterances for some anchor. Anchors are
    utterances whose speaker has another utterance in ``indices``; each row's negatives are
    distinct utterances of other speakers. Parts with fewer than two speakers yield no trials.
    """
    rng = np.random.default_rng(seed)
    indices = np.asarray(indices, dtype=np.int64)
    indices = indices[np.asarray(speaker)[indices] >= 0]
    labels = np.asarray(speaker)[indices]
    # order[starts[g]:starts[g + 1]]: positions in indices of speaker group g, ascending.
    speakers, starts, order = _grouped_positions(labels)
    members, sizes = indices[order], np.diff(starts)
    width = _row_width(sizes, negatives)
    empty = (np.zeros((0, 3), np.int64), np.zeros((0, 2 + width), np.int64))
    if len(speakers) < 2:
        return empty
    group = np.searchsorted(speakers, labels)  # speaker group of every item
    rank = np.empty(len(indices), np.int64)
    rank[order] = np.arange(len(indices))  # position of every item in order
    anchors = indices[sizes[group] > 1]
    if max_anchors is not None and len(anchors) > max_anchors:
        anchors = np.sort(rng.choice(anchors, size=max_anchors, replace=False))
    if not anchors.size:
        return empty
    pairs = np.empty((2 * len(anchors), 3), np.int64)
    ident = np.empty((len(anchors), 2 + width), np.int64)
    for row, r in enumerate(np.searchsorted(indices, anchors)):
        g = group[r]
        lo, hi = starts[g], starts[g + 1]
        # The positive: one of the speaker's other utterances (in index order, the anchor left out).
        k = int(rng.choice(hi - lo - 1))
        pos = members[lo + k + (k >= rank[r] - lo)]
        # Negatives: distinct positions k among the other speakers' utterances in index order; the
        # k-th of them is at position k + j of indices, j = own utterances before it.
        own = order[lo:hi]
        picks = rng.choice(len(indices) - (hi - lo), size=width, replace=False)
        neg = indices[picks + np.searchsorted(own - np.arange(hi - lo), picks, side="right")]
        ident[row, 0], ident[row, 1], ident[row, 2:] = indices[r], pos, neg
        pairs[2 * row] = (indices[r], pos, 1)
        pairs[2 * row + 1] = (indices[r], neg[0], 0)
    return pairs, ident
