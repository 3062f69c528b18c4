"""System combination (embedding and score fusion, Deep Speaker §5.1.3) and speakers enrolled from
several utterances (§5.1.5, Table 8): the functions of :mod:`speakerzoo.scoring` against hand
computations, and `speakerzoo score` with two embeddings files and with ``--enrol-utterances``.

The command-line tests use real FSDD recordings (6 speakers, 12 takes of every digit) prepared
at 8 kHz with cached fbank80 features. The two "models" are cheap but real speaker embeddings:
linear discriminant analysis (trained on the utterance split's train part, 5-d) of two
statistics of each utterance's log-mel frames, their standard deviation and their mean absolute
frame-to-frame change, written with :class:`EmbeddingWriter`."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from speakerzoo.commands import score as score_cmd
from speakerzoo.embeddings import EmbeddingFile, EmbeddingWriter
from speakerzoo.datamodules import Corpus, sources
from speakerzoo.datamodules.prepare import prepare
from speakerzoo.scoring import (
    eer,
    enrolment_metrics,
    enrolment_scores,
    enrolment_trials,
    fuse_embeddings,
    fuse_scores,
    standardize_scores,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ----------------------------------------------------------------------------- fusion


def unit(v: list[float]) -> list[float]:
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def test_embedding_fusion_is_the_normalised_sum_of_normalised_embeddings():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(7, 5, generator=g, dtype=torch.float64) * 10.0  # scales differ a lot between models
    b = torch.randn(7, 5, generator=g, dtype=torch.float64) * 0.01
    c = torch.randn(7, 5, generator=g, dtype=torch.float64)
    fused = fuse_embeddings([a, b])
    for row, x, y in zip(fused.tolist(), a.tolist(), b.tolist()):
        assert row == pytest.approx(unit([p + q for p, q in zip(unit(x), unit(y))]), abs=1e-12)
    three = fuse_embeddings([a, b, c])
    for row, x, y, z in zip(three.tolist(), a.tolist(), b.tolist(), c.tolist()):
        assert row == pytest.approx(unit([p + q + r for p, q, r in zip(unit(x), unit(y), unit(z))]), abs=1e-12)
    # Scale of either model does not matter; one model alone is just its normalised embeddings.
    assert torch.allclose(fuse_embeddings([3.0 * a, b]), fused, atol=1e-12)
    assert torch.allclose(fuse_embeddings([a]), F.normalize(a, dim=-1), atol=1e-12)
    assert torch.allclose(fused.norm(dim=1), torch.ones(7, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"\(7, 5\), \(7, 4\)"):
        fuse_embeddings([a, c[:, :4]])
    with pytest.raises(ValueError, match=r"\(7, 5\), \(6, 5\)"):
        fuse_embeddings([a, c[:6]])
    with pytest.raises(ValueError, match="at least one model"):
        fuse_embeddings([])


def test_score_fusion_is_the_sum_of_z_scored_scores():
    g = torch.Generator().manual_seed(1)
    s1 = torch.randn(40, generator=g, dtype=torch.float64) * 0.3 + 0.5
    s2 = torch.randn(40, generator=g, dtype=torch.float64) * 5.0 - 2.0

    def z(values: list[float]) -> list[float]:
        mu, sd = statistics.fmean(values), statistics.pstdev(values)
        return [(v - mu) / sd for v in values]

    assert standardize_scores(s1).tolist() == pytest.approx(z(s1.tolist()), abs=1e-12)
    expected = [p + q for p, q in zip(z(s1.tolist()), z(s2.tolist()))]
    assert fuse_scores([s1, s2]).tolist() == pytest.approx(expected, abs=1e-12)
    # Over all entries of a matrix (identification scores [A, C]), not per row.
    m1, m2 = s1.view(8, 5), s2.view(8, 5)
    assert fuse_scores([m1, m2]).flatten().tolist() == pytest.approx(expected, abs=1e-12)
    # float32 scores: statistics in float64, the result stays float32; a constant model adds nothing.
    f32 = fuse_scores([s1.float(), s2.float()])
    assert f32.dtype == torch.float32 and f32.tolist() == pytest.approx(expected, abs=1e-5)
    assert standardize_scores(torch.full((4,), 0.7)).tolist() == [0.0] * 4
    assert fuse_scores([s1, torch.full((40,), 3.0, dtype=torch.float64)]).tolist() == pytest.approx(z(s1.tolist()))
    with pytest.raises(ValueError, match=r"\(40,\), \(39,\)"):
        fuse_scores([s1, s2[:39]])
    with pytest.raises(ValueError, match="no scores"):
        standardize_scores(torch.zeros(0))


# ----------------------------------------------------------------------------- enrolment from n utterances


def toy_speakers() -> torch.Tensor:
    """30 speakers with 2-12 utterances each, shuffled, and three utterances of no speaker (-1)."""
    rng = np.random.default_rng(7)
    labels = np.concatenate([np.full(2 + (s * 5) % 11, s) for s in range(30)] + [np.full(3, -1)])
    return torch.from_numpy(rng.permutation(labels)).long()


def test_enrolment_rows_never_enrol_the_anchor_and_draw_distinct_other_speakers():
    spk = toy_speakers()
    counts = [1, 2, 3, 5]
    anchors, rows = enrolment_trials(spk, counts, negatives=9, seed=3)
    sizes = torch.bincount(spk[spk >= 0])
    # Anchors: every utterance of the speakers with at least max(n) + 1 = 6 utterances, nothing else.
    expected_anchors = [i for i, s in enumerate(spk.tolist()) if s >= 0 and sizes[s] >= 6]
    assert anchors.tolist() == expected_anchors and anchors.dtype == torch.int64
    assert sorted(rows) == counts
    for n in counts:
        r = rows[n]
        assert r.shape == (len(expected_anchors), 10, n) and r.dtype == torch.int64
        assert torch.equal(r, rows[5][:, :, :n])  # nested: the same sets, cut to n, for every n
    for a, sets in zip(anchors.tolist(), rows[5].tolist()):
        own = sets[0]
        assert a not in own  # never the anchor in its own enrolment set
        assert len(set(own)) == 5 and {int(spk[u]) for u in own} == {int(spk[a])}
        negative_speakers = []
        for other in sets[1:]:
            assert len(set(other)) == 5  # n distinct utterances ...
            speaker = {int(spk[u]) for u in other}
            assert len(speaker) == 1  # ... of one speaker
            negative_speakers.append(speaker.pop())
        assert len(set(negative_speakers)) == 9 and int(spk[a]) not in negative_speakers
        assert all(s >= 0 and sizes[s] >= 5 for s in negative_speakers)
    # Reproducible under a seed; another seed draws other sets.
    again_anchors, again = enrolment_trials(spk, counts, negatives=9, seed=3)
    assert torch.equal(again_anchors, anchors) and all(torch.equal(again[n], rows[n]) for n in counts)
    other_anchors, other = enrolment_trials(spk, counts, negatives=9, seed=4)
    assert torch.equal(other_anchors, anchors) and not torch.equal(other[5], rows[5])


def test_enrolment_rows_refuse_what_the_speakers_cannot_give():
    spk = toy_speakers()
    sizes = torch.bincount(spk[spk >= 0])
    qualify = int((sizes >= 5).sum()) - 1
    with pytest.raises(ValueError, match=f"only {qualify} other speakers have at least 5 utterances.*"
                                         f"use {qualify} negatives or fewer"):
        enrolment_trials(spk, [1, 5], negatives=qualify + 1)
    enrolment_trials(spk, [1, 5], negatives=qualify)  # exactly enough
    with pytest.raises(ValueError, match="at least 13 utterances.*most any speaker has is 12"):
        enrolment_trials(spk, [12], negatives=1)
    with pytest.raises(ValueError, match="positive"):
        enrolment_trials(spk, [0, 1])


def test_enrolment_scores_and_metrics_against_a_loop():
    spk = toy_speakers()
    g = torch.Generator().manual_seed(5)
    emb = torch.randn(len(spk), 6, generator=g, dtype=torch.float64) * torch.rand(len(spk), 1, generator=g) * 4
    anchors, rows = enrolment_trials(spk, [1, 3], negatives=4, seed=0)

    def cos(x, y):
        return sum(p * q for p, q in zip(x, y)) / math.sqrt(sum(p * p for p in x) * sum(q * q for q in y))

    e = emb.tolist()
    for n in (1, 3):
        got = enrolment_scores(emb, anchors, rows[n], chunk=7)  # chunking must not matter
        assert got.shape == (anchors.numel(), 5)
        for a, sets, line in zip(anchors.tolist(), rows[n].tolist(), got.tolist()):
            expected = []
            for members in sets:
                mean = [sum(unit(e[u])[d] for u in members) / n for d in range(6)]
                expected.append(cos(e[a], mean))
            assert line == pytest.approx(expected, abs=1e-12)
        got_eer, got_acc = enrolment_metrics(got)
        flat = got.tolist()
        assert got_acc == sum(r[0] > max(r[1:]) for r in flat) / len(flat)
        labels = torch.tensor([[1] + [0] * 4] * len(flat))
        assert got_eer == eer(got.flatten(), labels.flatten())
    # Ties with a negative are misses; the EER counts column 0 as target, the rest as non-target.
    assert enrolment_metrics(torch.tensor([[0.5, 0.5], [0.9, 0.1]])) == (0.5, 0.5)


# ----------------------------------------------------------------------------- the command line


def lda(stats: np.ndarray, speaker: np.ndarray, train: np.ndarray, dim: int = 5) -> np.ndarray:
    """Project utterance statistics on the ``dim`` most speaker-discriminant directions of the train part."""
    import scipy.linalg

    x = stats[train]
    mu = x.mean(0)
    within, between = np.zeros((x.shape[1],) * 2), np.zeros((x.shape[1],) * 2)
    for s in np.unique(speaker[train]):
        z = x[speaker[train] == s]
        m = z.mean(0)
        within += (z - m).T @ (z - m)
        between += len(z) * np.outer(m - mu, m - mu)
    within += 1e-3 * np.trace(within) / len(within) * np.eye(len(within))
    _, vectors = scipy.linalg.eigh(between, within)  # ascending eigenvalues
    return (stats - mu) @ vectors[:, ::-1][:, :dim]


@pytest.fixture(scope="module")
def fsdd_files(fsdd_root, tmp_path_factory) -> dict[str, Path]:
    """A corpus of 720 real FSDD recordings (6 speakers x 10 digits x takes 0-11; its utterance split's
    test part holds 18 utterances per speaker) and embeddings files of all of them, rows in corpus
    order: model "a" (LDA of the log-mel frames' standard deviation), model "b" (LDA of their mean
    absolute change from frame to frame), model b's rows shuffled, model b without the first
    utterance, and model a cut to 3 dimensions."""
    folder = tmp_path_factory.mktemp("fusion")
    records = [r for r in sources.fsdd(fsdd_root) if int(r.utt_id.rsplit("_", 1)[1]) < 12]
    corpus_path = folder / "fsdd.h5"
    prepare(records, corpus_path, sample_rate=8000, features=("fbank80",), seed=0, workers=0, progress=False)
    corpus = Corpus(corpus_path)
    ids = corpus.texts("utt_id")
    names = [corpus.speakers[s] for s in corpus.speaker]
    frames = [np.asarray(corpus.features("fbank80", i), dtype=np.float64) for i in range(len(corpus))]
    speaker, train = corpus.speaker, np.sort(corpus.split("utterance", "train"))
    corpus.close()
    a = lda(np.stack([f.std(0) for f in frames]), speaker, train)
    b = lda(np.stack([np.abs(np.diff(f, axis=0)).mean(0) for f in frames]), speaker, train)
    order = np.random.default_rng(0).permutation(len(ids))
    files = {"corpus": corpus_path}
    for name, table, rows in (("a", a, np.arange(len(ids))), ("b", b, np.arange(len(ids))), ("b_shuffled", b, order),
                              ("b_short", b, np.arange(1, len(ids))), ("a_small", a[:, :3], np.arange(len(ids)))):
        with EmbeddingWriter(folder / f"{name}.h5") as w:
            w.add(table[rows], [ids[i] for i in rows], [names[i] for i in rows], [""] * len(rows))
            w.finish({"model_class": f"LDA of log-mel statistics ({name})"})
        files[name] = folder / f"{name}.h5"
    return files


def run_score(capsys, *args) -> dict:
    code = score_cmd.main([*map(str, args), "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


def fails(capsys, *args) -> str:
    assert score_cmd.main([*map(str, args)]) == 2
    return capsys.readouterr().err


def _table(path: Path) -> torch.Tensor:
    """An embeddings file's rows, which the fixture wrote in corpus order."""
    return EmbeddingFile(path).embedding.double()


