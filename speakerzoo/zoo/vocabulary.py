"""Characters <-> class indices: the zoo's one character vocabulary.

Two models read text one character at a time, and both build their :class:`CharVocabulary`
from a string among their hyper-parameters, so a checkpoint rebuilds exactly the vocabulary it
was trained with:

* :class:`~speakerzoo.zoo.wav2vec2_mtl.Wav2Vec2MultiTask`'s CTC head: ``CharVocabulary(vocabulary)``,
  class 0 the CTC blank and character ``k`` class ``k + 1``; transcripts are normalised
  (lower case, single spaces) before they are encoded (:meth:`CharVocabulary.encode_transcripts`).
* :class:`~speakerzoo.zoo.text_generator.TextGenerator`'s character models:
  ``CharVocabulary.from_text(alphabet)``, the sorted distinct characters of the training text
  and always the line break, character ``k`` class ``k``; text is encoded as it is.

Example::

    >>> ctc = CharVocabulary("ab ")
    >>> targets, lengths = ctc.encode_transcripts(["Ab", "b a"])
    >>> targets.tolist(), lengths.tolist()
    ([1, 2, 2, 3, 1], [2, 3])
    >>> ctc.decode([1, 3, 0, 2])                  # 0, the blank, is no character
    'a b'
    >>> frames = CharVocabulary.from_text("1,2\\n2,1\\n")
    >>> frames, frames.encode("2,1").tolist()
    (CharVocabulary('\\n,12', blank=False), [3, 1, 2])
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["BLANK", "LIBRISPEECH_CHARACTERS", "CharVocabulary"]

#: LibriSpeech's character set (the CTC default of seed 003): letters, apostrophe and the space
#: between words. Transcripts are lower-cased before encoding.
LIBRISPEECH_CHARACTERS = " 'abcdefghijklmnopqrstuvwxyz"

#: Class of the CTC blank in a vocabulary with ``blank=True``; character ``k`` is then class ``k + 1``.
BLANK = 0


class CharVocabulary:
    """One class per character of ``characters`` (distinct, in class order).

    Arguments:
        characters: the characters, in class order.
        blank: class 0 is the CTC blank (:data:`BLANK`) and character ``k`` is class ``k + 1``;
            ``False``: character ``k`` is class ``k``.
    """

    def __init__(self, characters: str = LIBRISPEECH_CHARACTERS, blank: bool = True):
        characters = str(characters)
        if not characters:
            raise ValueError("the vocabulary needs at least one character")
        repeated = sorted({c for c in characters if characters.count(c) > 1})
        if repeated:
            raise ValueError(f"vocabulary characters must be distinct; repeated: {repeated}")
        self.characters = characters
        self.blank = bool(blank)
        self._offset = int(self.blank)
        self._index = {c: k + self._offset for k, c in enumerate(characters)}

    @classmethod
    def from_text(cls, text: str, always: str = "\n") -> CharVocabulary:
        """The sorted distinct characters of ``text`` and of ``always`` (the line break that ends
        every frame of frame text and starts sampling), no blank."""
        return cls("".join(sorted(set(text) | set(always))), blank=False)

    def __len__(self) -> int:
        """Classes of an output layer over the vocabulary: the characters (plus the blank)."""
        return len(self.characters) + self._offset

    def __repr__(self) -> str:
        return f"CharVocabulary({self.characters!r}, blank={self.blank})"

    def encode(self, text: str) -> Tensor:
        """1-D LongTensor of the classes of the characters of ``text``, as it is; ValueError
        naming the first character that the vocabulary lacks."""
        try:
            return torch.tensor([self._index[c] for c in text], dtype=torch.long)
        except KeyError as error:
            raise ValueError(f"character {error.args[0]!r} is not in the vocabulary {self.characters!r}") from None

    def decode(self, ids: list[int] | Tensor) -> str:
        """Classes -> text (blanks are left out)."""
        ids = ids.tolist() if isinstance(ids, Tensor) else ids
        return "".join(self.characters[int(k) - self._offset] for k in ids if not (self.blank and k == BLANK))

    @staticmethod
    def normalize(text: str) -> str:
        """A transcript as :meth:`encode_transcripts` encodes it: lower case, runs of white space
        as one space, stripped."""
        return " ".join(str(text).lower().split())

    def missing(self, characters: set[str] | str) -> list[str]:
        """Characters (of transcripts, after :meth:`normalize`) that the vocabulary lacks."""
        return sorted({c for c in self.normalize("".join(characters)) if c not in self._index})

    def encode_transcripts(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        """CTC targets of transcripts (each :meth:`normalize`-d): the concatenated classes
        ``[sum(lengths)]`` and their ``lengths [B]`` (``F.ctc_loss``'s 1-D form)."""
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
