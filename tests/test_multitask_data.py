"""Multi-task data: LengthBatchSampler on synthetic lengths, MultiTaskDataModule on the real FSDD and
Speech Commands corpora (every mode, batch contents against the corpus, ranks, bad input) and a real
Lightning fit that receives ``{"speech": ..., "speaker": ...}`` batches."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import lightning
import numpy as np
import pytest
import torch
from lightning.pytorch.utilities.combined_loader import CombinedLoader

from speakerzoo.datamodules import Corpus, CorpusError, CorpusWriter, MultiTaskDataModule
from speakerzoo.datamodules.length_sampler import LengthBatchSampler
from speakerzoo.datamodules.toy import prepare_toy

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SR = 16000
SMALL = {"speech_batch_seconds": 8.0, "speakers_per_batch": 4, "utterances_per_speaker": 2,
         "speaker_crop_seconds": 1.0, "num_workers": 0, "eval_batch_size": 16}
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def make_dm(speech=None, speaker=None, **kwargs) -> MultiTaskDataModule:
    args = {**SMALL, **kwargs}
    with warnings.catch_warnings():  # Speech Commands has training speakers with one utterance
        warnings.filterwarnings("ignore", message=".*training speaker\\(s\\) with fewer than")
        return MultiTaskDataModule(None if speech is None else str(speech),
                                   None if speaker is None else str(speaker), **args)


def loader_batches(combined: CombinedLoader) -> list[dict]:
    return [batch for batch, _, _ in combined]


# -- LengthBatchSampler ------------------------------------------------------------------------------

def smooth_lengths(n=2000, seed=0) -> np.ndarray:
    """1-10 s at 16 kHz, uniform: a smooth length distribution."""
    return np.random.default_rng(seed).integers(SR, 10 * SR, size=n)


BUDGET = 30 * SR


def test_length_sampler_one_rank_covers_every_position_once_within_budget():
    lengths = smooth_lengths()
    s = LengthBatchSampler(lengths, BUDGET, seed=1)
    assert s.sampler is s
    batches = list(s)
    assert len(batches) == len(s) == len(s.batches) > 10
    flat = [j for b in batches for j in b]
    assert sorted(flat) == list(range(len(lengths)))  # every position exactly once, nothing dropped
    ratios, padded = [], 0
    for b in batches:
        assert all(isinstance(j, int) for j in b)
        longest = int(lengths[b].max())
        assert len(b) * longest <= BUDGET
        ratios.append(longest / lengths[b].min())
        padded += len(b) * longest
    # Sorted packing: similar lengths in a batch, so little padding (random batches: max/min up to 10).
    assert max(ratios) < 1.25
    assert lengths.sum() / padded > 0.95
    # The batches are full: adding the next utterance of the sorted order would break the budget.
    sizes = [len(b) for b in s.batches]
    assert all(len(b) == BUDGET // int(lengths[b].max()) for b in s.batches[:-1])
    assert sizes[-1] <= BUDGET // int(lengths[s.batches[-1]].max())


def test_length_sampler_epochs_shuffle_the_order_not_the_composition():
    lengths = smooth_lengths()
    s = LengthBatchSampler(lengths, BUDGET, seed=1)
    epoch0 = list(s)
    s.set_epoch(1)
    epoch1 = list(s)
    assert epoch0 != epoch1  # another order ...
    assert sorted(map(tuple, epoch0)) == sorted(map(tuple, epoch1))  # ... of the same batches
    twin = LengthBatchSampler(lengths, BUDGET, seed=1)
    twin.set_epoch(1)
    assert list(twin) == epoch1  # same seed and epoch: the same batches in the same order
    other = LengthBatchSampler(lengths, BUDGET, seed=2)
    other.set_epoch(1)
    assert list(other) != epoch1
    # shuffle=False: longest batch first, the same every epoch
    fixed = LengthBatchSampler(lengths, BUDGET, shuffle=False)
    longest = [int(lengths[b].max()) for b in fixed]
    assert longest == sorted(longest, reverse=True)
    fixed.set_epoch(5)
    assert [int(lengths[b].max()) for b in fixed] == longest


def test_length_sampler_seed_breaks_ties():
    equal = np.full(100, 1000)
    a = LengthBatchSampler(equal, 10_000, seed=0, shuffle=False)
    b = LengthBatchSampler(equal, 10_000, seed=1, shuffle=False)
    assert len(a) == len(b) == 10 and all(len(x) == 10 for x in a)
    assert sorted(map(sorted, a)) != sorted(map(sorted, b))  # other positions share a batch
    assert sorted(j for x in a for j in x) == list(range(100))


@pytest.mark.parametrize("world", [2, 3])
def test_length_sampler_ranks_get_disjoint_batches_of_equal_number(world):
    lengths = smooth_lengths(1000)
    total = len(LengthBatchSampler(lengths, BUDGET, seed=4).batches)
    for epoch in (0, 1):
        per_rank = []
        for rank in range(world):
            s = LengthBatchSampler(lengths, BUDGET, num_replicas=world, rank=rank, seed=4)
            s.set_epoch(epoch)
            batches = list(s)
            assert len(batches) == len(s) == total // world
            per_rank.append([j for b in batches for j in b])
        seen = [j for positions in per_rank for j in positions]
        assert len(seen) == len(set(seen))  # no position in two ranks (or twice in one)
        # only the last total % world batches of the shuffled order are left out
        left_out = len(lengths) - len(seen)
        assert (left_out == 0) == (total % world == 0)


def test_length_sampler_keeps_an_over_long_utterance_alone():
    lengths = np.array([500, 400, 5000, 300, 450, 100])
    s = LengthBatchSampler(lengths, 1000, shuffle=False)
    batches = list(s)
    assert batches[0] == [2]  # longer than the budget: a batch alone, first (longest)
    assert sorted(j for b in batches for j in b) == list(range(6))
    assert all(len(b) * lengths[b].max() <= 1000 for b in batches[1:])


def test_length_sampler_refuses_bad_arguments():
    lengths = smooth_lengths(50)
    with pytest.raises(ValueError, match="max_samples"):
        LengthBatchSampler(lengths, 0)
    with pytest.raises(ValueError, match="rank"):
        LengthBatchSampler(lengths, BUDGET, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="1-D"):
        LengthBatchSampler(lengths.reshape(5, 10), BUDGET)
    with pytest.raises(ValueError, match="non-empty"):
        LengthBatchSampler(np.zeros(0, np.int64), BUDGET)
    n = len(LengthBatchSampler(lengths, 100 * BUDGET))
    with pytest.raises(ValueError, match=rf"{n} batch\(es\).*fewer than the {n + 1} ranks.*world size"):
        LengthBatchSampler(lengths, 100 * BUDGET, num_replicas=n + 1)


# -- MultiTaskDataModule ----------------------------------------------------------------------------

def test_disjoint_batches_against_the_corpora(fsdd_corpus, speech_commands_corpus):
    dm = make_dm(fsdd_corpus, speech_commands_corpus, mode="disjoint")
    speech, spk = Corpus(fsdd_corpus), Corpus(speech_commands_corpus)
    # sizes linked to the model come from the speaker corpus, right after construction
    train = spk.split("speaker", "train")
    counts = np.bincount(spk.speaker[train], minlength=len(spk.speakers))
    classes = np.flatnonzero(counts >= 2)
    assert dm.num_speakers == len(classes) > 100
    assert dm.speaker_names == [spk.speakers[s] for s in classes]
    assert dm.sample_rate == SR
    chars = dm.characters()
    assert chars <= set("abcdefghijklmnopqrstuvwxyz") and chars >= set("".join(DIGIT_WORDS))
    assert dm.hparams["mode"] == "disjoint" and dm.hparams["speech_batch_seconds"] == 8.0
    text = str(dm)  # a summary, without building any loader
    assert "disjoint" in text and str(fsdd_corpus) in text and str(speech_commands_corpus) in text

    dm.setup("fit")
    combined = dm.train_dataloader()
    assert isinstance(combined, CombinedLoader) and list(combined.iterables) == ["speech", "speaker"]
    speech_loader, speaker_loader = combined.iterables["speech"], combined.iterables["speaker"]
    batches = loader_batches(combined)
    n = len(speech_loader.batch_sampler)
    assert len(batches) == n == len(speaker_loader) > 50
    assert len(list(speech_loader)) == len(list(speaker_loader)) == n  # each loader alone: the same count

    texts = speech.texts("transcript")
    seen = []
    for batch in batches:
        assert set(batch) == {"speech", "speaker"}
        b = batch["speech"]
        assert set(b) == {"waveforms", "lengths", "transcripts", "index"}
        w, lengths, index = b["waveforms"], b["lengths"], b["index"]
        assert w.dtype == torch.float32 and lengths.dtype == torch.int64 and index.dtype == torch.int64
        assert w.shape == (len(index), int(lengths.max())) and len(b["transcripts"]) == len(index)
        assert w.numel() <= 8 * SR  # the padded-size budget
        for row, i in enumerate(index.tolist()):
            assert b["transcripts"][row] == texts[i] and texts[i] in DIGIT_WORDS
            n_i = int(speech.num_samples[i])
            assert int(lengths[row]) == n_i
            np.testing.assert_array_equal(w[row, :n_i].numpy(), speech.audio(i))
            assert not w[row, n_i:].any()
        seen += index.tolist()
        s = batch["speaker"]
        assert set(s) == {"waveforms", "lengths", "speakers"}
        assert s["waveforms"].shape == (8, int(s["lengths"].max())) and s["waveforms"].shape[1] <= SR
        assert s["speakers"].min() >= 0 and s["speakers"].max() < dm.num_speakers
        assert len(set(s["speakers"].tolist())) == 4
    assert sorted(seen) == sorted(speech.split("speaker", "train").tolist())  # one pass, nothing dropped
    dm.teardown("fit")


def test_joint_batches_carry_transcripts_and_speaker_classes(speech_commands_corpus):
    dm = make_dm(speech_commands_corpus, mode="joint")
    c = Corpus(speech_commands_corpus)
    assert dm.speaker_corpus_path == str(speech_commands_corpus)  # defaults to the speech corpus
    inner = dm.speaker_data
    assert dm.num_speakers == inner.num_speakers > 100 and dm.speaker_names == inner.speaker_names
    dm.setup("fit")
    combined = dm.train_dataloader()
    assert list(combined.iterables) == ["joint"]
    texts = c.texts("transcript")
    noise = set(np.flatnonzero(c.speaker < 0).tolist())
    assert len(noise) > 100  # the corpus has noise clips: none of them may appear
    seen = []
    for batch in loader_batches(combined):
        assert set(batch) == {"joint"}
        b = batch["joint"]
        assert set(b) == {"waveforms", "lengths", "transcripts", "index", "speakers"}
        assert b["speakers"].dtype == torch.int64 and b["waveforms"].numel() <= 8 * SR
        index = b["index"]
        assert torch.equal(b["speakers"], inner.classes(index))
        assert (b["speakers"] >= 0).all()
        assert b["transcripts"] == [texts[i] for i in index.tolist()]
        assert all(t for t in b["transcripts"])
        for i, cls in zip(index.tolist(), b["speakers"].tolist()):
            assert c.speaker[i] >= 0 and dm.speaker_names[cls] == c.speakers[c.speaker[i]]
        seen += index.tolist()
    assert not set(seen) & noise
    assert sorted(seen) == sorted(dm.joint_items.tolist())
    assert set(seen) == set(inner.train_items.tolist())  # every training utterance has a transcript here
    chars = dm.characters()
    assert chars <= set("abcdefghijklmnopqrstuvwxyz") and {"m", "a", "r", "v", "i", "n"} <= chars
    val = dm.val_dataloader()
    assert len(val) == 2  # speech (WER) and speaker (trials) evaluation of the one corpus
    assert set(next(iter(val[0]))) == {"waveforms", "lengths", "transcripts", "index"}
    assert set(next(iter(val[1]))) == {"waveforms", "lengths", "index"}


def test_speech_mode_uses_the_speaker_corpus_for_evaluation_only(fsdd_corpus, speech_commands_corpus):
    # speakers_per_batch above the corpus' speakers: fine, because no speaker batch is ever made
    dm = make_dm(fsdd_corpus, speech_commands_corpus, mode="speech", speakers_per_batch=1000)
    assert dm.num_speakers == 0 and dm.speaker_names is None
    dm.setup("fit")
    combined = dm.train_dataloader()
    assert list(combined.iterables) == ["speech"]
    val = dm.val_dataloader()
    assert isinstance(val, list) and len(val) == 2
    fsdd, sc = Corpus(fsdd_corpus), Corpus(speech_commands_corpus)
    speech_val = [b for b in val[0]]
    index = torch.cat([b["index"] for b in speech_val])
    assert sorted(index.tolist()) == sorted(fsdd.split("speaker", "val").tolist())
    lengths = torch.cat([b["lengths"] for b in speech_val])
    assert (lengths[:-1] >= lengths[1:]).all()  # longest first
    assert all(len(b["transcripts"]) == len(b["index"]) <= 16 for b in speech_val)
    speaker_index = torch.cat([b["index"] for b in val[1]])
    assert sorted(speaker_index.tolist()) == sorted(sc.split("speaker", "val").tolist())
    assert len(dm.trials("val").pairs) > 0
    test = dm.test_dataloader()
    assert len(test) == 2
    predict = torch.cat([b["index"] for b in dm.predict_dataloader()])  # speaker embeddings of the test part
    assert sorted(predict.tolist()) == sorted(sc.split("speaker", "test").tolist())


def test_speaker_mode_without_a_speech_corpus(speech_commands_corpus):
    dm = make_dm(speaker=speech_commands_corpus, mode="speaker")
    assert dm.num_speakers > 100 and dm.characters() == set()
    dm.setup("fit")
    combined = dm.train_dataloader()
    assert list(combined.iterables) == ["speaker"]
    batch = loader_batches(combined)[0]
    assert set(batch) == {"speaker"} and set(batch["speaker"]) == {"waveforms", "lengths", "speakers"}
    val = dm.val_dataloader()
    assert isinstance(val, list) and len(val) == 1
    assert set(next(iter(val[0]))) == {"waveforms", "lengths", "index"}
    with pytest.raises(RuntimeError, match="speech_corpus"):
        dm.speech_eval_items("val")


def test_utterances_without_transcript_are_left_out(tmp_path):
    # 12 speakers x 6 utterances; every third utterance has no transcript (e.g. unlabelled audio)
    path = tmp_path / "partly_transcribed.h5"
    rng = np.random.default_rng(0)
    with CorpusWriter(path, sample_rate=SR) as w:
        for s in range(12):
            for u in range(6):
                w.add(0.1 * rng.standard_normal(SR // 8 + 100 * u).astype(np.float32), speaker=f"s{s:02d}",
                      utt_id=f"{s}/{u}", transcript="" if u % 3 == 0 else f"word {s} {u}")
        w.finish(progress=False)
    c = Corpus(path)
    texts = c.texts("transcript")
    joint = make_dm(path, mode="joint", speech_batch_seconds=1.0)
    seen = [i for b in joint.train_dataloader().iterables["joint"] for i in b["index"].tolist()]
    train = joint.speaker_data.train_items
    assert sorted(seen) == sorted(i for i in train.tolist() if texts[i])  # a third of them left out
    assert len(seen) == len(train) * 2 // 3
    assert joint.characters() == set("".join(texts[i] for i in seen))
    assert set("word 1") <= joint.characters() <= set("word 0123456789")
    speech = make_dm(path, mode="speech", speech_batch_seconds=1.0)
    seen = [i for b in speech.train_dataloader().iterables["speech"] for i in b["index"].tolist()]
    assert sorted(seen) == [i for i in c.split("speaker", "train").tolist() if texts[i]]
    val = [i for b in speech.val_dataloader()[0] for i in b["index"].tolist()]
    assert sorted(val) == [i for i in c.split("speaker", "val").tolist() if texts[i]] and val
    # speaker mode with a speech corpus: evaluation only (WER), the speaker head trains
    spk = make_dm(path, path, mode="speaker")
    assert spk.num_speakers == spk.speaker_data.num_speakers > 0 and not spk.trains_speech
    assert list(spk.train_dataloader().iterables) == ["speaker"] and len(spk.val_dataloader()) == 2
    with pytest.raises(RuntimeError, match="no speech batches"):
        spk.speech_sampler()


@pytest.mark.parametrize("world", [2, 3])
def test_disjoint_ranks_share_nothing_and_get_equal_counts(fsdd_corpus, speech_commands_corpus, world):
    dm = make_dm(fsdd_corpus, speech_commands_corpus, mode="disjoint")
    fsdd = Corpus(fsdd_corpus)
    speech_seen, counts, val_seen = [], set(), []
    for rank in range(world):
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=world)  # a simulated rank
        dm.setup("fit")
        combined = dm.train_dataloader()
        speech_loader, speaker_loader = combined.iterables["speech"], combined.iterables["speaker"]
        assert speech_loader.batch_sampler.rank == rank and speaker_loader.batch_sampler.rank == rank
        speech_batches = list(speech_loader)
        assert len(list(speaker_loader)) == len(speech_batches)
        counts.add(len(speech_batches))
        speech_seen += [i for b in speech_batches for i in b["index"].tolist()]
        val_seen += [i for b in dm.val_dataloader()[0] for i in b["index"].tolist()]
    assert len(counts) == 1  # every rank the same number of steps
    assert len(speech_seen) == len(set(speech_seen))  # no utterance in two ranks
    assert sorted(val_seen) == sorted(fsdd.split("speaker", "val").tolist())  # every val utterance once
    dm.trainer = SimpleNamespace(global_rank=0, world_size=world,
                                 _accelerator_connector=SimpleNamespace(use_distributed_sampler=True))
    with pytest.raises(RuntimeError, match="use_distributed_sampler=False"):
        dm.setup("fit")


def test_bad_combinations_are_refused(fsdd_corpus, speech_commands_corpus, tmp_path):
    with pytest.raises(ValueError, match="set speaker_corpus"):
        make_dm(fsdd_corpus, mode="disjoint")
    with pytest.raises(ValueError, match="set speech_corpus"):
        make_dm(speaker=speech_commands_corpus, mode="speech")
    with pytest.raises(ValueError, match="set speaker_corpus"):
        make_dm(fsdd_corpus, mode="speaker")
    with pytest.raises(ValueError, match="differ"):
        make_dm(speech_commands_corpus, fsdd_corpus, mode="joint")
    with pytest.raises(ValueError, match="speech_split"):
        make_dm(speech_commands_corpus, mode="joint", speaker_split="utterance")
    with pytest.raises(ValueError, match="mode must be one of"):
        make_dm(fsdd_corpus, mode="both")
    with pytest.raises(RuntimeError, match="speaker_corpus"):
        make_dm(fsdd_corpus, mode="speech").trials("val")
    # corpora at different sample rates: the message names both files and the fix
    toy8k = prepare_toy(tmp_path / "toy8k.h5", speakers=4, utterances=2, sample_rate=8000, progress=False)
    with pytest.raises(CorpusError, match=rf"(?s){fsdd_corpus}.*16000 Hz.*toy8k\.h5.*8000 Hz.*--sample-rate"):
        make_dm(fsdd_corpus, toy8k, mode="disjoint")
    # a speech corpus without transcripts
    silent = tmp_path / "no_text.h5"
    rng = np.random.default_rng(0)
    with CorpusWriter(silent, sample_rate=SR) as w:
        for s in range(6):
            for u in range(3):
                w.add(0.1 * rng.standard_normal(SR // 4).astype(np.float32), speaker=f"s{s}", utt_id=f"{s}/{u}")
        w.finish(progress=False)
    assert not any(Corpus(silent).texts("transcript"))
    with pytest.raises(CorpusError, match=r"no_text\.h5.*transcript.*librispeech, fsdd, speech-commands"):
        make_dm(silent, mode="speech")
    with pytest.raises(CorpusError, match="transcript"):
        make_dm(silent, speech_commands_corpus, mode="disjoint")


class _TwoTaskProbe(lightning.LightningModule):
    """Asserts what Lightning feeds training_step in disjoint mode; one parameter."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.steps: list[tuple[int, list[int], int]] = []

    def training_step(self, batch, batch_idx):
        assert set(batch) == {"speech", "speaker"}
        speech, speaker = batch["speech"], batch["speaker"]
        assert isinstance(speech["transcripts"], list) and speech["waveforms"].ndim == 2
        assert speaker["speakers"].shape == (8,)
        self.steps.append((self.current_epoch, speech["index"].tolist(), int(speaker["speakers"].sum())))
        return (self.layer(speech["waveforms"][:, :1]).mean() + self.layer(speaker["waveforms"][:, :1]).mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_fit_gets_speech_and_speaker_batches(fsdd_corpus, speech_commands_corpus, tmp_path):
    dm = make_dm(fsdd_corpus, speech_commands_corpus, mode="disjoint")
    model = _TwoTaskProbe()
    before = model.layer.weight.detach().clone()
    trainer = lightning.Trainer(max_steps=2, limit_train_batches=1, accelerator="cpu", devices=1, logger=False,
                                enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                                use_distributed_sampler=False, limit_val_batches=0, default_root_dir=tmp_path)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*no `validation_step`.*")
        trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 2 and len(model.steps) == 2
    assert not torch.equal(model.layer.weight, before)  # the loss of both batches reached the parameter
    (e0, speech0, _), (e1, speech1, _) = model.steps
    assert (e0, e1) == (0, 1)  # one step per epoch: the second epoch's sampler got set_epoch(1)
    loaders = trainer.train_dataloader  # the CombinedLoader's dict of loaders
    assert loaders["speech"].batch_sampler.epoch == 1 and loaders["speaker"].batch_sampler.epoch == 1
    assert speech0 != speech1
