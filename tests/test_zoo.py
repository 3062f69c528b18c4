"""Zoo: AAM-softmax head, ECAPA, the shared LightningModule (training, trial validation, checkpoints)."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from speakerzoo.features import FeatureConfig
from speakerzoo.scoring import Trials, eer
from speakerzoo.zoo import AAMSoftmax, ECAPA, InvalidCheckpointError, SpeakerEmbeddingModule

TINY = dict(channels=[16, 16, 16, 16, 48], embedding_dim=16, attention_channels=8, se_channels=8)
SR = 16000


# ----------------------------------------------------------------------------- AAM-softmax


def test_aam_softmax_learns_separable_data():
    torch.manual_seed(0)
    centres = F.normalize(torch.randn(4, 8), dim=-1) * 3
    labels = torch.arange(4).repeat_interleave(16)
    x = centres[labels] + 0.3 * torch.randn(64, 8)
    head = AAMSoftmax(8, 4, margin=0.2, scale=30.0)
    opt = torch.optim.SGD(head.parameters(), lr=0.5)
    losses = []
    for _ in range(30):
        loss, logits = head(x, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert (logits.argmax(-1) == labels).float().mean() == 1.0


def test_aam_margin_raises_loss_and_logits_have_no_margin():
    torch.manual_seed(0)
    emb, labels = torch.randn(10, 8), torch.randint(0, 5, (10,))
    with_margin = AAMSoftmax(8, 5, margin=0.2, scale=30.0)
    plain = AAMSoftmax(8, 5, margin=0.0, scale=30.0)
    plain.load_state_dict(with_margin.state_dict())
    loss_m, logits_m = with_margin(emb, labels)
    loss_0, logits_0 = plain(emb, labels)
    assert loss_m > loss_0
    torch.testing.assert_close(logits_m, logits_0)
    expected = 30.0 * F.normalize(emb, dim=-1) @ F.normalize(with_margin.classifier.weight, dim=-1).T
    torch.testing.assert_close(logits_m, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(loss_0, F.cross_entropy(expected, labels), atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- ECAPA


def test_ecapa_shapes_and_relative_lengths():
    model = ECAPA(num_speakers=3, **TINY).eval()
    wav = torch.randn(3, SR)
    with torch.no_grad():
        emb = model.embed(wav, torch.tensor([SR, 12000, 8000]))
        assert emb.shape == (3, 16) and torch.isfinite(emb).all()
        assert model(wav).shape == (3, 16)
        feats, n = model.frontend(wav, torch.tensor([SR, 12000, 8000]))
        assert feats.shape[-1] == 80
        loss, logits = model.training_loss(emb, torch.tensor([0, 1, 2]))
        assert logits.shape == (3, 3) and loss.ndim == 0


def test_ecapa_padding_invariance_is_approximate():
    """A padded batch vs the clip alone. speechbrain's TDNN convolutions pad 'same' with
    reflection at the end of the padded tensor, so frames near the end of a shorter clip
    see its zero padding instead of its own reflection: not exactly invariant. Measured
    (untrained, batch-norm statistics from 3 random batches): tiny config, 0.5 s clip padded
    to 1 s: max |diff| 5e-3 on an embedding of norm 0.4, cosine 0.99977; default 1024/3072
    config, 2 s padded to 4 s: max |diff| 1.5e-3 (norm 0.96), cosine 0.99998."""
    torch.manual_seed(0)
    model = ECAPA(num_speakers=2, **TINY)
    with torch.no_grad():  # non-trivial batch-norm statistics
        for _ in range(3):
            model.embed(torch.randn(4, SR))
    model.eval()
    clip = torch.randn(SR)
    diffs = []
    with torch.no_grad():
        for n in (8000, 12000):
            alone = model.embed(clip[:n].unsqueeze(0))
            batch = torch.stack([F.pad(clip[:n], (0, SR - n)), torch.randn(SR)])
            padded = model.embed(batch, torch.tensor([n, SR]))[:1]
            diffs.append((alone - padded).abs().max().item())
            assert F.cosine_similarity(alone, padded).item() > 0.999
        # padding that adds no frame changes nothing
        alone = model.embed(clip[: SR - 50].unsqueeze(0))
        padded = model.embed(torch.stack([F.pad(clip[: SR - 50], (0, 50)), clip]), torch.tensor([SR - 50, SR]))[:1]
        torch.testing.assert_close(alone, padded, atol=1e-6, rtol=0)
    assert 0 < max(diffs) < 0.05, diffs


# ----------------------------------------------------------------------------- synthetic data


def synth_utterance(speaker: int, seconds: float, g: torch.Generator) -> torch.Tensor:
    """Sinusoid mixture whose frequencies identify the speaker, with random phase and noise."""
    t = torch.arange(int(seconds * SR)) / SR
    base = 150.0 + 90.0 * speaker
    wav = sum(
        torch.sin(2 * math.pi * base * h * t + 6.28 * torch.rand(1, generator=g)) / h for h in (1, 2, 3, 5)
    )
    return 0.3 * wav + 0.05 * torch.randn(t.shape, generator=g)


def collate(items):
    lengths = torch.tensor([len(w) for w, _ in items])
    waves = torch.zeros(len(items), int(lengths.max()))
    for i, (w, _) in enumerate(items):
        waves[i, : len(w)] = w
    key = items[0][1][0]
    return {"waveforms": waves, "lengths": lengths, key: torch.tensor([v for _, (_, v) in items])}


class SynthDataModule(L.LightningDataModule):
    """4 training speakers; 4 validation speakers x 4 utterances (corpus indices 100..115)."""

    def __init__(self, root: Path = Path("/nonexistent"), batch_size: int = 8):
        super().__init__()
        self.save_hyperparameters()  # a Path among the hyper-parameters, on purpose
        g = torch.Generator().manual_seed(0)
        self.train_items = [
            (synth_utterance(s, 0.4 + 0.4 * torch.rand(1, generator=g).item(), g), ("speakers", s))
            for s in range(4)
            for _ in range(4)
        ]
        self.val_speakers = [s for s in range(4, 8) for _ in range(4)]
        self.val_items = [
            (synth_utterance(s, 0.4 + 0.4 * torch.rand(1, generator=g).item(), g), ("index", 100 + i))
            for i, s in enumerate(self.val_speakers)
        ]
        n = len(self.val_items)
        pairs = [
            [100 + i, 100 + j, int(self.val_speakers[i] == self.val_speakers[j])] for i in range(n) for j in range(i + 1, n)
        ]
        ident = []
        for a in range(0, n, 2):
            pos = next(j for j in range(n) if j != a and self.val_speakers[j] == self.val_speakers[a])
            others = [j for j in range(n) if self.val_speakers[j] != self.val_speakers[a]]
            negs = [others[k % len(others)] for k in range(99)]
            ident.append([100 + a, 100 + pos] + [100 + j for j in negs])
        self._trials = Trials(pairs=torch.tensor(pairs), ident=torch.tensor(ident))

    def trials(self, part: str) -> Trials:
        return self._trials

    def train_dataloader(self):
        return DataLoader(self.train_items, batch_size=self.hparams.batch_size, shuffle=True, collate_fn=collate)

    def val_dataloader(self):
        return DataLoader(self.val_items, batch_size=5, collate_fn=collate)

    test_dataloader = val_dataloader
    predict_dataloader = val_dataloader


class TinyMean(SpeakerEmbeddingModule):
    """Another model class: mean of the valid frames, then a linear layer."""

    def __init__(self, num_speakers: int = 0, sample_rate: int = SR, frontend="fbank80", speaker_names=None, dim: int = 8):
        super().__init__(num_speakers, sample_rate, frontend, speaker_names)
        self.save_hyperparameters()
        self.embedding_dim = dim
        self.proj = nn.Linear(self.frontend.dim, dim)
        self.head = AAMSoftmax(dim, self.num_speakers) if self.num_speakers else None

    def encode(self, features, frame_lengths):
        mask = (torch.arange(features.shape[1], device=features.device) < frame_lengths[:, None]).unsqueeze(-1)
        return self.proj((features * mask).sum(1) / frame_lengths[:, None])


def trainer(**kwargs) -> L.Trainer:
    options = dict(
        max_epochs=1,
        limit_train_batches=2,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    options.update(kwargs)
    return L.Trainer(**options)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """An ECAPA trained for two steps, its datamodule, trainer and checkpoint."""
    torch.manual_seed(0)
    dm = SynthDataModule(root=Path("/data/synth"))
    names = [f"spk{i}" for i in range(4)]
    model = ECAPA(
        num_speakers=4,
        speaker_names=names,
        frontend=FeatureConfig(kind="fbank", n_mels=40),  # a dataclass in the hyper-parameters, on purpose
        warmup_epochs=0.5,
        **TINY,
    )
    t = trainer()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t.fit(model, datamodule=dm)
    path = tmp_path_factory.mktemp("ckpt") / "ecapa.ckpt"
    t.save_checkpoint(path)
    return model, dm, t, path


# ----------------------------------------------------------------------------- training and validation


def test_fit_logs_training_and_trial_metrics(fitted):
    model, _, t, _ = fitted
    metrics = t.callback_metrics
    for key in ("train/loss", "train/acc", "val/eer", "val/mindcf", "val/ident_acc"):
        assert key in metrics, sorted(metrics)
    assert 0.0 <= metrics["val/eer"].item() <= 1.0
    assert 0.0 <= metrics["val/ident_acc"].item() <= 1.0
    assert torch.isfinite(metrics["train/loss"])
    assert "train/lr" in t.logged_metrics
    assert model.trainer.global_step == 2


def direct_scoring(model, dm):
    """Embeddings of every val utterance in one batch, and the EER of the val pairs scored by hand."""
    model.eval()
    with torch.no_grad():  # one utterance at a time, as validation embeds them (no padding)
        batch = collate(dm.val_items)
        emb = torch.cat([model.embed(w[None, :n]) for w, n in zip(batch["waveforms"], batch["lengths"].tolist())])
    pairs = dm._trials.pairs
    scores = F.cosine_similarity(emb[pairs[:, 0] - 100], emb[pairs[:, 1] - 100])
    return emb, eer(scores, pairs[:, 2])


def test_validation_eer_equals_direct_scoring(fitted):
    from speakerzoo.scoring import identification_accuracy

    model, dm, t, _ = fitted
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = t.validate(model, datamodule=dm, verbose=False)[0]
    emb, pair_eer = direct_scoring(model, dm)
    assert out["val/eer"] == pytest.approx(pair_eer, abs=1e-5)
    ident = dm._trials.ident - 100
    assert out["val/ident_acc"] == pytest.approx(identification_accuracy(emb[ident[:, 0]], emb[ident[:, 1:]]), abs=1e-6)


def test_validation_scores_the_right_utterances():
    """Mean log-mel spectra separate the synthetic speakers: the trial metrics must show it
    (a wrong index -> embedding mapping would give chance-level numbers)."""
    oracle = TinyMean(frontend={"kind": "fbank", "n_mels": 40, "normalize": "none"}, dim=40)
    with torch.no_grad():
        oracle.proj.weight.copy_(torch.eye(40))
        oracle.proj.bias.zero_()
    dm = SynthDataModule()
    out = trainer().validate(oracle, datamodule=dm, verbose=False)[0]
    _, pair_eer = direct_scoring(oracle, dm)
    assert out["val/eer"] == pytest.approx(pair_eer, abs=1e-6)
    assert out["val/eer"] < 0.1 and out["val/ident_acc"] > 0.9, out


def test_test_predict_and_validation_without_trials(fitted):
    model, dm, t, _ = fitted
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = t.test(model, datamodule=dm, verbose=False)[0]
        assert {"test/eer", "test/mindcf", "test/ident_acc"} <= set(out)
        predictions = t.predict(model, datamodule=dm)
    index = torch.cat([p["index"] for p in predictions])
    assert index.tolist() == list(range(100, 116))
    assert torch.cat([p["embedding"] for p in predictions]).shape == (16, 16)
    plain = trainer()
    with pytest.warns(UserWarning, match="no trials"):
        out = plain.validate(model, dataloaders=dm.val_dataloader(), verbose=False)[0]
    assert "val/eer" not in out


# ----------------------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip(fitted):
    model, dm, _, path = fitted
    checkpoint = torch.load(path, weights_only=True)  # plain data only, Path and dataclass included
    meta = checkpoint["speakerzoo"]
    assert meta["class_path"] == "speakerzoo.zoo.ecapa.ECAPA"
    assert meta["frontend"]["n_mels"] == 40 and meta["sample_rate"] == SR and meta["embedding_dim"] == 16
    assert meta["speaker_names"] == ["spk0", "spk1", "spk2", "spk3"]
    assert checkpoint["datamodule_hyper_parameters"]["root"] == "/data/synth"

    loaded = SpeakerEmbeddingModule.from_pretrained(path)
    assert type(loaded) is ECAPA and not loaded.training
    assert loaded.speaker_names == meta["speaker_names"] and loaded.frontend.config == model.frontend.config
    assert ECAPA.from_pretrained(path).num_speakers == 4
    model.eval()
    wav, lengths = torch.randn(3, SR), torch.tensor([SR, 9000, 12345])
    with torch.no_grad():
        torch.testing.assert_close(loaded.embed(wav, lengths), model.embed(wav, lengths), atol=1e-6, rtol=0)


def test_shared_arguments_passed_on_are_hyper_parameters():
    """Models take the base class's arguments through **kwargs; all of them are still recorded,
    a fixed one (no warm-up) is neither accepted nor recorded, and a model that names its
    arguments records only those."""
    from speakerzoo.zoo import DeepSpeaker

    ecapa = ECAPA(num_speakers=2, lr=0.01, **TINY)
    assert {k: ecapa.hparams[k] for k in ("num_speakers", "lr", "weight_decay", "warmup_epochs", "init_from")} == {
        "num_speakers": 2, "lr": 0.01, "weight_decay": 1e-4, "warmup_epochs": 0.0, "init_from": None}
    assert ecapa.hparams.frontend == "fbank80" and ecapa.hparams.embedding_dim == 16
    deep = DeepSpeaker(width=0.125, blocks=1, weight_decay=0.0)
    assert "warmup_epochs" not in deep.hparams and deep.hparams.lr == 0.05 and deep.hparams.weight_decay == 0.0
    with pytest.raises(TypeError, match="warmup_epochs"):
        DeepSpeaker(width=0.125, blocks=1, warmup_epochs=1.0)
    assert set(TinyMean(num_speakers=2).hparams) == {"num_speakers", "sample_rate", "frontend", "speaker_names", "dim"}


def test_drop_head_with_new_speaker_count(fitted):
    model, _, _, path = fitted
    with pytest.warns(UserWarning, match=r"head\.classifier\.weight \[4, 16\] \(model now has \[7, 16\]\)"):
        loaded = ECAPA.from_pretrained(path, num_speakers=7)
    assert loaded.head.num_classes == 7 and loaded.num_speakers == 7 and loaded.speaker_names is None
    for key, value in model.encoder.state_dict().items():
        assert torch.equal(loaded.encoder.state_dict()[key], value), key
    with pytest.warns(UserWarning, match="not loaded"):
        no_head = ECAPA.from_pretrained(path, drop_head=True)
    assert no_head.head is None and no_head.num_speakers == 0
    with pytest.warns(UserWarning, match="not loaded"):
        same_size = ECAPA.from_pretrained(path, drop_head=True, num_speakers=4)
    assert not torch.equal(same_size.head.classifier.weight, model.head.classifier.weight)


def test_checkpoint_of_another_class_is_rejected(tmp_path, fitted):
    _, dm, _, ecapa_path = fitted
    tiny = TinyMean(num_speakers=4)
    t = trainer(limit_train_batches=1, limit_val_batches=0)
    t.fit(tiny, datamodule=dm)
    path = tmp_path / "tiny.ckpt"
    t.save_checkpoint(path)
    assert type(SpeakerEmbeddingModule.from_pretrained(path)) is TinyMean
    with pytest.raises(InvalidCheckpointError) as error:
        ECAPA.from_pretrained(path)
    message = str(error.value)
    assert str(path) in message and "TinyMean" in message and "TinyMean.from_pretrained" in message
    with pytest.raises(InvalidCheckpointError, match="ECAPA"):
        TinyMean.from_pretrained(ecapa_path)


@pytest.mark.parametrize(
    "class_path,match",
    [
        ("collections.OrderedDict", "not a speakerzoo SpeakerEmbeddingModule"),
        ("speakerzoo.features.Frontend", "not a speakerzoo SpeakerEmbeddingModule"),
        ("some_module_never_imported.Model", "import some_module_never_imported first"),
    ],
)
def test_foreign_class_paths_are_refused(tmp_path, fitted, class_path, match):
    _, _, _, path = fitted
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["speakerzoo"]["class_path"] = class_path
    forged = tmp_path / "forged.ckpt"
    torch.save(checkpoint, forged)
    with pytest.raises(InvalidCheckpointError, match=match):
        SpeakerEmbeddingModule.from_pretrained(forged)


class NotPlain:
    pass


def test_bad_files_give_clear_errors(tmp_path, fitted):
    _, _, _, path = fitted
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        SpeakerEmbeddingModule.from_pretrained(tmp_path / "missing.ckpt")
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint")
    with pytest.raises(InvalidCheckpointError, match="notes.ckpt"):
        SpeakerEmbeddingModule.from_pretrained(text)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(InvalidCheckpointError, match="truncated.ckpt"):
        SpeakerEmbeddingModule.from_pretrained(truncated)
    pickled = tmp_path / "pickled.ckpt"
    torch.save({"state_dict": {}, "evil": NotPlain()}, pickled)
    with pytest.raises(InvalidCheckpointError, match="pickled.ckpt.*plain data"):
        SpeakerEmbeddingModule.from_pretrained(pickled)
    weights = tmp_path / "weights.pt"
    torch.save({"encoder.weight": torch.zeros(2)}, weights)
    with pytest.raises(InvalidCheckpointError, match="weights.pt.*not a Lightning checkpoint"):
        SpeakerEmbeddingModule.from_pretrained(weights)


def test_cosine_schedule_with_warmup():
    model = TinyMean(num_speakers=4)
    model.lr, model.warmup_epochs = 1.0, 1.0
    t = trainer(max_epochs=4, limit_train_batches=2, limit_val_batches=0)
    t.fit(model, datamodule=SynthDataModule())
    scheduler = t.lr_scheduler_configs[0].scheduler
    factors = [scheduler.lr_lambdas[0](step) for step in range(8)]
    assert factors[:3] == pytest.approx([1 / 3, 2 / 3, 1.0])  # warm-up over one epoch = 2 steps
    assert all(a > b for a, b in zip(factors[2:], factors[3:]))  # then cosine decay
    assert scheduler.lr_lambdas[0](8) == pytest.approx(0.0)


def test_evaluation_embeddings_ignore_batch_padding():
    """Validation, test and predict embed each row at its own length (ECAPA's reflect padding
    would otherwise let the padding change the embedding)."""
    torch.manual_seed(0)
    model = ECAPA(num_speakers=4, channels=[32, 32, 32, 32, 96], embedding_dim=16, attention_channels=8, se_channels=8)
    model.train()
    with torch.no_grad():  # non-trivial batch-norm statistics
        for _ in range(3):
            model.embed(torch.randn(4, 16000))
    model.eval()
    lengths = torch.tensor([16000, 9000, 9000, 5000])
    waves = torch.randn(4, 16000) * (torch.arange(16000)[None, :] < lengths[:, None])
    batch = {"waveforms": waves, "lengths": lengths, "index": torch.arange(4)}
    with torch.no_grad():
        exact = model.embed_unpadded(batch)
        alone = torch.cat([model.embed(waves[i:i + 1, :n]) for i, n in enumerate(lengths.tolist())])
        padded = model.embed(waves, lengths)
        predicted = model.predict_step(batch, 0)["embedding"]
    torch.testing.assert_close(exact, alone, rtol=0, atol=1e-5)
    assert torch.equal(predicted, exact)
    assert (padded[1:] - alone[1:]).abs().max() > 1e-4  # what the grouping avoids
