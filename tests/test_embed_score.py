"""`speakerzoo embed` and `speakerzoo score`: exact unpadded batching, the embeddings file, cosine
scoring of corpus and text trials, score normalisation (mean, AS-norm), threshold at a FAR, DET curve."""

from __future__ import annotations

import json
import math
import shutil
import warnings
from pathlib import Path

import h5py
import lightning
import numpy as np
import pytest
import soundfile as sf
import torch

from speakerzoo.audio import load_audio
from speakerzoo.commands import embed as embed_cmd
from speakerzoo.commands import score as score_cmd
from speakerzoo.embeddings import EmbeddingError, EmbeddingFile, EmbeddingWriter
from speakerzoo.inference.engine import (batch_invariant_kernels, bucket_batches, embed_waveforms, length_batches,
                                         resolve_batching)
from speakerzoo.inference import file_embedding
from speakerzoo.inference.trials import ScoreError, parse_trials
from speakerzoo.scoring import Scorer
from speakerzoo.datamodules import Corpus, SpeakerDataModule
from speakerzoo.datamodules.toy import prepare_toy
from speakerzoo.scoring import (
    as_norm,
    cohort_stats,
    cosine_scores,
    det_curve,
    det_plot_data,
    eer,
    identification_accuracy,
    mean_normalize,
    min_dcf,
    threshold_at_far,
)
from speakerzoo.zoo import ECAPA, SpeakerEmbeddingModule
from speakerzoo.zoo.registry import sha256_of

TINY = dict(channels=[32, 32, 32, 32, 96], embedding_dim=16, attention_channels=8, se_channels=8)
SHARED_FSDD = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fsdd" / "recordings"
PNG = b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """12 toy speakers x 6 utterances (1.5-3 s): the speaker split's test part has 2 speakers,
    24 trial pairs and 12 identification rows; its train part (8 speakers) is the cohort."""
    return prepare_toy(tmp_path_factory.mktemp("toy") / "toy.h5", speakers=12, utterances=6, progress=False)


@pytest.fixture(scope="module")
def checkpoint(corpus, tmp_path_factory) -> Path:
    """A tiny ECAPA after one training step (BatchNorm statistics moved), saved by Lightning."""
    folder = tmp_path_factory.mktemp("ckpt")
    dm = SpeakerDataModule(str(corpus), speakers_per_batch=4, num_workers=0, crop_seconds=1.0)
    dm.setup("fit")
    torch.manual_seed(0)
    model = ECAPA(num_speakers=dm.num_speakers, **TINY)
    trainer = lightning.Trainer(max_steps=1, use_distributed_sampler=False, logger=False, enable_checkpointing=False,
                                accelerator="cpu", enable_progress_bar=False, enable_model_summary=False,
                                num_sanity_val_steps=0, limit_val_batches=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, datamodule=dm)
    trainer.save_checkpoint(folder / "tiny.ckpt")
    return folder / "tiny.ckpt"


@pytest.fixture(scope="module")
def model(checkpoint) -> SpeakerEmbeddingModule:
    return SpeakerEmbeddingModule.from_pretrained(checkpoint)


def one_at_a_time(model, waves) -> torch.Tensor:
    """The reference: ``model.embed`` of each waveform alone, under the same (batch-invariant) kernels."""
    with batch_invariant_kernels(), torch.inference_mode():
        return torch.cat([model.embed(torch.as_tensor(w, dtype=torch.float32)[None]) for w in waves])


def no_temporary_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if ".tmp-" in p.name]


def file_contents(path: Path, skip=("created",)) -> dict:
    with h5py.File(path, "r") as h5:
        data = {k: h5[k][:].tolist() for k in h5}
        attrs = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in h5.attrs.items() if k not in skip}
    return {"data": data, "attrs": attrs}


# ----------------------------------------------------------------------------- scoring functions


