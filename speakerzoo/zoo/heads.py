"""Classification heads / losses on top of speaker embeddings (plain ``nn.Module``s)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from speechbrain.lobes.models.ECAPA_TDNN import Classifier
from speechbrain.nnet.losses import AdditiveAngularMargin
from torch import Tensor, nn

from speakerzoo.checks import check_number


class AAMSoftmax(nn.Module):
    """Additive angular margin softmax (ArcFace / AAM-softmax) over ``num_classes`` speakers.

    The cosine between the length-normalised embedding and each length-normalised class
    weight is computed by speechbrain's ``Classifier`` (ECAPA-TDNN cosine classifier, no
    hidden blocks), the margin by speechbrain's ``AdditiveAngularMargin``
    (``s * cos(theta + m)`` for the true class, ``s * cos(theta)`` for the others). The
    loss is ``F.cross_entropy`` on those logits: speechbrain's ``LogSoftmaxWrapper``
    computes the same number (a summed KL divergence to one-hot targets divided by the
    batch size) but wants ``[B, 1, C]`` / ``[B, 1]`` shapes and offers nothing more.
    Everything is computed in float32, also under autocast.

    Arguments:
        embedding_dim: size of the embeddings.
        num_classes: number of training speakers.
        margin: additive angular margin ``m`` in radians (speechbrain VoxCeleb recipe: 0.2).
        scale: logit scale ``s`` (recipe: 30).
        easy_margin: apply the margin only where ``cos(theta) > 0``.

    ``forward(embeddings [B, D], labels [B])`` returns ``(loss, logits)``: the mean loss and
    ``[B, C]`` logits ``s * cos(theta)`` *without* the margin (use them for accuracy or
    closed-set prediction).

    Example::

        >>> import torch
        >>> head = AAMSoftmax(embedding_dim=8, num_classes=5)
        >>> loss, logits = head(torch.randn(4, 8), torch.tensor([0, 1, 2, 4]))
        >>> loss.shape, logits.shape, bool(logits.abs().max() <= 30.0)
        (torch.Size([]), torch.Size([4, 5]), True)
    """

    def __init__(
        self, embedding_dim: int, num_classes: int, margin: float = 0.2, scale: float = 30.0, easy_margin: bool = False
    ):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"AAMSoftmax needs at least one class, got num_classes={num_classes}")
        # scale 0 or a negative margin leave the loss at ln(classes) for ever: nothing is learnt.
        scale = check_number("scale", scale, low=0, low_open=True, hint="the AAM logit scale s, e.g. 30")
        margin = check_number("margin", margin, low=0, high=math.pi / 2, high_open=True,
                              hint="the additive angular margin m in radians, e.g. 0.2")
        self.embedding_dim = int(embedding_dim)
        self.num_classes = int(num_classes)
        self.classifier = Classifier(input_size=self.embedding_dim, lin_blocks=0, out_neurons=self.num_classes)
        self.aam = AdditiveAngularMargin(margin=margin, scale=scale, easy_margin=easy_margin)

    @property
    def margin(self) -> float:
        return self.aam.margin

    @property
    def scale(self) -> float:
        return self.aam.scale

    def cosine(self, embeddings: Tensor) -> Tensor:
        """``[B, D]`` embeddings -> ``[B, C]`` cosine similarity to each class weight (float32)."""
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            return self.classifier(embeddings.float().unsqueeze(1)).squeeze(1)

    def forward(self, embeddings: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        cosine = self.cosine(embeddings)
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            one_hot = F.one_hot(labels.long(), self.num_classes).to(cosine.dtype)
            loss = F.cross_entropy(self.aam(cosine, one_hot), labels.long())
        return loss, self.scale * cosine

    def extra_repr(self) -> str:
        return f"embedding_dim={self.embedding_dim}, num_classes={self.num_classes}, margin={self.margin}, scale={self.scale}"


class SoftmaxHead(nn.Module):
    """A linear classifier over the embedding with cross-entropy (computed in float32).

    Arguments:
        embedding_dim, num_classes: input size and number of speakers.
        bias: Deep Speaker's pre-training classifier (seed 001 §3.4) has none: the logits of a
            length-normalised embedding are then those of the raw one divided by its norm, so
            closed-set ranking on normalised embeddings matches training. The ResNet50 head
            (seed 004, a Keras ``Dense``) has one.

    ``forward(embeddings [B, D], labels [B])`` returns ``(loss, logits [B, C])``; ``linear`` gives
    the logits alone.

    Example::

        >>> head = SoftmaxHead(embedding_dim=8, num_classes=3)
        >>> loss, logits = head(torch.randn(4, 8), torch.tensor([0, 1, 2, 0]))
        >>> loss.shape, logits.shape
        (torch.Size([]), torch.Size([4, 3]))
    """

    def __init__(self, embedding_dim: int, num_classes: int, bias: bool = True):
        super().__init__()
        self.linear = nn.Linear(embedding_dim, num_classes, bias=bias)

    def forward(self, embeddings: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        logits = self.linear(embeddings)
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            loss = F.cross_entropy(logits.float(), labels.long())
        return loss, logits
