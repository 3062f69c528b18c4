"""speakerzoo: a PyTorch Lightning training package and model zoo for speaker recognition."""

__version__ = "0.1.0"
