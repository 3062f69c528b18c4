"""Speakerzoo checkpoints: safe reading, the metadata they carry, and loading their weights.

A ``.ckpt`` file is a pickle, and unpickling can run any code the file names. Every
checkpoint speakerzoo reads (``from_pretrained``, ``init_from``, ``fit/test --ckpt_path``,
the registry) goes through :func:`read_checkpoint_file`, the one place where speakerzoo calls
``torch.load``: it loads plain data and tensors only (``torch.load(weights_only=True)``) and
explains a refusal in speakerzoo's words: torch's own message advises retrying with
``weights_only`` off, which is exactly what must not be done with a file of unknown origin.

On top of it, for :class:`~speakerzoo.zoo.base.SpeakerEmbeddingModule` checkpoints:

* :func:`write_metadata` makes a checkpoint's hyper-parameters plain data and adds the
  ``speakerzoo`` entry (class path, frontend, sample rate, speaker names, EER threshold, tensor
  digests, ...), written by ``on_save_checkpoint``;
* :func:`read_model_checkpoint` reads a file or registry name and resolves the model class it
  names (:func:`resolve_model_class`: only ``speakerzoo`` modules are imported);
* :func:`load_pretrained` (``SpeakerEmbeddingModule.from_pretrained``) and :func:`init_weights`
  (``init_weights_from``, ``init_from``) share one loader, :func:`load_weights`, which says what
  it kept and left out in a :class:`LoadReport`.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import importlib
import inspect
import re
import sys
import warnings
import zipfile
from collections import Counter
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor, nn

from speakerzoo import __version__
from speakerzoo.features import FeatureConfig
from speakerzoo.zoo import registry as _registry

if TYPE_CHECKING:
    from speakerzoo.zoo.base import SpeakerEmbeddingModule


class InvalidCheckpointError(ValueError):
    """A file that speakerzoo cannot, or will not, load as a checkpoint; the message names it."""


def is_remote(source: str | Path) -> bool:
    """Whether ``source`` is a URL (``http://``, ``s3://``, ...) rather than a local path."""
    return re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", str(source)) is not None


def read_checkpoint_file(path: str | Path, map_location: str | torch.device = "cpu") -> Mapping[str, Any]:
    """The checkpoint at ``path`` as plain data and tensors, or :class:`InvalidCheckpointError`.

    Refused, each with the reason: a URL (download it and check it first), a missing file or a
    folder, a file that is no PyTorch archive (truncated, random bytes, another format), an archive
    that references code (a class or function other than plain containers and tensors), and a
    file that holds something other than a dictionary.
    """
    if is_remote(path):
        raise InvalidCheckpointError(
            f"{path}: speakerzoo loads checkpoints from local files only (Lightning would unpickle a "
            "remote one with weights_only off, which runs any code it holds). Download it, check "
            "its digest, and pass the local path."
        )
    path = Path(path)
    if not path.exists():
        raise InvalidCheckpointError(f"{path}: no such checkpoint file")
    if not path.is_file():
        raise InvalidCheckpointError(f"{path} is not a regular file; a checkpoint is one .ckpt file")
    if not zipfile.is_zipfile(path):
        raise InvalidCheckpointError(
            f"{path} is not a PyTorch checkpoint: torch.save writes a zip archive and this file is none "
            "(truncated, corrupt, or another kind of file). Use the .ckpt file that training wrote."
        )
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises several types for bad files
        text = str(error)
        reference = re.search(r"GLOBAL ([\w.]+)", text)
        if reference or "Weights only load failed" in text:
            what = f"the {reference.group(1)} it references" if reference else "objects other than plain data"
            raise InvalidCheckpointError(
                f"{path}: refusing to load it: the file holds {what}, and unpickling that could run code. "
                "A checkpoint that speakerzoo wrote holds only plain data and tensors; do not load this "
                "file with weights_only off unless you made it yourself."
            ) from None
        first_line = text.strip().splitlines()[0] if text.strip() else ""
        raise InvalidCheckpointError(
            f"{path} is not a readable PyTorch checkpoint (truncated or corrupt): "
            f"{type(error).__name__}: {first_line}"
        ) from None
    if not isinstance(checkpoint, Mapping):
        raise InvalidCheckpointError(
            f"{path} is a PyTorch file but holds a {type(checkpoint).__name__}, not a checkpoint dictionary"
        )
    check_tensor_digests(checkpoint, path)
    return checkpoint


def tensor_digest(tensor: torch.Tensor) -> str:
    """sha256 of a tensor's bytes (dtype and shape are checked when the weights are loaded)."""
    data = tensor.detach().to("cpu").contiguous().reshape(-1)
    return hashlib.sha256(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"").hexdigest()


def tensor_digests(state_dict: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """The :func:`tensor_digest` of every tensor of ``state_dict``, stored in a checkpoint's
    ``speakerzoo`` entry as ``tensor_sha256``: a weight changed in the file after it was written (a
    bad disk or copy) is then an error at loading, not a model that scores differently."""
    return {key: tensor_digest(value) for key, value in state_dict.items() if isinstance(value, torch.Tensor)}


def check_tensor_digests(checkpoint: Mapping[str, Any], source: str | Path) -> None:
    """Refuse a checkpoint whose tensors differ from the digests it records (files without digests,
    of older versions or other programs, are not checked)."""
    meta = checkpoint.get("speakerzoo")
    stored = meta.get("tensor_sha256") if isinstance(meta, Mapping) else None
    state = checkpoint.get("state_dict")
    if not isinstance(stored, Mapping) or not isinstance(state, Mapping):
        return
    damaged = sorted(key for key, digest in stored.items()
                     if key not in state or not isinstance(state[key], torch.Tensor) or tensor_digest(state[key]) != digest)
    if damaged:
        shown = ", ".join(damaged[:5]) + (f" and {len(damaged) - 5} more" if len(damaged) > 5 else "")
        raise InvalidCheckpointError(
            f"{source} is damaged: {len(damaged)} weight tensor(s) differ from the digests written with them "
            f"({shown}). Copy the file again, or use another checkpoint of the run."
        )


# ---------------------------------------------------------------------------- model checkpoints


@dataclasses.dataclass
class LoadReport:
    """What loading a checkpoint's weights into a model kept and left out.

    Attributes:
        source: the checkpoint file (and the registry name it was found by, if any).
        class_path: the model class recorded in the checkpoint.
        loaded: state-dict keys loaded from the file.
        dropped: keys of the file not loaded, each as ``"key [shape] (reason)"`` (classifier head only).
        fresh: keys of the model that the file did not give (a newly initialised head).
    """

    source: str
    class_path: str
    loaded: list[str]
    dropped: list[str]
    fresh: list[str]

    def summary(self) -> str:
        groups = Counter(key.split(".", 1)[0] for key in self.loaded)
        kept = ", ".join(f"{name}.* {n}" for name, n in sorted(groups.items()))
        lines = [f"weights from {self.source} ({self.class_path}): kept {len(self.loaded)} tensors ({kept})"]
        if self.dropped:
            lines.append(f"  dropped {len(self.dropped)}: " + "; ".join(self.dropped))
        if self.fresh:
            lines.append(f"  newly initialised {len(self.fresh)}: " + ", ".join(self.fresh))
        return "\n".join(lines)


def _model_base() -> type[SpeakerEmbeddingModule]:
    from speakerzoo.zoo.base import SpeakerEmbeddingModule  # base imports this module

    return SpeakerEmbeddingModule


def write_metadata(model: SpeakerEmbeddingModule, checkpoint: dict[str, Any], train_seed: int | None) -> None:
    """Make ``checkpoint`` loadable with ``torch.load(weights_only=True)`` and self-describing
    (``on_save_checkpoint``): its hyper-parameters as plain data (:func:`plain_data`), and the
    ``speakerzoo`` entry with what rebuilding and using ``model`` needs (``train_seed``: the
    seed a resumed run re-seeds its epochs from)."""
    for key in ("hyper_parameters", "datamodule_hyper_parameters"):
        if key in checkpoint:
            checkpoint[key] = plain_data(checkpoint[key], key)
    cls = type(model)
    checkpoint["speakerzoo"] = {
        "class_path": f"{cls.__module__}.{cls.__qualname__}",
        "version": __version__,
        "frontend": model.frontend.config.to_dict(),
        "sample_rate": model.sample_rate,
        "speaker_names": list(model.speaker_names) if model.speaker_names is not None else None,
        "embedding_dim": int(getattr(model, "embedding_dim", 0)),
        "train_seed": train_seed,
        "eer_threshold": model.eer_threshold,
        "tensor_sha256": tensor_digests(checkpoint.get("state_dict", {})),
    }


def read_model_checkpoint(
    source: str | Path, map_location: str | torch.device = "cpu", registry: str | Path | None = None
) -> tuple[Path, Mapping[str, Any], Mapping[str, Any], type[SpeakerEmbeddingModule]]:
    """``(file, checkpoint, speakerzoo metadata, model class)`` of a checkpoint file or registry name,
    read with :func:`read_checkpoint_file`; the registry's class must be the file's."""
    candidate = Path(source)
    if candidate.exists() and not candidate.is_file():
        raise FileNotFoundError(f"checkpoint {str(candidate)!r} does not exist or is not a file")
    path, entry = _registry.resolve_entry(source, registry)
    checkpoint = read_checkpoint_file(path, map_location)
    if not isinstance(checkpoint, Mapping) or "state_dict" not in checkpoint:
        raise InvalidCheckpointError(f"{path} is a PyTorch file but not a Lightning checkpoint (no 'state_dict')")
    meta = checkpoint.get("speakerzoo")
    if not isinstance(meta, Mapping) or "class_path" not in meta:
        raise InvalidCheckpointError(
            f"{path} is a Lightning checkpoint but not one of a speakerzoo embedding model (no 'speakerzoo' entry)"
        )
    if entry is not None and not _registry.class_matches(entry.class_path, str(meta["class_path"])):
        raise InvalidCheckpointError(
            f"registry entry {entry.name!r} says class {entry.class_path} but its file {path} holds a "
            f"{meta['class_path']} checkpoint; refusing to load it"
        )
    klass = resolve_model_class(str(meta["class_path"]), path)
    return path, checkpoint, meta, klass


def resolve_model_class(class_path: str, path: str | Path) -> type[SpeakerEmbeddingModule]:
    """The :class:`~speakerzoo.zoo.base.SpeakerEmbeddingModule` subclass that the checkpoint ``path``
    names. Only modules of ``speakerzoo`` are imported for it; another module must be imported
    already (a checkpoint never decides what code is imported)."""
    module_name, _, qualname = class_path.rpartition(".")
    if not module_name:
        raise InvalidCheckpointError(f"{path}: malformed class path {class_path!r}")
    if module_name not in sys.modules:
        if module_name != "speakerzoo" and not module_name.startswith("speakerzoo."):
            raise InvalidCheckpointError(
                f"{path} holds a {class_path} checkpoint; import {module_name} first, then load it again"
            )
        try:
            importlib.import_module(module_name)
        except ImportError as error:
            raise InvalidCheckpointError(f"{path}: cannot import {module_name} for {class_path}: {error}") from error
    obj: Any = sys.modules[module_name]
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    if not (isinstance(obj, type) and issubclass(obj, _model_base())):
        raise InvalidCheckpointError(
            f"{path} names {class_path}, which is not a speakerzoo SpeakerEmbeddingModule subclass; refusing to build it"
        )
    return obj


def init_argument_names(klass: type) -> set[str] | None:
    """The keyword arguments that ``klass(...)`` accepts: the named parameters of its ``__init__``
    and, while an ``__init__`` takes ``**kwargs`` (passed on to ``super().__init__``), of the next
    one in the method resolution order. ``None`` when the chain ends in ``**kwargs`` (anything goes)."""
    names: set[str] = set()
    for cls in klass.__mro__:
        if "__init__" not in vars(cls):
            continue
        params = list(inspect.signature(cls.__init__).parameters.values())[1:]  # without self
        names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            return names
    return None


def load_pretrained(
    cls: type[SpeakerEmbeddingModule],
    path: str | Path,
    map_location: str | torch.device = "cpu",
    drop_head: bool = False,
    num_speakers: int | None = None,
    registry: str | Path | None = None,
) -> SpeakerEmbeddingModule:
    """:meth:`SpeakerEmbeddingModule.from_pretrained <speakerzoo.zoo.base.SpeakerEmbeddingModule.from_pretrained>`:
    the model of a checkpoint, rebuilt from its hyper-parameters and metadata, in eval mode."""
    path, checkpoint, meta, klass = read_model_checkpoint(path, map_location, registry)
    if not issubclass(klass, cls):
        raise InvalidCheckpointError(
            f"{path} holds a {meta['class_path']} checkpoint, which is not a {cls.__qualname__}; "
            f"load it with {klass.__qualname__}.from_pretrained({str(path)!r}) "
            f"or SpeakerEmbeddingModule.from_pretrained({str(path)!r})"
        )

    hparams = {k: v for k, v in dict(checkpoint.get("hyper_parameters") or {}).items() if not k.startswith("_")}
    # The stored frontend is the full parameter set: a preset renamed or changed later cannot alter it.
    if "frontend" in meta:
        hparams["frontend"] = dict(meta["frontend"])
    if "sample_rate" in meta:
        hparams["sample_rate"] = int(meta["sample_rate"])
    # The weights are the file's: never re-read what the model was fine-tuned from.
    hparams["init_from"] = None
    stored_speakers = int(hparams.get("num_speakers", 0) or 0)
    new_speakers = num_speakers if num_speakers is not None else (0 if drop_head else stored_speakers)
    head_changed = drop_head or new_speakers != stored_speakers
    if head_changed:
        hparams["num_speakers"] = new_speakers
        hparams["speaker_names"] = None
    accepted = init_argument_names(klass)
    if accepted is not None:
        hparams = {k: v for k, v in hparams.items() if k in accepted}
    model = klass(**hparams)

    report = load_weights(
        model, checkpoint["state_dict"], str(path), str(meta["class_path"]),
        head="drop" if drop_head else ("fit" if head_changed else "keep"),
        what=f"{klass.__qualname__} built from its hyper-parameters",
    )
    if report.dropped:
        warnings.warn(f"{path}: classifier weights not loaded: " + "; ".join(report.dropped), UserWarning,
                      stacklevel=3)
    if meta.get("eer_threshold") is not None:
        model.eer_threshold = float(meta["eer_threshold"])
    model.checkpoint_path = Path(path)  # the file read (a registry name's checked file)
    return model.eval()


def init_weights(
    model: SpeakerEmbeddingModule,
    source: str | Path,
    registry: str | Path | None = None,
    map_location: str | torch.device = "cpu",
) -> LoadReport:
    """:meth:`SpeakerEmbeddingModule.init_weights_from <speakerzoo.zoo.base.SpeakerEmbeddingModule.init_weights_from>`:
    a trained checkpoint's weights into ``model``, the start of fine-tuning."""
    path, checkpoint, meta, klass = read_model_checkpoint(source, map_location, registry)
    mine = type(model)
    label = str(path) if str(path) == str(source) else f"{path} ({source!r})"
    if not (issubclass(mine, klass) or issubclass(klass, mine)) or klass is _model_base():
        raise InvalidCheckpointError(
            f"{label} holds a {meta['class_path']} checkpoint: a {mine.__qualname__} cannot be initialised "
            f"from it (init_from needs a checkpoint of the same model class)"
        )
    if "frontend" in meta:
        try:
            stored = FeatureConfig.parse(dict(meta["frontend"]))
        except (TypeError, ValueError) as error:
            raise InvalidCheckpointError(f"{label}: unreadable frontend {meta['frontend']!r}: {error}") from error
        if stored != model.frontend.config:
            raise InvalidCheckpointError(
                f"{label} was trained on features {stored} but this {mine.__qualname__} computes "
                f"{model.frontend.config}; set the model's frontend to the checkpoint's to fine-tune it"
            )
    if "sample_rate" in meta and int(meta["sample_rate"]) != model.sample_rate:
        raise InvalidCheckpointError(
            f"{label} was trained on {int(meta['sample_rate'])} Hz audio but this {mine.__qualname__} "
            f"expects {model.sample_rate} Hz"
        )
    names = meta.get("speaker_names")
    other_speakers = names is not None and model.speaker_names is not None and list(names) != list(model.speaker_names)
    return load_weights(
        model, checkpoint["state_dict"], label, str(meta["class_path"]),
        head="drop" if other_speakers else "fit",
        what=mine.__qualname__,
        drop_note="trained on other speakers" if other_speakers else None,
    )


def load_weights(
    model: nn.Module,
    state: Mapping[str, Tensor],
    source: str,
    class_path: str,
    head: Literal["keep", "fit", "drop"],
    what: str,
    drop_note: str | None = None,
) -> LoadReport:
    """Load ``state`` into ``model`` (any ``nn.Module`` whose classifier is ``head``). Classifier head
    (``head.*``): ``keep`` loads it like everything else, ``fit`` drops the weights that do not fit
    the model (its other head weights stay fresh), ``drop`` drops them all. Anything else that is
    missing, unexpected or of another shape raises :class:`InvalidCheckpointError` naming ``source``
    (the file), ``what`` (the model) and the keys; ``class_path`` is the class the file records."""
    state = dict(state)
    own = model.state_dict()
    dropped = []
    if head != "keep":
        for key in [k for k in state if k.startswith("head.")]:
            fits = key in own and own[key].shape == state[key].shape
            if head == "drop" or not fits:
                shape = list(state.pop(key).shape)
                reason = f"model now has {list(own[key].shape)}" if key in own else "not in the model"
                if drop_note:
                    reason += f"; {drop_note}"
                dropped.append(f"{key} {shape} ({reason})")
    flexible = head != "keep"
    mismatched = [
        f"{k} {list(v.shape)} (model has {list(own[k].shape)})" for k, v in state.items() if k in own and own[k].shape != v.shape
    ]
    unexpected = [k for k in state if k not in own]
    missing = [k for k in own if k not in state and not (flexible and k.startswith("head."))]
    if mismatched or unexpected or missing:
        problems = []
        for label, keys in (("shapes differ", mismatched), ("missing", missing), ("unexpected", unexpected)):
            if keys:
                more = f" and {len(keys) - 8} more" if len(keys) > 8 else ""
                problems.append(f"{label}: {', '.join(keys[:8])}{more}")
        raise InvalidCheckpointError(
            f"{source}: weights do not fit {what} (another architecture or size?); " + "; ".join(problems)
        )
    model.load_state_dict(state, strict=False)
    return LoadReport(source=source, class_path=class_path, loaded=list(state), dropped=dropped,
                      fresh=[k for k in own if k not in state])


def local_weights_dir(directory: str | Path, what: str, files: str, example: str) -> Path:
    """``directory``, a local ``save_pretrained`` directory of ``what`` weights (nothing is ever
    downloaded); FileNotFoundError naming the files it needs (``files``, e.g. of ``example``) and
    the fix when it has no ``config.json``."""
    path = Path(directory).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{path}: no {what} weights there (need config.json and {files} from save_pretrained, e.g. of "
            f"{example}); give another directory, or pretrained: null to start from random weights")
    return path


def plain_data(value: Any, where: str) -> Any:
    """``value`` as plain data that ``torch.load(weights_only=True)`` accepts (Path -> str,
    dataclass -> dict, numpy scalar -> number, ...); anything else is stored as its repr, with a
    warning naming ``where`` it is."""
    if value is None or type(value) in (bool, int, float, str, bytes) or isinstance(value, (Tensor, torch.dtype)):
        return value
    if isinstance(value, enum.Enum):
        return plain_data(value.value, where)
    if isinstance(value, int):  # numpy integers do not subclass int, but IntEnum and friends do
        return int(value)
    if isinstance(value, float):  # numpy.float64 subclasses float
        return float(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, PurePath):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return plain_data(dataclasses.asdict(value), where)
    if isinstance(value, Mapping):
        return {plain_data(k, where): plain_data(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [plain_data(v, where) for v in value]
        return type(value)(items) if type(value) in (list, tuple, set, frozenset) else items
    if hasattr(value, "item") and hasattr(value, "dtype"):  # numpy scalars and 0-d arrays
        try:
            return plain_data(value.item(), where)
        except (TypeError, ValueError):
            pass
    if hasattr(value, "tolist"):  # numpy arrays
        return plain_data(value.tolist(), where)
    warnings.warn(
        f"checkpoint {where}: {type(value).__qualname__} is not plain data; stored as its repr {value!r:.80} "
        "(pass plain values to the model and datamodule)",
        UserWarning,
        stacklevel=3,
    )
    return repr(value)
