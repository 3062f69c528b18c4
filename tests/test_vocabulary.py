"""The one character vocabulary: the class indices that saved checkpoints depend on stay as they were."""

from __future__ import annotations

import pytest
import torch

from speakerzoo.zoo.vocabulary import LIBRISPEECH_CHARACTERS, CharVocabulary


def test_ctc_classes_are_the_characters_after_the_blank():
    """Wav2Vec2MultiTask checkpoints store the characters; their CTC head's class k + 1 is character k."""
    vocab = CharVocabulary(LIBRISPEECH_CHARACTERS)
    assert len(vocab) == 29
    targets, lengths = vocab.encode_transcripts(["A  z'", "b"])
    assert targets.tolist() == [3, 1, 28, 2, 4] and lengths.tolist() == [4, 1]
    assert vocab.decode([0, 3, 0, 0, 1, 28]) == "a z"
    with pytest.raises(ValueError, match="distinct"):
        CharVocabulary("aba")


def test_text_classes_are_the_sorted_characters_with_the_line_break():
    """TextGenerator checkpoints store the alphabet (any text); class k is its k-th sorted character."""
    vocab = CharVocabulary.from_text("b,a,b")
    assert vocab.characters == "\n,ab" and len(vocab) == 4
    assert vocab.encode("ab\n,").tolist() == [2, 3, 0, 1]
    assert vocab.decode(torch.tensor([3, 2, 0])) == "ba\n"
    assert vocab.encode("").tolist() == []
    with pytest.raises(ValueError, match="'A'"):
        vocab.encode("A")  # text is encoded as it is: no lower-casing
