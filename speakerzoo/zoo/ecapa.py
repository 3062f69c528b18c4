"""ECAPA-TDNN (Desplanques et al., 2020), the zoo's reference speaker embedding model."""

from __future__ import annotations

from collections.abc import Sequence

from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN
from torch import Tensor

from speakerzoo.augment import spectral_augment_from
from speakerzoo.zoo.base import SpeakerEmbeddingModule
from speakerzoo.zoo.heads import AAMSoftmax
from speakerzoo.zoo.pooling import relative_lengths


class ECAPA(SpeakerEmbeddingModule):
    """speechbrain's ``ECAPA_TDNN`` on log mel filterbanks, trained with AAM-softmax.

    The defaults are those of speechbrain's VoxCeleb recipe (``train_ecapa_tdnn.yaml``, the
    ``spkrec-ecapa-voxceleb`` model): channels ``[1024, 1024, 1024, 1024, 3072]``, 192-d
    embeddings, AAM margin 0.2 and scale 30. speechbrain's class defaults are the smaller
    ``[512, 512, 512, 512, 1536]`` (the paper's C=512 model); pass them for a lighter model.

    Arguments:
        **kwargs: ``num_speakers``, ``sample_rate``, ``frontend`` (default ``fbank80``),
            ``speaker_names``, ``lr``, ``weight_decay``, ``warmup_epochs``, ``init_from``: see
            :class:`~speakerzoo.zoo.base.SpeakerEmbeddingModule`.
        embedding_dim: embedding size (speechbrain's ``lin_neurons``).
        channels: output channels of the five blocks (SE-Res2Net blocks 2-4, the last is the
            multi-layer feature aggregation).
        kernel_sizes, dilations, groups: per block, as speechbrain's ``ECAPA_TDNN``.
        attention_channels: hidden size of the attentive statistics pooling.
        res2net_scale: Res2Net scale (every channel count of blocks 2-4 must divide by it).
        se_channels: bottleneck of the squeeze-excitation blocks.
        global_context: give the attentive pooling the utterance mean and std.
        dropout: dropout in the TDNN blocks.
        margin, scale: of the :class:`~speakerzoo.zoo.heads.AAMSoftmax` head.
        spec_augment: feature-level training augmentation (SpecAugment masks, VTLP):
            :class:`~speakerzoo.augment.SpectralAugment` arguments, ``true`` for its defaults,
            ``null`` off.

    Example::

        >>> import torch
        >>> model = ECAPA(num_speakers=4, channels=[32, 32, 32, 32, 96], embedding_dim=16,
        ...               attention_channels=8, se_channels=8)
        >>> emb = model.eval().embed(torch.randn(2, 16000), torch.tensor([16000, 12000]))
        >>> emb.shape
        torch.Size([2, 16])
        >>> loss, logits = model.head(emb, torch.tensor([0, 3]))
        >>> logits.shape
        torch.Size([2, 4])
    """

    def __init__(
        self,
        embedding_dim: int = 192,
        channels: Sequence[int] = (1024, 1024, 1024, 1024, 3072),
        kernel_sizes: Sequence[int] = (5, 3, 3, 3, 1),
        dilations: Sequence[int] = (1, 2, 3, 4, 1),
        groups: Sequence[int] = (1, 1, 1, 1, 1),
        attention_channels: int = 128,
        res2net_scale: int = 8,
        se_channels: int = 128,
        global_context: bool = True,
        dropout: float = 0.0,
        margin: float = 0.2,
        scale: float = 30.0,
        spec_augment: bool | dict | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if self.frontend.dim is None:
            raise ValueError("ECAPA needs a spectral frontend (fbank, mfcc or logmel), not raw waveforms")
        self.embedding_dim = int(embedding_dim)
        self.encoder = ECAPA_TDNN(
            input_size=self.frontend.dim,
            lin_neurons=self.embedding_dim,
            channels=list(channels),
            kernel_sizes=list(kernel_sizes),
            dilations=list(dilations),
            groups=list(groups),
            attention_channels=attention_channels,
            res2net_scale=res2net_scale,
            se_channels=se_channels,
            global_context=global_context,
            dropout=dropout,
        )
        self.head = AAMSoftmax(self.embedding_dim, self.num_speakers, margin, scale) if self.num_speakers else None
        self.spec_augment = spectral_augment_from(spec_augment)

    def encode(self, features: Tensor, frame_lengths: Tensor) -> Tensor:
        return self.encoder(features, lengths=relative_lengths(frame_lengths, features)).squeeze(1)

