"""Characters for CTC speech recognition: the vocabulary, transcript encoding and greedy decoding.

Greedy decoding is written here because no installed library offers it for plain tensors:
torchaudio's decoders are a beam search that needs the flashlight-text package
(``ctc_decoder``) or CUDA (``cuda_ctc_decoder``), and torchaudio's own ASR tutorial writes
its greedy decoder by hand as well. It is three tensor operations.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: LibriSpeech's character set (the seed's vocabulary): letters, apostrophe and the space
#: between words. Transcripts are lower-cased before encoding.
LIBRISPEECH_CHARACTERS = " 'abcdefghijklmnopqrstuvwxyz"

#: Index of the CTC blank; character ``k`` of the vocabulary is class ``k + 1``.
BLANK = 0


class CharVocabulary:
    """Characters <-> CTC class indices (0 is the blank).

    Example::

        >>> vocab = CharVocabulary("ab ")
        >>> targets, lengths = vocab.encode(["Ab", "b a"])
        >>> targets.tolist(), lengths.tolist()
        ([1, 2, 2, 3, 1], [2, 3])
        >>> vocab.decode([1, 3, 2])
        'a b'
    """

    def __init__(self, characters: str = LIBRISPEECH_CHARACTERS):
        characters = str(characters)
        if not characters:
            raise ValueError("the vocabulary needs at least one character")
        repeated = sorted({c for c in characters if characters.count(c) > 1})
        if repeated:
            raise ValueError(f"vocabulary characters must be distinct; repeated: {repeated}")
        self.characters = characters
        self._index = {c: k + 1 for k, c in enumerate(characters)}

    def __len__(self) -> int:
        """Classes of the CTC output layer: the characters plus the blank."""
        return len(self.characters) + 1

    @staticmethod
    def normalize(text: str) -> str:
        """A transcript as it is encoded: lower case, runs of white space as one space, stripped."""
        return " ".join(str(text).lower().split())

    def missing(self, characters: set[str] | str) -> list[str]:
        """Characters (of transcripts, after :meth:`normalize`) that the vocabulary lacks."""
        return sorted({c for c in self.normalize("".join(characters)) if c not in self._index})

    def encode(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        """Concatenated targets ``[sum(lengths)]`` and their ``lengths [B]`` (``F.ctc_loss``'s 1-D form)."""
        ids: list[int] = []
        lengths = []
        for text in texts:
            norm = self.normalize(text)
            try:
                ids.extend(self._index[c] for c in norm)
            except KeyError as error:
                raise ValueError(
                    f"transcript {text!r} has the character {error.args[0]!r}, which is not in the vocabulary "
                    f"{self.characters!r}; add it to the model's vocabulary") from None
            lengths.append(len(norm))
        return torch.tensor(ids, dtype=torch.long), torch.tensor(lengths, dtype=torch.long)

    def decode(self, ids: list[int] | Tensor) -> str:
        """Class indices (no blanks) -> text."""
        ids = ids.tolist() if isinstance(ids, Tensor) else ids
        return "".join(self.characters[k - 1] for k in ids if k != BLANK)


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
