"""MFCC frames as lines of text, and back (seed 000 §III-A; ground floor: imports nothing of ours).

Bird et al. train character-level generators (an LSTM, GPT-2) on one subject's frames written as
text: one frame per line, its 26 MFCCs and its class as 27 comma-separated numbers. Synthetic
frames are sampled in blocks of 1,000 characters; the last line of a block is removed, because
the block boundary usually cuts it, and "illogical" lines (not 26 values and a class) are
removed as well. :func:`frames_to_text` writes the format; :func:`parse_block` reads one sampled
block back under exactly those rules:

* only lines ended by a line break are read: the piece after a block's last line break is the
  cut final line and is dropped (a block without any line break yields nothing);
* when a block continues the text of the previous one (``after_cut=True``: the generator's
  state carried over and the previous block ended in a cut line), the piece before its first
  line break is the rest of that cut line and is dropped too: the rest of a line cut inside its
  first number would otherwise pass for a whole line with a wrong first value;
* a line is kept when it has ``dim`` finite numbers and a class, all comma-separated, and the
  class is one of ``classes`` (when given); anything else is malformed and dropped.

Example::

    >>> text = frames_to_text([[0.5, -1.25], [2.0, 3.0]], [1, 1], decimals=2)
    >>> print(text, end="")
    0.50,-1.25,1
    2.00,3.00,1
    >>> block = text + "1.0,x,1\\n" + "4.0,5.0,1\\n4.0,5"     # a malformed line, a cut final line
    >>> parsed = parse_block(block, dim=2, classes={1})
    >>> parsed.frames.tolist(), parsed.labels.tolist(), parsed.malformed, parsed.cut
    ([[0.5, -1.25], [2.0, 3.0], [4.0, 5.0]], [1, 1, 1], 1, True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

__all__ = ["ParsedBlock", "frames_to_text", "parse_block", "parse_line"]


def frames_to_text(frames: Sequence[Sequence[float]] | np.ndarray, labels: Sequence[int] | np.ndarray,
                   decimals: int = 3) -> str:
    """Frames ``[N, dim]`` and integer classes ``[N]`` -> ``N`` lines ``v1,...,vdim,class\\n``
    (values with ``decimals`` digits after the point)."""
    frames = np.asarray(frames, dtype=np.float64)
    labels = np.asarray(labels)
    if frames.ndim != 2 or len(frames) != len(labels):
        raise ValueError(f"need frames [N, dim] and N labels, got {frames.shape} and {labels.shape}")
    if not np.isfinite(frames).all():
        raise ValueError("frames contain NaN or infinite values; they cannot be written as text")
    fmt = f"{{:.{int(decimals)}f}}"
    return "".join(",".join(fmt.format(v) for v in row) + f",{int(c)}\n" for row, c in zip(frames, labels))


def parse_line(line: str, dim: int, classes: Iterable[int] | None = None) -> tuple[list[float], int] | None:
    """``(values, class)`` of one line without its line break, or ``None`` when it is malformed."""
    fields = line.strip().split(",")
    if len(fields) != dim + 1:
        return None
    try:
        values = [float(f) for f in fields[:-1]]
        label = int(fields[-1])
    except ValueError:
        return None
    if not all(math.isfinite(v) for v in values):
        return None
    if classes is not None and label not in set(classes):
        return None
    return values, label


@dataclass(frozen=True)
class ParsedBlock:
    """What one sampled block held: the kept ``frames [M, dim]`` and ``labels [M]``, how many
    complete lines were ``malformed`` (dropped), and whether a ``cut`` final line was dropped."""

    frames: np.ndarray
    labels: np.ndarray
    malformed: int
    cut: bool


def parse_block(text: str, dim: int = 26, classes: Iterable[int] | None = None,
                after_cut: bool = False) -> ParsedBlock:
    """Read the frames of one generated block of text (see the module docstring for the rules);
    ``after_cut``: the block continues a previous block whose final line was cut."""
    allowed = None if classes is None else set(classes)
    *complete, tail = text.split("\n")
    if after_cut and complete:
        complete = complete[1:]
    frames, labels, malformed = [], [], 0
    for line in complete:
        parsed = parse_line(line, dim, allowed)
        if parsed is None:
            malformed += 1
            continue
        frames.append(parsed[0])
        labels.append(parsed[1])
    return ParsedBlock(frames=np.asarray(frames, dtype=np.float32).reshape(-1, dim),
                       labels=np.asarray(labels, dtype=np.int64), malformed=malformed, cut=bool(tail))