def test_as_norm_matches_a_hand_computation():
    g = torch.Generator().manual_seed(0)
    enrol, test = torch.randn(6, 5, generator=g, dtype=torch.float64), torch.randn(6, 5, generator=g, dtype=torch.float64)
    cohort = torch.randn(30, 5, generator=g, dtype=torch.float64)
    k = 7

    def cos(a, b):
        return float(a @ b) / math.sqrt(float(a @ a) * float(b @ b))

    def stats(v):
        top = sorted((cos(v, c) for c in cohort), reverse=True)[:k]
        mu = sum(top) / k
        return mu, math.sqrt(sum((x - mu) ** 2 for x in top) / k)

    expected = []
    for e, t in zip(enrol, test):
        s = cos(e, t)
        (mu_e, sd_e), (mu_t, sd_t) = stats(e), stats(t)
        expected.append(((s - mu_e) / sd_e + (s - mu_t) / sd_t) / 2)

    mu_e, sd_e = cohort_stats(enrol, cohort, top_k=k, chunk=4)  # chunking must not matter
    mu_t, sd_t = cohort_stats(test, cohort, top_k=k)
    for i, v in enumerate(enrol):
        assert (float(mu_e[i]), float(sd_e[i])) == pytest.approx(stats(v), abs=1e-12)
    got = as_norm(torch.nn.functional.cosine_similarity(enrol, test), (mu_e, sd_e), (mu_t, sd_t))
    assert got.tolist() == pytest.approx(expected, abs=1e-12)
    # Through the command's scorer (rows of one table, stats per row) the same numbers.
    emb = torch.cat([enrol, test])
    scorer = Scorer(emb, cohort, asnorm_top_k=k)
    assert scorer.pairs(torch.arange(6), torch.arange(6, 12)).tolist() == pytest.approx(expected, rel=1e-5, abs=1e-5)  # float32
    # Rows no trial uses get no cohort statistics (issue 24: 1 M rows, 50 k trials); later calls
    # reuse the rows already known and add only new ones, with the same scores as all rows at once.
    big = torch.cat([emb, torch.randn(500, 5, generator=g, dtype=torch.float64)])
    lazy = Scorer(big, cohort, asnorm_top_k=k)
    first = lazy.pairs(torch.arange(6), torch.arange(6, 12))
    assert int(lazy._known.sum()) == 12
    ident = lazy.ident_scores(torch.tensor([[0, 6, 20, 21], [1, 7, 20, 22]]))
    assert int(lazy._known.sum()) == 15
    mu, sd = cohort_stats(lazy.emb, lazy.cohort, top_k=k)  # every row, as before
    assert torch.allclose(first, as_norm((lazy.emb[:6] * lazy.emb[6:12]).sum(-1), (mu[:6], sd[:6]), (mu[6:12], sd[6:12])),
                          atol=1e-6)
    rows = torch.tensor([[0, 6, 20, 21], [1, 7, 20, 22]])
    plain = cosine_scores(lazy.emb[rows[:, 0]].unsqueeze(1), lazy.emb[rows[:, 1:]])
    assert torch.allclose(ident, as_norm(plain, (mu[rows[:, :1]], sd[rows[:, :1]]), (mu[rows[:, 1:]], sd[rows[:, 1:]])),
                          atol=1e-6)
    # top_k beyond the cohort keeps all of it; fewer than 2 is refused.
    assert torch.allclose(cohort_stats(enrol, cohort, top_k=500)[0], cohort_stats(enrol, cohort, top_k=30)[0])
    with pytest.raises(ValueError, match="at least 2"):
        cohort_stats(enrol, cohort, top_k=1)


def test_mean_normalisation():
    g = torch.Generator().manual_seed(1)
    emb = torch.randn(8, 4, generator=g, dtype=torch.float64) + 3.0  # a common offset dominates raw cosines
    cohort = torch.randn(50, 4, generator=g, dtype=torch.float64) + 3.0
    mu = cohort.mean(0)
    out = mean_normalize(emb, mu)
    for row, e in zip(out, emb):
        d = e - mu
        assert row.tolist() == pytest.approx((d / d.norm()).tolist(), abs=1e-12)
    scorer = Scorer(emb.float(), cohort.float(), mean_norm=True)
    enrol, test = torch.tensor([0, 1, 2, 3]), torch.tensor([4, 5, 6, 7])
    d = emb - mu
    expected = torch.nn.functional.cosine_similarity(d[enrol], d[test])
    assert scorer.pairs(enrol, test).tolist() == pytest.approx(expected.tolist(), abs=1e-5)
    raw = torch.nn.functional.cosine_similarity(emb[enrol], emb[test])
    assert raw.min() > 0.5 and (expected - raw).abs().max() > 0.2  # the offset is gone
    with pytest.raises(ValueError, match="cohort"):
        Scorer(emb, None, mean_norm=True)


