"""ResNet50 on MFCC images, partly frozen transfer learning (seed 004).

The spec is ``shared/seeds/004_…`` §3-4: each 3, 5 or 10 s chunk's MFCCs (13) are drawn as an RGB
image (:class:`~speakerzoo.zoo.mfcc_image.MFCCImage`, 224 or 300 pixels, [0, 1]); a ResNet50
without its classifier (transformers' ``ResNetModel`` in the resnet-50 layout, ImageNet weights
from a local directory when given) reads it; its last feature map is flattened and passes through
``Dense 512 -> dropout -> Dense 512 -> dropout -> Dense classes`` with softmax cross-entropy and
Adam. The middle of the network is frozen and the first blocks and the head train (§4.8: "we froze
the mid-layers and trained the initial few convolutional blocks and the last fully connected
layers"): by default the stem and ``stage1`` (its 3 bottleneck blocks: the seed's "3
convolutional blocks") train and ``stage2``-``stage4`` are frozen.

Frozen stages are frozen as Keras freezes a layer: no gradient, no optimiser state, and their
BatchNorm layers stay in inference mode (running statistics untouched) while the rest trains.

The 512-unit output of the second dense layer (after its ReLU) is the speaker embedding, so the
model also verifies and identifies speakers outside its training classes through the shared
cosine scoring.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from transformers import ResNetConfig, ResNetModel
from transformers.utils.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from speakerzoo.zoo.base import SpeakerEmbeddingModule
from speakerzoo.zoo.checkpoint import local_weights_dir
from speakerzoo.zoo.heads import SoftmaxHead
from speakerzoo.zoo.mfcc_image import MFCCImage

#: Names of the backbone parts that ``freeze`` may list (transformers' stage names).
STAGES = ("stem", "stage1", "stage2", "stage3", "stage4")


class ResNetMFCC(SpeakerEmbeddingModule):
    """ResNet50 speaker identification on MFCC images (seed 004).

    Arguments:
        frontend: the MFCCs drawn (default ``mfcc13``: 13 coefficients from 40 mel bands, 25 ms
            windows, 10 ms steps); another count, e.g. ``{"kind": "mfcc", "n_mels": 40, "n_mfcc": 20}``.
        image_size: side of the image (224: ResNet50's input; the seed used 300).
        colormap: matplotlib colormap of the image (the seed's plots: ``coolwarm``).
        backbone: ``transformers.ResNetConfig`` fields; empty: the resnet-50 layout (depths
            3-4-6-3, bottleneck blocks, 2048 output channels). Tests use small layouts.
        pretrained: a local directory with ImageNet weights in transformers' format (e.g.
            ``microsoft/resnet-50`` saved with ``save_pretrained``; a ``ResNetForImageClassification``
            directory works too, its classifier is ignored). Loaded when the model is built; nothing
            is downloaded. Checkpoints carry the weights, so they do not need the directory.
        freeze: backbone parts to freeze, from ``stem``, ``stage1`` ... ``stage4`` (the seed: the
            middle, ``[stage2, stage3, stage4]``); ``[]`` trains everything.
        pooling: ``flatten`` (the seed: the whole last feature map, 2048 x 7 x 7 at 224 pixels, into
            the first dense layer) or ``avg`` (global average pooling, 2048 values: far fewer weights).
        hidden: units of the two dense layers; the embedding size.
        dropout: dropout after each dense layer.
        imagenet_normalize: standardise the [0, 1] image with ImageNet's channel mean and deviation
            before the backbone, as ImageNet-trained weights expect.
        weight_decay: Adam's, with ``lr`` (the seed: Keras' Adam, lr 1e-3, no decay), constant rate.
        **kwargs: ``num_speakers``, ``sample_rate``, ``speaker_names``, ``lr``, ``init_from``: see
            :class:`~speakerzoo.zoo.base.SpeakerEmbeddingModule` (no ``warmup_epochs``: the rate is
            constant).
    """

    exact_padding = True  # the image is drawn from the valid frames only (tested)

    def __init__(
        self,
        frontend: str | dict = "mfcc13",
        image_size: int = 224,
        colormap: str = "coolwarm",
        backbone: dict | None = None,
        pretrained: str | None = None,
        freeze: list[str] = ("stage2", "stage3", "stage4"),
        pooling: str = "flatten",
        hidden: int = 512,
        dropout: float = 0.3,
        imagenet_normalize: bool = True,
        weight_decay: float = 0.0,
        **kwargs,
    ):
        # Adam at a constant rate: no warm-up, and no warmup_epochs argument.
        super().__init__(frontend=frontend, weight_decay=weight_decay, warmup_epochs=0.0, **kwargs)
        self.save_hyperparameters(ignore="warmup_epochs")
        if self.frontend.dim is None:
            raise ValueError("ResNetMFCC draws MFCC images: give it a spectral frontend (mfcc13), not raw waveforms")
        unknown = sorted(set(freeze) - set(STAGES))
        if unknown:
            raise ValueError(f"freeze: unknown backbone part(s) {unknown}; choose from {list(STAGES)}")
        if pooling not in ("flatten", "avg"):
            raise ValueError(f"pooling must be 'flatten' or 'avg', not {pooling!r}")
        self.image = MFCCImage(image_size, colormap)
        self.imagenet_normalize = bool(imagenet_normalize)
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1), persistent=False)
        self.backbone = ResNetModel(ResNetConfig(**(backbone or {})))
        self.pretrained = None if pretrained is None else str(pretrained)
        if self.pretrained:
            self.load_backbone(self.pretrained)
        self.pooling = pooling
        self.frozen = tuple(dict.fromkeys(freeze))
        for name in self.frozen:
            self._part(name).requires_grad_(False)
        flat = self._feature_size(int(image_size))
        self.embedding_dim = int(hidden)
        self.neck = nn.Sequential(
            nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.ReLU())
        self.head_dropout = nn.Dropout(dropout)
        self.head = SoftmaxHead(self.embedding_dim, self.num_speakers, bias=True) if self.num_speakers else None
        self._frozen_to_eval()

    # ------------------------------------------------------------------ backbone

    def _part(self, name: str) -> nn.Module:
        if name == "stem":
            return self.backbone.embedder
        return self.backbone.encoder.stages[int(name[-1]) - 1]

    def _feature_size(self, size: int) -> int:
        """Values per image that reach the first dense layer (checked against a forward pass in the tests)."""
        channels = self.backbone.config.hidden_sizes[-1]
        if self.pooling == "avg":
            return channels
        side = size
        # conv 7x7/2 (pad 3), max-pool 3x3/2 (pad 1), then a 3x3/2 (pad 1) in every stage after the first.
        side = (side + 2 * 3 - 7) // 2 + 1
        side = (side + 2 * 1 - 3) // 2 + 1
        strided = len(self.backbone.config.depths) - 1 + bool(self.backbone.config.downsample_in_first_stage)
        for _ in range(strided):
            side = (side + 2 * 1 - 3) // 2 + 1
        return channels * side * side

    def load_backbone(self, directory: str) -> None:
        """Copy ImageNet weights from a local transformers directory into the backbone."""
        path = local_weights_dir(directory, "ResNet", "model.safetensors", "microsoft/resnet-50")
        source = ResNetModel.from_pretrained(str(path), local_files_only=True)
        try:
            self.backbone.load_state_dict(source.state_dict(), strict=True)
        except RuntimeError as error:
            raise ValueError(
                f"{path}: its ResNet layout differs from this model's backbone ({error}); set backbone to the "
                f"directory's layout (its config.json) or use resnet-50 weights") from None

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage == "fit" and self.frozen and self.pretrained is None and self.init_from is None:
            rank_zero_warn(
                f"ResNetMFCC: {', '.join(self.frozen)} are frozen but no pretrained weights were given, so they "
                "stay random filters; give --model.init_args.pretrained DIR (ImageNet weights) or train "
                "everything with --model.init_args.freeze '[]'")

    def train(self, mode: bool = True) -> "ResNetMFCC":
        super().train(mode)
        self._frozen_to_eval()
        return self

    def _frozen_to_eval(self) -> None:
        for name in self.frozen:  # frozen BatchNorm keeps its (ImageNet) running statistics
            self._part(name).eval()

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Lightning restores each module's own training flag after validation as it found it
        # before, without calling train(): put the frozen stages back in inference mode here.
        super().on_train_batch_start(batch, batch_idx)
        self._frozen_to_eval()

    # ------------------------------------------------------------------ model

    def images(self, features: Tensor, frame_lengths: Tensor) -> Tensor:
        """The ``[B, 3, size, size]`` images in [0, 1] that the backbone sees (before standardisation)."""
        return self.image(features, frame_lengths)

    def encode(self, features: Tensor, frame_lengths: Tensor) -> Tensor:
        pixels = self.images(features, frame_lengths)
        if self.imagenet_normalize:
            pixels = (pixels - self.pixel_mean) / self.pixel_std
        output = self.backbone(pixel_values=pixels)
        maps = output.pooler_output if self.pooling == "avg" else output.last_hidden_state
        return self.neck(maps)

    def training_loss(self, embeddings: Tensor, speakers: Tensor) -> tuple[Tensor, Tensor | None]:
        if self.head is None:
            return super().training_loss(embeddings, speakers)  # raises: no head
        return self.head(self.head_dropout(embeddings), speakers)

    def classify(self, embeddings: Tensor) -> Tensor | None:
        return None if self.head is None else self.head.linear(embeddings)

    def configure_optimizers(self) -> Any:
        """Adam on the parameters that train (frozen ones get no optimiser state), constant rate."""
        trainable = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.Adam(trainable, lr=self.lr, weight_decay=self.weight_decay)

    # ------------------------------------------------------------------ checkpoints

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        # The weights are in the checkpoint: rebuilding it must not need the ImageNet directory.
        checkpoint["hyper_parameters"]["pretrained"] = None
        checkpoint["speakerzoo"]["backbone_weights"] = self.pretrained
