"""Enrolled speakers and the scores of a recording against them (middle floor, no argparse).

A :class:`SpeakerBank` holds one unit-length centroid per enrolled speaker: the mean of the
speaker's length-normalised utterance embeddings, length-normalised again. Scores are cosine
similarities. With MC-dropout passes the score is computed for each pass's embedding and
reported as its mean and (population) standard deviation over the passes, the uncertainty of
the score; a trial is accepted when the *mean* score is ``>= threshold`` (the convention of
:mod:`speakerzoo.scoring`).

Example::

    >>> import torch
    >>> from speakerzoo.zoo import ECAPA
    >>> model = ECAPA(channels=[8, 8, 8, 8, 24], embedding_dim=8, attention_channels=8,
    ...               se_channels=8).eval()
    >>> waves = torch.randn(2, 4000)
    >>> emb = model.embed(waves)
    >>> bank = SpeakerBank.from_utterances({"alice": emb[0], "bob": emb[1]})
    >>> alice, bob = verify(model, waves[:1], None, bank, threshold=0.99)[0]
    >>> alice.speaker, round(alice.score, 4), alice.score_std, alice.accepted, bob.speaker
    ('alice', 1.0, 0.0, True, 'bob')
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speakerzoo.inference.mc_dropout import eval_embed, mc_samples

__all__ = ["ProfileBank", "SpeakerBank", "Verification", "head_probabilities", "rank", "verify"]


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


class ProfileBank(SpeakerBank):
    """Speakers enrolled with several profiles (e.g. one per microphone or session): one centroid
    per profile; a speaker's score is its best profile's (the maximum over them, for each pass).

    Example::

        >>> bank = ProfileBank.from_profiles({("a", "office"): torch.tensor([1.0, 0.0]),
        ...                                   ("a", "phone"): torch.tensor([0.0, 1.0]),
        ...                                   ("b", "default"): torch.tensor([1.0, 1.0])})
        >>> bank.names, bank.scores(torch.tensor([[0.0, 2.0]])).round(decimals=4)
        (['a', 'b'], tensor([[1.0000, 0.7071]]))
    """

    def __init__(self, names: Sequence[str], profile_speakers: Sequence[int], profile_names: Sequence[str],
                 embeddings: Tensor):
        names = [str(n) for n in names]
        if len(set(names)) != len(names) or not names:
            raise ValueError(f"speaker names must be unique and at least one; got {names}")
        self.names = names
        self._index = {n: i for i, n in enumerate(names)}
        self.profile_speakers = torch.as_tensor(list(profile_speakers), dtype=torch.long)
        self.profile_names = [str(p) for p in profile_names]
        self.embeddings = F.normalize(torch.as_tensor(embeddings).detach().float(), dim=-1)  # [P, D]
        if self.embeddings.shape[0] != len(self.profile_names) or len(self.profile_speakers) != len(self.profile_names):
            raise ValueError("one speaker number and one name per profile embedding")
        if set(self.profile_speakers.tolist()) != set(range(len(names))):
            raise ValueError("every speaker needs at least one profile")

    @classmethod
    def from_profiles(cls, utterances: Mapping[tuple[str, str], Tensor]) -> "ProfileBank":
        """One centroid per ``(speaker, profile)`` from its utterance embeddings (``[D]`` or ``[n, D]``)."""
        centroids = SpeakerBank.from_utterances({f"{i}": emb for i, emb in enumerate(utterances.values())})
        names: dict[str, int] = {}
        speakers = [names.setdefault(str(speaker), len(names)) for speaker, _ in utterances]
        return cls(list(names), speakers, [str(profile) for _, profile in utterances], centroids.embeddings)

    def scores(self, embeddings: Tensor) -> Tensor:
        """Cosine scores ``[..., S]``: for each speaker, its best profile's."""
        profile_scores = super().scores(embeddings)  # [..., P]
        index = self.profile_speakers.to(profile_scores.device).expand_as(profile_scores)
        out = profile_scores.new_full((*profile_scores.shape[:-1], len(self.names)), -math.inf)
        return out.scatter_reduce(-1, index, profile_scores, reduce="amax")


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
    emb = mc_samples(model, waveforms, lengths, passes) if passes else eval_embed(model, waveforms, lengths)[None]
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
