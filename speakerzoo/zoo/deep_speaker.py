"""Deep Speaker (seed 001): ResCNN or GRU frame networks, temporal average, affine, length normalisation.

The spec is ``shared/seeds/001_…``:

* **ResCNN** (§3.1.1, Table 1): at each of 64, 128, 256 and 512 channels a 5x5 convolution
  with stride 2x2 then 3 ResBlocks (two 3x3 convolutions, identity shortcut, no projection
  shortcuts); BatchNorm between every convolution and its nonlinearity; the clipped ReLU
  ``min(max(x, 0), 20)`` everywhere (eq. 2). On 64 filterbanks the four strided convolutions
  leave 4 frequency bins x 512 channels = 2048 features per frame.
* **GRU** (§3.1.2, Table 2): one 5x5 stride-2 convolution (64 channels: 2048 features per
  frame), then 3 forward GRU layers of 1024 cells, each with sequence-wise BatchNorm on its
  input (§3.1.2 "sequence-wise batch normalization ... in the whole model"; torch's GRU has no
  hook inside its input projection, where Deep Speech 2 puts it, so it normalises the layer input).
* **Embedding** (§3.2): the average over valid frames (eq. 3), an affine layer to 512, length
  normalisation. Cosine similarity is the score (eq. 4).
* **Losses** (§3.3, §3.4): ``loss: softmax`` is the pre-training stage, a linear classifier
  with cross-entropy in place of the length normalisation and triplet layers; ``loss: triplet``
  the cosine triplet loss with margin 0.1 and the hardest negative of the global batch
  (:mod:`speakerzoo.zoo.triplet`), the fine-tuning stage, initialised from the softmax stage's
  checkpoint through ``init_from``. Both stages train with SGD, momentum 0.99, the learning rate
  falling linearly from 0.05 to 0.005 (§4.3).
* **Input**: 64 log filterbanks normalised to zero mean and unit variance per utterance
  (``fbank64``, §4.3).

``width`` scales every channel count and the GRU size, for small CPU models; ``width: 1`` is the
paper's size (about 24M parameters for the ResCNN, 23M for the GRU, as Tables 1 and 2).

**Padding never changes an embedding** in eval mode: padded frames are zeroed after every
convolution (so a row sees exactly the zeros its own convolution padding would give it alone),
the GRU runs forward only (its outputs at valid frames never see the padding that follows), and
the average is over valid frames.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speakerzoo.features import valid_mask
from speakerzoo.zoo.base import SpeakerEmbeddingModule
from speakerzoo.zoo.heads import SoftmaxHead
from speakerzoo.zoo.pooling import masked_mean
from speakerzoo.zoo.triplet import CosineTripletLoss

CLIP = 20.0


def clipped_relu(x: Tensor, ceiling: float = CLIP) -> Tensor:
    """``min(max(x, 0), ceiling)`` (eq. 2; Deep Speech 2's nonlinearity)."""
    return torch.clamp(x, min=0.0, max=ceiling)


def strided_lengths(lengths: Tensor) -> Tensor:
    """Valid frames after a 5x5 convolution with stride 2 and padding 2: ``ceil(n / 2)``."""
    return torch.div(lengths + 1, 2, rounding_mode="floor")


def _mask_frames(x: Tensor, mask: Tensor | None) -> Tensor:
    """Zero the padded frames of ``x [B, C, T, F]`` (``mask [B, T]``; ``None``: nothing is padded)."""
    return x if mask is None else x * mask[:, None, :, None].to(x.dtype)


class StridedConv(nn.Module):
    """5x5 convolution, stride 2x2, padding 2 -> BatchNorm -> clipped ReLU (Tables 1-2's ``conv*-s``)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=5, stride=2, padding=2, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        return _mask_frames(clipped_relu(self.bn(self.conv(x))), mask)


class ResBlock(nn.Module):
    """Fig. 2: ``crelu(BN(conv3x3(crelu(BN(conv3x3(x))))) + x)``, identity shortcut."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        h = _mask_frames(clipped_relu(self.bn1(self.conv1(x))), mask)
        return _mask_frames(clipped_relu(self.bn2(self.conv2(h)) + x), mask)


def _frame_mask(frame_lengths: Tensor, frames: int) -> Tensor | None:
    """Valid-frame mask, or ``None`` when no row is padded (the usual training batch: no masking cost)."""
    if bool((frame_lengths >= frames).all()):
        return None
    return valid_mask(frame_lengths, frames)


class ResCNN(nn.Module):
    """Table 1's frame network: ``[B, T, n_mels]`` -> frame features ``[B, T / 16, channels[-1] * n_mels / 16]``.

    Arguments:
        n_mels: input filterbanks (64 in the seed; must divide by ``2 ** len(channels)``).
        channels: channels of the stages (seed: 64, 128, 256, 512).
        blocks: ResBlocks per stage (seed: 3).
    """

    def __init__(self, n_mels: int = 64, channels: tuple[int, ...] = (64, 128, 256, 512), blocks: int = 3):
        super().__init__()
        if n_mels % (2 ** len(channels)):
            raise ValueError(f"n_mels={n_mels} must divide by 2**{len(channels)} (one stride-2 convolution per stage)")
        sizes = (1, *channels)
        self.stages = nn.ModuleList(
            nn.ModuleList([StridedConv(a, b), *(ResBlock(b) for _ in range(blocks))]) for a, b in zip(sizes, sizes[1:])
        )
        self.output_dim = channels[-1] * (n_mels // 2 ** len(channels))

    def forward(self, features: Tensor, frame_lengths: Tensor) -> tuple[Tensor, Tensor]:
        x = features.unsqueeze(1)  # [B, 1, T, F]
        lengths = frame_lengths
        x = _mask_frames(x, _frame_mask(lengths, x.shape[2]))
        for stage in self.stages:
            lengths = strided_lengths(lengths)
            mask = _frame_mask(lengths, (x.shape[2] + 1) // 2)
            for layer in stage:
                x = layer(x, mask)
        batch, channels, frames, bins = x.shape
        return x.permute(0, 2, 1, 3).reshape(batch, frames, channels * bins), lengths


class GRUFrames(nn.Module):
    """Table 2's frame network: strided convolution, then forward GRU layers with sequence-wise BN.

    Arguments:
        n_mels: input filterbanks (64 in the seed; must be even).
        conv_channels: channels of the 5x5 stride-2 convolution (seed: 64).
        hidden: GRU cells per layer (seed: 1024).
        layers: GRU layers (seed: 3).

    The BatchNorm before each GRU layer uses the batch's statistics over every frame in training;
    the training sampler gives crops of one length per batch, so no padding enters them.
    """

    def __init__(self, n_mels: int = 64, conv_channels: int = 64, hidden: int = 1024, layers: int = 3):
        super().__init__()
        if n_mels % 2:
            raise ValueError(f"n_mels={n_mels} must be even (the stride-2 convolution halves it)")
        self.conv = StridedConv(1, conv_channels)
        sizes = [conv_channels * n_mels // 2] + [hidden] * (layers - 1)
        self.norms = nn.ModuleList(nn.BatchNorm1d(n) for n in sizes)
        self.grus = nn.ModuleList(nn.GRU(n, hidden, batch_first=True) for n in sizes)
        self.output_dim = hidden

    def forward(self, features: Tensor, frame_lengths: Tensor) -> tuple[Tensor, Tensor]:
        x = _mask_frames(features.unsqueeze(1), _frame_mask(frame_lengths, features.shape[1]))
        lengths = strided_lengths(frame_lengths)
        x = self.conv(x, _frame_mask(lengths, (features.shape[1] + 1) // 2))
        batch, channels, frames, bins = x.shape
        x = x.permute(0, 2, 1, 3).reshape(batch, frames, channels * bins)
        for norm, gru in zip(self.norms, self.grus):
            x = norm(x.transpose(1, 2)).transpose(1, 2)
            # Forward only and unpacked: outputs at valid frames never see the padding after them
            # (and the CPU backward of packed sequences is quadratic; see se_cnn_bigru.PaddedBiGRU).
            x = gru(x)[0]
        return x, lengths


class DeepSpeakerEncoder(nn.Module):
    """Frame network -> average over valid frames -> affine to ``embedding_dim`` (not yet length-normalised)."""

    def __init__(self, architecture: str = "rescnn", n_mels: int = 64, width: float = 1.0, blocks: int = 3,
                 gru_layers: int = 3, embedding_dim: int = 512):
        super().__init__()

        def scaled(n: int) -> int:
            return max(1, int(round(n * width)))

        if architecture == "rescnn":
            self.frames = ResCNN(n_mels, tuple(scaled(c) for c in (64, 128, 256, 512)), blocks)
        elif architecture == "gru":
            self.frames = GRUFrames(n_mels, scaled(64), scaled(1024), gru_layers)
        else:
            raise ValueError(f"architecture must be 'rescnn' or 'gru', got {architecture!r}")
        self.affine = nn.Linear(self.frames.output_dim, embedding_dim)

    def forward(self, features: Tensor, frame_lengths: Tensor) -> Tensor:
        frame_lengths = frame_lengths.to(features.device).long().clamp(min=1, max=features.shape[1])
        h, lengths = self.frames(features, frame_lengths)
        return self.affine(masked_mean(h, lengths))


class DeepSpeaker(SpeakerEmbeddingModule):
    """Deep Speaker embeddings (seed 001): ResCNN or GRU, softmax pre-training, cosine triplet fine-tuning.

    Arguments:
        frontend: the seed's input is ``fbank64`` (64 log filterbanks, zero mean and unit
            variance per utterance).
        architecture: ``rescnn`` (Table 1) or ``gru`` (Table 2).
        width: multiplier of every channel count and of the GRU size (1.0: the paper's models).
        blocks: ResBlocks per ResCNN stage (seed: 3).
        gru_layers: GRU layers (seed: 3).
        embedding_dim: size of the affine output (seed: 512).
        loss: ``softmax`` (pre-training, §3.4) or ``triplet`` (§3.3).
        margin: the triplet margin ``alpha`` (seed: 0.1).
        mining: ``global`` (negatives from the batches of all DDP ranks, the seed) or ``local``.
        negatives: which negatives the triplet stage mines: ``hardest`` (the seed), ``semi-hard``
            or ``batch-hard-soft`` (see :class:`~speakerzoo.zoo.triplet.CosineTripletLoss`).
        lr, final_lr: the learning rate falls linearly from ``lr`` to ``final_lr`` over training
            (seed: 0.05 -> 0.005), per step.
        momentum: SGD momentum (seed: 0.99).
        **kwargs: ``num_speakers``, ``sample_rate``, ``speaker_names``, ``weight_decay``,
            ``init_from``: see :class:`~speakerzoo.zoo.base.SpeakerEmbeddingModule` (no
            ``warmup_epochs``: the schedule is the seed's). For the triplet stage, ``init_from``
            names the softmax stage's checkpoint.

    In the triplet stage the classifier head (kept so that a checkpoint can still classify its
    training speakers) is frozen; ``train/acc`` is not logged, ``train/prob_hard`` (the share of
    triplets that violate eq. 5, Table 3) is.

    Example::

        >>> model = DeepSpeaker(num_speakers=3, width=0.125, blocks=1)
        >>> emb = model.eval().embed(torch.randn(2, 16000), torch.tensor([16000, 9000]))
        >>> emb.shape, bool(torch.allclose(emb.norm(dim=-1), torch.ones(2)))
        (torch.Size([2, 512]), True)
    """

    exact_padding = True  # padded frames are masked in every layer and in the pooling (tested)

    def __init__(
        self,
        frontend: str | dict = "fbank64",
        architecture: str = "rescnn",
        width: float = 1.0,
        blocks: int = 3,
        gru_layers: int = 3,
        embedding_dim: int = 512,
        loss: str = "softmax",
        margin: float = 0.1,
        mining: str = "global",
        negatives: str = "hardest",
        lr: float = 0.05,
        final_lr: float = 0.005,
        momentum: float = 0.99,
        **kwargs,
    ):
        # SGD with the seed's schedule: no warm-up, and no warmup_epochs argument.
        super().__init__(frontend=frontend, lr=lr, warmup_epochs=0.0, **kwargs)
        self.save_hyperparameters(ignore="warmup_epochs")
        if self.frontend.dim is None:
            raise ValueError("DeepSpeaker needs a spectral frontend (fbank64 in the seed), not raw waveforms")
        if loss not in ("softmax", "triplet"):
            raise ValueError(f"loss must be 'softmax' or 'triplet', got {loss!r}")
        self.embedding_dim = int(embedding_dim)
        self.loss = loss
        self.final_lr, self.momentum = float(final_lr), float(momentum)
        self.encoder = DeepSpeakerEncoder(architecture, self.frontend.dim, width, blocks, gru_layers,
                                          self.embedding_dim)
        self.head = SoftmaxHead(self.embedding_dim, self.num_speakers, bias=False) if self.num_speakers else None
        self.triplet_loss = CosineTripletLoss(margin=margin, scope=mining, negatives=negatives)
        if loss == "triplet" and self.head is not None:
            # Unused by the triplet loss: frozen, so that DDP does not wait for its gradients.
            self.head.requires_grad_(False)

    def encode(self, features: Tensor, frame_lengths: Tensor) -> Tensor:
        return F.normalize(self.encoder(features, frame_lengths), dim=-1)

    def training_embeddings(self, features: Tensor, frame_lengths: Tensor) -> Tensor:
        """The affine output before length normalisation: the softmax stage classifies it (§3.4)."""
        return self.encoder(features, frame_lengths)

    def training_loss(self, embeddings: Tensor, speakers: Tensor) -> tuple[Tensor, Tensor | None]:
        if self.loss == "softmax":
            return super().training_loss(embeddings, speakers)
        stats = self.triplet_loss(F.normalize(embeddings, dim=-1), speakers)
        if self._trainer is not None:
            self.log("train/prob_hard", stats.prob_hard, on_step=True, on_epoch=True, batch_size=speakers.shape[0])
        return stats.loss, None

    def classify(self, embeddings: Tensor) -> Tensor | None:
        return None if self.head is None else self.head.linear(embeddings)

    def configure_optimizers(self) -> Any:
        """SGD (momentum 0.99), the rate falling linearly from ``lr`` to ``final_lr`` per step (§4.3)."""
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total) or total <= 1:
            return optimizer
        end = self.final_lr / self.lr
        span = int(total) - 1
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 + (end - 1.0) * min(step, span) / span)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
