"""Using a trained model, with no argparse in it (see DESIGN.md): the embedding engine so far."""

from speakerzoo.inference.engine import (
    BATCH_SECONDS,
    LONG_RECORDING_SECONDS,
    EmbeddingError,
    batch_invariant_kernels,
    embed_waveforms,
    length_batches,
    min_samples,
    near_equal_segments,
)

__all__ = [
    "BATCH_SECONDS",
    "LONG_RECORDING_SECONDS",
    "EmbeddingError",
    "batch_invariant_kernels",
    "embed_waveforms",
    "length_batches",
    "min_samples",
    "near_equal_segments",
]
