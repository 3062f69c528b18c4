"""Greedy CTC decoding (the characters and transcript encoding are :mod:`speakerzoo.zoo.vocabulary`'s).

Greedy decoding is written here because no installed library offers it for plain tensors:
torchaudio's decoders are a beam search that needs the flashlight-text package
(``ctc_decoder``) or CUDA (``cuda_ctc_decoder``), and torchaudio's own ASR tutorial writes
its greedy decoder by hand as well. It is three tensor operations.
"""

from __future__ import annotations

import torch
from torch import Tensor

from speakerzoo.zoo.vocabulary import BLANK


def greedy_ctc(logits: Tensor, frame_lengths: Tensor) -> list[list[int]]:
    """Best path decoding: the most likely class of every valid frame, repeats merged, blanks removed.

    ``logits [B, frames, classes]`` (or log-probabilities) and valid ``frame_lengths [B]`` ->
    one list of class indices per row.

    Example::

        >>> frames = torch.tensor([[1, 1, 0, 1, 2, 2, 0, 0]])
        >>> greedy_ctc(torch.nn.functional.one_hot(frames, 3).float(), torch.tensor([8]))
        [[1, 1, 2]]
    """
    best = logits.argmax(dim=-1).cpu()
    out = []
    for row, n in zip(best, frame_lengths.tolist()):
        path = torch.unique_consecutive(row[: int(n)])
        out.append(path[path != BLANK].tolist())
    return out
