"""The ``speakerzoo`` command: corpus preparation plus LightningCLI's fit/validate/test/predict.

``speakerzoo prepare ...`` builds a corpus file (see ``speakerzoo prepare --help``);
every other subcommand is LightningCLI, with the model and the DataModule chosen by
``class_path`` (subclass mode) and the data-dependent sizes linked from the DataModule
to the model, so a config never states them twice::

    speakerzoo prepare toy --output data/toy.h5
    speakerzoo fit -c configs/ecapa_small.yaml
    speakerzoo fit -c configs/ecapa.yaml -c configs/trainer/gpu.yaml --data.corpus my_corpus.h5
    speakerzoo test -c configs/ecapa_small.yaml --ckpt_path runs/.../checkpoints/last.ckpt
"""

from __future__ import annotations

import importlib
import signal
import sys
import threading
from collections.abc import Mapping
from typing import Any

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

# Importing the packages registers every zoo model and DataModule, so configs may name
# them by class name alone (``class_path: ECAPA``).
import speakerzoo.datamodules  # noqa: F401
import speakerzoo.zoo  # noqa: F401
from speakerzoo.zoo.checkpoint import InvalidCheckpointError, read_checkpoint_file

#: ``--ckpt_path`` values that Lightning resolves itself to a checkpoint its own callbacks wrote.
CKPT_KEYWORDS = ("best", "last", "hpc")

DESCRIPTION = """speakerzoo: train, evaluate and use speaker recognition models.

Subcommands: prepare (audio -> corpus file), chunk (corpus -> corpus of
3/5/10 s chunks), synthesize (one speaker's synthetic
MFCC frames from a char-LSTM or GPT-2), embed (audio -> embeddings file),
score (trials -> EER, minDCF, DET curve), calibrate (scores -> log-likelihood
ratios), enrol (a store of enrolled speakers), verify (same speaker or not),
identify (who of the enrolled speakers), export (TorchScript / ONNX),
layers (EER of every wav2vec2 layer),
checkpoints (the registry): each has its own --help. fit, validate, test, predict
are LightningCLI (`speakerzoo fit --help`).
Start with: speakerzoo prepare toy --output data/toy.h5 && speakerzoo fit -c configs/ecapa_small.yaml
"""


class SpeakerZooCLI(LightningCLI):
    """LightningCLI with the links, callbacks and trainer defaults every speakerzoo run shares."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # Sizes that depend on the corpus are read from the instantiated DataModule.
        for name in ("num_speakers", "sample_rate", "speaker_names"):
            parser.link_arguments(f"data.{name}", f"model.init_args.{name}", apply_on="instantiate")
        # Checkpoints keep the best model by validation EER and the last one (for resuming).
        # The learning rate is logged by the model itself (train/lr).
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        # A second checkpoint refreshed after every epoch: Lightning 2.6 rewrites the first one's
        # ``last.ckpt`` only at steps where a new best is saved, so it could lag behind the run.
        parser.add_lightning_class_args(ModelCheckpoint, "last_checkpoint")
        parser.set_defaults({
            "checkpoint.monitor": "val/eer",
            "checkpoint.mode": "min",
            "checkpoint.save_last": False,
            "last_checkpoint.monitor": None,
            "last_checkpoint.save_top_k": 1,
            "last_checkpoint.filename": "last",
            "last_checkpoint.enable_version_counter": False,
            "checkpoint.filename": "best-{epoch:03d}",
            "checkpoint.auto_insert_metric_name": False,
            # The speaker-balanced batch sampler shards by rank itself.
            "trainer.use_distributed_sampler": False,
            "trainer.logger": {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": "runs", "name": "speakerzoo"},
            },
        })

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse, then check ``--ckpt_path`` before Lightning reads it.

        Lightning would unpickle a remote checkpoint with ``weights_only`` off (running any code
        in it), and would let a local checkpoint's ``hyper_parameters`` choose the model class and
        its arguments over the user's config. Here a checkpoint is a local file that loads as plain
        data, is always loaded weights-only, and must hold the model class the config asks for.
        """
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        try:
            check_ckpt_path(self.config[subcommand])
        except InvalidCheckpointError as error:
            print(f"speakerzoo {subcommand}: error: {error}", file=sys.stderr)
            raise SystemExit(2) from None


