"""Monte-Carlo dropout, the speaker bank and segment aggregation (speakerzoo.inference), on real
FSDD speech with a tiny ECAPA whose TDNN blocks have dropout (speechbrain's nn.Dropout1d)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from speakerzoo.audio import load_audio
from speakerzoo.zoo import ECAPA, AAMSoftmax, SpeakerEmbeddingModule
from speakerzoo.inference.bank import SpeakerBank, head_probabilities, rank, verify
from speakerzoo.inference.mc_dropout import NoDropoutError, dropout_layers, mc_dropout, mc_embed, mc_samples
from speakerzoo.inference.segments import aggregate, embed_recording, segment_bounds, segments

FSDD = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fsdd" / "recordings"
TINY = dict(channels=[32, 32, 32, 32, 96], embedding_dim=32, attention_channels=16, se_channels=16)


def fsdd(name: str) -> torch.Tensor:
    if not FSDD.is_dir():
        pytest.skip(f"FSDD recordings not found at {FSDD} (the shared real corpora live in ../shared/data)")
    return torch.from_numpy(load_audio(FSDD / f"{name}.wav", 16000)[0])


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model(one_torch_thread) -> ECAPA:
    torch.manual_seed(0)
    return ECAPA(num_speakers=3, speaker_names=["a", "b", "c"], dropout=0.3, **TINY).eval()


@pytest.fixture(scope="module")
def waves() -> torch.Tensor:
    """Two real utterances of two speakers, cut to one length (a batch without padding)."""
    a, b = fsdd("3_george_10"), fsdd("3_jackson_10")
    n = min(len(a), len(b))
    return torch.stack([a[:n], b[:n]])


class PoolNet(SpeakerEmbeddingModule):
    """A minimal embedding model with plain dropout modules (no speechbrain): fbank -> MLP -> mean over frames."""

    def __init__(self, num_speakers=0, sample_rate=16000, frontend="fbank80", speaker_names=None, embedding_dim=8,
                 p=0.3, lr=1e-3, weight_decay=1e-4, warmup_epochs=0.0, init_from=None):
        super().__init__(num_speakers, sample_rate, frontend, speaker_names, lr, weight_decay, warmup_epochs, init_from)
        self.save_hyperparameters()
        self.embedding_dim = embedding_dim
        self.net = nn.Sequential(nn.Linear(80, 16), nn.ReLU(), nn.Dropout(p), nn.Linear(16, embedding_dim),
                                 nn.AlphaDropout(p))
        self.norm = nn.BatchNorm1d(embedding_dim)
        self.head = AAMSoftmax(embedding_dim, self.num_speakers) if self.num_speakers else None

    def encode(self, features, frame_lengths):
        return self.norm(self.net(features).mean(dim=1))


# ----------------------------------------------------------------------------- mc_dropout


def test_ecapa_tdnn_blocks_have_sampled_dropout(model):
    layers = dropout_layers(model)
    assert layers and all(isinstance(m, nn.Dropout1d) and m.p == 0.3 for m in layers)
    assert dropout_layers(ECAPA(dropout=0.0, **TINY)) == []


def test_mc_dropout_switches_only_dropout_and_restores_every_mode(model):
    model.train()
    model.encoder.blocks[0].eval()  # a mixed state must come back as it was
    before = {name: m.training for name, m in model.named_modules()}
    dropout = {id(m) for m in dropout_layers(model)}
    try:
        with mc_dropout(model):
            for m in model.modules():
                assert m.training == (id(m) in dropout), type(m).__name__
            batchnorms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
            assert batchnorms and not any(m.training for m in batchnorms)
        assert {name: m.training for name, m in model.named_modules()} == before
        with pytest.raises(RuntimeError, match="boom"), mc_dropout(model):
            raise RuntimeError("boom")
        assert {name: m.training for name, m in model.named_modules()} == before
    finally:
        model.eval()


def test_mc_embed_has_variance_and_deterministic_mode_is_eval_mode(model, waves):
    torch.manual_seed(0)
    mean, var = mc_embed(model, waves, passes=8)
    assert mean.shape == var.shape == (2, 32)
    assert bool((var > 0).all()) and not model.training
    # The formula of §5.1, from the same passes.
    torch.manual_seed(0)
    z = mc_samples(model, waves, passes=8)
    assert z.shape == (8, 2, 32)
    assert torch.equal(mean, z.mean(0))
    assert torch.allclose(var, ((z - z.mean(0)) ** 2).mean(0), atol=1e-6)
    # deterministic: exactly eval mode, zero variance; also for a model without dropout.
    det, zero = mc_embed(model, waves, deterministic=True)
    with torch.no_grad():
        assert torch.equal(det, model.eval().embed(waves))
    assert torch.equal(zero, torch.zeros_like(det))
    plain = ECAPA(dropout=0.0, **TINY).eval()
    with torch.no_grad():
        assert torch.equal(mc_embed(plain, waves, deterministic=True)[0], plain.embed(waves))
    # a pass is not the eval embedding, but close to it
    assert not torch.equal(z[0], det)
    assert float(F.cosine_similarity(z.mean(0), det).min()) > 0.5


def test_mc_passes_are_reproducible_under_manual_seed(model, waves):
    torch.manual_seed(123)
    a = mc_embed(model, waves, passes=4)
    torch.manual_seed(123)
    b = mc_embed(model, waves, passes=4)
    c = mc_embed(model, waves, passes=4)  # the generator moved on
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_models_without_dropout_modules_are_refused(waves):
    plain = ECAPA(dropout=0.0, **TINY).eval()
    with pytest.raises(NoDropoutError, match=r"MC dropout needs dropout layers; ECAPA has no dropout module"):
        mc_embed(plain, waves, passes=3)
    assert not any(m.training for m in plain.modules())

    class Recurrent(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.GRU(4, 4, num_layers=2, dropout=0.5)

    with pytest.raises(ValueError, match=r"Recurrent has no dropout module.*nn.RNN/GRU/LSTM"):
        with mc_dropout(Recurrent()):
            pass
    with pytest.raises(NoDropoutError):  # p = 0 does not count
        with mc_dropout(nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.0))):
            pass


def test_any_embedding_model_with_dropout_modules(waves):
    torch.manual_seed(0)
    model = PoolNet(num_speakers=2, speaker_names=["x", "y"]).eval()
    assert [type(m) for m in dropout_layers(model)] == [nn.Dropout, nn.AlphaDropout]
    torch.manual_seed(1)
    mean, var = mc_embed(model, waves, passes=6)
    assert bool((var > 0).all())
    assert torch.equal(mc_embed(model, waves, deterministic=True)[0], model.embed(waves))
    probs = head_probabilities(model, mean)
    assert probs.shape == (2, 2) and torch.allclose(probs.sum(-1), torch.ones(2))


# ----------------------------------------------------------------------------- speaker bank


def test_speaker_bank_centroids_scores_and_verify(model, waves):
    emb = mc_embed(model, waves, deterministic=True)[0]
    extra = mc_embed(model, fsdd("4_george_11")[None], deterministic=True)[0]
    bank = SpeakerBank.from_utterances({"george": torch.cat([emb[:1], extra]), "jackson": emb[1]})
    expected = F.normalize(F.normalize(torch.cat([emb[:1], extra]), dim=-1).mean(0), dim=0)
    assert torch.allclose(bank.embeddings[0], expected, atol=1e-6)
    assert torch.allclose(bank.embeddings.norm(dim=-1), torch.ones(2))
    scores = bank.scores(emb)
    assert scores.shape == (2, 2)
    assert torch.allclose(scores[:, 1], F.cosine_similarity(emb, emb[1:2]), atol=1e-6)
    # deterministic verify: a file against its own single enrolment scores 1 and is accepted
    rows = verify(model, waves, None, {"george": emb[0], "jackson": emb[1]}, threshold=0.99)
    assert [[v.speaker for v in row] for row in rows] == [["george", "jackson"]] * 2
    assert rows[0][0].score == pytest.approx(1.0, abs=1e-5) and rows[0][0].accepted and rows[0][0].score_std == 0.0
    assert rows[1][1].score == pytest.approx(1.0, abs=1e-5) and rows[1][1].accepted
    # MC verify: mean and std of the per-pass cosine scores
    torch.manual_seed(5)
    mc_rows = verify(model, waves, None, bank, threshold=0.5, passes=6)
    torch.manual_seed(5)
    per_pass = F.normalize(mc_samples(model, waves, passes=6), dim=-1) @ bank.embeddings.T  # [K, B, S]
    for b in range(2):
        for s in range(2):
            v = mc_rows[b][s]
            assert v.score == pytest.approx(float(per_pass[:, b, s].double().mean()), abs=1e-6)
            assert v.score_std == pytest.approx(float(per_pass[:, b, s].double().std(correction=0)), abs=1e-6)
            assert v.score_std > 0 and v.accepted == (v.score >= 0.5)


def test_speaker_bank_refuses_bad_enrolment():
    with pytest.raises(ValueError, match="'bob' has no embeddings"):
        SpeakerBank.from_utterances({"alice": torch.ones(4), "bob": torch.zeros(0, 4)})
    with pytest.raises(ValueError, match="'bob' has 3-d embeddings, others 4-d"):
        SpeakerBank.from_utterances({"alice": torch.ones(4), "bob": torch.ones(3)})
    with pytest.raises(ValueError, match="unique"):
        SpeakerBank(["a", "a"], torch.ones(2, 4))
    bank = SpeakerBank(["a"], torch.ones(1, 4))
    with pytest.raises(ValueError, match="size 3"):
        bank.scores(torch.ones(1, 3))
    with pytest.raises(KeyError, match="unknown speaker 'z'; enrolled: a"):
        bank.index("z")


def test_rank_sorts_by_score_and_cuts_to_k():
    names = ["a", "b", "c", "d"]
    ranked = rank(names, torch.tensor([0.1, 0.7, 0.7, 0.3]), torch.tensor([0.0, 0.1, 0.2, 0.3]), threshold=0.5, top_k=3)
    assert [(v.speaker, v.score, v.accepted) for v in ranked] == [("b", pytest.approx(0.7), True),
                                                                  ("c", pytest.approx(0.7), True),
                                                                  ("d", pytest.approx(0.3), False)]
    assert [v.speaker for v in rank(names, torch.arange(4.0))] == names  # bank order without top_k
    assert rank(names, torch.arange(4.0))[0].accepted is None


# ----------------------------------------------------------------------------- segments


@pytest.mark.parametrize("n, size, hop", [(10, 4, None), (10, 4, 2), (12, 4, None), (3, 4, None), (4, 4, 1),
                                          (48001, 16000, 8000), (1, 1, None)])
def test_segments_cover_the_whole_recording(n, size, hop):
    bounds = segment_bounds(n, size, hop)
    covered = np.zeros(n, dtype=bool)
    for a, b in bounds:
        assert 0 <= a < b <= n and b - a == min(size, n)
        covered[a:b] = True
    assert covered.all()
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert [a for a, _ in bounds] == sorted({a for a, _ in bounds})  # increasing, no duplicates


def test_segments_of_a_long_real_recording():
    wave = torch.cat([fsdd(f"{d}_theo_5") for d in range(10)])  # about 4 s of one speaker
    segs = segments(wave, 16000, seconds=1.0, hop=0.5)
    bounds = segment_bounds(len(wave), 16000, 8000)
    assert segs.shape == (len(bounds), 16000)
    for row, (a, b) in zip(segs, bounds):
        assert torch.equal(row, wave[a:b])
    assert torch.equal(segs[-1], wave[-16000:])  # the tail is covered
    short = wave[:5000]
    assert torch.equal(segments(short, 16000, seconds=1.0), short[None])
    with pytest.raises(ValueError, match="skip audio"):
        segments(wave, 16000, seconds=1.0, hop=1.5)
    with pytest.raises(ValueError, match="less than the 1 s"):
        segments(short, 16000, seconds=3.0, min_seconds=1.0)
    with pytest.raises(ValueError, match="empty"):
        segments(wave[:0], 16000)


def test_embed_recording_aggregates_segments_and_mc_variance(model):
    wave = torch.cat([fsdd(f"{d}_theo_5") for d in range(6)])
    # one segment, no MC: the normalised eval-mode embedding, zero variance
    whole = embed_recording(model, wave, seconds=100.0)
    with torch.no_grad():
        ref = F.normalize(model.eval().embed(wave[None])[0], dim=0)
    assert whole.segments == 1 and whole.passes == 1
    assert torch.allclose(whole.embedding, ref, atol=1e-6) and float(whole.variance.abs().max()) == 0.0
    # several segments, no MC: the spread of the normalised segment embeddings
    rec = embed_recording(model, wave, seconds=0.6, batch_size=2)
    segs = segments(wave, 16000, 0.6)
    with torch.no_grad():
        u = F.normalize(model.embed(segs), dim=-1)
    assert rec.segments == len(segs) > 2
    assert torch.allclose(rec.embedding, F.normalize(u.mean(0), dim=0), atol=1e-5)
    assert torch.allclose(rec.variance, u.var(0, correction=0), atol=1e-6)
    # with MC: law of total variance = mean MC variance of a segment + variance of the segment means
    torch.manual_seed(3)
    mc = embed_recording(model, wave, seconds=0.6, passes=5)
    assert mc.samples.shape == (5, len(segs), 32) and mc.per_pass.shape == (5, 32)
    v = F.normalize(mc.samples.double(), dim=-1)
    total = v.var(0, correction=0).mean(0) + v.mean(0).var(0, correction=0)
    assert torch.allclose(mc.variance.double(), total, atol=1e-6)
    assert float(mc.variance.sum()) > float(rec.variance.sum())
    torch.manual_seed(3)
    assert torch.equal(embed_recording(model, wave, seconds=0.6, passes=5).embedding, mc.embedding)
    assert torch.allclose(aggregate(mc.samples).per_pass, mc.per_pass)
