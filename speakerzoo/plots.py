"""DET-curve and Bayes-error figures (ground floor): one DET drawing shared by ``speakerzoo score
--det`` and the TensorBoard :class:`~speakerzoo.callbacks.VerificationPlots`, and the Bayes error
plot of calibrated scores (``speakerzoo score --calibration ... --plot``).

Figures are built on matplotlib's ``Figure`` with an Agg canvas, never through ``pyplot``, so no
GUI backend is touched and nothing is kept alive by pyplot's figure registry.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from speakerzoo.scoring import bayes_error_curve, det_plot_data

DET_TICKS = (0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8)


class Mark(NamedTuple):
    """An operating point drawn on a DET curve: rates as fractions, matplotlib marker and colour."""

    p_fa: float
    p_miss: float
    marker: str
    color: str
    label: str
    annotate: bool = False


def probit(p: float) -> float:
    """The normal deviate of ``p`` (DET axes are on this scale)."""
    return float(torch.special.ndtri(torch.tensor(p, dtype=torch.float64)))


def det_figure(scores: Tensor, labels: Tensor, marks: Sequence[Mark] = (), title: str = "", dpi: int = 100) -> Any:
    """A ``matplotlib.figure.Figure`` of the DET curve of ``scores`` / ``labels`` (1 target,
    0 non-target) on normal-deviate axes, from half the smallest non-zero rate (within
    [0.01 %, 1 %]) to 90 %, with ``marks`` drawn on it (clipped to the axes).

    Example::

        >>> fig = det_figure(torch.tensor([0.9, 0.4, 0.6, 0.1]), torch.tensor([1, 1, 0, 0]),
        ...                  [Mark(0.5, 0.5, "o", "tab:red", "EER 50 %")])
        >>> fig.axes[0].get_xlabel()
        'False accept rate (%)'
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    scores = torch.as_tensor(scores).detach().cpu()
    labels = torch.as_tensor(labels).detach().cpu()
    x, y = det_plot_data(scores, labels)
    n = min(int((labels == 1).sum()), int((labels == 0).sum()))
    low = min(max(0.5 / max(n, 1), 1e-4), 0.01)
    lim = (probit(low), probit(0.9))
    x, y = x.clamp(*lim).numpy(), y.clamp(*lim).numpy()

    fig = Figure(figsize=(5.5, 5.5), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(x, y, color="tab:blue", lw=1.6, label="DET")
    ax.plot(lim, lim, color="0.6", lw=0.8, ls="--", label="P_fa = P_miss")
    for mark in marks:
        px = min(max(probit(mark.p_fa), lim[0]), lim[1]) if mark.p_fa > 0 else lim[0]
        py = min(max(probit(mark.p_miss), lim[0]), lim[1]) if mark.p_miss > 0 else lim[0]
        ax.plot([px], [py], marker=mark.marker, color=mark.color, ls="none", ms=7, label=mark.label)
        if mark.annotate:
            ax.annotate(mark.label, (px, py), xytext=(8, 8), textcoords="offset points", fontsize=9, color=mark.color)
    ticks = [t for t in DET_TICKS if low <= t <= 0.9]
    names = [f"{100 * t:g}" for t in ticks]
    ax.set_xticks([probit(t) for t in ticks], names, fontsize=7)
    ax.set_yticks([probit(t) for t in ticks], names, fontsize=7)
    ax.set_xlim(*lim)
    ax.set_ylim(*lim)
    ax.set_xlabel("False accept rate (%)")
    ax.set_ylabel("Miss rate (%)")
    ax.grid(True, color="0.85", lw=0.6)
    ax.set_aspect("equal")
    ax.legend(loc="upper right", fontsize=8, framealpha=0.9)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def bayes_error_figure(llr: Tensor, labels: Tensor, title: str = "", marks: Sequence[float] = (), dpi: int = 100) -> Any:
    """A ``matplotlib.figure.Figure`` of the Bayes error plot of calibrated scores: normalised DCF
    against the prior log-odds from -7 to 7 (:func:`speakerzoo.scoring.bayes_error_curve`): the
    actual cost of the LLRs' own decisions, the minimum one, and 1 (a system with no information).
    Where the two curves part, the calibration is off for those priors. ``marks``: priors
    (``p_target`` values) drawn as vertical lines.

    Example::

        >>> llr = torch.tensor([2.0, 0.5, 1.0, -1.0, -0.2, -2.0], dtype=torch.float64)
        >>> fig = bayes_error_figure(llr, torch.tensor([1, 1, 0, 0, 1, 0]), marks=[0.01])
        >>> fig.axes[0].get_xlabel()
        'prior log-odds log(p_target / (1 - p_target))'
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    eta = torch.linspace(-7, 7, 141, dtype=torch.float64)
    actual, minimum = bayes_error_curve(torch.as_tensor(llr).detach().cpu(), torch.as_tensor(labels).detach().cpu(), eta)
    fig = Figure(figsize=(6, 4.2), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(eta.numpy(), actual.numpy(), color="tab:red", label="actual DCF (calibrated scores)")
    ax.plot(eta.numpy(), minimum.numpy(), color="tab:blue", linestyle="--", label="minimum DCF")
    ax.axhline(1.0, color="0.5", linewidth=0.8, linestyle=":", label="no information")
    for p in marks:
        x = float(torch.logit(torch.tensor(float(p), dtype=torch.float64)))
        ax.axvline(x, color="0.3", linewidth=0.8)
        ax.annotate(f"p_target {p:g}", (x, 1.12), rotation=90, fontsize=7, ha="right", va="top")
    ax.set_xlabel("prior log-odds log(p_target / (1 - p_target))")
    ax.set_ylabel("normalised DCF (C_miss = C_fa = 1)")
    ax.set_ylim(0, 1.2)
    ax.set_xlim(-7, 7)
    ax.grid(True, linewidth=0.3)
    ax.legend(fontsize=8, loc="lower left")  # the curves rise to the edges; the bottom corners stay free
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig
