"""Datasets over a :class:`~speakerzoo.datamodules.corpus.Corpus` and their collate functions.

* :class:`CropDataset` (training): indexed by the entries ``(position, crop_length, crop_seed)``
  that :class:`~speakerzoo.datamodules.sampler.SpeakerBatchSampler` yields; returns a random
  crop of raw audio (``crop_length`` samples) or of cached features (``crop_length`` frames).
  The start of the crop comes from ``numpy.random.default_rng(crop_seed)``, so a batch is
  the same whichever worker reads it, and with or without the in-memory cache.
* :class:`UtteranceDataset` (validation, test, predict): whole utterances, centre-cropped to
  ``max_samples``; returns the corpus utterance index so that embeddings can be matched
  to trials whatever the order, padding or rank.

The corpus opens its HDF5 file lazily in each worker process (see ``Corpus._file``), so
these datasets are safe with ``num_workers > 0``.

Evaluation always reads raw audio: a model trained on cached features applies its own
frontend (the same :class:`~speakerzoo.features.Frontend` that cached them) at evaluation.
Cached features are normalised over the whole utterance and then cropped, whereas a crop
of audio is normalised over the crop; the difference is small for mean normalisation.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from speakerzoo.datamodules.corpus import Corpus


class CropDataset(Dataset):
    """Random fixed-length crops of training utterances.

    Arguments:
        corpus: the corpus to read.
        items: corpus utterance index of every training position.
        labels: class (``0..C-1``) of every training position.
        features: key of a cached feature (``corpus.feature_configs``) to crop instead of audio.
        augment: waveform augmentation applied to every audio crop
            (``augment(wave, rng, noise) -> wave``, e.g. :class:`~speakerzoo.augment.WaveformAugment`).
        noise_items: corpus indices of the noise clips that ``augment`` mixes in (speaker -1).

    ``dataset[(pos, crop_len, seed)]`` returns ``(array, label)``: ``float32 [crop_len]`` audio
    or ``[crop_len, dim]`` features; utterances shorter than the crop are returned whole (the
    collate function pads them and reports their true length). Augmentation draws from its
    own generator seeded by ``(seed, 1)``, so it too is the same in any worker and on resume.
    """

    def __init__(self, corpus: Corpus, items: np.ndarray, labels: np.ndarray, features: str | None = None,
                 augment: Callable[..., np.ndarray] | None = None, noise_items: np.ndarray | None = None):
        self.corpus = corpus
        self.items = np.asarray(items, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.int64)
        if self.items.shape != self.labels.shape:
            raise ValueError(f"items {self.items.shape} and labels {self.labels.shape} differ in shape")
        self.features = features
        if augment is not None and features:
            raise ValueError("waveform augmentation needs audio crops, not cached features (features: null)")
        self.augment = augment
        self.noise_items = np.zeros(0, np.int64) if noise_items is None else np.asarray(noise_items, np.int64)
        self.lengths = corpus.num_frames(features) if features else corpus.num_samples

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, entry: tuple[int, int, int]) -> tuple[np.ndarray, int]:
        pos, crop, seed = entry
        i = int(self.items[pos])
        n = int(self.lengths[i])
        start = int(np.random.default_rng(seed).integers(0, n - crop + 1)) if n > crop else 0
        stop = start + crop
        if self.features:
            data = self.corpus.features(self.features, i, start, stop)
        else:
            data = self.corpus.audio(i, start, stop)
            if self.augment is not None:
                noise = self.noise if len(self.noise_items) else None
                data = self.augment(data, np.random.default_rng([seed, 1]), noise)
        return data, int(self.labels[pos])

    def noise(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` samples of a noise clip drawn by ``rng`` at a random offset (repeated when shorter)."""
        i = int(self.noise_items[rng.integers(len(self.noise_items))])
        total = int(self.corpus.num_samples[i])
        if total >= n:
            start = int(rng.integers(0, total - n + 1))
            return self.corpus.audio(i, start, start + n)
        clip = self.corpus.audio(i)
        return np.resize(clip, n) if len(clip) else np.zeros(n, np.float32)


class UtteranceDataset(Dataset):
    """Whole utterances for evaluation, centre-cropped to ``max_samples`` when longer.

    ``dataset[j]`` returns ``(float32 [samples], corpus_index)`` for the corpus utterance ``items[j]``.
    """

    def __init__(self, corpus: Corpus, items: np.ndarray, max_samples: int | None = None):
        self.corpus = corpus
        self.items = np.asarray(items, dtype=np.int64)
        self.max_samples = None if max_samples is None else int(max_samples)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, j: int) -> tuple[np.ndarray, int]:
        i = int(self.items[j])
        n = int(self.corpus.num_samples[i])
        if self.max_samples is not None and n > self.max_samples:
            start = (n - self.max_samples) // 2
            return self.corpus.audio(i, start, start + self.max_samples), i
        return self.corpus.audio(i), i


def _pad(arrays: Sequence[np.ndarray]) -> tuple[Tensor, Tensor]:
    """Zero-pad arrays along their first axis into one float32 tensor; returns it and the lengths."""
    lengths = torch.tensor([len(a) for a in arrays], dtype=torch.int64)
    out = torch.zeros((len(arrays), int(lengths.max()), *arrays[0].shape[1:]), dtype=torch.float32)
    for k, a in enumerate(arrays):
        out[k, : len(a)] = torch.from_numpy(np.asarray(a, dtype=np.float32))
    return out, lengths


def collate_crops(batch: Sequence[tuple[np.ndarray, int]]) -> dict[str, Any]:
    """``{"waveforms": [B, T], "lengths": [B], "speakers": [B]}`` for audio crops, or
    ``{"features": [B, F, D], "frame_lengths": [B], "speakers": [B]}`` for cached features."""
    arrays = [a for a, _ in batch]
    speakers = torch.tensor([s for _, s in batch], dtype=torch.int64)
    data, lengths = _pad(arrays)
    if arrays[0].ndim == 2:
        return {"features": data, "frame_lengths": lengths, "speakers": speakers}
    return {"waveforms": data, "lengths": lengths, "speakers": speakers}


def collate_utterances(batch: Sequence[tuple[np.ndarray, int]]) -> dict[str, Tensor]:
    """``{"waveforms": [B, T], "lengths": [B], "index": [B]}`` (``index``: corpus utterance index)."""
    data, lengths = _pad([a for a, _ in batch])
    index = torch.tensor([i for _, i in batch], dtype=torch.int64)
    return {"waveforms": data, "lengths": lengths, "index": index}
