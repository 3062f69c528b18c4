"""``speakerzoo synthesize``: synthetic MFCC frames of one speaker from a char-LSTM or GPT-2 (seed 000 §III-A).

The recipe of Bird et al.: the subject's real frames are written as text, one frame per line
(26 values and the class, :func:`~speakerzoo.frame_text.frames_to_text`), a character-level
generator (:class:`~speakerzoo.zoo.text_generator.TextGenerator`) learns that text, and new text
is sampled in independent blocks of 1,000 characters; each block loses its cut final line and
every malformed line (:func:`~speakerzoo.frame_text.parse_block`), and what is left are the
synthetic frames, written to a frame file (:func:`~speakerzoo.datamodules.frames.write_frame_file`)
that a :class:`~speakerzoo.datamodules.frames.FrameDataModule` adds to its training part.

Only the subject's *training* utterances are written as text, so no test frame can leak into
the generator. The generator's training curve goes to TensorBoard (``train/loss``,
``val/loss`` on the last tenth of the text) and :func:`train_generator` returns it per epoch,
which is what the paper's Table II reports (best loss and its epoch).

Example::

    speakerzoo synthesize data/fsdd8k.h5 --subject george --subject-utterances 60 \\
        --generator lstm --frames 10000 --output data/george_lstm.h5
"""

from __future__ import annotations

import argparse
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import lightning
import numpy as np
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from speakerzoo.commands.argtypes import positive_float, positive_int
from speakerzoo.commands.common import run_command
from speakerzoo.datamodules.frames import SUBJECT, FrameDataModule, write_frame_file
from speakerzoo.frame_text import frames_to_text, parse_block
from speakerzoo.zoo.text_generator import ARCHITECTURES, TextGenerator, text_windows

__all__ = ["SynthesisError", "GENERATOR_SETTINGS", "EpochLosses", "SampledFrames", "train_generator", "sample_frames", "synthesize", "main"]


class SynthesisError(RuntimeError):
    """The generator wrote too few well-formed frames: it has not learnt the format (train it longer)."""


#: Each generator's training and sampling settings where the caller gives none; measured on FSDD
#: (docs/recipes/bird-frame-dnn.md). GPT-2 on characters learns slowly from few large batches: 2 layers of 64
#: trained on windows of 128 characters in batches of 16 wrote 1.26 well-formed frames per block
#: after 8 epochs (2 minutes on one thread), where batches of 32 x 256 at lr 5e-3 wrote none.
GENERATOR_SETTINGS = {
    "lstm": dict(epochs=20, seq_len=100, batch_size=64, lr=5e-3, sample_batch_size=64),
    "gpt2": dict(epochs=8, seq_len=128, batch_size=16, lr=2e-3, sample_batch_size=256,
                 gpt2=dict(n_layer=2, n_embd=64, n_head=4)),
}


def _with_defaults(architecture: str, settings: dict) -> dict:
    """``settings`` with every ``None`` replaced by the generator's :data:`GENERATOR_SETTINGS`."""
    if architecture not in GENERATOR_SETTINGS:
        raise ValueError(f"unknown generator {architecture!r}; choose one of {', '.join(GENERATOR_SETTINGS)}")
    defaults = GENERATOR_SETTINGS[architecture]
    return {key: defaults.get(key) if value is None else value for key, value in settings.items()}


class EpochLosses(Callback):
    """Keeps every epoch's ``train/loss`` and ``val/loss`` (Table II: the best loss and its epoch)."""

    def __init__(self):
        self.train: list[float] = []
        self.val: list[float] = []

    def on_train_epoch_end(self, trainer, module) -> None:  # after this epoch's validation
        metrics = trainer.callback_metrics
        self.train.append(float(metrics["train/loss"]))
        if "val/loss" in metrics:
            self.val.append(float(metrics["val/loss"]))

    def best(self, which: str = "train") -> tuple[float, int]:
        """``(lowest loss, its epoch counted from 1)``."""
        losses = getattr(self, which)
        epoch = int(np.argmin(losses))
        return losses[epoch], epoch + 1


