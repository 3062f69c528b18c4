"""Scoring of speaker embeddings (ground floor): trials, cosine scores, EER, minDCF, identification.

Imports nothing of ours; the DataModules hand trials to models as :class:`Trials`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Trials:
    """Evaluation trials over utterances of one corpus split, by corpus utterance index.

    Attributes:
        pairs: ``[M, 3]`` int64 rows ``(enrol, test, label)``, label 1 for the same speaker
            and 0 for different speakers (verification).
        ident: ``[A, 101]`` int64 rows ``(anchor, positive, negative_1 .. negative_99)``:
            one anchor scored against one utterance of its own speaker and 99 of other
            speakers (Deep Speaker, seed 001 §4.1; identification accuracy is the share of
            rows whose positive scores highest).
    """

    pairs: Tensor
    ident: Tensor

    def utterances(self) -> Tensor:
        """Sorted unique utterance indices that the trials need embeddings for."""
        return torch.unique(torch.cat([self.pairs[:, :2].reshape(-1), self.ident.reshape(-1)]))
