"""SpeakerDataModule on a small toy corpus: batches, labels, workers, cache, features, ranks, trials."""

from __future__ import annotations

import os
from types import SimpleNamespace

import lightning
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from speakerzoo.datamodules import Corpus, CorpusError, CorpusWriter, SpeakerDataModule
from speakerzoo.datamodules.dataset import collate_crops
from speakerzoo.datamodules.toy import prepare_toy
from speakerzoo.features import PRESETS, frame_count

SR = 16000


@pytest.fixture(scope="module")
def corpus_path(tmp_path_factory):
    # 12 speakers x 6 utterances (1.5-3 s); speaker split: 8 train, 2 val, 2 test speakers.
    return prepare_toy(tmp_path_factory.mktemp("dm") / "toy.h5", speakers=12, utterances=6, seed=0,
                       features=("fbank80",), progress=False)


def make_dm(path, **kwargs) -> SpeakerDataModule:
    args = {"speakers_per_batch": 4, "utterances_per_speaker": 2, "crop_seconds": 2.5, "num_workers": 0,
            "eval_batch_size": 5}
    args.update(kwargs)
    return SpeakerDataModule(str(path), **args)


def epoch_batches(dm: SpeakerDataModule):
    """The train loader's batches and, for each, the sampler entries that made it."""
    loader = dm.train_dataloader()
    entries = list(loader.batch_sampler)
    batches = list(loader)
    assert len(batches) == len(entries) == len(loader) > 0
    return loader, entries, batches


def test_metadata_is_known_after_construction(corpus_path):
    dm = make_dm(corpus_path)
    c = Corpus(corpus_path)
    train_speakers = np.unique(c.speaker[c.split("speaker", "train")])
    assert dm.num_speakers == len(train_speakers) == 8
    assert dm.speaker_names == [c.speakers[s] for s in train_speakers]
    assert dm.sample_rate == SR
    assert dm.feature_dim is None and dm.feature_config is None
    assert dm.hparams["corpus"] == str(corpus_path) and dm.hparams["speakers_per_batch"] == 4
    fdm = make_dm(corpus_path, features="fbank80")
    assert fdm.feature_dim == 80 and fdm.feature_config == PRESETS["fbank80"]
    with pytest.raises(CorpusError, match="mfcc26"):
        make_dm(corpus_path, features="mfcc26")
    text = str(dm)  # a summary, without building any dataloader
    assert "train" in text and " 8 " in text and str(corpus_path) in text


def test_train_batches_shapes_labels_and_content(corpus_path):
    dm = make_dm(corpus_path)
    dm.setup("fit")
    loader, entries, batches = epoch_batches(dm)
    ds = loader.dataset
    crop = int(2.5 * SR)
    short = 0
    for batch, entry in zip(batches, entries):
        assert set(batch) == {"waveforms", "lengths", "speakers"}
        w, lengths, spk = batch["waveforms"], batch["lengths"], batch["speakers"]
        assert w.dtype == torch.float32 and lengths.dtype == torch.int64 and spk.dtype == torch.int64
        assert w.shape == (8, int(lengths.max())) and w.shape[1] <= crop
        assert spk.min() >= 0 and spk.max() < dm.num_speakers
        assert len(set(spk.tolist())) == 4
        for row, (pos, crop_len, seed) in enumerate(entry):
            item = int(ds.items[pos])
            assert dm.speaker_names[int(spk[row])] == dm.corpus.speakers[dm.corpus.speaker[item]]
            n = int(dm.corpus.num_samples[item])
            assert int(lengths[row]) == min(n, crop_len)
            if n <= crop_len:  # shorter than the crop: whole, then zero padding
                short += 1
                np.testing.assert_array_equal(w[row, :n].numpy(), dm.corpus.audio(item))
                assert not w[row, n:].any()
            else:
                start = int(np.random.default_rng(seed).integers(0, n - crop_len + 1))
                np.testing.assert_array_equal(w[row].numpy(), dm.corpus.audio(item, start, start + crop_len))
    assert short > 0  # the corpus has utterances shorter than 2.5 s: their lengths were checked