def check_ckpt_path(config: Any) -> None:
    """Refuse a subcommand's ``ckpt_path`` that is remote, unsafe to read or of another model class
    than ``config.model`` (:class:`InvalidCheckpointError`); force weights-only loading."""
    if "weights_only" in config:
        if config["weights_only"] is False:
            raise InvalidCheckpointError("--weights_only false: speakerzoo loads checkpoints as plain data only")
        config["weights_only"] = True
    ckpt_path = config.get("ckpt_path")
    if ckpt_path is None or str(ckpt_path) in CKPT_KEYWORDS:
        return
    checkpoint = read_checkpoint_file(str(ckpt_path))
    model = config.get("model")
    wanted = model.get("class_path") if model is not None and hasattr(model, "get") else None
    if wanted is None:
        return
    for recorded in recorded_class_paths(checkpoint):
        if not same_class(recorded, str(wanted)):
            raise InvalidCheckpointError(
                f"{ckpt_path} holds a {recorded} model, but the config asks for {wanted}. A checkpoint does "
                "not choose the model: pass the config it was trained with (its run folder holds "
                "config.yaml), or a checkpoint of this model."
            )


def recorded_class_paths(checkpoint: Mapping[str, Any]) -> list[str]:
    """The model classes a checkpoint records: LightningCLI's ``hyper_parameters._class_path`` (what
    Lightning would build from it) and speakerzoo's own metadata."""
    found = []
    for entry, key in ((checkpoint.get("hyper_parameters"), "_class_path"), (checkpoint.get("speakerzoo"), "class_path")):
        if isinstance(entry, Mapping) and isinstance(entry.get(key), str):
            found.append(entry[key])
    return found


def same_class(recorded: str, wanted: str) -> bool:
    """Whether two class paths name one class, compared as text (nothing the checkpoint names is
    imported): ``speakerzoo.zoo.ECAPA`` is ``speakerzoo.zoo.ecapa.ECAPA``, re-exported."""
    if recorded == wanted:
        return True
    try:
        module, _, name = wanted.rpartition(".")
        klass = getattr(importlib.import_module(module), name)  # the user's own config: safe to import
    except (ImportError, AttributeError, ValueError):
        return False
    return recorded == f"{klass.__module__}.{klass.__qualname__}" or (
        recorded.rpartition(".")[2] == klass.__name__ and klass.__module__.startswith(recorded.rpartition(".")[0])
    )


def run_lightning(argv: list[str] | None = None, trainer_defaults: dict[str, Any] | None = None) -> SpeakerZooCLI:
    """LightningCLI on ``argv`` (``None``: ``sys.argv``, which keeps LightningCLI from warning
    that it was given both); the CLI object, whose ``trainer``, ``model`` and ``datamodule`` the
    run used. ``trainer_defaults`` are LightningCLI's: callbacks given there are added to the
    config's (``benchmarks/device_check.py`` adds its step meter this way)."""
    return SpeakerZooCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=argv,
        trainer_defaults=trainer_defaults,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"description": DESCRIPTION},
    )


#: ``speakerzoo NAME ...`` subcommands outside LightningCLI: module with ``main(argv) -> int``.
COMMANDS = {
    "prepare": "speakerzoo.commands.prepare",
    "chunk": "speakerzoo.commands.chunk",
    "synthesize": "speakerzoo.commands.synthesize",
    "layers": "speakerzoo.commands.layers",
    "embed": "speakerzoo.commands.embed",
    "score": "speakerzoo.commands.score",
    "calibrate": "speakerzoo.commands.calibrate",
    "export": "speakerzoo.commands.export",
    "checkpoints": "speakerzoo.commands.checkpoints",
    "enrol": "speakerzoo.commands.enrol",
    "verify": "speakerzoo.commands.verify",
    "identify": "speakerzoo.commands.identify",
}


def _terminated(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in COMMANDS:
        module = importlib.import_module(COMMANDS[args[0]])
        # SIGTERM (kill, a scheduler's time limit) ends a command as Ctrl-C does: through its own
        # clean-up, so no temporary file is left behind and the command says what was kept.
        in_main_thread = threading.current_thread() is threading.main_thread()  # signal's own rule
        previous = signal.signal(signal.SIGTERM, _terminated) if in_main_thread else None
        try:
            raise SystemExit(module.main(args[1:]))
        finally:
            if in_main_thread:
                signal.signal(signal.SIGTERM, previous)
    run_lightning(argv)


if __name__ == "__main__":
    main()
