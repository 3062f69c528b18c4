"""The images an image model sees, in TensorBoard (seed 004 §3.1 shows one MFCC plot per speaker).

:class:`InputImages` draws, at every validation epoch, the input images of the first validation
batch's first utterances as the model computed them (``pl_module.images(features, frame_lengths)``,
e.g. :class:`~speakerzoo.zoo.resnet_mfcc.ResNetMFCC`'s MFCC pictures), each labelled in the tag by
its speaker. Models without an ``images`` method are skipped with one message.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from speakerzoo.callbacks.common import TensorBoardCallback

__all__ = ["InputImages"]


class InputImages(TensorBoardCallback):
    """Write up to ``max_images`` model input images of the first validation batch, per epoch.

    Arguments:
        max_images: images per epoch (the first utterances of the batch).
        tag: TensorBoard tag prefix; each image is ``{tag}/{k}_{speaker}``.
    """

    def __init__(self, max_images: int = 6, tag: str = "val/input_images"):
        super().__init__()
        if max_images < 1:
            raise ValueError(f"max_images must be at least 1, got {max_images}")
        self.max_images = int(max_images)
        self.tag = tag

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if batch_idx != 0 or dataloader_idx != 0:
            return
        images_of = getattr(pl_module, "images", None)
        if not callable(images_of):
            self.info_once("no-images", f"{type(pl_module).__name__} has no images(features, frame_lengths): nothing drawn")
            return
        writer = self.writer(trainer)
        if writer is None:
            return
        rows = {key: value[: self.max_images] for key, value in batch.items() if torch.is_tensor(value)}
        with torch.no_grad():
            images = images_of(*pl_module.features(rows)).float().clamp(0, 1).cpu()
        names = self._speakers(trainer, rows.get("index"), len(images))
        for k, (image, name) in enumerate(zip(images, names)):
            writer.add_image(f"{self.tag}/{k}_{name}", image, self.step(trainer), dataformats="CHW")

    @staticmethod
    def _speakers(trainer: L.Trainer, index: torch.Tensor | None, count: int) -> list[str]:
        speakers_of = getattr(getattr(trainer, "datamodule", None), "speakers_of", None)
        if index is None or not callable(speakers_of):
            return ["utterance"] * count
        return [name.replace(" ", "_") or "noise" for name in speakers_of(index)]