def test_variable_crops_and_epochs(corpus_path):
    dm = make_dm(corpus_path, crop_seconds=1.4, min_crop_seconds=0.5, seed=3)
    dm.setup("fit")
    loader, _, batches = epoch_batches(dm)
    widths = [b["waveforms"].shape[1] for b in batches]
    assert all(int(0.5 * SR) <= x <= int(1.4 * SR) for x in widths)  # every utterance is longer than 1.4 s
    assert all((b["lengths"] == b["waveforms"].shape[1]).all() for b in batches)  # one length per batch
    assert len(set(widths)) > 1
    first = [b["waveforms"] for b in batches]
    loader.batch_sampler.set_epoch(1)
    second = [b["waveforms"] for b in loader]
    assert any(a.shape != b.shape or not torch.equal(a, b) for a, b in zip(first, second))


def test_two_workers_open_the_file_themselves_and_match(corpus_path):
    dm0 = make_dm(corpus_path)
    dm0.setup("fit")
    _, _, reference = epoch_batches(dm0)

    dm = make_dm(corpus_path, num_workers=2)
    dm.setup("fit")
    dm.corpus.audio(0)  # the main process opens its own handle first; workers must not reuse it
    main_pid = os.getpid()
    assert dm.corpus._pid == main_pid
    loader = dm.train_dataloader()
    assert loader.persistent_workers and loader.num_workers == 2
    dataset = loader.dataset

    def collate(batch):  # runs in the worker
        out = collate_crops(batch)
        out["pids"] = torch.tensor([os.getpid(), dataset.corpus._pid])
        return out

    probe = DataLoader(dataset, batch_sampler=loader.batch_sampler, collate_fn=collate, num_workers=2)
    batches = list(probe)
    assert len(batches) == len(reference)
    worker_pids = set()
    for got, want in zip(batches, reference):
        pid, handle_pid = got.pop("pids").tolist()
        assert pid != main_pid and handle_pid == pid  # a handle opened in the worker itself
        worker_pids.add(pid)
        for key in want:
            assert torch.equal(got[key], want[key])
    assert len(worker_pids) == 2
    for got, want in zip(loader, reference):  # the module's own loader too
        assert all(torch.equal(got[k], want[k]) for k in want)


def test_in_memory_cache_gives_identical_batches(corpus_path):
    for features in (None, "fbank80"):
        disk = make_dm(corpus_path, features=features)
        disk.setup("fit")
        mem = make_dm(corpus_path, features=features, cache_in_memory=True)
        mem.setup("fit")
        assert mem.corpus._audio_cache is not None and disk.corpus._audio_cache is None
        _, _, a = epoch_batches(disk)
        _, _, b = epoch_batches(mem)
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert x.keys() == y.keys()
            assert all(torch.equal(x[k], y[k]) for k in x)
        assert disk.corpus._handles and not mem.corpus._handles  # the cache never touched the file


