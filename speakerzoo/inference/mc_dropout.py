"""Monte-Carlo dropout for any :class:`~speakerzoo.zoo.base.SpeakerEmbeddingModule` (Gal and
Ghahramani, "Dropout as a Bayesian Approximation", ICML 2016; as used for speaker embeddings with
uncertainty by the SE-CNN-BiGRU paper behind the zoo's ``se_cnn_bigru`` config).

:func:`mc_dropout` puts a model in eval mode except its dropout *modules*, which sample a new mask
on every forward pass; :func:`mc_samples` runs ``K`` such passes and :func:`mc_embed` returns the
mean embedding and its population variance over the passes::

    mu  = 1/K sum_k z_k
    var = 1/K sum_k (z_k - mu)^2        (per dimension)

BatchNorm stays in eval mode (running statistics), so a pass only differs from the eval-mode
embedding by its dropout masks. Only ``nn.Dropout``-family modules are switched (``Dropout``,
``Dropout1d/2d/3d``, ``AlphaDropout``, ``FeatureAlphaDropout``, anything deriving from
torch's ``_DropoutNd``); the internal dropout of ``nn.RNN/GRU/LSTM(dropout=...)`` and
``F.dropout(x, training=self.training)`` calls follow their own module's mode, which stays
eval, so they are **not** sampled. Random masks come from the torch default generator:
``torch.manual_seed(s)`` before a call makes it reproducible. Files and waveforms of any length
are embedded with MC passes by :func:`speakerzoo.inference.engine.embed_waveforms` (``passes=K``).

Example::

    >>> import torch
    >>> from speakerzoo.zoo import ECAPA
    >>> model = ECAPA(channels=[8, 8, 8, 8, 24], embedding_dim=8, attention_channels=8,
    ...               se_channels=8, dropout=0.3).eval()
    >>> waves = torch.randn(2, 4000)
    >>> _ = torch.manual_seed(0)
    >>> mean, var = mc_embed(model, waves, passes=4)
    >>> mean.shape, bool((var > 0).all()), model.training
    (torch.Size([2, 8]), True, False)
    >>> mean0, var0 = mc_embed(model, waves, deterministic=True)
    >>> bool(torch.equal(mean0, model.eval().embed(waves))), float(var0.abs().max())
    (True, 0.0)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn

__all__ = [
    "DROPOUT_TYPES",
    "NoDropoutError",
    "dropout_layers",
    "eval_embed",
    "mc_dropout",
    "mc_embed",
    "mc_samples",
    "preserved_modes",
    "require_dropout",
]

#: Module types that :func:`mc_dropout` samples: every ``nn.Dropout`` variant derives from ``_DropoutNd``.
DROPOUT_TYPES: tuple[type[nn.Module], ...] = (getattr(nn.modules.dropout, "_DropoutNd", nn.Dropout),
                                              nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
                                              nn.AlphaDropout, nn.FeatureAlphaDropout)


class NoDropoutError(ValueError):
    """MC dropout was asked of a model without dropout layers (``p > 0``)."""


def dropout_layers(model: nn.Module) -> list[nn.Module]:
    """The dropout modules of ``model`` with ``p > 0``, in ``model.modules()`` order."""
    return [m for m in model.modules() if isinstance(m, DROPOUT_TYPES) and float(getattr(m, "p", 0.0)) > 0.0]


def require_dropout(model: nn.Module) -> list[nn.Module]:
    """:func:`dropout_layers`, or :class:`NoDropoutError` explaining the fix when there are none."""
    layers = dropout_layers(model)
    if not layers:
        rnn = any(isinstance(m, nn.RNNBase) and m.dropout > 0 for m in model.modules())
        raise NoDropoutError(
            f"MC dropout needs dropout layers; {type(model).__name__} has no dropout module with p > 0"
            + (" (the dropout inside its nn.RNN/GRU/LSTM layers is not sampled)" if rnn else "")
            + ". Train the model with dropout (e.g. ECAPA: model.init_args.dropout: 0.1), or leave MC dropout off"
        )
    return layers


@contextlib.contextmanager
def preserved_modes(model: nn.Module) -> Iterator[nn.Module]:
    """Restore the ``training`` flag of every module of ``model`` on exit (also after an error)."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


@contextlib.contextmanager
def mc_dropout(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode with its dropout modules sampling (train mode); modes restored on exit.

    Raises :class:`NoDropoutError` (a ``ValueError``) when the model has no dropout module with
    ``p > 0``. BatchNorm and every other module stay in eval mode; RNN-internal dropout is not
    sampled (see the module docstring).

    Example::

        >>> m = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Dropout(0.5)).train()
        >>> with mc_dropout(m):
        ...     [type(x).__name__ for x in m.modules() if x.training]
        ['Dropout']
        >>> all(x.training for x in m.modules())
        True
    """
    layers = require_dropout(model)
    with preserved_modes(model):
        model.eval()
        for layer in layers:
            layer.train()
        yield model


def mc_samples(model: nn.Module, waveforms: Tensor, lengths: Tensor | None = None, passes: int = 20) -> Tensor:
    """``passes`` stochastic embeddings ``[K, B, D]`` of waveforms ``[B, T]`` under :func:`mc_dropout`.

    ``lengths`` (samples, ``[B]``) are passed to ``model.embed``. No gradients are kept; the
    model's modes are restored afterwards.
    """
    passes = int(passes)
    if passes < 1:
        raise ValueError(f"passes must be at least 1, not {passes}")
    with mc_dropout(model), torch.no_grad():
        return torch.stack([model.embed(waveforms, lengths) for _ in range(passes)])


def eval_embed(model: nn.Module, waveforms: Tensor, lengths: Tensor | None = None) -> Tensor:
    with preserved_modes(model):
        model.eval()
        with torch.no_grad():
            return model.embed(waveforms, lengths)


def mc_embed(
    model: nn.Module,
    waveforms: Tensor,
    lengths: Tensor | None = None,
    passes: int = 20,
    deterministic: bool = False,
) -> tuple[Tensor, Tensor]:
    """Mean embedding ``[B, D]`` and its variance ``[B, D]`` over ``passes`` MC-dropout passes (§5.1).

    The variance is the population variance over the passes (divided by ``K``), per dimension,
    of the model's embeddings as they come (not length-normalised). ``deterministic=True`` runs
    one eval-mode pass instead: the mean is exactly ``model.eval().embed(waveforms, lengths)``
    and the variance is zero (this also works for models without dropout).
    """
    if deterministic:
        emb = eval_embed(model, waveforms, lengths)
        return emb, torch.zeros_like(emb)
    samples = mc_samples(model, waveforms, lengths, passes)
    return samples.mean(dim=0), samples.var(dim=0, correction=0)
