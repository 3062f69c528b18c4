"""CAM++ (H. Wang, S. Zheng, Y. Chen, L. Cheng, Q. Chen: "CAM++: A Fast and Efficient Network
for Speaker Verification Using Context-Aware Masking", Interspeech 2023).

A front convolution module (FCM: 2-D residual blocks over frequency and time) feeds a densely
connected TDNN (D-TDNN, three blocks of 12, 24 and 16 layers) whose every layer masks its output
with context-aware masking (CAM): a gate from the utterance mean plus the mean of its 100-frame
segment. Statistics pooling and a linear layer with affine-free batch norm give the embedding.

The module names and parameter shapes are those of the authors' 3D-Speaker toolkit
(``speakerlab/models/campplus``) and of wespeaker's port (``wespeaker/models/campplus.py``),
so that their released state dicts load key for key (``speakerzoo checkpoints import
3dspeaker|wespeaker``, :mod:`speakerzoo.zoo.importers`). Written here rather than imported,
because neither toolkit is a dependency; two things differ from theirs on purpose, and are the
same for an utterance alone (no padding):

* statistics pooling and the CAM utterance mean are taken over each row's valid frames, so a
  padded batch gives each row its own statistics (the convolutions and the 100-frame segment
  means still see the padding: evaluation embeds rows of equal length together, see
  :meth:`~speakerzoo.zoo.base.SpeakerEmbeddingModule.embed_unpadded`);
* a single valid frame has a standard deviation of 0 (3D-Speaker's ``torch.std`` gives NaN), and
  the pooled standard deviation is at least 1e-6, so that training never meets the infinite
  gradient of a square root at 0 (see :class:`StatsPool`).
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speakerzoo.augment import spectral_augment_from
from speakerzoo.features import valid_mask
from speakerzoo.zoo.base import SpeakerEmbeddingModule
from speakerzoo.zoo.heads import AAMSoftmax
from speakerzoo.zoo.pooling import masked_mean

__all__ = ["CAMPPlus", "CAMPPlusEncoder"]

#: Smallest pooled variance: a standard deviation of 1e-6, so that a constant channel has a finite gradient.
VARIANCE_FLOOR = 1e-12
#: (layers, kernel size, dilation) of the three D-TDNN blocks (the paper's Table 1).
DTDNN_BLOCKS = ((12, 3, 1), (24, 3, 2), (16, 3, 2))


def _bn_relu(channels: int) -> nn.Sequential:
    return nn.Sequential(OrderedDict([("batchnorm", nn.BatchNorm1d(channels)), ("relu", nn.ReLU())]))


class BasicResBlock(nn.Module):
    """A 2-D residual block that strides over frequency only (time keeps its resolution)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=(stride, 1), padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=(stride, 1), bias=False),
                                          nn.BatchNorm2d(planes))

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + self.shortcut(x))


class FCM(nn.Module):
    """Front convolution module: features ``[B, F, T]`` -> ``[B, m_channels * F // 8, T]``."""

    def __init__(self, feat_dim: int = 80, m_channels: int = 32):
        super().__init__()
        self.conv1 = nn.Conv2d(1, m_channels, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(m_channels)
        self.layer1 = nn.Sequential(BasicResBlock(m_channels, m_channels, 2), BasicResBlock(m_channels, m_channels))
        self.layer2 = nn.Sequential(BasicResBlock(m_channels, m_channels, 2), BasicResBlock(m_channels, m_channels))
        self.conv2 = nn.Conv2d(m_channels, m_channels, 3, stride=(2, 1), padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(m_channels)
        self.out_channels = m_channels * math.ceil(math.ceil(math.ceil(feat_dim / 2) / 2) / 2)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x.unsqueeze(1))))
        out = F.relu(self.bn2(self.conv2(self.layer2(self.layer1(out)))))
        return out.flatten(1, 2)