def test_cached_feature_batches(corpus_path):
    dm = make_dm(corpus_path, features="fbank80", crop_seconds=2.0)
    dm.setup("fit")
    loader, entries, batches = epoch_batches(dm)
    frames = int(frame_count(2 * SR, SR, PRESETS["fbank80"]))
    assert dm.crop_lengths() == (frames, frames)
    for batch, entry in zip(batches, entries):
        assert set(batch) == {"features", "frame_lengths", "speakers"}
        f, n = batch["features"], batch["frame_lengths"]
        assert f.dtype == torch.float32 and n.dtype == torch.int64
        assert f.shape[0] == 8 and f.shape[2] == 80 and f.shape[1] == int(n.max()) <= frames
        for row, (pos, crop_len, seed) in enumerate(entry):
            item = int(loader.dataset.items[pos])
            total = int(dm.corpus.num_frames("fbank80")[item])
            start = int(np.random.default_rng(seed).integers(0, total - crop_len + 1)) if total > crop_len else 0
            want = dm.corpus.features("fbank80", item, start, start + crop_len)
            assert int(n[row]) == len(want) == min(total, crop_len)
            np.testing.assert_array_equal(f[row, : len(want)].numpy(), want)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_val_loader_covers_every_trial_utterance_once_across_ranks(corpus_path, world):
    dm = make_dm(corpus_path, eval_max_seconds=2.0)
    val = dm.trials("val").utterances()
    seen = []
    for rank in range(world):
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=world)  # a simulated rank
        dm.setup("validate")
        mine = []
        for batch in dm.val_dataloader():
            assert set(batch) == {"waveforms", "lengths", "index"}
            assert batch["waveforms"].shape == (len(batch["index"]), int(batch["lengths"].max()))
            for row, i in enumerate(batch["index"].tolist()):
                n = int(dm.corpus.num_samples[i])
                assert int(batch["lengths"][row]) == min(n, 2 * SR)  # centre crop to eval_max_seconds
                start = (n - 2 * SR) // 2 if n > 2 * SR else 0
                np.testing.assert_array_equal(batch["waveforms"][row, : min(n, 2 * SR)].numpy(),
                                              dm.corpus.audio(i, start, start + 2 * SR))
                mine.append(i)
        lengths = dm.corpus.num_samples[mine]
        assert (np.diff(np.minimum(lengths, 2 * SR)) <= 0).all()  # sorted by length (longest first)
        seen += mine
    assert sorted(seen) == sorted(val.tolist())  # every val utterance a trial uses, exactly once
    dm.trainer = None
    test_index = torch.cat([b["index"] for b in dm.test_dataloader()])
    assert sorted(test_index.tolist()) == dm.trials("test").utterances().tolist()
    predict_index = torch.cat([b["index"] for b in dm.predict_dataloader()])  # embeddings: the whole part
    assert sorted(predict_index.tolist()) == dm.corpus.split("speaker", "test").tolist()


def test_validation_embeds_only_the_utterances_its_trials_use(corpus_path, tmp_path):
    """With capped trial anchors, utterances no trial uses are not embedded (issue 24)."""
    from speakerzoo.datamodules.corpus import Corpus, CorpusWriter
    src = Corpus(corpus_path)
    path = tmp_path / "capped.h5"
    with CorpusWriter(path, sample_rate=src.sample_rate) as writer:
        for i in range(len(src)):
            writer.add(src.pcm(i), speaker=src.speakers[src.speaker[i]], utt_id=f"u{i}")
        writer.finish(max_trial_anchors=3, progress=False)
    dm = make_dm(path)
    dm.setup("validate")
    used = dm.trials("val").utterances().tolist()
    val = torch.cat([b["index"] for b in dm.val_dataloader()]).tolist()
    assert sorted(val) == used and len(used) < len(dm.corpus.split("speaker", "val"))


def test_trials_reference_only_their_part(corpus_path):
    dm = make_dm(corpus_path)
    c = dm.corpus
    for part in ("val", "test"):
        trials = dm.trials(part)
        assert trials.pairs.dtype == torch.int64 and trials.ident.dtype == torch.int64
        # 2 speakers x 6 utterances: an anchor has 6 other-speaker utterances, so rows of 1 + 6
        assert len(trials.pairs) > 0 and trials.ident.shape[1] == 2 + 6
        assert all(len(set(row.tolist())) == 6 for row in trials.ident[:, 2:])  # no negative twice
        assert "1+6 (short)" in dm.describe()
        members = set(c.split("speaker", part).tolist())
        assert set(trials.utterances().tolist()) <= members
        pairs = trials.pairs.numpy()
        same = c.speaker[pairs[:, 0]] == c.speaker[pairs[:, 1]]
        np.testing.assert_array_equal(same.astype(np.int64), pairs[:, 2])
        ident = trials.ident.numpy()
        assert (c.speaker[ident[:, 1]] == c.speaker[ident[:, 0]]).all()
        assert (c.speaker[ident[:, 2:]] != c.speaker[ident[:, :1]]).all()
    assert not set(dm.trials("val").utterances().tolist()) & set(dm.train_items.tolist())


