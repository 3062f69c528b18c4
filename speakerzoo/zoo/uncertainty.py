"""Uncertainty-aware inference for any :class:`~speakerzoo.zoo.base.SpeakerEmbeddingModule`
(seed 002, §5): Monte-Carlo dropout, verification against a bank of enrolled speakers, and
aggregation over the segments of long recordings.

**Monte-Carlo dropout** (§5.1). :func:`mc_dropout` puts a model in eval mode except its
dropout *modules*, which sample a new mask on every forward pass; :func:`mc_samples` runs
``K`` such passes and :func:`mc_embed` returns the mean embedding and its population variance
over the passes::

    mu  = 1/K sum_k z_k
    var = 1/K sum_k (z_k - mu)^2        (per dimension)

BatchNorm stays in eval mode (running statistics), so a pass only differs from the eval-mode
embedding by its dropout masks. Only ``nn.Dropout``-family modules are switched (``Dropout``,
``Dropout1d/2d/3d``, ``AlphaDropout``, ``FeatureAlphaDropout``, anything deriving from
torch's ``_DropoutNd``); the internal dropout of ``nn.RNN/GRU/LSTM(dropout=...)`` and
``F.dropout(x, training=self.training)`` calls follow their own module's mode, which stays
eval, so they are **not** sampled. Random masks come from the torch default generator:
``torch.manual_seed(s)`` before a call makes it reproducible.

**Verification against a speaker bank** (§5.2). A :class:`SpeakerBank` holds one unit-length
centroid per enrolled speaker: the mean of the speaker's length-normalised utterance
embeddings, length-normalised again. Scores are cosine similarities. With MC passes the
score is computed for each pass's embedding and reported as its mean and (population)
standard deviation over the passes, the uncertainty of the score; a trial is accepted when
the *mean* score is ``>= threshold`` (the convention of :mod:`speakerzoo.scoring`).

**Long recordings** (§5.2, sequence-level aggregation). :func:`segments` cuts a waveform into
segments of equal length (overlapping when ``hop < seconds``); the tail is covered by one
more segment that ends at the recording's end, so every sample is in some segment and no
segment is padded. :func:`embed_recording` embeds the segments (``K`` MC passes, or one
eval-mode pass) and :func:`aggregate` combines them; see :class:`RecordingEmbedding` for the
formulas.

Example::

    >>> import torch
    >>> from speakerzoo.zoo import ECAPA
    >>> model = ECAPA(channels=[8, 8, 8, 8, 24], embedding_dim=8, attention_channels=8,
    ...               se_channels=8, dropout=0.3).eval()
    >>> waves = torch.randn(2, 4000)
    >>> _ = torch.manual_seed(0)
    >>> mean, var = mc_embed(model, waves, passes=4)
    >>> mean.shape, bool((var > 0).all()), model.training
    (torch.Size([2, 8]), True, False)
    >>> mean0, var0 = mc_embed(model, waves, deterministic=True)
    >>> bool(torch.equal(mean0, model.eval().embed(waves))), float(var0.abs().max())
    (True, 0.0)
    >>> bank = SpeakerBank.from_utterances({"alice": mean0[0], "bob": mean0[1]})
    >>> alice, bob = verify(model, waves[:1], None, bank, threshold=0.99)[0]
    >>> alice.speaker, round(alice.score, 4), alice.score_std, alice.accepted, bob.speaker
    ('alice', 1.0, 0.0, True, 'bob')
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "DROPOUT_TYPES",
    "NoDropoutError",
    "RecordingEmbedding",
    "SpeakerBank",
    "Verification",
    "aggregate",
    "dropout_layers",
    "embed_recording",
    "embed_segments",
    "head_probabilities",
    "mc_dropout",
    "mc_embed",
    "mc_samples",
    "preserved_modes",
    "rank",
    "require_dropout",
    "segment_bounds",
    "segments",
    "verify",
]

#: Module types that :func:`mc_dropout` samples: every ``nn.Dropout`` variant derives from ``_DropoutNd``.
DROPOUT_TYPES: tuple[type[nn.Module], ...] = (getattr(nn.modules.dropout, "_DropoutNd", nn.Dropout),
                                              nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
                                              nn.AlphaDropout, nn.FeatureAlphaDropout)


class NoDropoutError(ValueError):
    """MC dropout was asked of a model without dropout layers (``p > 0``)."""


# --------------------------------------------------------------------------- MC dropout


def dropout_layers(model: nn.Module) -> list[nn.Module]:
    """The dropout modules of ``model`` with ``p > 0``, in ``model.modules()`` order."""
    return [m for m in model.modules() if isinstance(m, DROPOUT_TYPES) and float(getattr(m, "p", 0.0)) > 0.0]


def require_dropout(model: nn.Module) -> list[nn.Module]:
    """:func:`dropout_layers`, or :class:`NoDropoutError` explaining the fix when there are none."""
    layers = dropout_layers(model)
    if not layers:
        rnn = any(isinstance(m, nn.RNNBase) and m.dropout > 0 for m in model.modules())
        raise NoDropoutError(
            f"MC dropout needs dropout layers; {type(model).__name__} has no dropout module with p > 0"
            + (" (the dropout inside its nn.RNN/GRU/LSTM layers is not sampled)" if rnn else "")
            + ". Train the model with dropout (e.g. ECAPA: model.init_args.dropout: 0.1), or leave MC dropout off"
        )
    return layers


@contextlib.contextmanager
def preserved_modes(model: nn.Module) -> Iterator[nn.Module]:
    """Restore the ``training`` flag of every module of ``model`` on exit (also after an error)."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


