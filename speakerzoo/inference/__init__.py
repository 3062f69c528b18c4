"""Using a trained model, with no argparse in it (see DESIGN.md): the embedding engine so far."""

from speakerzoo.inference import engine
from speakerzoo.inference.engine import *  # noqa: F403 - the engine's public names, listed once there

__all__ = list(engine.__all__)
