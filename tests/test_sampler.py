"""SpeakerBatchSampler: P x K batches, sharding by rank, epochs, crops, exact length."""

from __future__ import annotations

import warnings
from collections import Counter

import numpy as np
import pytest
import torch
from lightning.fabric.utilities.data import _set_sampler_epoch
from torch.utils.data import DataLoader, Dataset

from speakerzoo.datamodules.sampler import SpeakerBatchSampler

P, K = 4, 3


def uneven_labels(seed: int = 0) -> np.ndarray:
    """17 speakers with 3..40 utterances each, shuffled, plus ignored (-1) items."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(3, 41, size=17)
    labels = np.concatenate([np.repeat(np.arange(17), counts), np.full(9, -1)])
    return rng.permutation(labels)


def batches_of(sampler: SpeakerBatchSampler) -> list[list[tuple[int, int, int]]]:
    out = list(sampler)
    assert len(out) == len(sampler)  # __len__ is exact
    return out


def test_every_batch_is_p_speakers_times_k_of_the_same_speaker():
    labels = uneven_labels()
    sampler = SpeakerBatchSampler(labels, P, K, crop_samples=16000, seed=3)
    batches = batches_of(sampler)
    assert len(batches) > 10
    for batch in batches:
        assert len(batch) == P * K
        items = [i for i, _, _ in batch]
        per_speaker = Counter(labels[items].tolist())
        assert len(per_speaker) == P and set(per_speaker.values()) == {K}, per_speaker
        assert (labels[items] >= 0).all()  # ignored items are never sampled
        # every speaker has >= K utterances here, so a speaker's K items are distinct utterances
        assert len(set(items)) == P * K
        # the K entries of a speaker are consecutive in the batch
        spk = labels[items].reshape(P, K)
        assert (spk == spk[:, :1]).all()


def test_one_pass_uses_each_utterance_at_most_once_and_packs_all_it_can():
    labels = uneven_labels(1)
    sampler = SpeakerBatchSampler(labels, P, K, crop_samples=100)
    items = [i for b in batches_of(sampler) for i, _, _ in b]
    assert len(items) == len(set(items))
    groups = np.bincount(labels[labels >= 0]) // K
    # The bound: B batches need sum(min(groups, B)) >= P * B; the packing reaches the largest such B.
    best = max(b for b in range(groups.sum() // P + 1) if np.minimum(groups, b).sum() >= P * b)
    assert len(sampler) == best


@pytest.mark.parametrize("world", [1, 2, 3])
def test_ranks_are_disjoint_with_equal_batch_counts(world):
    labels = uneven_labels(2)
    shards = [batches_of(SpeakerBatchSampler(labels, P, K, num_replicas=world, rank=r, seed=5, crop_samples=(50, 80)))
              for r in range(world)]
    counts = {len(s) for s in shards}
    assert len(counts) == 1 and counts.pop() > 0
    seen = [tuple(i for i, _, _ in b) for s in shards for b in s]
    assert len(seen) == len(set(seen))  # no batch on two ranks
    items = [i for b in seen for i in b]
    assert len(items) == len(set(items))  # not even an utterance (one pass, no repetition)
    # together the ranks yield the global list (minus the remainder that does not divide evenly)
    full = SpeakerBatchSampler(labels, P, K, num_replicas=world, seed=5, crop_samples=(50, 80)).global_batches()
    assert sorted(map(tuple, full)) == sorted(tuple(b) for s in shards for b in s)
    one_rank = len(SpeakerBatchSampler(labels, P, K, seed=5, crop_samples=(50, 80)))
    assert len(shards[0]) == one_rank // world


@pytest.mark.parametrize("world", [2, 3])
def test_batches_per_epoch_and_no_drop_last_keep_ranks_equal(world):
    labels = uneven_labels(3)
    for kwargs in ({"batches_per_epoch": 50}, {"drop_last": False}):
        shards = [batches_of(SpeakerBatchSampler(labels, P, K, num_replicas=world, rank=r, **kwargs))
                  for r in range(world)]
        assert len({len(s) for s in shards}) == 1
        if "batches_per_epoch" in kwargs:
            assert len(shards[0]) == 50  # per rank, more than one pass over the data
            keys = [tuple(b) for s in shards for b in s]
            assert len(keys) == len(set(keys))


def test_epochs_differ_and_are_deterministic():
    labels = uneven_labels(4)
    a = SpeakerBatchSampler(labels, P, K, seed=7, crop_samples=(100, 200))
    b = SpeakerBatchSampler(labels, P, K, seed=7, crop_samples=(100, 200))
    epoch0 = batches_of(a)
    assert epoch0 == batches_of(a)  # same epoch: same batches
    assert epoch0 == batches_of(b)  # same seed: same batches
    a.set_epoch(1)
    epoch1 = batches_of(a)
    assert epoch1 != epoch0
    assert [sorted(i for i, _, _ in x) for x in epoch1] != [sorted(i for i, _, _ in x) for x in epoch0]
    b.set_epoch(1)
    assert batches_of(b) == epoch1
    other_seed = SpeakerBatchSampler(labels, P, K, seed=8, crop_samples=(100, 200))
    assert batches_of(other_seed) != epoch0


def test_variable_crop_is_drawn_per_batch_within_bounds():
    labels = uneven_labels(5)
    sampler = SpeakerBatchSampler(labels, P, K, crop_samples=(24000, 48000))
    crops = []
    for batch in batches_of(sampler):
        lengths = {c for _, c, _ in batch}
        assert len(lengths) == 1  # one length per batch
        crops.append(lengths.pop())
        assert len({s for _, _, s in batch}) == len(batch)  # each entry its own crop seed
    assert min(crops) >= 24000 and max(crops) <= 48000
    assert len(set(crops)) > len(crops) // 2  # really drawn, not constant
    fixed = SpeakerBatchSampler(labels, P, K, crop_samples=32000)
    assert {c for b in fixed for _, c, _ in b} == {32000}


def test_few_utterances_repetition_and_exclusion_warning():
    # speakers 0-4 have 5 utterances; speaker 5 has 2 (< K: repeated), speakers 6-7 have 1 (< min: left out)
    labels = np.concatenate([np.repeat(np.arange(5), 5), [5, 5, 6, 7]])
    with pytest.warns(UserWarning, match=r"2 speaker\(s\) with fewer than 2 utterances"):
        sampler = SpeakerBatchSampler(labels, 3, K, min_utterances=2, crop_samples=10)
    seen_short = False
    for epoch in range(6):
        sampler.set_epoch(epoch)
        for batch in batches_of(sampler):
            items = [i for i, _, _ in batch]
            assert not set(labels[items]) & {6, 7}
            if 5 in labels[items]:
                seen_short = True
                mine = [i for i in items if labels[i] == 5]
                assert len(mine) == K and set(mine) == {25, 26}  # both utterances, one repeated
    assert seen_short
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SpeakerBatchSampler(labels, 3, K, min_utterances=1, crop_samples=10)  # nobody left out: no warning


def test_invalid_configurations_are_refused():
    labels = np.repeat(np.arange(3), 4)
    with pytest.raises(ValueError, match="different speakers"):
        SpeakerBatchSampler(labels, 4, 2)
    with pytest.raises(ValueError, match="min <= max"):
        SpeakerBatchSampler(labels, 2, 2, crop_samples=(200, 100))
    with pytest.raises(ValueError, match="rank"):
        SpeakerBatchSampler(labels, 2, 2, num_replicas=2, rank=2)


class _Items(Dataset):
    def __len__(self):
        return 1000

    def __getitem__(self, entry):
        return torch.tensor(entry[0])


def test_lightning_set_epoch_reaches_the_batch_sampler():
    """Lightning calls set_epoch on dataloader.batch_sampler.sampler, not on the batch sampler."""
    labels = uneven_labels(6)
    sampler = SpeakerBatchSampler(labels, P, K)
    loader = DataLoader(_Items(), batch_sampler=sampler)
    first = [b.tolist() for b in loader]
    _set_sampler_epoch(loader, 3)
    assert sampler.epoch == 3
    assert [b.tolist() for b in loader] != first
    assert len(loader) == len(sampler)