def _split_text(text: str, val_fraction: float) -> tuple[str, str]:
    """The text cut at a line break: the first ``1 - val_fraction`` to train, the rest to validate."""
    lines = text.splitlines(keepends=True)
    cut = len(lines) - max(1, int(round(len(lines) * val_fraction))) if val_fraction > 0 else len(lines)
    return "".join(lines[:cut]), "".join(lines[cut:])


def train_generator(text: str, architecture: str = "lstm", *, lstm_units: int = 128, lstm_layers: int = 1,
                    gpt2: dict | None = None, pretrained: str | None = None, epochs: int | None = None,
                    seq_len: int | None = None, batch_size: int | None = None, lr: float | None = None,
                    val_fraction: float = 0.1, seed: int = 0, logger=False, progress: bool = False,
                    accelerator: str = "auto") -> tuple[TextGenerator, EpochLosses]:
    """Train a :class:`TextGenerator` on ``text`` for ``epochs`` passes over its windows of
    ``seq_len`` tokens; returns the generator and its per-epoch losses. Settings left ``None``
    are the generator's :data:`GENERATOR_SETTINGS`."""
    given = _with_defaults(architecture, dict(gpt2=gpt2, epochs=epochs, seq_len=seq_len, batch_size=batch_size, lr=lr))
    gpt2, epochs, seq_len, batch_size, lr = (given[k] for k in ("gpt2", "epochs", "seq_len", "batch_size", "lr"))
    lightning.seed_everything(seed, verbose=False)
    train_text, val_text = _split_text(text, val_fraction)
    # the alphabet, not the text: it is a hyper-parameter saved in checkpoints and TensorBoard
    generator = TextGenerator(architecture, alphabet="".join(sorted(set(text))), lstm_units=lstm_units, lstm_layers=lstm_layers,
                              gpt2=gpt2, pretrained=pretrained, lr=lr, window=seq_len)
    loaders = {}
    for name, part in (("train", train_text), ("val", val_text)):
        if part:
            windows = text_windows(generator.encode(part), seq_len, stride=seq_len if name == "val" else None)
            loaders[name] = DataLoader(windows, batch_size=batch_size, shuffle=name == "train")
    losses = EpochLosses()
    trainer = lightning.Trainer(max_epochs=epochs, accelerator=accelerator, devices=1, logger=logger,
                                callbacks=[losses], enable_checkpointing=False, enable_progress_bar=progress,
                                enable_model_summary=False, num_sanity_val_steps=0,
                                log_every_n_steps=max(1, min(50, len(loaders["train"]))))
    trainer.fit(generator, loaders["train"], loaders.get("val"))
    return generator.cpu().eval(), losses


@dataclass(frozen=True)
class SampledFrames:
    """Frames read back from sampled blocks, with what was dropped on the way."""

    frames: np.ndarray
    blocks: int
    malformed: int
    cut: int

    @property
    def kept_per_block(self) -> float:
        return len(self.frames) / max(self.blocks, 1)