@contextlib.contextmanager
def mc_dropout(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode with its dropout modules sampling (train mode); modes restored on exit.

    Raises :class:`NoDropoutError` (a ``ValueError``) when the model has no dropout module with
    ``p > 0``. BatchNorm and every other module stay in eval mode; RNN-internal dropout is not
    sampled (see the module docstring).

    Example::

        >>> m = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Dropout(0.5)).train()
        >>> with mc_dropout(m):
        ...     [type(x).__name__ for x in m.modules() if x.training]
        ['Dropout']
        >>> all(x.training for x in m.modules())
        True
    """
    layers = require_dropout(model)
    with preserved_modes(model):
        model.eval()
        for layer in layers:
            layer.train()
        yield model


def mc_samples(model: nn.Module, waveforms: Tensor, lengths: Tensor | None = None, passes: int = 20) -> Tensor:
    """``passes`` stochastic embeddings ``[K, B, D]`` of waveforms ``[B, T]`` under :func:`mc_dropout`.

    ``lengths`` (samples, ``[B]``) are passed to ``model.embed``. No gradients are kept; the
    model's modes are restored afterwards.
    """
    passes = int(passes)
    if passes < 1:
        raise ValueError(f"passes must be at least 1, not {passes}")
    with mc_dropout(model), torch.no_grad():
        return torch.stack([model.embed(waveforms, lengths) for _ in range(passes)])


def _eval_embed(model: nn.Module, waveforms: Tensor, lengths: Tensor | None = None) -> Tensor:
    with preserved_modes(model):
        model.eval()
        with torch.no_grad():
            return model.embed(waveforms, lengths)


def mc_embed(
    model: nn.Module,
    waveforms: Tensor,
    lengths: Tensor | None = None,
    passes: int = 20,
    deterministic: bool = False,
) -> tuple[Tensor, Tensor]:
    """Mean embedding ``[B, D]`` and its variance ``[B, D]`` over ``passes`` MC-dropout passes (§5.1).

    The variance is the population variance over the passes (divided by ``K``), per dimension,
    of the model's embeddings as they come (not length-normalised). ``deterministic=True`` runs
    one eval-mode pass instead: the mean is exactly ``model.eval().embed(waveforms, lengths)``
    and the variance is zero (this also works for models without dropout).
    """
    if deterministic:
        emb = _eval_embed(model, waveforms, lengths)
        return emb, torch.zeros_like(emb)
    samples = mc_samples(model, waveforms, lengths, passes)
    return samples.mean(dim=0), samples.var(dim=0, correction=0)


# --------------------------------------------------------------------------- speaker bank


@dataclass(frozen=True)
class Verification:
    """The score of a test recording against one enrolled speaker.

    Attributes:
        speaker: the enrolled speaker's name.
        score: cosine score (mean over MC passes); for closed-set identification, the head's
            softmax probability.
        score_std: standard deviation of the score over MC passes (0 without MC dropout).
        accepted: ``score >= threshold``, or ``None`` when no threshold was given.
    """

    speaker: str
    score: float
    score_std: float = 0.0
    accepted: bool | None = None

    def to_dict(self) -> dict:
        return asdict(self)


class SpeakerBank:
    """Enrolled speakers: names and one unit-length centroid embedding ``[S, D]`` per speaker.

    Build it with :meth:`from_utterances` from each speaker's utterance embeddings (averaged
    after length normalisation, then normalised again), or directly from centroids (normalised
    here). :meth:`scores` gives cosine scores ``[..., S]``.

    Example::

        >>> bank = SpeakerBank.from_utterances({"a": torch.tensor([[1.0, 0.0], [3.0, 0.0]]),
        ...                                     "b": torch.tensor([0.0, 2.0])})
        >>> bank.names, bank.scores(torch.tensor([[1.0, 1.0]])).round(decimals=4)
        (['a', 'b'], tensor([[0.7071, 0.7071]]))
    """

    def __init__(self, names: Sequence[str], embeddings: Tensor):
        names = [str(n) for n in names]
        embeddings = torch.as_tensor(embeddings)
        if embeddings.dim() != 2 or embeddings.shape[0] != len(names):
            raise ValueError(f"expected [S, D] embeddings for {len(names)} speakers, got shape {tuple(embeddings.shape)}")
        if not names:
            raise ValueError("a speaker bank needs at least one speaker")
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"speaker names must be unique; repeated: {', '.join(duplicates)}")
        self.names = names
        self.embeddings = F.normalize(embeddings.detach().float(), dim=-1)
        self._index = {n: i for i, n in enumerate(names)}

    @classmethod
    def from_utterances(cls, utterances: Mapping[str, Tensor | np.ndarray]) -> "SpeakerBank":
        """One centroid per speaker from its utterance embeddings (``[D]`` or ``[n, D]`` each)."""
        names, centroids, dim = [], [], None
        for name, emb in utterances.items():
            emb = torch.as_tensor(emb).detach().double().cpu()
            emb = emb.unsqueeze(0) if emb.dim() == 1 else emb
            if emb.dim() != 2 or emb.shape[0] == 0:
                raise ValueError(f"speaker {name!r} has no embeddings (got shape {tuple(emb.shape)})")
            if dim is not None and emb.shape[1] != dim:
                raise ValueError(f"speaker {name!r} has {emb.shape[1]}-d embeddings, others {dim}-d")
            dim = emb.shape[1]
            names.append(str(name))
            centroids.append(F.normalize(F.normalize(emb, dim=-1).mean(dim=0), dim=0))
        if not names:
            raise ValueError("no speakers to enrol")
        return cls(names, torch.stack(centroids).float())

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, name: object) -> bool:
        return name in self._index

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def index(self, name: str) -> int:
        """Row of speaker ``name``; ``KeyError`` naming the enrolled speakers if unknown."""
        try:
            return self._index[name]
        except KeyError:
            raise KeyError(f"unknown speaker {name!r}; enrolled: {', '.join(self.names)}") from None

    def scores(self, embeddings: Tensor) -> Tensor:
        """Cosine scores ``[..., S]`` of embeddings ``[..., D]`` (any length) against every speaker."""
        embeddings = torch.as_tensor(embeddings)
        if embeddings.shape[-1] != self.dim:
            raise ValueError(f"embeddings of size {embeddings.shape[-1]} cannot be scored against a bank of "
                             f"{self.dim}-d speaker embeddings (another model?)")
        return F.normalize(embeddings.float(), dim=-1) @ self.embeddings.to(embeddings.device).T

    def score_stats(self, passes: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and population std over ``K`` passes of the scores of embeddings ``[K, ..., D]``."""
        s = self.scores(passes).double()
        return s.mean(dim=0), s.std(dim=0, correction=0)