def corpus_rows(corpus_path: Path, split: str = "utterance", part: str = "test"):
    corpus = Corpus(corpus_path)
    pairs, ident = corpus.trials(split, part)
    index = np.sort(corpus.split(split, part))
    speakers = torch.as_tensor(corpus.speaker[index], dtype=torch.int64)
    corpus.close()
    return torch.as_tensor(pairs), torch.as_tensor(ident), torch.as_tensor(index), speakers


def test_score_two_models_with_score_and_embedding_fusion(fsdd_files, capsys):
    corpus, a_h5, b_h5 = fsdd_files["corpus"], fsdd_files["a"], fsdd_files["b"]
    pairs, ident, _, _ = corpus_rows(corpus)
    models = [F.normalize(_table(p), dim=-1) for p in (a_h5, b_h5)]  # rows = corpus utterance index
    labels = pairs[:, 2]

    def pair_scores(e):
        return (e[pairs[:, 0]] * e[pairs[:, 1]]).sum(-1)

    def ident_scores(e):
        return (e[ident[:, :1]] * e[ident[:, 1:]]).sum(-1)  # [A, 100], the positive in column 0

    def zs(s):
        return (s.double() - s.double().mean()) / s.double().std(correction=0)

    common = ("--corpus", corpus, "--split", "utterance", "--part", "test")
    single = [run_score(capsys, p, *common) for p in (a_h5, b_h5)]
    for result, e in zip(single, models):
        assert result["eer"] == eer(pair_scores(e), labels) and result["fusion"] == "none"

    # Score fusion: each model's pair scores z-scored over the trial list, added; identification
    # rows likewise over each model's whole [A, C] score matrix.
    fused = run_score(capsys, a_h5, b_h5, *common, "--fusion", "score")
    s = zs(pair_scores(models[0])) + zs(pair_scores(models[1]))
    assert fused["eer"] == pytest.approx(eer(s, labels), abs=1e-12)
    assert fused["pairs"] == len(pairs) and fused["fusion"] == "score fusion of 2 models"
    m = zs(ident_scores(models[0])) + zs(ident_scores(models[1]))
    assert fused["ident_acc"] == pytest.approx(float((m[:, 0] > m[:, 1:].amax(1)).double().mean()), abs=1e-12)
    # Rows are matched by utterance id: the same utterances in another order give the same numbers.
    shuffled = run_score(capsys, a_h5, fsdd_files["b_shuffled"], *common, "--fusion", "score")
    for key in ("eer", "min_dcf", "ident_acc", "pairs"):
        assert shuffled[key] == pytest.approx(fused[key], abs=1e-6), key

    # Embedding fusion: normalise(normalise(a) + normalise(b)), then cosine scoring as usual.
    emb = run_score(capsys, a_h5, b_h5, *common, "--fusion", "embedding")
    e = F.normalize(models[0] + models[1], dim=-1)
    assert emb["eer"] == pytest.approx(eer(pair_scores(e), labels), abs=1e-12)
    s = ident_scores(e)
    assert emb["ident_acc"] == pytest.approx(float((s[:, 0] > s[:, 1:].amax(1)).double().mean()), abs=1e-12)
    assert emb["fusion"] == "embedding fusion of 2 models"
    # Real speech: the two statistics carry different speaker cues, and combining the scores helps here.
    assert fused["eer"] < min(r["eer"] for r in single)
    assert fused["ident_acc"] > max(r["ident_acc"] for r in single)

    # The table names the fusion.
    assert score_cmd.main([str(a_h5), str(b_h5), *map(str, common), "--fusion", "score"]) == 0
    table = capsys.readouterr().out
    assert "score fusion of 2 models" in table and f"{100 * fused['eer']:.2f} %" in table


