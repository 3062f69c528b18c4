"""MFCCs rendered as RGB images, as tensors (seed 004 §3.1, §4.3-5).

The seed plotted each chunk's MFCCs with ``librosa.display.specshow``, saved the plot as a JPEG,
read it back, resized it to 300 x 300 and scaled the pixels to [0, 1]. :class:`MFCCImage` makes the
same picture directly from the feature tensor, on whatever device the model runs on, with no file
in between: the coefficients of one clip are scaled to [0, 1] by their own minimum and maximum (a
plot's colour scale), mapped through a matplotlib colormap (``coolwarm``: specshow's choice for
data of both signs), drawn with the first coefficient at the bottom, and resized to ``size x size``
(bilinear). Only a clip's valid frames are drawn, so batch padding never changes its image.

Example::

    >>> import torch
    >>> image = MFCCImage(size=32)
    >>> out = image(torch.randn(2, 50, 13), torch.tensor([50, 20]))
    >>> out.shape, bool(out.min() >= 0), bool(out.max() <= 1)
    (torch.Size([2, 3, 32, 32]), True, True)
"""

from __future__ import annotations

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn



def colormap_table(name: str, entries: int = 256) -> Tensor:
    """``[entries, 3]`` RGB values in [0, 1] of the matplotlib colormap ``name``."""
    try:
        cmap = matplotlib.colormaps[name]
    except KeyError:
        raise ValueError(f"unknown colormap {name!r}; choose a matplotlib colormap such as "
                         "'coolwarm' (the seed's), 'viridis', 'magma' or 'gray'") from None
    return torch.tensor(cmap(np.linspace(0.0, 1.0, entries))[:, :3], dtype=torch.float32)


def apply_colormap(values: Tensor, table: Tensor) -> Tensor:
    """Values in [0, 1] ``[...]`` -> RGB ``[..., 3]``, interpolating linearly between table entries
    (no 8-bit quantisation: the image stays a smooth function of the coefficients)."""
    position = values.clamp(0.0, 1.0) * (table.shape[0] - 1)
    low = position.floor().long().clamp(max=table.shape[0] - 2)
    frac = (position - low).unsqueeze(-1)
    return table[low] * (1.0 - frac) + table[low + 1] * frac


class MFCCImage(nn.Module):
    """Features ``[B, frames, dim]`` with valid frame counts ``[B]`` -> images ``[B, 3, size, size]`` in [0, 1].

    Arguments:
        size: side of the square image (the seed: 300; ResNet50's usual input: 224).
        colormap: matplotlib colormap of the plot.
    """

    def __init__(self, size: int = 224, colormap: str = "coolwarm"):
        super().__init__()
        if size < 8:
            raise ValueError(f"image size must be at least 8 pixels, got {size}")
        self.size = int(size)
        self.colormap = colormap
        # Rebuilt from the name, so not part of the state dict.
        self.register_buffer("table", colormap_table(colormap), persistent=False)

    def forward(self, features: Tensor, frame_lengths: Tensor) -> Tensor:
        frame_lengths = frame_lengths.to(features.device).long().clamp(min=1, max=features.shape[1])
        out = features.new_empty((features.shape[0], 3, self.size, self.size), dtype=torch.float32)
        with torch.autocast(device_type=features.device.type, enabled=False):
            # Rows of equal length are drawn together (training crops are all of one length).
            for n in torch.unique(frame_lengths).tolist():
                rows = (frame_lengths == n).nonzero().squeeze(1)
                out[rows] = self._draw(features[rows, :n].float())
        return out

    def _draw(self, features: Tensor) -> Tensor:
        x = features.transpose(1, 2).flip(1)  # [B, dim, frames], first coefficient at the bottom
        low = x.amin(dim=(1, 2), keepdim=True)
        high = x.amax(dim=(1, 2), keepdim=True)
        scaled = (x - low) / (high - low).clamp(min=1e-8)
        rgb = apply_colormap(scaled, self.table).permute(0, 3, 1, 2)  # [B, 3, dim, frames]
        image = F.interpolate(rgb, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return image.clamp(0.0, 1.0)

    def extra_repr(self) -> str:
        return f"size={self.size}, colormap={self.colormap!r}"