def rank(names: Sequence[str], scores: Tensor, stds: Tensor | None = None, threshold: float | None = None,
         top_k: int | None = None) -> list[Verification]:
    """Verifications for one test recording: ``scores [S]`` (and ``stds [S]``) of speakers ``names``.

    In bank order when ``top_k`` is ``None``; else the ``top_k`` best, highest score first
    (ties by name). ``accepted`` is ``score >= threshold`` (``None`` without a threshold).
    """
    scores = torch.as_tensor(scores).double().cpu().tolist()
    stds = [0.0] * len(scores) if stds is None else torch.as_tensor(stds).double().cpu().tolist()
    out = [Verification(str(n), float(s), float(d), None if threshold is None else bool(s >= threshold))
           for n, s, d in zip(names, scores, stds)]
    if top_k is not None:
        out = sorted(out, key=lambda v: (-v.score, v.speaker))[: max(int(top_k), 0)]
    return out


def verify(
    model: nn.Module,
    waveforms: Tensor,
    lengths: Tensor | None,
    bank: SpeakerBank | Mapping[str, Tensor],
    threshold: float | None = None,
    passes: int = 0,
) -> list[list[Verification]]:
    """Score each waveform ``[B, T]`` against every speaker of ``bank`` (§5.2).

    ``bank`` is a :class:`SpeakerBank` or a mapping ``name -> embeddings [D] or [n, D]``
    (made into one with :meth:`SpeakerBank.from_utterances`). ``passes=0``: one eval-mode pass;
    ``passes=K``: ``K`` MC-dropout passes, a score per pass, reported as mean and std.
    Returns, per waveform, one :class:`Verification` per speaker in bank order. Waveforms of
    different lengths must be padded into ``[B, T]`` with ``lengths``; padding can change the
    embeddings of models with reflect-padded convolutions (ECAPA), so prefer equal lengths or
    one waveform per call.
    """
    if not isinstance(bank, SpeakerBank):
        bank = SpeakerBank.from_utterances(bank)
    emb = mc_samples(model, waveforms, lengths, passes) if passes else _eval_embed(model, waveforms, lengths)[None]
    mean, std = bank.score_stats(emb)
    return [rank(bank.names, mean[b], std[b], threshold) for b in range(mean.shape[0])]


