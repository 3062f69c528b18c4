"""DataModules: the HDF5 corpus (writer and reader), datasets, the P x K sampler, collate functions.

Never imports ``speakerzoo.zoo``; DataModules and models are linked by the CLI.
"""

from speakerzoo.datamodules.corpus import Corpus, CorpusError, CorpusWriter
from speakerzoo.datamodules.datamodule import SpeakerDataModule
from speakerzoo.datamodules.frames import FrameDataModule
from speakerzoo.datamodules.multitask import MultiTaskDataModule

__all__ = ["Corpus", "CorpusError", "CorpusWriter", "FrameDataModule", "MultiTaskDataModule",
           "SpeakerDataModule"]
