"""SE-CNN-BiGRU (seed 002): SE-gated CNN blocks, a bidirectional GRU, attentive statistics pooling, AAM softmax.

The spec is ``shared/seeds/002_…`` §3: three CNN blocks 1 -> 32 -> 64 -> 128 (3x3 convolution,
BatchNorm, ReLU, squeeze-excitation, MaxPool(1, 2) over frequency only, so every frame is kept),
a 2-layer BiGRU of 256 units with dropout 0.2 between the layers, attentive statistics pooling,
and a 1024 -> 256 -> 256 embedding projection (BN, ReLU), L2-normalised, trained with AAM
softmax (s = 30, m = 0.25, Xavier-initialised class weights). Monte-Carlo dropout (§5, p = 0.3)
sits after the CNN and on the pooled statistics; :mod:`speakerzoo.inference.mc_dropout` switches it on
at inference.

**Padding never changes an embedding** (in eval mode): padded frames are zeroed after every
convolution block, so a frame near the end of an utterance sees exactly the zeros that the
convolution's own padding would give it alone; squeeze-excitation and the pooling average over
valid frames only; the GRU's backward direction reads each row reversed within its own length
(:class:`PaddedBiGRU`). A batch of utterances of different lengths therefore embeds each one as
it would be embedded alone (up to float rounding).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speakerzoo.augment import spectral_augment_from
from speakerzoo.features import valid_mask
from speakerzoo.zoo.base import SpeakerEmbeddingModule
from speakerzoo.zoo.heads import AAMSoftmax
from speakerzoo.zoo.pooling import AttentiveStatsPooling


class SEBlock(nn.Module):
    """Squeeze-and-excitation (§3.2.2): ``x * sigmoid(FC2(ReLU(FC1(GAP(x)))))``, GAP over valid frames only.

    Arguments:
        channels: feature-map channels.
        reduction: bottleneck ratio of FC1 (at least 4 hidden units).

    ``forward(x [B, C, T, F], mask [B, T] bool)``.

    Example::

        >>> se = SEBlock(16)
        >>> x = torch.randn(2, 16, 10, 8)
        >>> se(x, torch.ones(2, 10, dtype=torch.bool)).shape
        torch.Size([2, 16, 10, 8])
    """

    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        hidden = max(4, channels // reduction)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        m = mask[:, None, :, None].to(x.dtype)  # [B, 1, T, 1]
        count = (m.sum(dim=(2, 3)) * x.shape[-1]).clamp(min=1.0)  # valid cells per row
        squeezed = (x * m).sum(dim=(2, 3)) / count  # [B, C]
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(squeezed))))
        return x * gate[:, :, None, None]


class ConvBlock(nn.Module):
    """Conv2d 3x3 (padding 1) -> BatchNorm -> ReLU -> SE -> MaxPool(1, 2) (§3.2.1); padded frames zeroed."""

    def __init__(self, in_channels: int, out_channels: int, se_reduction: int = 8):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.se = SEBlock(out_channels, se_reduction)
        self.pool = nn.MaxPool2d(kernel_size=(1, 2))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        x = F.relu(self.bn(self.conv(x)))
        x = x * mask[:, None, :, None].to(x.dtype)  # BN's shift made the padding non-zero
        return self.pool(self.se(x, mask))


def reverse_valid(x: Tensor, lengths: Tensor) -> Tensor:
    """Reverse the first ``lengths[b]`` steps of every row of ``x [B, T, D]``; padding stays in place.

    Example::

        >>> reverse_valid(torch.arange(4.0).repeat(2, 1)[..., None], torch.tensor([4, 2]))[..., 0]
        tensor([[3., 2., 1., 0.],
                [1., 0., 2., 3.]])
    """
    steps = torch.arange(x.shape[1], device=x.device)[None, :]
    source = lengths.to(x.device)[:, None] - 1 - steps
    source = torch.where(source >= 0, source, steps)
    return x.gather(1, source[:, :, None].expand(-1, -1, x.shape[2]))


class PaddedBiGRU(nn.Module):
    """A stacked bidirectional GRU over zero-padded batches, exact for every row's own length.

    Each layer is two unidirectional ``nn.GRU``: the forward one reads the padded batch as it
    is (its outputs at valid steps never see the padding that follows), the backward one reads
    every row reversed within its length (:func:`reverse_valid`), so it starts at the row's
    last valid frame. Dropout ``dropout`` between layers in training, as ``nn.GRU(dropout=...)``;
    like that one it is internal (a functional dropout, no ``nn.Dropout`` module), so Monte-Carlo
    dropout (:mod:`speakerzoo.inference.mc_dropout`) leaves it off, as the seed's MC dropout is the
    p = 0.3 layers only.

    Why not ``nn.GRU(bidirectional=True)`` on packed sequences: on the CPU its backward pass
    zero-fills a gradient of the whole packed input at every time step, quadratic in the length;
    measured on 32 crops of 2 s, 60 % of a training step went to ``aten::fill_`` (10.5 of 17.4 s).
    Unpacked, ``nn.GRU`` runs each direction with no such cost, on CPU and with cuDNN alike.

    ``forward(x [B, T, input_size], lengths [B]) -> [B, T, 2 * hidden_size]`` (padded steps: undefined).
    Loads ``nn.GRU(bidirectional=True)`` state dicts as well (``weight_ih_l0``, ``..._reverse``),
    and then computes what that GRU computes on packed sequences.
    """

    bidirectional = True

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 2, dropout: float = 0.0):
        super().__init__()
        self.input_size, self.hidden_size, self.num_layers, self.dropout = input_size, hidden_size, num_layers, dropout
        sizes = [input_size] + [2 * hidden_size] * (num_layers - 1)
        self.forward_layers = nn.ModuleList(nn.GRU(n, hidden_size, batch_first=True) for n in sizes)
        self.backward_layers = nn.ModuleList(nn.GRU(n, hidden_size, batch_first=True) for n in sizes)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # nn.GRU's layout: weight_ih_l{k}[_reverse] -> {forward,backward}_layers.{k}.weight_ih_l0
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            for k in range(self.num_layers):
                for suffix, side in (("", "forward_layers"), ("_reverse", "backward_layers")):
                    old = f"{prefix}{name}_l{k}{suffix}"
                    if old in state_dict:
                        state_dict[f"{prefix}{side}.{k}.{name}_l0"] = state_dict.pop(old)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        for k, (fwd, bwd) in enumerate(zip(self.forward_layers, self.backward_layers)):
            if k and self.dropout > 0:
                x = F.dropout(x, self.dropout, self.training)
            ahead = fwd(x)[0]
            behind = reverse_valid(bwd(reverse_valid(x, lengths))[0], lengths)
            x = torch.cat([ahead, behind], dim=-1)
        return x


class SECNNBiGRUEncoder(nn.Module):
    """The backbone: features ``[B, frames, n_mels]`` -> L2-normalised embeddings ``[B, embedding_dim]``.

    Arguments:
        n_mels: input frequency bins (must divide by ``2 ** len(channels)``).
        channels: output channels of the CNN blocks.
        hidden: GRU units per direction.
        gru_layers, gru_dropout: stacked BiGRU layers and the dropout between them.
        mc_dropout: dropout after the CNN and on the pooled statistics (the Monte-Carlo dropout).
        projection_dim, embedding_dim: sizes of FC1 and FC2.
        se_reduction: squeeze-excitation bottleneck ratio.
    """

    def __init__(self, n_mels: int = 64, channels: tuple[int, ...] = (32, 64, 128), hidden: int = 256,
                 gru_layers: int = 2, gru_dropout: float = 0.2, mc_dropout: float = 0.3,
                 projection_dim: int = 256, embedding_dim: int = 256, se_reduction: int = 8):
        super().__init__()
        if n_mels % (2 ** len(channels)):
            raise ValueError(f"n_mels={n_mels} must divide by 2**{len(channels)} (one MaxPool(1, 2) per CNN block)")
        sizes = (1, *channels)
        self.blocks = nn.ModuleList(ConvBlock(a, b, se_reduction) for a, b in zip(sizes, sizes[1:]))
        self.cnn_dropout = nn.Dropout(mc_dropout)
        rnn_input = channels[-1] * (n_mels // 2 ** len(channels))
        self.gru = PaddedBiGRU(rnn_input, hidden, num_layers=gru_layers, dropout=gru_dropout)
        self.pooling = AttentiveStatsPooling(2 * hidden)
        self.stats_dropout = nn.Dropout(mc_dropout)
        self.fc1 = nn.Linear(4 * hidden, projection_dim)
        self.bn = nn.BatchNorm1d(projection_dim)
        self.fc2 = nn.Linear(projection_dim, embedding_dim)

    def forward(self, features: Tensor, frame_lengths: Tensor) -> Tensor:
        batch, frames, _ = features.shape
        frame_lengths = frame_lengths.to(features.device).long().clamp(min=1, max=frames)
        mask = valid_mask(frame_lengths, frames)
        x = features.unsqueeze(1) * mask[:, None, :, None].to(features.dtype)
        for block in self.blocks:
            x = block(x, mask)
        x = x.permute(0, 2, 1, 3).reshape(batch, frames, -1)  # [B, T, C * F']
        x = self.cnn_dropout(x)
        h = self.gru(x, frame_lengths)
        stats = self.stats_dropout(self.pooling(h, frame_lengths))
        z = self.fc2(F.relu(self.bn(self.fc1(stats))))
        return F.normalize(z, dim=-1)


class SECNNBiGRU(SpeakerEmbeddingModule):
    """SE-CNN-BiGRU speaker embeddings with attentive statistics pooling and AAM softmax (seed 002).

    Arguments:
        frontend: the seed's input is ``logmel64`` (64 log-mel bands, 50-8000 Hz, -80 dB floor; §2.2).
        channels, hidden, gru_layers, gru_dropout, mc_dropout, projection_dim, embedding_dim,
        se_reduction: see :class:`SECNNBiGRUEncoder` (defaults: the seed's sizes).
        margin, scale: AAM softmax (§3.3: m = 0.25 rad, s = 30).
        spec_augment: feature-level training augmentation (§2.3: SpecAugment masks and VTLP),
            :class:`~speakerzoo.augment.SpectralAugment` arguments as a dict, ``true`` for its
            defaults, ``null`` off. Waveform augmentation (speed, noise, volume) is the DataModule's
            ``augment``.
        t_max_epochs: the seed's CosineAnnealingLR period in epochs (§4.1: 50); ``null`` uses the
            base class's schedule (cosine to zero at the end of training).
        **kwargs: ``num_speakers``, ``sample_rate``, ``speaker_names``, ``lr``, ``weight_decay``,
            ``warmup_epochs``, ``init_from``: see :class:`~speakerzoo.zoo.base.SpeakerEmbeddingModule`.

    The seed's optimiser is AdamW (lr 1e-3, weight decay 1e-4) with the learning rate annealed by
    a cosine over ``t_max_epochs`` epochs (stepped per batch, so it is smooth).

    Example::

        >>> model = SECNNBiGRU(num_speakers=3, channels=[4, 8, 16], hidden=16, projection_dim=16,
        ...                    embedding_dim=8)
        >>> emb = model.eval().embed(torch.randn(2, 16000), torch.tensor([16000, 9000]))
        >>> emb.shape, bool(torch.allclose(emb.norm(dim=-1), torch.ones(2)))
        (torch.Size([2, 8]), True)
    """

    exact_padding = True  # padded frames are masked in every layer and in the pooling (tested)

    def __init__(
        self,
        frontend: str | dict = "logmel64",
        channels: list[int] = (32, 64, 128),
        hidden: int = 256,
        gru_layers: int = 2,
        gru_dropout: float = 0.2,
        mc_dropout: float = 0.3,
        projection_dim: int = 256,
        embedding_dim: int = 256,
        se_reduction: int = 8,
        margin: float = 0.25,
        scale: float = 30.0,
        spec_augment: bool | dict | None = None,
        t_max_epochs: float | None = 50,
        **kwargs,
    ):
        super().__init__(frontend=frontend, **kwargs)
        if self.frontend.dim is None:
            raise ValueError("SECNNBiGRU needs a spectral frontend (logmel64 in the seed), not raw waveforms")
        self.embedding_dim = int(embedding_dim)
        self.t_max_epochs = t_max_epochs
        self.encoder = SECNNBiGRUEncoder(
            n_mels=self.frontend.dim, channels=tuple(channels), hidden=hidden, gru_layers=gru_layers,
            gru_dropout=gru_dropout, mc_dropout=mc_dropout, projection_dim=projection_dim,
            embedding_dim=self.embedding_dim, se_reduction=se_reduction)
        self.head = AAMSoftmax(self.embedding_dim, self.num_speakers, margin, scale) if self.num_speakers else None
        self.spec_augment = spectral_augment_from(spec_augment)

    def encode(self, features: Tensor, frame_lengths: Tensor) -> Tensor:
        return self.encoder(features, frame_lengths)

    def lr_decay_steps(self, remaining: int, steps_per_epoch: float | None) -> int:
        """The seed's ``CosineAnnealingLR`` period: ``t_max_epochs`` epochs of steps (after any
        warm-up; the base class steps it per batch and rises again past it, as torch's does)."""
        if self.t_max_epochs is None or not steps_per_epoch:
            return remaining
        return max(1, int(round(self.t_max_epochs * steps_per_epoch)))
