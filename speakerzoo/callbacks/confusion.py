"""The confusion matrix of a closed-set speaker classifier as a figure (matplotlib, Agg).

:func:`confusion_figure` draws the matrix normalised per true class (each row sums to 1 over
all classes, so a cell is the share of a speaker's utterances given to a class and the
diagonal is the per-class recall). Large problems are cut to ``max_classes`` classes chosen
by :func:`most_confused`: the classes involved in the most errors, as the true class or the
predicted one, shown in class order. Rows stay normalised by the *whole* row, so the shares
drawn are the true ones even when a row's other classes are left out.

Example::

    >>> import torch
    >>> from speakerzoo.callbacks import render
    >>> cm = torch.tensor([[5, 1, 0], [2, 2, 0], [0, 0, 9]])
    >>> most_confused(cm, 2).tolist()
    [0, 1]
    >>> fig = confusion_figure(cm, ["ann", "bob", "cy"], title="val, epoch 3")
    >>> render(fig).shape[2]
    3
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["confusion_figure", "most_confused", "normalize_rows"]


def normalize_rows(confusion: Tensor) -> Tensor:
    """``confusion [C, C]`` (rows: true class) divided by its row sums; rows without support are 0."""
    counts = confusion.double()
    support = counts.sum(1, keepdim=True)
    return torch.where(support > 0, counts / support.clamp(min=1), torch.zeros_like(counts))


def most_confused(confusion: Tensor, k: int) -> Tensor:
    """Indices (ascending) of the ``k`` classes involved in the most errors: off-diagonal
    counts of their row (utterances of the class given to another) plus their column (others'
    utterances given to the class); ties go to the lower class index. All classes if ``C <= k``."""
    num = confusion.shape[0]
    if num <= k:
        return torch.arange(num)
    counts = confusion.detach().cpu().long()
    errors = counts.sum(0) + counts.sum(1) - 2 * counts.diagonal()
    # Stable sort on -errors keeps the lower index first among ties.
    order = torch.sort(-errors, stable=True).indices[:k]
    return torch.sort(order).values


def confusion_figure(
    confusion: Tensor,
    names: list[str] | None = None,
    max_classes: int = 50,
    title: str = "",
    annotate_below: int = 13,
):
    """A :class:`matplotlib.figure.Figure` of ``confusion [C, C]`` (rows: true class, columns:
    predicted class) normalised per true class.

    Arguments:
        confusion: counts, rows = true class, columns = predicted class.
        names: class names for the axes (default: class indices).
        max_classes: draw at most this many classes, the :func:`most_confused` ones, when ``C``
            is larger (the title then says "k most confused of C").
        title: first line of the title.
        annotate_below: write each cell's share in it when fewer classes than this are drawn.

    The figure is never registered with ``pyplot``; draw it with
    :func:`~speakerzoo.callbacks.common.render`.
    """
    from matplotlib.figure import Figure

    confusion = confusion.detach().cpu()
    num = confusion.shape[0]
    names = [str(i) for i in range(num)] if names is None or len(names) != num else [str(n) for n in names]
    shown = most_confused(confusion, max(1, int(max_classes)))
    rates = normalize_rows(confusion)[shown][:, shown].numpy()
    labels = [names[i] for i in shown.tolist()]
    k = len(labels)

    fig = Figure(figsize=(6.4, 6.4), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(rates, vmin=0.0, vmax=1.0, cmap="Blues", interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    size = float(np.clip(300.0 / k, 3.0, 9.0))
    ticks = np.arange(k)
    ax.set_xticks(ticks, labels, rotation=90, fontsize=size)
    ax.set_yticks(ticks, labels, fontsize=size)
    ax.set_xlabel("predicted speaker", fontsize=9)
    ax.set_ylabel("true speaker", fontsize=9)
    what = f"{k} most confused of {num} classes" if k < num else f"{num} classes"
    heading = f"{title}\n" if title else ""
    ax.set_title(f"{heading}confusion, rows normalised per true class ({what})", fontsize=9)
    if k < annotate_below:
        for i in range(k):
            for j in range(k):
                value = rates[i, j]
                if value > 0:
                    ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if value > 0.6 else "black")
    fig.tight_layout()
    return fig