def head_probabilities(model: nn.Module, embeddings: Tensor) -> Tensor:
    """Softmax over the training speakers of the model's classification head: ``[..., D] -> [..., C]``.

    The logits are the model's :meth:`~speakerzoo.zoo.base.SpeakerEmbeddingModule.classify`
    (for :class:`~speakerzoo.zoo.heads.AAMSoftmax`: ``scale * cos``, without margin). These
    are the training softmax's probabilities, not calibrated ones.
    """
    classify = getattr(model, "classify", None)
    flat = embeddings.reshape(-1, embeddings.shape[-1])
    with torch.no_grad():
        logits = classify(flat) if callable(classify) else None
    if logits is None:
        raise ValueError(f"{type(model).__name__} has no classification head (num_speakers=0): "
                         "it cannot identify its training speakers; enrol speakers instead")
    return logits.float().softmax(dim=-1).reshape(*embeddings.shape[:-1], logits.shape[-1])


# --------------------------------------------------------------------------- long recordings


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
    return aggregate(embed_segments(model, segs, passes, batch_size))


def embed_segments(model: nn.Module, segs: Tensor, passes: int = 0, batch_size: int = 32) -> Tensor:
    """Raw embeddings ``[K, N, D]`` (on the CPU) of equal-length segments ``[N, L]``, ``batch_size``
    at a time: ``passes`` MC-dropout passes, or one eval-mode pass (``K = 1``) for ``passes=0``."""
    device = torch.device(getattr(model, "device", "cpu"))
    parts = []
    for start in range(0, segs.shape[0], max(1, int(batch_size))):
        chunk = segs[start : start + batch_size].to(device)
        parts.append(mc_samples(model, chunk, None, passes) if passes else _eval_embed(model, chunk)[None])
    return torch.cat([p.float().cpu() for p in parts], dim=1)
