"""Scoring: EER / minDCF against a brute-force reference, identification, trials, torchmetrics classes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from speakerzoo.scoring import (
    EqualErrorRate,
    MinDCF,
    Trials,
    cosine_scores,
    det_curve,
    eer,
    eer_threshold,
    identification_accuracy,
    identification_hits,
    mean_normalize,
    min_dcf,
    min_dcf_threshold,
    score_trials,
    subset_trials,
)


def brute_force(scores, labels, p_target=0.01, c_miss=1.0, c_fa=1.0):
    """Loop over every threshold (all scores and +inf); accept when score >= threshold."""
    s = scores.double().tolist()
    y = labels.bool().tolist()
    n_pos = sum(y)
    n_neg = len(y) - n_pos
    best_eer, best_eer_t = math.inf, None
    best_dcf, best_dcf_t = math.inf, None
    norm = min(c_miss * p_target, c_fa * (1 - p_target))
    for t in sorted(set(s)) + [math.inf]:
        p_fa = sum(1 for si, yi in zip(s, y) if si >= t and not yi) / n_neg
        p_miss = sum(1 for si, yi in zip(s, y) if si < t and yi) / n_pos
        worst = max(p_fa, p_miss)
        if worst < best_eer:
            best_eer, best_eer_t = worst, t
        dcf = (c_miss * p_miss * p_target + c_fa * p_fa * (1 - p_target)) / norm
        if dcf < best_dcf:
            best_dcf, best_dcf_t = dcf, t
    return best_eer, best_eer_t, best_dcf, best_dcf_t


def random_trials(n, target_share, seed, ties):
    g = torch.Generator().manual_seed(seed)
    labels = (torch.rand(n, generator=g) < target_share).long()
    labels[0], labels[-1] = 1, 0  # both classes present
    scores = torch.randn(n, generator=g) + 1.5 * labels
    if ties:  # coarse grid: many equal scores, across both classes
        scores = torch.round(scores * 2) / 2
    return scores, labels


CASES = [
    (n, share, seed, ties)
    for n, share in [(2, 0.5), (7, 0.3), (50, 0.5), (200, 0.1), (300, 0.9), (1000, 0.02)]
    for seed in (0, 1)
    for ties in (False, True)
]


@pytest.mark.parametrize("n,share,seed,ties", CASES)
def test_eer_and_min_dcf_match_brute_force(n, share, seed, ties):
    scores, labels = random_trials(n, share, seed, ties)
    ref_eer, ref_eer_t, ref_dcf, ref_dcf_t = brute_force(scores, labels)
    assert eer(scores, labels) == pytest.approx(ref_eer, abs=1e-6)
    assert min_dcf(scores, labels) == pytest.approx(ref_dcf, abs=1e-6)
    assert eer_threshold(scores, labels) == ref_eer_t  # the lowest optimal threshold, as the loop finds
    assert min_dcf_threshold(scores, labels) == ref_dcf_t
    # other cost parameters
    ref = brute_force(scores, labels, p_target=0.05, c_miss=10.0, c_fa=1.0)
    assert min_dcf(scores, labels, p_target=0.05, c_miss=10.0, c_fa=1.0) == pytest.approx(ref[2], abs=1e-6)


def test_ties_move_together():
    # all four trials tie: the only operating points are accept-all and reject-all
    scores = torch.tensor([0.5, 0.5, 0.5, 0.5])
    labels = torch.tensor([1, 0, 1, 0])
    p_fa, p_miss, thr = det_curve(scores, labels)
    assert thr.tolist() == [0.5, math.inf]
    assert p_fa.tolist() == [1.0, 0.0] and p_miss.tolist() == [0.0, 1.0]
    assert eer(scores, labels) == 1.0


def test_det_curve_is_monotonic_and_complete():
    scores, labels = random_trials(500, 0.3, 3, ties=True)
    p_fa, p_miss, thr = det_curve(scores, labels)
    assert len(thr) == len(torch.unique(scores)) + 1
    assert (thr[1:] > thr[:-1]).all() and math.isinf(thr[-1].item())
    assert (p_fa[1:] <= p_fa[:-1]).all() and (p_miss[1:] >= p_miss[:-1]).all()
    assert (p_fa[0], p_miss[0], p_fa[-1], p_miss[-1]) == (1.0, 0.0, 0.0, 1.0)


def test_large_normalised_scores_are_not_merged():
    # AS-norm-like scores: a sigmoid (torchmetrics' binary_roc) maps all of these to 1.0 in float32
    scores = torch.tensor([20.0, 21.0, 22.0, 23.0, 24.0, 25.0])
    labels = torch.tensor([0, 0, 1, 0, 1, 1])
    assert torch.sigmoid(scores).unique().numel() == 1  # why we do not use binary_roc
    assert eer(scores, labels) == pytest.approx(brute_force(scores, labels)[0], abs=1e-12)
    assert eer(scores, labels) == pytest.approx(1 / 3)


def test_perfect_and_inverted_systems():
    labels = torch.tensor([1, 1, 0, 0])
    assert eer(torch.tensor([0.9, 0.8, 0.2, 0.1]), labels) == 0.0
    assert min_dcf(torch.tensor([0.9, 0.8, 0.2, 0.1]), labels) == 0.0
    assert eer(torch.tensor([0.1, 0.2, 0.8, 0.9]), labels) == 1.0


def test_single_class_is_an_error():
    with pytest.raises(ValueError, match="both target and non-target"):
        eer(torch.rand(5), torch.ones(5))


@pytest.mark.parametrize("chunks", [1, 3, 7])
def test_metric_classes_equal_functional(chunks):
    scores, labels = random_trials(400, 0.2, 11, ties=True)
    m_eer, m_dcf = EqualErrorRate(), MinDCF(p_target=0.05)
    for s, y in zip(scores.chunk(chunks), labels.chunk(chunks)):
        m_eer.update(s, y)
        m_dcf.update(s, y)
    assert m_eer.compute().item() == pytest.approx(eer(scores, labels), abs=1e-12)
    assert m_dcf.compute().item() == pytest.approx(min_dcf(scores, labels, p_target=0.05), abs=1e-12)
    m_eer.reset()
    m_eer.update(scores[:10], torch.tensor([1, 0] * 5))
    assert m_eer.compute().item() == pytest.approx(eer(scores[:10], torch.tensor([1, 0] * 5)), abs=1e-12)


def test_cosine_scores_match_torch():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(64, 32, generator=g), torch.randn(64, 32, generator=g) * 5
    torch.testing.assert_close(cosine_scores(a, b), F.cosine_similarity(a, b, dim=-1), atol=1e-6, rtol=0)
    # broadcasting one anchor against many candidates
    torch.testing.assert_close(cosine_scores(a[:1], b), F.cosine_similarity(a[:1], b, dim=-1), atol=1e-6, rtol=0)


def test_identification_accuracy_on_constructed_embeddings():
    g = torch.Generator().manual_seed(0)
    anchors = F.normalize(torch.randn(6, 16, generator=g), dim=-1)
    negatives = torch.randn(6, 99, 16, generator=g)
    # remove each anchor's direction from its negatives: they score exactly 0 against it
    negatives = negatives - (negatives @ anchors.unsqueeze(-1)) * anchors.unsqueeze(1)
    positives = anchors.clone() * 3.0  # cosine 1
    positives[1] = -anchors[1]  # row 1: positive scores -1, worst
    positives[4] = negatives[4, 0]  # row 4: positive ties with a negative -> miss
    candidates = torch.cat([positives.unsqueeze(1), negatives], dim=1)
    hits = identification_hits(anchors, candidates)
    assert hits.tolist() == [True, False, True, True, False, True]
    assert identification_accuracy(anchors, candidates) == pytest.approx(4 / 6)
    # chunked scoring gives the same answer
    assert identification_hits(anchors, candidates, chunk=4).tolist() == hits.tolist()


def test_score_trials_maps_corpus_indices():
    g = torch.Generator().manual_seed(1)
    emb = torch.randn(5, 8, generator=g)
    index = torch.tensor([40, 10, 30, 20, 50])  # unsorted corpus indices of the rows
    by_corpus = {int(i): emb[k] for k, i in enumerate(index)}
    pairs = torch.tensor([[10, 20, 1], [40, 50, 0], [30, 10, 0]])
    ident = torch.tensor([[10, 20, 30, 40], [50, 40, 30, 20]])
    scores, labels, hits = score_trials(index, emb, Trials(pairs, ident))
    expected = torch.stack([cosine_scores(by_corpus[a], by_corpus[b]) for a, b, _ in pairs.tolist()])
    torch.testing.assert_close(scores, expected, atol=1e-6, rtol=0)
    assert labels.tolist() == [1, 0, 0]
    for row, hit in zip(ident.tolist(), hits.tolist()):
        s = [cosine_scores(by_corpus[row[0]], by_corpus[c]).item() for c in row[1:]]
        assert hit == (s[0] > max(s[1:]))
    with pytest.raises(ValueError, match="no embedding"):
        score_trials(index[:3], emb[:3], Trials(pairs, ident))


def test_subset_trials_keeps_complete_rows():
    trials = Trials(pairs=torch.tensor([[1, 2, 1], [1, 9, 0], [3, 2, 0]]), ident=torch.tensor([[1, 2, 3], [1, 2, 9]]))
    kept = subset_trials(trials, torch.tensor([3, 1, 2]))
    assert kept.pairs.tolist() == [[1, 2, 1], [3, 2, 0]]
    assert kept.ident.tolist() == [[1, 2, 3]]
    assert trials.utterances().tolist() == [1, 2, 3, 9]


def test_mean_normalize():
    emb = torch.tensor([[3.0, 1.0], [1.0, 4.0]])
    out = mean_normalize(emb, torch.tensor([1.0, 1.0]))
    torch.testing.assert_close(out, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(2))