def test_threshold_at_far_is_the_largest_far_not_above_the_target():
    g = torch.Generator().manual_seed(2)
    labels = (torch.rand(300, generator=g) < 0.3).long()
    scores = torch.randn(300, generator=g, dtype=torch.float64) + 1.5 * labels
    scores[:40] = scores[:40].round(decimals=1)  # ties
    candidates = torch.cat([scores.unique(), torch.tensor([math.inf], dtype=torch.float64)])
    neg, pos = scores[labels == 0], scores[labels == 1]

    def rates(t):
        return float((neg >= t).double().mean()), float((pos < t).double().mean())

    for far in (0.0, 0.001, 0.01, 0.05, 0.1, 0.37, 1.0):
        t, p_fa, p_miss = threshold_at_far(scores, labels, far)
        assert (p_fa, p_miss) == pytest.approx(rates(t), abs=1e-12)
        assert p_fa <= far
        allowed = [rates(c) for c in candidates if rates(c)[0] <= far]
        assert p_fa == pytest.approx(max(fa for fa, _ in allowed), abs=1e-12)
        assert p_miss == pytest.approx(min(miss for _, miss in allowed), abs=1e-12)
    assert threshold_at_far(scores, labels, 0.0).threshold > float(neg.max())
    with pytest.raises(ValueError):
        threshold_at_far(scores, labels, 1.5)


def test_det_plot_data_is_the_probit_of_the_det_curve_and_monotone():
    from scipy.stats import norm

    g = torch.Generator().manual_seed(3)
    labels = (torch.rand(200, generator=g) < 0.5).long()
    scores = torch.randn(200, generator=g, dtype=torch.float64) + labels
    x, y = det_plot_data(scores, labels)
    p_fa, p_miss, _ = det_curve(scores, labels)
    assert x.shape == y.shape == p_fa.shape
    assert bool((x[1:] <= x[:-1]).all()) and bool((y[1:] >= y[:-1]).all())
    assert (x[1:] < x[:-1]).any() and (y[1:] > y[:-1]).any()
    finite = torch.isfinite(x)
    assert x[finite].tolist() == pytest.approx(norm.ppf(p_fa[finite].numpy()).tolist(), abs=1e-9)
    assert x[0] == math.inf and y[-1] == math.inf  # accept-all: P_fa = 1; reject-all: P_miss = 1


def test_parse_trials_detects_the_layout():
    assert parse_trials(["a b 1", "a c 0", "# comment", ""])[2:] == ([1, 0], "enrol test label")
    enrol, test, labels, layout = parse_trials(["target a.wav b.wav", "nontarget a.wav c.wav"])
    assert (enrol, test, labels, layout) == (["a.wav", "a.wav"], ["b.wav", "c.wav"], [1, 0], "label enrol test")
    assert parse_trials(["a b", "c d"])[2:] == (None, "enrol test")
    # Ids that look like labels: the embeddings decide.
    assert parse_trials(["1 0 1"], known=lambda u: u in {"0", "1"})[3] == "enrol test label"
    with pytest.raises(ScoreError, match=":2: expected 2 or 3 columns"):
        parse_trials(["a b 1", "a b c d"])
    with pytest.raises(ScoreError, match="no label"):
        parse_trials(["a b c"])


# ----------------------------------------------------------------------------- embedding


def test_length_batches():
    batches = length_batches([3, 5, 3, 3, 5, 4, 3], batch_size=3)
    assert batches == [[1, 4], [5], [0, 2, 3], [6]]
    assert sorted(i for b in batches for i in b) == list(range(7))


