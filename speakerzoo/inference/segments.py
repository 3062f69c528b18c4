"""Long recordings embedded from segments (middle floor): sequence-level aggregation of segment
embeddings, with or without MC-dropout passes.

:func:`segments` cuts a waveform into segments of equal length (overlapping when ``hop <
seconds``); the tail is covered by one more segment that ends at the recording's end, so every
sample is in some segment and no segment is padded. :func:`embed_recording` embeds the segments
(``K`` MC passes, or one eval-mode pass, through the one embedding engine
:func:`~speakerzoo.inference.engine.embed_waveforms`) and :func:`aggregate` combines them; see
:class:`RecordingEmbedding` for the formulas.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speakerzoo.inference.engine import embed_waveforms

__all__ = ["RecordingEmbedding", "aggregate", "embed_recording", "segment_bounds", "segment_embeddings", "segments"]


def segment_bounds(num_samples: int, size: int, hop: int | None = None) -> list[tuple[int, int]]:
    """``(start, end)`` sample ranges of segments of ``size`` samples every ``hop`` (default ``size``).

    A recording of at most ``size`` samples is one segment (all of it). Otherwise segments start
    at ``0, hop, 2 hop, ...`` as long as they fit, and if samples are left after the last one, a
    final segment ends exactly at ``num_samples`` (overlapping its predecessor): every sample lies
    in some segment and all segments have ``size`` samples.

    Example::

        >>> segment_bounds(10, 4)
        [(0, 4), (4, 8), (6, 10)]
        >>> segment_bounds(10, 4, hop=2)
        [(0, 4), (2, 6), (4, 8), (6, 10)]
        >>> segment_bounds(3, 4)
        [(0, 3)]
    """
    num_samples, size = int(num_samples), int(size)
    hop = size if hop is None else int(hop)
    if size < 1 or hop < 1:
        raise ValueError(f"segment size and hop must be at least one sample (got {size}, {hop})")
    if hop > size:
        raise ValueError(f"a hop ({hop} samples) longer than the segments ({size}) would skip audio")
    if num_samples < 1:
        raise ValueError("cannot segment an empty recording")
    if num_samples <= size:
        return [(0, num_samples)]
    bounds = [(s, s + size) for s in range(0, num_samples - size + 1, hop)]
    if bounds[-1][1] < num_samples:
        bounds.append((num_samples - size, num_samples))
    return bounds


def segments(wave: Tensor | np.ndarray, sample_rate: int, seconds: float = 3.0, hop: float | None = None,
             min_seconds: float = 0.0) -> Tensor:
    """Cut a 1-D waveform into segments ``[N, L]`` of ``seconds`` every ``hop`` seconds (see :func:`segment_bounds`).

    ``hop`` defaults to ``seconds`` (no overlap) and may not exceed it. A recording shorter than
    ``seconds`` is one segment of its own length; one shorter than ``min_seconds`` raises
    ``ValueError``.

    Example::

        >>> segments(torch.arange(10.0), sample_rate=2, seconds=2.0)
        tensor([[0., 1., 2., 3.],
                [4., 5., 6., 7.],
                [6., 7., 8., 9.]])
    """
    wave = torch.as_tensor(wave)
    if wave.dim() != 1:
        raise ValueError(f"expected a 1-D waveform, got shape {tuple(wave.shape)}")
    if seconds <= 0 or (hop is not None and hop <= 0):
        raise ValueError(f"segment length and hop must be positive (got {seconds}, {hop})")
    if wave.numel() < min_seconds * sample_rate:
        raise ValueError(f"the recording lasts {wave.numel() / sample_rate:.3f} s, less than the {min_seconds:g} s "
                         "asked for")
    size = max(1, int(round(seconds * sample_rate)))
    step = size if hop is None else max(1, int(round(hop * sample_rate)))
    return torch.stack([wave[a:b] for a, b in segment_bounds(wave.numel(), size, step)])


@dataclass
class RecordingEmbedding:
    """A recording embedded from ``N`` segments with ``K`` passes (``K = 1``: one eval-mode pass).

    With ``u[k, n]`` the length-normalised embedding of segment ``n`` in pass ``k``:

    * ``embedding = normalize(mean_{k,n} u[k, n])`` (unit length, ``[D]``);
    * ``per_pass[k] = normalize(mean_n u[k, n])`` (``[K, D]``): the recording's embedding in
      pass ``k``, what scores are computed from;
    * ``variance = mean_{k,n} (u[k, n] - mean_{k,n} u)^2`` (``[D]``), the population variance of
      all ``K * N`` normalised embeddings. By the law of total variance it is the sum of the
      mean MC variance of a segment, ``mean_n var_k u[k, n]``, and the spread of the segments'
      mean embeddings, ``var_n mean_k u[k, n]``: zero for one segment without MC dropout.

    Attributes:
        embedding, variance, per_pass: as above (float32, CPU).
        samples: the raw (not normalised) embeddings ``[K, N, D]``.
    """

    embedding: Tensor
    variance: Tensor
    per_pass: Tensor
    samples: Tensor

    @property
    def passes(self) -> int:
        return int(self.samples.shape[0])

    @property
    def segments(self) -> int:
        return int(self.samples.shape[1])


def aggregate(samples: Tensor) -> RecordingEmbedding:
    """Combine raw embeddings ``[K, N, D]`` (passes x segments) into a :class:`RecordingEmbedding`."""
    samples = torch.as_tensor(samples).detach().float().cpu()
    if samples.dim() != 3 or samples.shape[0] == 0 or samples.shape[1] == 0:
        raise ValueError(f"expected [passes, segments, D] embeddings, got shape {tuple(samples.shape)}")
    u = F.normalize(samples.double(), dim=-1)
    mean = u.mean(dim=(0, 1))
    variance = ((u - mean) ** 2).mean(dim=(0, 1))
    return RecordingEmbedding(embedding=F.normalize(mean, dim=0).float(), variance=variance.float(),
                              per_pass=F.normalize(u.mean(dim=1), dim=-1).float(), samples=samples)


def embed_recording(
    model: nn.Module,
    wave: Tensor | np.ndarray,
    seconds: float = 3.0,
    hop: float | None = None,
    passes: int = 0,
    batch_size: int = 32,
) -> RecordingEmbedding:
    """Embed a long 1-D waveform (at ``model.sample_rate``) from its :func:`segments`.

    Segments are embedded ``batch_size`` at a time (all of one length, so never padded), with
    ``passes`` MC-dropout passes (``0``: one eval-mode pass), and combined by :func:`aggregate`:
    the unit-length mean of the normalised segment embeddings, and a variance that adds the
    segments' spread to the MC variance (formulas at :class:`RecordingEmbedding`).
    """
    segs = segments(wave, int(model.sample_rate), seconds, hop).float()
    return aggregate(segment_embeddings(model, segs, passes, batch_size))


def segment_embeddings(model: nn.Module, segs: Tensor, passes: int = 0, batch_size: int = 32,
                       exact: bool = True) -> Tensor:
    """Raw embeddings ``[K, N, D]`` (CPU) of segments ``[N, L]`` by
    :func:`~speakerzoo.inference.engine.embed_waveforms`: ``passes`` MC-dropout passes, or one
    eval-mode pass (``K = 1``) for ``passes=0``."""
    emb = embed_waveforms(model, list(segs), batch_size=batch_size, exact=exact, passes=passes)
    return emb if passes else emb[None]
