"""Model zoo: LightningModules (one file per system) and their building blocks.

Never imports ``speakerzoo.datamodules``; DataModules and models are linked by the CLI.
"""

from speakerzoo.zoo.base import InvalidCheckpointError, SpeakerEmbeddingModule
from speakerzoo.zoo.ecapa import ECAPA
from speakerzoo.zoo.heads import AAMSoftmax

__all__ = ["AAMSoftmax", "ECAPA", "InvalidCheckpointError", "SpeakerEmbeddingModule"]