def test_embed_waveforms_equals_one_at_a_time_although_batched(model):
    g = torch.Generator().manual_seed(4)
    lengths = [16000] * 7 + [12345] * 3 + [9000, 20000, 16000, 5000]
    waves = [0.1 * torch.randn(n, generator=g) for n in lengths]
    reference = one_at_a_time(model, waves)
    calls = []
    for batch_size, threads in ((4, None), (8, 1), (16, 2)):
        got = embed_waveforms(model, waves, batch_size=batch_size, threads=threads, progress=calls.append)
        assert torch.equal(got, reference), (batch_size, (got - reference).abs().max())
    assert calls[:6] == [1, 4, 4, 3, 1, 1] and sum(calls) == 3 * len(waves)  # longest first, equal lengths together
    # What the exact-length grouping avoids: padding a short utterance changes its embedding.
    padded = torch.nn.utils.rnn.pad_sequence([waves[-1], waves[0]], batch_first=True)
    with torch.inference_mode():
        e = model.embed(padded, torch.tensor([5000, 16000]))
    assert not torch.allclose(e[0], reference[-1], atol=1e-4)


def _with_statistics(model):
    torch.manual_seed(0)
    for module in model.modules():  # non-trivial statistics, so that a shift of the padding would show
        if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    return model.eval()


def _varied_speech(speech_commands_root, count=12):
    """Real one-second clips cut to lengths from 0.45 to 1 s: no two alike, as in a real corpus."""
    import soundfile

    files = sorted(Path(speech_commands_root).glob("*/*_nohash_*.wav"))[::97][:count]
    waves = []
    for k, f in enumerate(files):
        data, _ = soundfile.read(f, dtype="float32")
        waves.append(torch.from_numpy(data[: 7200 + 731 * k]))
    return waves


@pytest.mark.parametrize("name", ["se_cnn_bigru", "deep_speaker", "resnet_mfcc"])
def test_padded_buckets_give_the_embeddings_alone_for_exactly_masked_models(name, speech_commands_root):
    from speakerzoo.zoo.deep_speaker import DeepSpeaker
    from speakerzoo.zoo.resnet_mfcc import ResNetMFCC
    from speakerzoo.zoo.se_cnn_bigru import SECNNBiGRU

    model = _with_statistics({
        "se_cnn_bigru": lambda: SECNNBiGRU(num_speakers=3, channels=[8, 16, 32], hidden=32, projection_dim=32,
                                           embedding_dim=16),
        "deep_speaker": lambda: DeepSpeaker(num_speakers=3, width=0.125, blocks=1, embedding_dim=32),
        "resnet_mfcc": lambda: ResNetMFCC(num_speakers=3, image_size=64, hidden=32, backbone={
            "embedding_size": 8, "hidden_sizes": [16, 16, 32, 32], "depths": [1, 1, 1, 1]}),
    }[name]())
    assert model.exact_padding and resolve_batching(model, "padded") == "padded"
    assert resolve_batching(model, "auto") == "equal"  # on a CPU: padding made batches slower there
    waves = _varied_speech(speech_commands_root)
    sizes = [len(w) for w in waves]
    assert len(bucket_batches(sizes, 8)) < len(length_batches(sizes, 8)) == len(waves)  # batches, not singles
    alone = one_at_a_time(model, waves)
    padded = embed_waveforms(model, waves, batch_size=8, batching="padded")
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=0)


