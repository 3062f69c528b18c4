"""Batches of whole utterances of similar length under a padded-size budget, sharded by rank.

The speech-recognition batches of multi-task training (Vaessen & van Leeuwen, "Towards
multi-task learning of speech and speaker recognition") hold whole utterances: "a batch was
collected by sampling utterances with similar length", up to 3.2 M samples (200 s at 16 kHz)
per batch. A batch is zero-padded to its longest utterance, so its cost is
``len(batch) * max(length)``; putting utterances of similar length together keeps the padding
(wasted compute and memory) small.

Construction, once, in :class:`LengthBatchSampler`:

1. positions are sorted by length, longest first; ties are broken by a permutation drawn from
   ``numpy.random.default_rng(seed)`` (so the seed decides which of equally long utterances
   share a batch);
2. they are packed greedily in that order: a batch takes the next position as long as
   ``len(batch) * max(length in batch) <= max_samples``. An utterance longer than
   ``max_samples`` on its own forms a batch alone: it is never dropped (the budget is then
   exceeded by that one batch, so choose ``max_samples`` above the longest utterance, or
   remove such utterances from the corpus, when memory is tight).

The composition of the batches is therefore fixed, which keeps ``len()`` exact and constant
(Lightning and learning-rate schedules rely on it); only the *order* of the batches changes
from epoch to epoch: :meth:`LengthBatchSampler.set_epoch` shuffles it with
``numpy.random.default_rng((seed, epoch))``, identical in every rank, and rank ``r`` of ``R``
takes ``order[r::R]`` cut to ``len(batches) // R`` batches, so the ranks get the same number of
batches and never share one (the last ``len(batches) % R`` batches of the shuffled order are
left out of that epoch; with one rank nothing is left out).

Lightning calls ``set_epoch`` on ``dataloader.batch_sampler.sampler``; :attr:`LengthBatchSampler.sampler`
is the sampler itself. Because it shards by rank itself, build the Trainer with
``use_distributed_sampler=False``.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
from torch.utils.data import Sampler


class LengthBatchSampler(Sampler[list[int]]):
    """Batches of positions of similar length with ``len(batch) * max(length) <= max_samples``.

    Arguments:
        lengths: length (in samples, or any unit of ``max_samples``) of every position ``j``.
        max_samples: budget of a padded batch, ``len(batch) * max(length in batch)``.
            A single position longer than the budget forms a batch alone (never dropped).
        num_replicas, rank: data-parallel world size and this process' rank.
        seed: breaks length ties at construction and shuffles the batch order every epoch;
            the same in every rank.
        shuffle: shuffle the batch order every epoch; ``False``: longest batch first.

    Example::

        >>> s = LengthBatchSampler(np.array([100, 300, 200, 310, 90]), max_samples=620, shuffle=False)
        >>> len(s), list(s)
        (2, [[3, 1], [2, 0, 4]])
    """

    def __init__(self, lengths: np.ndarray, max_samples: int, num_replicas: int = 1, rank: int = 0, seed: int = 0,
                 shuffle: bool = True):
        lengths = np.asarray(lengths)
        if lengths.ndim != 1 or lengths.size == 0:
            raise ValueError(f"lengths must be a non-empty 1-D array of utterance lengths, got shape {lengths.shape}")
        if not np.issubdtype(lengths.dtype, np.integer):
            if not np.issubdtype(lengths.dtype, np.floating) or not np.all(lengths == np.round(lengths)):
                raise ValueError(f"lengths must be whole numbers of samples (got dtype {lengths.dtype})")
        lengths = lengths.astype(np.int64)
        if (lengths < 1).any():
            raise ValueError(f"every length must be at least 1 (position {int(np.argmin(lengths))} has "
                             f"{int(lengths.min())})")
        if int(max_samples) != max_samples or max_samples < 1:
            raise ValueError(f"max_samples must be a positive whole number of samples (got {max_samples})")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in [0, num_replicas={num_replicas})")
        self.lengths = lengths
        self.max_samples = int(max_samples)
        self.num_replicas, self.rank, self.seed = int(num_replicas), int(rank), int(seed)
        self.shuffle = bool(shuffle)
        self.epoch = 0
        self.batches: list[np.ndarray] = self._pack()
        if len(self.batches) < self.num_replicas:
            raise ValueError(
                f"{len(lengths)} utterances give {len(self.batches)} batch(es) of at most {self.max_samples} padded "
                f"samples, fewer than the {self.num_replicas} ranks (each rank needs at least one); lower the world "
                f"size or lower max_samples (smaller batches, more of them)")

    def _pack(self) -> list[np.ndarray]:
        perm = np.random.default_rng(self.seed).permutation(len(self.lengths))
        order = perm[np.argsort(-self.lengths[perm], kind="stable")]  # longest first, ties at random
        batches: list[np.ndarray] = []
        start = 0
        n = len(order)
        while start < n:
            longest = int(self.lengths[order[start]])  # sorted: the first is the longest of its batch
            size = max(self.max_samples // longest, 1)  # an over-long utterance: a batch alone
            batches.append(order[start:start + size])
            start += size
        return batches

    # Lightning calls set_epoch on batch_sampler.sampler (see the module docstring).
    @property
    def sampler(self) -> "LengthBatchSampler":
        return self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.batches) // self.num_replicas

    def batch_order(self) -> np.ndarray:
        """This epoch's order of all batches (global: the same in every rank)."""
        if not self.shuffle:
            return np.arange(len(self.batches))  # packed longest first
        return np.random.default_rng((self.seed, self.epoch)).permutation(len(self.batches))

    def __iter__(self) -> Iterator[list[int]]:
        mine = self.batch_order()[self.rank::self.num_replicas][: len(self)]
        for b in mine:
            yield [int(j) for j in self.batches[b]]
