"""Model zoo: LightningModules (one file per system) and their building blocks.

Never imports ``speakerzoo.datamodules``; DataModules and models are linked by the CLI.
"""

from speakerzoo.zoo.base import InvalidCheckpointError, LoadReport, SpeakerEmbeddingModule
from speakerzoo.zoo.campplus import CAMPPlus
from speakerzoo.zoo.deep_speaker import DeepSpeaker
from speakerzoo.zoo.ecapa import ECAPA
from speakerzoo.zoo.frame_dnn import FrameDNN
from speakerzoo.zoo.heads import AAMSoftmax, SoftmaxHead
from speakerzoo.zoo.resnet_mfcc import ResNetMFCC
from speakerzoo.zoo.se_cnn_bigru import SECNNBiGRU
from speakerzoo.zoo.wav2vec2_mtl import Wav2Vec2MultiTask
from speakerzoo.zoo.registry import (
    ChecksumError,
    RegistryEntry,
    RegistryError,
    UnknownCheckpointError,
    load_registry,
    resolve,
)

__all__ = [
    "AAMSoftmax",
    "CAMPPlus",
    "ChecksumError",
    "DeepSpeaker",
    "ECAPA",
    "FrameDNN",
    "InvalidCheckpointError",
    "LoadReport",
    "RegistryEntry",
    "RegistryError",
    "ResNetMFCC",
    "SECNNBiGRU",
    "SoftmaxHead",
    "SpeakerEmbeddingModule",
    "UnknownCheckpointError",
    "Wav2Vec2MultiTask",
    "load_registry",
    "resolve",
]