def sample_frames(generator: TextGenerator, num_frames: int, dim: int = 26, label: int = SUBJECT,
                  block_chars: int = 1000, temperature: float = 1.0, seed: int = 0, batch_size: int = 64,
                  max_blocks: int | None = None, progress: bool = False) -> SampledFrames:
    """Sample blocks until ``num_frames`` well-formed frames of class ``label`` are read back (the
    first ``num_frames`` are kept). Raises :class:`SynthesisError` when ``max_blocks`` (default: 50 times
    the blocks a perfect generator would need) give too few: the generator has not learnt the
    format; train it longer."""
    if max_blocks is None:  # 50 times the blocks needed at 8 good lines per block (real lines are ~150 chars)
        max_blocks = 50 * max(1, -(-num_frames // 8))
    kept, blocks, malformed, cut, batch = [], 0, 0, 0, 0
    bar = tqdm(total=num_frames, desc="synthetic frames", unit="frame", disable=not progress)
    while sum(len(k) for k in kept) < num_frames:
        if blocks >= max_blocks:
            bar.close()
            raise SynthesisError(f"{blocks} sampled blocks gave only {sum(len(k) for k in kept)} well-formed frames "
                               f"of {num_frames} ({malformed} malformed lines): the generator has not learnt the "
                               "frame format; train it for more epochs")
        for text in generator.sample(batch_size, block_chars, temperature=temperature, seed=seed + batch,
                                     batch_size=batch_size):
            parsed = parse_block(text, dim=dim, classes={label})
            kept.append(parsed.frames)
            bar.update(len(parsed.frames))
            malformed += parsed.malformed
            cut += parsed.cut
        blocks += batch_size
        batch += 1
    bar.close()
    frames = np.concatenate(kept)[:num_frames]
    return SampledFrames(frames=frames, blocks=blocks, malformed=malformed, cut=cut)


def synthesize(corpus: str, subject: str, output: str | Path, *, num_frames: int = 10000,
               architecture: str = "lstm", features: str = "mfcc26", subject_utterances: int | None = None,
               decimals: int = 1, seed: int = 0, temperature: float = 1.0, sample_batch_size: int | None = None,
               progress: bool = False, logger=False, **training) -> tuple[Path, EpochLosses, SampledFrames]:
    """Train a generator on the subject's training frames of ``corpus`` and write ``num_frames``
    synthetic frames to the frame file ``output``. ``training``: arguments of :func:`train_generator`;
    settings left ``None`` are the generator's :data:`GENERATOR_SETTINGS`."""
    sample_batch_size = _with_defaults(architecture, dict(sample_batch_size=sample_batch_size))["sample_batch_size"]
    data = FrameDataModule(corpus, subject=subject, features=features, subject_utterances=subject_utterances,
                           seed=seed)
    real = data.subject_frames("train")
    text = frames_to_text(real, np.full(len(real), SUBJECT), decimals=decimals)
    generator, losses = train_generator(text, architecture, seed=seed, logger=logger, progress=progress, **training)
    sampled = sample_frames(generator, num_frames, dim=real.shape[1], temperature=temperature, seed=seed,
                            batch_size=sample_batch_size, progress=progress)
    best_loss, best_epoch = losses.best()
    path = write_frame_file(output, sampled.frames, np.full(num_frames, SUBJECT), features=features, subject=subject,
                            attrs={"corpus": str(corpus), "generator": architecture, "real_frames": len(real),
                                   "subject_utterances": subject_utterances, "decimals": decimals, "seed": seed,
                                   "temperature": temperature, "training": training, "blocks": sampled.blocks,
                                   "malformed_lines": sampled.malformed, "best_train_loss": best_loss,
                                   "best_epoch": best_epoch})
    return path, losses, sampled


def _defaults(key: str) -> str:
    return ", ".join(f"{settings[key]} for {'the LSTM' if name == 'lstm' else 'GPT-2'}"
                     for name, settings in GENERATOR_SETTINGS.items())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="speakerzoo synthesize",
        description="Train a character-level LSTM or GPT-2 on one speaker's MFCC frames (as text lines of "
                    "26 values and a class) and write synthetic frames sampled from it to a frame file "
                    "(seed 000, Bird et al.). Only the speaker's training utterances are used. The output is "
                    "written under a temporary name and renamed when complete.",
        epilog="example: speakerzoo synthesize data/fsdd8k.h5 --subject george --subject-utterances 60 "
               "--generator gpt2 --frames 10000 --output data/george_gpt2.h5")
    parser.add_argument("corpus", help="corpus file (speakerzoo prepare ... --features mfcc26)")
    parser.add_argument("--subject", required=True, help="speaker whose frames to imitate")
    parser.add_argument("--output", required=True, help="frame file to write (.h5)")
    parser.add_argument("--generator", choices=ARCHITECTURES, default="lstm", help="default: %(default)s")
    parser.add_argument("--frames", type=positive_int, default=10000, help="synthetic frames to write (default: %(default)s)")
    parser.add_argument("--subject-utterances", type=positive_int, default=None,
                        help="learn from only this many of the subject's training utterances (default: all)")
    parser.add_argument("--features", default="mfcc26", help="feature preset of the frames (default: %(default)s)")
    parser.add_argument("--epochs", type=positive_int, default=None,
                        help=f"generator training epochs (default: {_defaults('epochs')})")
    parser.add_argument("--lstm-units", type=positive_int, default=128, help="LSTM units per layer (default: %(default)s)")
    parser.add_argument("--lstm-layers", type=positive_int, default=1, help="LSTM layers (default: %(default)s)")
    parser.add_argument("--gpt2-pretrained", default=None, metavar="DIR",
                        help="fine-tune GPT-2 from this local directory (save_pretrained: model and tokenizer) "
                             "instead of a small GPT-2 trained from scratch on characters")
    gpt2 = GENERATOR_SETTINGS["gpt2"]["gpt2"]
    parser.add_argument("--gpt2-layers", type=positive_int, default=gpt2["n_layer"],
                        help="layers of the GPT-2 on characters (default: %(default)s)")
    parser.add_argument("--gpt2-width", type=positive_int, default=gpt2["n_embd"],
                        help="its width, a multiple of its 4 heads (default: %(default)s)")
    parser.add_argument("--seq-len", type=positive_int, default=None,
                        help=f"training window in tokens; GPT-2 on characters never samples with a longer context "
                             f"(default: {_defaults('seq_len')})")
    parser.add_argument("--batch-size", type=positive_int, default=None, help=f"default: {_defaults('batch_size')}")
    parser.add_argument("--lr", type=positive_float, default=None, help=f"default: {_defaults('lr')}")
    parser.add_argument("--sample-batch-size", type=positive_int, default=None,
                        help=f"blocks sampled at once; 256 made the char GPT-2 1.5 times faster per block than 64 on "
                             f"a CPU (default: {_defaults('sample_batch_size')})")
    parser.add_argument("--temperature", type=positive_float, default=1.0, help="sampling temperature (default: %(default)s)")
    parser.add_argument("--decimals", type=int, default=1,
                        help="digits after the point in the text; 1 doubled the well-formed lines of a char-LSTM "
                             "against 2 (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-dir", default=None, help="TensorBoard directory for the generator's losses")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def run(args: argparse.Namespace) -> tuple[Path, EpochLosses, SampledFrames]:
    """Train the generator and write the frames as ``args`` say (one call of :func:`synthesize`)."""
    logger = False
    if args.log_dir:
        from lightning.pytorch.loggers import TensorBoardLogger

        logger = TensorBoardLogger(args.log_dir, name=f"synthesize_{args.subject}_{args.generator}")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        return synthesize(
            args.corpus, args.subject, args.output, num_frames=args.frames, architecture=args.generator,
            features=args.features, subject_utterances=args.subject_utterances, decimals=args.decimals,
            seed=args.seed, temperature=args.temperature, sample_batch_size=args.sample_batch_size,
            progress=not args.quiet, logger=logger,
            lstm_units=args.lstm_units, lstm_layers=args.lstm_layers, pretrained=args.gpt2_pretrained,
            gpt2=dict(n_layer=args.gpt2_layers, n_embd=args.gpt2_width, n_head=4),
            epochs=args.epochs, seq_len=args.seq_len, batch_size=args.batch_size, lr=args.lr)


def render(result: tuple[Path, EpochLosses, SampledFrames]) -> str:
    path, losses, sampled = result
    loss, epoch = losses.best()
    return (f"{path}: {len(sampled.frames)} frames from {sampled.blocks} blocks of text "
            f"({sampled.kept_per_block:.1f} kept per block, {sampled.malformed} malformed lines dropped); "
            f"generator best train loss {loss:.3f} at epoch {epoch}")


def main(argv: list[str] | None = None) -> int:
    """``speakerzoo synthesize ...``; returns the exit code (0 done, 2 error, 130 interrupted)."""
    return run_command("synthesize", argv, build_parser, run, render,
                       interrupted=lambda args: f"{args.output} was left as it was")


if __name__ == "__main__":
    sys.exit(main())
