"""Pooling over the valid frames of a padded batch, and the frame-length helpers it needs.

Every zoo model turns frames ``[B, frames, dim]`` with valid counts ``frame_lengths [B]`` into
one vector per row; the blocks here do it so that the padding after a row's last valid frame
never reaches its vector (the zoo's contract: padding never changes an embedding in eval mode).

Example::

    >>> import torch
    >>> h = torch.tensor([[[1.0], [3.0], [9.0]]])        # one row, 3 frames, the last is padding
    >>> masked_mean(h, torch.tensor([2]))
    tensor([[2.]])
    >>> relative_lengths(torch.tensor([2, 3]), torch.zeros(2, 4, 1))
    tensor([0.3750, 0.6250])
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from speakerzoo.features import valid_mask

__all__ = ["AttentiveStatsPooling", "masked_mean", "relative_lengths"]


def masked_mean(x: Tensor, frame_lengths: Tensor) -> Tensor:
    """Average of ``x [B, T, D]`` over each row's valid frames -> ``[B, D]`` (Deep Speaker's eq. 3)."""
    mask = valid_mask(frame_lengths, x.shape[1])[:, :, None].to(x.dtype)
    return (x * mask).sum(dim=1) / frame_lengths.clamp(min=1)[:, None].to(x.dtype)


def relative_lengths(frame_lengths: Tensor, features: Tensor) -> Tensor:
    """speechbrain's relative lengths for ``features [B, frames, dim]`` with valid ``frame_lengths [B]``.

    speechbrain masks frame i when i < relative * frames. With relative = n / frames the float
    product is often a hair above n and then also lets padded frame n in; (n - 0.5) / frames
    keeps exactly n frames.
    """
    return (frame_lengths.to(features.device).float() - 0.5).clamp(min=0.5) / features.shape[1]


class AttentiveStatsPooling(nn.Module):
    """Attentive statistics pooling over valid frames (SE-CNN-BiGRU, seed 002 §3.2.4).

    ``alpha_t = tanh(W h_t + b)`` per channel, ``w = softmax_t(alpha)`` over the valid frames,
    ``mu = sum_t w_t * h_t``, ``sigma = sqrt(sum_t w_t * (h_t - mu)^2)``; returns ``[mu; sigma]``.
    The seed writes the weighting as an element-wise product, so the attention is per channel
    (``W`` is ``dim x dim``), as in ECAPA-TDNN's channel-dependent pooling.

    Example::

        >>> pool = AttentiveStatsPooling(6)
        >>> h = torch.randn(2, 5, 6)
        >>> pool(h, torch.tensor([5, 3])).shape
        torch.Size([2, 12])
    """

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.attention = nn.Linear(dim, dim)
        self.eps = eps

    def forward(self, h: Tensor, frame_lengths: Tensor) -> Tensor:
        mask = valid_mask(frame_lengths.to(h.device), h.shape[1])[:, :, None]  # [B, T, 1]
        # Softmax and moments in float32: under fp16 autocast exp/variance lose too much.
        with torch.autocast(device_type=h.device.type, enabled=False):
            h = h.float()
            alpha = torch.tanh(self.attention(h)).masked_fill(~mask, float("-inf"))
            w = torch.softmax(alpha, dim=1)
            mu = (w * h).sum(dim=1)
            var = (w * (h - mu[:, None, :]) ** 2).sum(dim=1)
            return torch.cat([mu, torch.sqrt(var.clamp(min=self.eps))], dim=-1)
