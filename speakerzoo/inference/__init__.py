"""Using a trained model, with no argparse in it (see DESIGN.md): load it, embed waveforms and
files, enrol speakers, verify and identify, with Monte-Carlo-dropout uncertainty.

:class:`SpeakerRecognizer` is the front door; the commands ``speakerzoo embed``, ``verify`` and
``identify`` are thin shells over it and the functions below.
"""

from speakerzoo.embeddings import EmbeddingError, EmbeddingFile, EmbeddingWriter
from speakerzoo.inference.bank import SpeakerBank, Verification, head_probabilities, rank
from speakerzoo.inference.engine import (
    BATCH_SECONDS,
    LONG_RECORDING_SECONDS,
    batch_invariant_kernels,
    embed_waveforms,
    length_batches,
    min_samples,
    near_equal_segments,
)
from speakerzoo.inference.enrolment import EnrolError, Enrolment, FileEmbedder, enrol_speakers
from speakerzoo.inference.file_embedding import EmbedSummary, EmbeddingRows, embed_items, embed_source, embed_to_file
from speakerzoo.inference.inputs import Inputs, Item, find_inputs
from speakerzoo.inference.loading import device_from_name, load_model
from speakerzoo.inference.mc_dropout import NoDropoutError, mc_dropout, mc_embed, mc_samples
from speakerzoo.inference.recognizer import EmbeddedFiles, SpeakerRecognizer
from speakerzoo.inference.segments import RecordingEmbedding, aggregate, embed_recording, segments

__all__ = [
    "BATCH_SECONDS",
    "LONG_RECORDING_SECONDS",
    "EmbedSummary",
    "EmbeddedFiles",
    "EmbeddingError",
    "EmbeddingFile",
    "EmbeddingRows",
    "EmbeddingWriter",
    "EnrolError",
    "Enrolment",
    "FileEmbedder",
    "Inputs",
    "Item",
    "NoDropoutError",
    "RecordingEmbedding",
    "SpeakerBank",
    "SpeakerRecognizer",
    "Verification",
    "aggregate",
    "batch_invariant_kernels",
    "device_from_name",
    "embed_items",
    "embed_recording",
    "embed_source",
    "embed_to_file",
    "embed_waveforms",
    "enrol_speakers",
    "find_inputs",
    "head_probabilities",
    "length_batches",
    "load_model",
    "mc_dropout",
    "mc_embed",
    "mc_samples",
    "min_samples",
    "near_equal_segments",
    "rank",
    "segments",
]