def test_fusion_refuses_what_it_cannot_combine(fsdd_files, capsys):
    corpus, a_h5, b_h5 = fsdd_files["corpus"], fsdd_files["a"], fsdd_files["b"]
    common = ("--corpus", corpus, "--split", "utterance", "--part", "test")
    assert "--fusion score or --fusion embedding" in fails(capsys, a_h5, b_h5, *common)
    assert "give two or more" in fails(capsys, a_h5, *common, "--fusion", "score")
    err = fails(capsys, a_h5, fsdd_files["b_short"], *common, "--fusion", "score")
    assert f"{a_h5} and {fsdd_files['b_short']} hold different utterances" in err
    first_id = EmbeddingFile(a_h5).utt_id[0]  # the first id missing from the other file
    assert f"{first_id!r} is in {a_h5} but not in {fsdd_files['b_short']}" in err
    err = fails(capsys, a_h5, fsdd_files["a_small"], *common, "--fusion", "embedding")
    assert f"5-d in {a_h5}" in err and "3-d in" in err and "--fusion score" in err
    run_score(capsys, a_h5, fsdd_files["a_small"], *common, "--fusion", "score")  # sizes may differ there
    err = fails(capsys, a_h5, b_h5, *common, "--fusion", "score", "--asnorm", "--cohort", b_h5)
    assert "not combined with --fusion" in err