def test_a_part_without_trials_is_refused_at_setup(tmp_path):
    # 6 speakers: the speaker split puts one speaker in val, so val has no impostor trials.
    path = prepare_toy(tmp_path / "tiny.h5", speakers=6, utterances=3, seed=0, progress=False)
    dm = make_dm(path, speakers_per_batch=2)
    with pytest.raises(CorpusError, match=r"tiny\.h5.*'val' part of the 'speaker' split has no trials.*more speakers"):
        dm.setup("fit")
    with pytest.raises(CorpusError, match="'test' part"):
        dm.setup("test")


def test_speakers_with_too_few_utterances_are_not_classes(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "uneven.h5"
    counts = [1, 4, 1, 5, 3, 6, 1, 4, 2, 3, 5, 4, 3, 2]
    with CorpusWriter(path, sample_rate=SR) as w:
        for s, n in enumerate(counts):
            for u in range(n):
                w.add(0.1 * rng.standard_normal(SR // 4).astype(np.float32), speaker=f"s{s:02d}", utt_id=f"{s}/{u}")
        w.finish(progress=False)
    c = Corpus(path)
    train = c.split("speaker", "train")
    train_counts = np.bincount(c.speaker[train], minlength=len(counts))
    few = int(((train_counts > 0) & (train_counts < 3)).sum())
    assert few > 0
    with pytest.warns(UserWarning, match=rf"{few} training speaker\(s\) with fewer than 3 utterances"):
        dm = make_dm(path, min_utterances_per_speaker=3, speakers_per_batch=2, crop_seconds=0.2)
    kept = np.flatnonzero(train_counts >= 3)
    assert dm.num_speakers == len(kept)
    assert dm.speaker_names == [c.speakers[s] for s in kept]
    assert sorted(set(dm.train_labels.tolist())) == list(range(dm.num_speakers))
    for item, label in zip(dm.train_items, dm.train_labels):
        assert dm.speaker_names[label] == c.speakers[c.speaker[item]]


class _Probe(lightning.LightningModule):
    """Records what Lightning feeds it: training batches per epoch and validation indices."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.train_seen: dict[int, list[torch.Tensor]] = {}
        self.val_seen: list[int] = []

    def training_step(self, batch, batch_idx):
        self.train_seen.setdefault(self.current_epoch, []).append(batch["speakers"].clone())
        return self.layer(batch["waveforms"][:, :1]).mean()

    def validation_step(self, batch, batch_idx):
        if not self.trainer.sanity_checking:
            self.val_seen += batch["index"].tolist()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_lightning_fit_reshuffles_each_epoch_and_validates_everything(corpus_path, tmp_path):
    dm = make_dm(corpus_path, crop_seconds=0.5)
    model = _Probe()
    trainer = lightning.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                                use_distributed_sampler=False, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=dm)
    assert sorted(model.train_seen) == [0, 1]
    epoch0, epoch1 = (torch.stack(model.train_seen[e]) for e in (0, 1))
    assert not torch.equal(epoch0, epoch1)  # Lightning's set_epoch reached the batch sampler
    assert trainer.train_dataloader.batch_sampler.epoch == 1
    val = dm.corpus.split("speaker", "val").tolist()
    assert sorted(model.val_seen) == sorted(val * 2)  # each epoch: every val utterance once


def test_corpus_writer_refuses_multichannel_and_non_finite_audio(tmp_path):
    with CorpusWriter(tmp_path / "bad.h5", sample_rate=SR) as w:
        with pytest.raises(ValueError, match="mono 1-D"):
            w.add(np.zeros((SR, 2), np.float32), speaker="a", utt_id="a/1")
        wave = np.zeros(SR, np.float32)
        wave[10] = np.nan
        with pytest.raises(ValueError, match="NaN"):
            w.add(wave, speaker="a", utt_id="a/2")
        assert len(w) == 0


def test_in_memory_cache_refuses_a_corpus_larger_than_its_share_of_ram(corpus_path):
    from speakerzoo.datamodules.corpus import Corpus, CorpusError
    with pytest.raises(CorpusError, match="cache_in_memory: false"):
        Corpus(corpus_path, in_memory=True, memory_fraction=1e-9)  # a share smaller than the toy corpus
    assert Corpus(corpus_path, in_memory=True).pcm(0).size > 0  # the default share fits it