def test_a_model_that_does_not_mask_padding_is_never_padded(model):
    assert not model.exact_padding and resolve_batching(model, "auto") == "equal"  # ECAPA
    g = torch.Generator().manual_seed(5)
    waves = [0.1 * torch.randn(n, generator=g) for n in (16000, 15000, 14000, 9000)]
    with pytest.raises(ValueError, match="ECAPA does not mask padding exactly.*'crop'"):
        embed_waveforms(model, waves, batching="padded")
    assert torch.equal(embed_waveforms(model, waves, batching="auto"), one_at_a_time(model, waves))
    # crop: the buckets [16000, 15000, 14000] and [9000], each cut to its shortest about its centre
    cropped = embed_waveforms(model, waves, batching="crop")
    crops = [w[(len(w) - 14000) // 2:][:14000] for w in waves[:3]] + [waves[3]]
    assert torch.equal(cropped, one_at_a_time(model, crops))


@pytest.fixture(scope="module")
def speech_folder(tmp_path_factory) -> Path:
    """~20 real FSDD recordings (8 kHz) in <speaker>/ folders, a duplicate (equal lengths), and three bad files."""
    if not SHARED_FSDD.is_dir():
        pytest.skip(f"FSDD recordings not found at {SHARED_FSDD} (the shared real corpora live in ../shared/data)")
    root = tmp_path_factory.mktemp("speech")
    for speaker in ("george", "jackson", "theo"):
        (root / speaker).mkdir()
        for digit in range(7):
            shutil.copy(SHARED_FSDD / f"{digit}_{speaker}_3.wav", root / speaker / f"{digit}_{speaker}_3.wav")
    shutil.copy(SHARED_FSDD / "0_george_3.wav", root / "george" / "copy_of_0.wav")
    (root / "theo" / "notes.wav").write_text("not audio at all")
    sf.write(root / "jackson" / "click.wav", np.full(40, 0.3, dtype=np.float32), 8000)  # too short for the model
    data = (root / "george" / "1_george_3.wav").read_bytes()
    (root / "george" / "cut.wav").write_bytes(data[: len(data) // 2])  # header promises twice as much audio
    return root


def test_embed_a_folder_of_real_speech(model, checkpoint, speech_folder, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out" / "emb.h5"
    assert embed_cmd.main([str(speech_folder), "--checkpoint", str(checkpoint), "--output", str(out),
                           "--batch-size", "4"]) == 0
    printed = capsys.readouterr().out
    assert "skipped          3 file(s)" in printed
    for name, why in (("notes.wav", "unreadable as audio"), ("click.wav", "too short"), ("cut.wav", "truncated")):
        assert any(name in line and why in line for line in printed.splitlines()), (name, printed)
    emb = EmbeddingFile(out)
    assert len(emb) == 22 and emb.embedding.shape == (22, 16) and emb.embedding.dtype == torch.float32
    assert emb.utt_id[:2] == ["george/0_george_3", "george/1_george_3"]  # sorted by relative path
    assert emb.utt_id[7] == "george/copy_of_0" and emb.utt_id[8] == "jackson/0_jackson_3"
    assert set(emb.speaker) == {"george", "jackson", "theo"}
    assert emb.attrs["skipped_count"] == 3 and len(emb.attrs["skipped"]) == 3
    assert emb.attrs["model_class"] == "speakerzoo.zoo.ecapa.ECAPA" and emb.attrs["sample_rate"] == 16000
    assert emb.attrs["checkpoint"] == str(checkpoint.resolve())
    assert emb.attrs["checkpoint_sha256"] == sha256_of(checkpoint) and len(emb.attrs["checkpoint_sha256"]) == 64
    assert emb.attrs["frontend"]["kind"] == "fbank" and emb.attrs["complete"] and emb.attrs["created"]
    waves = [load_audio(p, 16000)[0] for p in emb.paths]
    assert torch.equal(emb.embedding, one_at_a_time(model, waves))
    assert no_temporary_files(out.parent)

    # The same inputs again: the same contents; with SOURCE_DATE_EPOCH the same bytes.
    again = tmp_path / "again.h5"
    assert embed_cmd.main([str(speech_folder), "-c", str(checkpoint), "-o", str(again), "-q"]) == 0
    assert file_contents(again) == file_contents(out)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    first, second = tmp_path / "r1.h5", tmp_path / "r2.h5"
    for path in (first, second):
        assert embed_cmd.main([str(speech_folder), "-c", str(checkpoint), "-o", str(path), "-q"]) == 0
    assert first.read_bytes() == second.read_bytes()
    assert EmbeddingFile(first).attrs["created"] == "2023-11-14T22:13:20+00:00"


def test_embed_a_file_list_and_a_manifest(checkpoint, speech_folder, tmp_path, capsys):
    files = sorted((speech_folder / "theo").glob("[0-9]_*.wav"))[:3]
    listing = tmp_path / "files.txt"
    listing.write_text("# three files\n" + "\n".join(str(p) for p in files) + "\n\n" + str(files[0].parent / "gone.wav") + "\n")
    out = tmp_path / "list.h5"
    assert embed_cmd.main([str(listing), "-c", str(checkpoint), "-o", str(out), "-q"]) == 0
    assert "skipped 1 file(s)" in capsys.readouterr().err
    emb = EmbeddingFile(out)
    assert emb.utt_id == [p.stem for p in files] and emb.speaker == ["", "", ""]
    manifest = tmp_path / "list.csv"
    manifest.write_text("path,speaker\n" + "".join(f"{p},{p.stem.split('_')[1]}\n" for p in files))
    out2 = tmp_path / "manifest.h5"
    assert embed_cmd.main([str(manifest), "-c", str(checkpoint), "-o", str(out2), "-q"]) == 0
    emb2 = EmbeddingFile(out2)
    assert emb2.speaker == ["theo"] * 3 and torch.equal(emb2.embedding, emb.embedding)


def test_embed_a_corpus_part_with_crop(model, checkpoint, corpus, tmp_path):
    out = tmp_path / "test.h5"
    # --max-seconds 1 crops every toy utterance (1.5-3 s) to 16000 samples: batches really hold several.
    assert embed_cmd.main([str(corpus), "--split", "speaker", "--part", "test", "-c", str(checkpoint), "-o", str(out),
                           "--max-seconds", "1", "--batch-size", "5", "-q"]) == 0
    emb = EmbeddingFile(out)
    c = Corpus(corpus)
    index = np.sort(c.split("speaker", "test"))
    ids = c.texts("utt_id")
    assert emb.utt_id == [ids[i] for i in index]
    assert emb.speaker == [c.speakers[c.speaker[i]] for i in index]
    assert emb.attrs["source"] == {"kind": "corpus", "path": str(corpus.resolve()), "split": "speaker", "part": "test"}
    waves = []
    for i in index:
        n = int(c.num_samples[i])
        start = (n - 16000) // 2
        waves.append(c.audio(i, start, start + 16000))
    assert torch.equal(emb.embedding, one_at_a_time(model, waves))
    c.close()


def test_a_failed_run_leaves_the_old_file_alone(checkpoint, corpus, tmp_path, monkeypatch, capsys):
    out = tmp_path / "emb.h5"
    assert embed_cmd.main([str(corpus), "-c", str(checkpoint), "-o", str(out), "-q"]) == 0
    before = out.read_bytes()
    calls = []
    real = file_embedding.embed_waveforms

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(file_embedding, "embed_waveforms", interrupted)
    monkeypatch.setattr(file_embedding, "WINDOW_SAMPLES", 16000 * 20)  # several windows
    assert embed_cmd.main([str(corpus), "-c", str(checkpoint), "-o", str(out), "-q"]) == 130
    assert len(calls) == 2 and out.read_bytes() == before and no_temporary_files(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.wav").write_text("nope")
    assert embed_cmd.main([str(bad), "-c", str(checkpoint), "-o", str(out), "-q"]) == 2
    assert "none of the 1 files could be embedded" in capsys.readouterr().err
    assert out.read_bytes() == before and no_temporary_files(tmp_path)
    with EmbeddingWriter(tmp_path / "x.h5") as w:
        w.add(torch.zeros(1, 3), ["a"], [""], [""])
        with pytest.raises(EmbeddingError, match="twice"):
            w.add(torch.zeros(1, 3), ["a"], [""], [""])
    assert not (tmp_path / "x.h5").exists() and no_temporary_files(tmp_path)


# ----------------------------------------------------------------------------- scoring


@pytest.fixture(scope="module")
def test_embeddings(checkpoint, corpus, tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("emb")
    for part in ("test", "train"):
        assert embed_cmd.main([str(corpus), "--split", "speaker", "--part", part, "-c", str(checkpoint),
                               "-o", str(folder / f"{part}.h5"), "-q"]) == 0
    return folder / "test.h5", folder / "train.h5"


def run_score(capsys, *args) -> dict:
    assert score_cmd.main([*map(str, args), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_score_corpus_trials_as_the_models_own_metrics(model, corpus, test_embeddings, tmp_path, capsys):
    test_h5, _ = test_embeddings
    c = Corpus(corpus)
    pairs, ident = c.trials("speaker", "test")
    index = np.sort(c.split("speaker", "test"))
    waves = [c.audio(i) for i in index]
    c.close()
    emb = one_at_a_time(model, waves)
    row = {int(i): r for r, i in enumerate(index)}
    e = torch.stack([emb[row[int(i)]] for i in pairs[:, 0]])
    t = torch.stack([emb[row[int(i)]] for i in pairs[:, 1]])
    scores = torch.nn.functional.cosine_similarity(e, t)
    labels = torch.as_tensor(pairs[:, 2])
    anchors = torch.stack([emb[row[int(i)]] for i in ident[:, 0]])
    cands = torch.stack([torch.stack([emb[row[int(i)]] for i in r[1:]]) for r in ident])

    det, score_file = tmp_path / "det.png", tmp_path / "scores.txt"
    out = run_score(capsys, test_h5, "--corpus", corpus, "--split", "speaker", "--part", "test", "--det", det,
                    "--scores", score_file, "--far", "0.1")
    assert (out["pairs"], out["targets"], out["ident_rows"]) == (24, 12, 12)
    assert out["eer"] == eer(scores, labels)
    assert out["min_dcf"] == min_dcf(scores, labels)
    assert out["ident_acc"] == identification_accuracy(anchors, cands)
    point = threshold_at_far(scores, labels, 0.1)
    assert (out["at_far"]["threshold"], out["at_far"]["far"], out["at_far"]["miss"]) == tuple(point)
    assert det.read_bytes()[:8] == PNG and det.stat().st_size > 10_000
    written = [line.split() for line in score_file.read_text().splitlines()]
    assert len(written) == 24 and [float(w[2]) for w in written] == pytest.approx(scores.tolist(), abs=1e-6)

    # The same trials as text, in both layouts (VoxCeleb's with file extensions): the same numbers.
    ids = EmbeddingFile(test_h5).utt_id
    name = {int(i): ids[r] for i, r in row.items()}
    plain, vox = tmp_path / "trials.txt", tmp_path / "vox.txt"
    plain.write_text("".join(f"{name[a]} {name[b]} {y}\n" for a, b, y in pairs))
    vox.write_text("".join(f"{y} {name[a]}.wav {name[b]}.wav\n" for a, b, y in pairs))
    for trials in (plain, vox):
        text = run_score(capsys, test_h5, "--trials", trials, "--far", "0.1")
        for key in ("eer", "eer_threshold", "min_dcf", "min_dcf_threshold", "at_far", "pairs", "targets"):
            assert text[key] == out[key], key
        assert "ident_acc" not in text
    # The table, for people.
    assert score_cmd.main([str(test_h5), "--corpus", str(corpus)]) == 0
    table = capsys.readouterr().out
    assert f"{100 * out['eer']:.2f} %" in table and "identification accuracy" in table


def test_score_with_normalisation(test_embeddings, corpus, capsys):
    test_h5, train_h5 = test_embeddings
    emb, cohort = EmbeddingFile(test_h5), EmbeddingFile(train_h5)
    c = Corpus(corpus)
    pairs, _ = c.trials("speaker", "test")
    ids = c.texts("utt_id")
    c.close()
    enrol = emb.rows([ids[i] for i in pairs[:, 0]])
    test = emb.rows([ids[i] for i in pairs[:, 1]])
    labels = torch.as_tensor(pairs[:, 2])

    base = run_score(capsys, test_h5, "--corpus", corpus)
    mean = run_score(capsys, test_h5, "--corpus", corpus, "--mean-norm", "--cohort", train_h5)
    mu = cohort.embedding.double().mean(0).float()
    e = mean_normalize(emb.embedding, mu)
    assert mean["eer"] == eer((e[enrol] * e[test]).sum(-1), labels)
    assert mean["normalisation"].startswith("mean-norm")

    k = 20
    asn = run_score(capsys, test_h5, "--corpus", corpus, "--asnorm", "--cohort", train_h5, "--top-k", k)
    x = torch.nn.functional.normalize(emb.embedding, dim=-1)
    raw = (x[enrol] * x[test]).sum(-1)
    stats = cohort_stats(emb.embedding, cohort.embedding, top_k=k)
    normed = as_norm(raw, (stats[0][enrol], stats[1][enrol]), (stats[0][test], stats[1][test]))
    assert asn["eer"] == eer(normed, labels) and asn["min_dcf"] == min_dcf(normed, labels)
    assert 0.0 <= asn["ident_acc"] <= 1.0 and base["ident_acc"] is not None
    assert asn["eer_threshold"] != base["eer_threshold"]  # really other scores

    assert score_cmd.main([str(test_h5), "--corpus", str(corpus), "--asnorm"]) == 2
    assert "--cohort" in capsys.readouterr().err
    assert score_cmd.main([str(test_h5), "--corpus", str(corpus), "--asnorm", "--cohort", str(test_h5)]) == 0
    assert "also in the cohort" in capsys.readouterr().err
    assert score_cmd.main([str(train_h5), "--corpus", str(corpus)]) == 2  # made from other utterances
    assert "have no embedding" in capsys.readouterr().err


def test_the_console_script_dispatches_both_commands(checkpoint, tmp_path, capsys):
    from speakerzoo.cli import main as cli_main

    for name in ("embed", "score"):
        with pytest.raises(SystemExit) as stop:
            cli_main([name, "--help"])
        assert stop.value.code == 0 and f"speakerzoo {name}" in capsys.readouterr().out
    listing = tmp_path / "files.txt"
    listing.write_text("a.wav\n")
    with pytest.raises(SystemExit) as stop:
        cli_main(["embed", str(listing), "-c", str(checkpoint), "-o", str(tmp_path / "x.h5"), "--part", "test"])
    assert stop.value.code == 2 and "apply to a corpus" in capsys.readouterr().err


@pytest.mark.parametrize("which", ["corpus", "checkpoint"])
def test_an_output_that_is_an_input_is_refused_and_the_input_kept(corpus, checkpoint, tmp_path, which, capsys):
    # `embed C.h5 --output C.h5` replaced the corpus with an embeddings file.
    target = {"corpus": corpus, "checkpoint": checkpoint}[which]
    link = tmp_path / "other_name.h5"
    link.symlink_to(target)  # another spelling of the same file counts too
    before = target.read_bytes()
    for output in (target, link):
        assert embed_cmd.main([str(corpus), "-c", str(checkpoint), "-o", str(output), "-q"]) == 2
        err = capsys.readouterr().err
        assert f"--output {output} is an input of this run" in err and "new name" in err
    assert target.read_bytes() == before


def test_a_long_recording_is_embedded_in_bounded_segments(model, speech_folder, monkeypatch):
    # 150 s of real speech: three 50 s segments, none of the forward passes longer than BATCH_SECONDS.
    from speakerzoo.audio import load_audio
    from speakerzoo.inference.engine import BATCH_SECONDS, near_equal_segments

    rate = model.sample_rate
    clips = [load_audio(p, rate)[0] for p in sorted(speech_folder.rglob("*.wav"))[:6] if p.stat().st_size > 1000]
    speech = np.tile(np.concatenate(clips), 200)[: 150 * rate]
    short = speech[: 20 * rate]
    whole = embed_waveforms(model, [speech, short], long_seconds=None)
    seen = []
    embed = model.embed
    monkeypatch.setattr(model, "embed", lambda x, *a, **k: (seen.append(x.numel()), embed(x, *a, **k))[1])
    got = embed_waveforms(model, [speech, short], batch_size=32, long_seconds=60)
    monkeypatch.undo()
    bounds = near_equal_segments(len(speech), 60 * rate)
    assert [b - a for a, b in bounds] == [50 * rate] * 3
    parts = embed_waveforms(model, [speech[a:b] for a, b in bounds], long_seconds=None)
    torch.testing.assert_close(got[0], parts.mean(0), rtol=0, atol=1e-6)  # equal lengths: the plain mean
    assert torch.equal(got[1], whole[1])  # recordings under the limit are embedded whole, as before
    assert max(seen) <= BATCH_SECONDS * rate and sum(seen) == len(speech) + len(short)
    assert torch.nn.functional.cosine_similarity(got[0], whole[0], dim=0) > 0.9  # near the one-pass embedding