def test_enrolment_with_several_utterances(fsdd_files, capsys):
    corpus, a_h5, b_h5 = fsdd_files["corpus"], fsdd_files["a"], fsdd_files["b"]
    _, _, index, speakers = corpus_rows(corpus)
    common = ("--corpus", corpus, "--split", "utterance", "--part", "test", "--enrol-utterances", "1,2,3,5",
              "--negatives", "4")
    out = run_score(capsys, a_h5, *common)
    assert [r["utterances"] for r in out["enrolment"]] == [1, 2, 3, 5]
    assert out["anchors"] == 108 and out["anchor_speakers"] == 6  # 6 speakers x 18 utterances of the test part
    assert all(r["anchors"] == 108 for r in out["enrolment"]) and (out["negatives"], out["seed"]) == (4, 0)
    # Against a loop over the rows the scoring module draws (utterance numbers within the part).
    e = _table(a_h5)[index]
    anchors, rows = enrolment_trials(speakers, [1, 2, 3, 5], negatives=4, seed=0)
    for result in out["enrolment"]:
        n = result["utterances"]
        scores = torch.stack([
            torch.stack([F.cosine_similarity(e[a], F.normalize(F.normalize(e[s], dim=-1).mean(0), dim=-1), dim=0)
                         for s in sets])
            for a, sets in zip(anchors.tolist(), rows[n])
        ])
        hits = scores[:, 0] > scores[:, 1:].amax(1)
        assert result["ident_acc"] == pytest.approx(float(hits.double().mean()), abs=1e-12)
        labels = torch.zeros_like(scores, dtype=torch.int64)
        labels[:, 0] = 1
        assert result["eer"] == pytest.approx(eer(scores.flatten(), labels.flatten()), abs=1e-12)
    # Real speech: averaging more enrolment utterances verifies better (paper, Table 8).
    assert out["enrolment"][-1]["eer"] < out["enrolment"][0]["eer"]
    assert out["enrolment"][-1]["ident_acc"] >= out["enrolment"][0]["ident_acc"]
    # Another seed draws other enrolment sets.
    assert run_score(capsys, a_h5, *common, "--seed", "1")["enrolment"] != out["enrolment"]

    # With fusion: per n, the fused scores of the same rows.
    fused = run_score(capsys, a_h5, b_h5, *common, "--fusion", "score")
    per_model = [[enrolment_scores(_table(p)[index], anchors, rows[n]) for p in (a_h5, b_h5)] for n in (1, 5)]
    for result, scores in zip((fused["enrolment"][0], fused["enrolment"][-1]), per_model):
        assert (result["eer"], result["ident_acc"]) == pytest.approx(enrolment_metrics(fuse_scores(scores)), abs=1e-12)
    embedded = run_score(capsys, a_h5, b_h5, *common, "--fusion", "embedding")
    both = fuse_embeddings([_table(a_h5)[index], _table(b_h5)[index]])
    assert (embedded["enrolment"][1]["eer"], embedded["enrolment"][1]["ident_acc"]) == pytest.approx(
        enrolment_metrics(enrolment_scores(both, anchors, rows[2])), abs=1e-12)

    # The table for people.
    assert score_cmd.main([str(a_h5), *map(str, common)]) == 0
    table = capsys.readouterr().out
    assert "108 anchors of 6 speakers" in table and "#utt" in table
    five = out["enrolment"][-1]
    assert f"    5      108 {100 * five['eer']:>7.2f} % {100 * five['ident_acc']:>7.2f} %" in table

    # What it refuses.
    err = fails(capsys, a_h5, *common[:-2], "--negatives", "6")
    assert "only 5 other speakers have at least 5 utterances" in err and "use 5 negatives or fewer" in err
    assert "--corpus" in fails(capsys, a_h5, "--trials", corpus, "--enrol-utterances", "1")
    assert "--det" in fails(capsys, a_h5, *common, "--det", "x.png")
    assert "apply to --enrol-utterances" in fails(capsys, a_h5, "--corpus", corpus, "--negatives", "4")
    assert "positive utterance counts" in fails(capsys, a_h5, "--corpus", corpus, "--enrol-utterances", "0,2")