class TDNNLayer(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        padding = (kernel_size - 1) // 2 * dilation
        self.linear = nn.Conv1d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                                dilation=dilation, bias=False)
        self.nonlinear = _bn_relu(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.nonlinear(self.linear(x))


class CAMLayer(nn.Module):
    """Context-aware masking: a local convolution gated by the utterance and segment context."""

    def __init__(self, bn_channels: int, out_channels: int, kernel_size: int, dilation: int,
                 segment: int = 100, reduction: int = 2):
        super().__init__()
        padding = (kernel_size - 1) // 2 * dilation
        self.linear_local = nn.Conv1d(bn_channels, out_channels, kernel_size, padding=padding, dilation=dilation,
                                      bias=False)
        self.linear1 = nn.Conv1d(bn_channels, bn_channels // reduction, 1)
        self.relu = nn.ReLU()
        self.linear2 = nn.Conv1d(bn_channels // reduction, out_channels, 1)
        self.segment = segment

    def forward(self, x: Tensor, frame_lengths: Tensor) -> Tensor:
        frames = x.shape[-1]
        segments = F.avg_pool1d(x, kernel_size=self.segment, stride=self.segment, ceil_mode=True)
        segments = segments.repeat_interleave(self.segment, dim=-1)[..., :frames]
        context = masked_mean(x.transpose(1, 2), frame_lengths)[..., None] + segments
        return self.linear_local(x) * torch.sigmoid(self.linear2(self.relu(self.linear1(context))))


class CAMDenseTDNNLayer(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, bn_channels: int, kernel_size: int, dilation: int):
        super().__init__()
        self.nonlinear1 = _bn_relu(in_channels)
        self.linear1 = nn.Conv1d(in_channels, bn_channels, 1, bias=False)
        self.nonlinear2 = _bn_relu(bn_channels)
        self.cam_layer = CAMLayer(bn_channels, out_channels, kernel_size, dilation)

    def forward(self, x: Tensor, frame_lengths: Tensor) -> Tensor:
        return self.cam_layer(self.nonlinear2(self.linear1(self.nonlinear1(x))), frame_lengths)


class CAMDenseTDNNBlock(nn.Module):
    """Densely connected: each layer's output is appended to its input."""

    def __init__(self, num_layers: int, in_channels: int, growth_rate: int, bn_channels: int, kernel_size: int,
                 dilation: int):
        super().__init__()
        for i in range(num_layers):
            self.add_module(f"tdnnd{i + 1}", CAMDenseTDNNLayer(in_channels + i * growth_rate, growth_rate,
                                                               bn_channels, kernel_size, dilation))

    def forward(self, x: Tensor, frame_lengths: Tensor) -> Tensor:
        for layer in self.children():
            x = torch.cat([x, layer(x, frame_lengths)], dim=1)
        return x


class TransitLayer(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.nonlinear = _bn_relu(in_channels)
        self.linear = nn.Conv1d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(self.nonlinear(x))


class StatsPool(nn.Module):
    """Mean and unbiased standard deviation over each row's valid frames -> ``[B, 2C]``.

    ``eps`` is added to the variance before the square root (wespeaker's TSTP: 1e-7;
    3D-Speaker: 0); the variance is floored at :data:`VARIANCE_FLOOR` (a standard deviation of
    1e-6), which no toolkit does."""

    def __init__(self, eps: float = 0.0):
        super().__init__()
        self.eps = float(eps)

    def forward(self, x: Tensor, frame_lengths: Tensor) -> Tensor:
        """``x [B, C, T]`` with valid frame counts ``[B]``."""
        mean = masked_mean(x.transpose(1, 2), frame_lengths)
        mask = valid_mask(frame_lengths, x.shape[-1])[:, None, :].to(x.dtype)
        count = frame_lengths.to(x.dtype)[:, None]
        var = (((x - mean[..., None]) * mask) ** 2).sum(-1) / (count - 1).clamp(min=1.0)
        # The floor keeps the gradient finite where a channel is constant (all zero after a ReLU, as
        # in 30 of 32,768 pooled channels of a batch of 3D-Speaker's CAM++ on Speech Commands): the
        # gradient of sqrt at 0 is infinite and made every weight NaN after one step.
        return torch.cat([mean, torch.sqrt((var + self.eps).clamp(min=VARIANCE_FLOOR))], dim=-1)


class DenseLayer(nn.Module):
    """The embedding layer: a linear map and a batch norm without scale or shift (no ReLU)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.linear = nn.Conv1d(in_channels, out_channels, 1, bias=False)
        self.nonlinear = nn.Sequential(OrderedDict([("batchnorm", nn.BatchNorm1d(out_channels, affine=False))]))

    def forward(self, x: Tensor) -> Tensor:
        return self.nonlinear(self.linear(x.unsqueeze(-1)).squeeze(-1))


class CAMPPlusEncoder(nn.Module):
    """CAM++ as a module: features ``[B, frames, feat_dim]`` with valid counts ``[B]`` -> ``[B, embedding_dim]``.

    Its state dict is 3D-Speaker's ``CAMPPlus`` (``head.*``, ``xvector.*``) for the same sizes.
    """

    def __init__(self, feat_dim: int = 80, embedding_dim: int = 192, growth_rate: int = 32, bn_size: int = 4,
                 init_channels: int = 128, m_channels: int = 32, std_eps: float = 0.0):
        super().__init__()
        self.head = FCM(feat_dim, m_channels)
        self.xvector = nn.Sequential(OrderedDict([("tdnn", TDNNLayer(self.head.out_channels, init_channels, 5,
                                                                     stride=2))]))
        channels = init_channels
        for i, (layers, kernel_size, dilation) in enumerate(DTDNN_BLOCKS, start=1):
            self.xvector.add_module(f"block{i}", CAMDenseTDNNBlock(layers, channels, growth_rate,
                                                                   bn_size * growth_rate, kernel_size, dilation))
            channels += layers * growth_rate
            self.xvector.add_module(f"transit{i}", TransitLayer(channels, channels // 2))
            channels //= 2
        self.xvector.add_module("out_nonlinear", _bn_relu(channels))
        self.xvector.add_module("stats", StatsPool(std_eps))
        self.xvector.add_module("dense", DenseLayer(2 * channels, embedding_dim))
        for m in self.modules():  # 3D-Speaker's initialisation
            if isinstance(m, (nn.Conv1d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, features: Tensor, frame_lengths: Tensor) -> Tensor:
        x = self.head(features.transpose(1, 2))
        x = self.xvector.tdnn(x)  # stride 2: ceil(n / 2) valid frames
        lengths = torch.div(frame_lengths.to(x.device) + 1, 2, rounding_mode="floor").clamp(min=1)
        for name, layer in self.xvector.named_children():
            if name == "tdnn":
                continue
            if isinstance(layer, (CAMDenseTDNNBlock, StatsPool)):
                x = layer(x, lengths)
            else:
                x = layer(x)
        return x


class CAMPPlus(SpeakerEmbeddingModule):
    """CAM++ (Wang et al., Interspeech 2023) on 80 Kaldi filterbanks, trained with AAM-softmax.

    The defaults are 3D-Speaker's released models: 192-d embeddings, growth rate 32, bottleneck
    4 x 32, 128 initial channels, 7.2 M parameters; AAM margin 0.2 and scale 32 as in its
    VoxCeleb recipe. ``std_eps`` is 1e-7 for models imported from wespeaker.

    Arguments:
        **kwargs: ``num_speakers``, ``sample_rate``, ``frontend`` (default ``kaldi_fbank80``),
            ``speaker_names``, ``lr``, ``weight_decay``, ``warmup_epochs``, ``init_from``: see
            :class:`~speakerzoo.zoo.base.SpeakerEmbeddingModule`.
        embedding_dim, growth_rate, bn_size, init_channels, m_channels: the network's sizes
            (``m_channels``: channels of the front convolution module).
        std_eps: added to the pooled variance before its square root.
        margin, scale: of the :class:`~speakerzoo.zoo.heads.AAMSoftmax` head.
        spec_augment: feature-level training augmentation, as for :class:`~speakerzoo.zoo.ecapa.ECAPA`.

    Example::

        >>> import torch
        >>> model = CAMPPlus(num_speakers=3, embedding_dim=16, growth_rate=8, init_channels=16, m_channels=8)
        >>> model.eval().embed(torch.randn(2, 16000), torch.tensor([16000, 9000])).shape
        torch.Size([2, 16])
    """

    def __init__(
        self,
        embedding_dim: int = 192,
        growth_rate: int = 32,
        bn_size: int = 4,
        init_channels: int = 128,
        m_channels: int = 32,
        std_eps: float = 0.0,
        margin: float = 0.2,
        scale: float = 32.0,
        spec_augment: bool | dict | None = None,
        frontend: str | dict = "kaldi_fbank80",
        **kwargs,
    ):
        super().__init__(frontend=frontend, **kwargs)
        if self.frontend.dim is None:
            raise ValueError("CAMPPlus needs a spectral frontend (fbank, kaldi_fbank, ...), not raw waveforms")
        self.embedding_dim = int(embedding_dim)
        self.encoder = CAMPPlusEncoder(self.frontend.dim, self.embedding_dim, growth_rate, bn_size, init_channels,
                                       m_channels, std_eps)
        self.head = AAMSoftmax(self.embedding_dim, self.num_speakers, margin, scale) if self.num_speakers else None
        self.spec_augment = spectral_augment_from(spec_augment)

    @property
    def backbone(self) -> nn.Module:
        """The embedder without the classifier head: what Lightning's ``BackboneFinetuning``
        freezes for a warm-up of the head (``configs/campplus_finetune.yaml``)."""
        return self.encoder

    def encode(self, features: Tensor, frame_lengths: Tensor) -> Tensor:
        return self.encoder(features, frame_lengths)
