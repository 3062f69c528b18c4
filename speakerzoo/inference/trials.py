"""Trial lists by utterance id: from a corpus part, or from a text file (middle floor)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["ScoreError", "TrialList", "corpus_part", "corpus_trials", "parse_trials", "read_trials"]

_TARGET = {"1", "target", "tgt", "true"}
_NONTARGET = {"0", "nontarget", "non-target", "imp", "impostor", "false"}


class ScoreError(RuntimeError):
    """Scoring cannot go on; the message says why."""


@dataclass
class TrialList:
    """Trials by utterance id.

    Attributes:
        enrol, test: ``M`` utterance ids per side.
        labels: ``[M]`` int64 (1 target, 0 non-target), or ``None`` for an unlabelled list.
        ident: ``A`` rows of ids ``(anchor, positive, negative_1, ...)``, possibly none.
        source: where the trials came from, in words.
        seconds: ``([M], [M])`` float64 durations of the enrol and test utterances, when known
            (corpus trials); ``None`` for a text list.
    """

    enrol: list[str]
    test: list[str]
    labels: Tensor | None
    ident: list[list[str]]
    source: str
    seconds: tuple[Tensor, Tensor] | None = None


def _label(token: str) -> int | None:
    t = token.lower()
    return 1 if t in _TARGET else 0 if t in _NONTARGET else None


def parse_trials(lines: Iterable[str], known: Callable[[str], bool] | None = None,
                 where: str = "trials") -> tuple[list[str], list[str], list[int] | None, str]:
    """Parse trial lines: ``enrol test``, ``enrol test label`` or ``label enrol test``.

    The layout is detected from all lines: the column that always holds a label
    (``1 0 target nontarget``) is the label. If both the first and the last column always do
    (ids that look like labels), ``known(utt_id)`` decides which reading names known
    utterances. Blank lines and ``#`` comments are skipped.

    Returns ``(enrol, test, labels or None, layout)``.

    Example::

        >>> parse_trials(["1 a.wav b.wav", "0 a.wav c.wav"])
        (['a.wav', 'a.wav'], ['b.wav', 'c.wav'], [1, 0], 'label enrol test')
    """
    rows: list[tuple[int, list[str]]] = []
    for n, line in enumerate(lines, start=1):
        line = line.strip()
        if line and not line.startswith("#"):
            rows.append((n, line.split()))
    if not rows:
        raise ScoreError(f"{where}: no trials (expected lines 'enrol test [label]' or 'label enrol test')")
    widths = {len(tokens) for _, tokens in rows}
    if len(widths) != 1 or widths.pop() not in (2, 3):
        n, tokens = next((n, t) for n, t in rows if len(t) != len(rows[0][1]) or len(t) not in (2, 3))
        raise ScoreError(f"{where}:{n}: expected 2 or 3 columns on every line ('enrol test [label]' or "
                         f"'label enrol test'), got {len(tokens)}: {' '.join(tokens)!r}")
    if len(rows[0][1]) == 2:
        return [t[0] for _, t in rows], [t[1] for _, t in rows], None, "enrol test"
    last = all(_label(t[2]) is not None for _, t in rows)
    first = all(_label(t[0]) is not None for _, t in rows)
    if last and first and known is not None:
        last = all(known(t[0]) and known(t[1]) for _, t in rows)
        first = not last
    if last and not first:
        return [t[0] for _, t in rows], [t[1] for _, t in rows], [_label(t[2]) for _, t in rows], "enrol test label"
    if first and not last:
        return [t[1] for _, t in rows], [t[2] for _, t in rows], [_label(t[0]) for _, t in rows], "label enrol test"
    if first and last:
        raise ScoreError(f"{where}: both the first and the last column hold labels; cannot tell the layout")
    n, tokens = next((n, t) for n, t in rows if _label(t[0]) is None and _label(t[2]) is None)
    raise ScoreError(f"{where}:{n}: no label (1/0/target/nontarget) in the first or last column: {' '.join(tokens)!r}")


def read_trials(path: str | Path, known: Callable[[str], bool] | None = None) -> TrialList:
    """A text trial list (see :func:`parse_trials`)."""
    path = Path(path)
    if not path.is_file():
        raise ScoreError(f"{path}: no such trial list")
    enrol, test, labels, layout = parse_trials(path.read_text(encoding="utf-8-sig").splitlines(), known, str(path))
    return TrialList(enrol, test, None if labels is None else torch.tensor(labels, dtype=torch.int64), [],
                     f"{path} ({layout})")


def corpus_trials(corpus_path: str | Path, split: str = "speaker", part: str = "test") -> TrialList:
    """The verification pairs and identification rows of one part of a corpus, by utterance id."""
    from speakerzoo.datamodules.corpus import Corpus

    corpus = Corpus(corpus_path)
    try:
        pairs, ident = corpus.trials(split, part)
        ids = corpus.texts("utt_id")
        seconds = torch.as_tensor(corpus.num_samples, dtype=torch.float64) / corpus.sample_rate
    finally:
        corpus.close()
    return TrialList(
        enrol=[ids[i] for i in pairs[:, 0]],
        test=[ids[i] for i in pairs[:, 1]],
        labels=torch.as_tensor(pairs[:, 2], dtype=torch.int64),
        ident=[[ids[i] for i in row] for row in ident],
        source=f"corpus {corpus_path}, split {split}, part {part}",
        seconds=(seconds[torch.as_tensor(pairs[:, 0])], seconds[torch.as_tensor(pairs[:, 1])]),
    )


def corpus_part(corpus_path: str | Path, split: str = "speaker", part: str = "test") -> tuple[list[str], Tensor]:
    """The utterance ids and ``[N]`` int64 speaker numbers (-1: no speaker) of one part of a corpus, in corpus order."""
    from speakerzoo.datamodules.corpus import Corpus

    corpus = Corpus(corpus_path)
    try:
        index = np.sort(corpus.split(split, part))
        ids = corpus.texts("utt_id")
        speakers = torch.as_tensor(corpus.speaker[index], dtype=torch.int64)
    finally:
        corpus.close()
    return [ids[i] for i in index], speakers
