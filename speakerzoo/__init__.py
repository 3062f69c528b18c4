"""speakerzoo: a PyTorch Lightning training package and model zoo for speaker recognition.

``from speakerzoo import SpeakerRecognizer`` is the Python API for a trained model
(:mod:`speakerzoo.inference`); it is imported on first use, so that ``import speakerzoo`` stays
light (the command line checks the torch/torchaudio pair before torch is imported).
"""

from typing import Any

__version__ = "0.1.0"

__all__ = ["SpeakerRecognizer", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "SpeakerRecognizer":
        from speakerzoo.inference.recognizer import SpeakerRecognizer

        return SpeakerRecognizer
    raise AttributeError(f"module 'speakerzoo' has no attribute {name!r}")
