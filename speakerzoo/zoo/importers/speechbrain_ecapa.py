"""speechbrain's ECAPA-TDNN (the layout of ``spkrec-ecapa-voxceleb``) -> :class:`~speakerzoo.zoo.ecapa.ECAPA`.

The folder holds ``hyperparams.yaml`` (HyperPyYAML), ``embedding_model.ckpt`` (the state dict of
``speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN``) and, usually, ``mean_var_norm_emb.ckpt``,
``classifier.ckpt`` and ``label_encoder.txt``. speechbrain's ``EncoderClassifier.encode_batch``
computes ``Fbank`` features, normalises them per sentence (``InputNormalization``) and runs the
embedding model; the imported ECAPA does the same with its ``sb_fbank`` frontend and speechbrain's
own ``ECAPA_TDNN`` module (the zoo ECAPA's encoder), so its embeddings are speechbrain's.

``hyperparams.yaml`` is read, never run: HyperPyYAML's ``!new:``/``!name:``/``!apply:`` tags would
import and call whatever they name, so this reader turns every tag into an inert record, follows
only plain ``!ref <key>`` references and accepts exactly the classes it maps. ``embedding_model.ckpt``
is read with ``torch.load(weights_only=True)``. The embedding normalisation of
``mean_var_norm_emb.ckpt`` is not applied, as ``encode_batch`` and ``verify_files`` do not apply it by
default (``normalize=False``); the classifier (VoxCeleb's 7,205 training speakers) is not imported.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from torch import Tensor

from speakerzoo.features import FeatureConfig
from speakerzoo.zoo.checkpoint import InvalidCheckpointError, load_weights, read_checkpoint_file
from speakerzoo.zoo.ecapa import ECAPA

__all__ = ["read_hyperparams", "import_speechbrain_ecapa"]

ECAPA_CLASS = "speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN"
FBANK_CLASS = "speechbrain.lobes.features.Fbank"
NORM_CLASS = "speechbrain.processing.features.InputNormalization"
#: ECAPA_TDNN arguments -> the zoo ECAPA's (``device`` is where speechbrain builds it; ignored).
_ECAPA_ARGS = {"lin_neurons": "embedding_dim", "channels": "channels", "kernel_sizes": "kernel_sizes",
               "dilations": "dilations", "attention_channels": "attention_channels",
               "res2net_scale": "res2net_scale", "se_channels": "se_channels",
               "global_context": "global_context", "groups": "groups", "dropout": "dropout"}


@dataclass(frozen=True)
class Tagged:
    """A HyperPyYAML tagged node, kept as data: ``tag`` (``!new:a.b.C``, ``!ref``, ...) and its value."""

    tag: str
    value: Any


class _InertLoader(yaml.SafeLoader):
    """A safe YAML loader that records every ``!tag`` instead of acting on it."""


def _tagged(loader: _InertLoader, suffix: str, node: yaml.Node) -> Tagged:
    if isinstance(node, yaml.MappingNode):
        value: Any = loader.construct_mapping(node, deep=True)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_scalar(node)
    return Tagged("!" + suffix, value)


_InertLoader.add_multi_constructor("!", _tagged)


def read_hyperparams(path: str | Path) -> dict[str, Any]:
    """The top level of a HyperPyYAML file as data: tags become :class:`Tagged`, plain ``!ref <key>``
    references are replaced by the (resolved) top-level value they name; nothing is imported."""
    path = Path(path)
    try:
        data = yaml.load(path.read_text(), Loader=_InertLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        raise InvalidCheckpointError(f"{path}: not readable as YAML: {err}") from None
    if not isinstance(data, dict):
        raise InvalidCheckpointError(f"{path}: a hyperparams file is a mapping at the top level")

    def resolve(value: Any, seen: tuple[str, ...] = ()) -> Any:
        if isinstance(value, Tagged):
            if value.tag == "!ref" and isinstance(value.value, str):
                match = re.fullmatch(r"\s*<([A-Za-z_][\w]*)>\s*", value.value)
                if match and match.group(1) in data and match.group(1) not in seen:
                    return resolve(data[match.group(1)], (*seen, match.group(1)))
                return value
            return Tagged(value.tag, resolve(value.value, seen))
        if isinstance(value, dict):
            return {k: resolve(v, seen) for k, v in value.items()}
        if isinstance(value, list):
            return [resolve(v, seen) for v in value]
        return value

    return {k: resolve(v, (k,)) for k, v in data.items()}


def _arguments(hparams: dict[str, Any], key: str, class_path: str, file: Path, required: bool = True
               ) -> dict[str, Any] | None:
    node = hparams.get(key)
    if node is None and not required:
        return None
    if not isinstance(node, Tagged) or node.tag != f"!new:{class_path}":
        found = node.tag if isinstance(node, Tagged) else type(node).__name__
        raise InvalidCheckpointError(f"{file}: {key} must be !new:{class_path}, found {found}; only speechbrain's "
                                     "ECAPA speaker models (spkrec-ecapa-voxceleb and their retrained copies) import")
    args = node.value if isinstance(node.value, dict) else {}
    for name, value in args.items():
        if isinstance(value, Tagged) and name != "device":
            raise InvalidCheckpointError(f"{file}: {key}.{name} is {value.tag} {value.value!r}, which this importer "
                                         "does not evaluate; write the value itself")
    return args


def _defaults(klass: type) -> dict[str, Any]:
    return {n: p.default for n, p in inspect.signature(klass.__init__).parameters.items()
            if p.default is not inspect.Parameter.empty}


def _frontend(hparams: dict[str, Any], file: Path) -> tuple[FeatureConfig, int]:
    from speechbrain.lobes.features import Fbank
    from speechbrain.processing.features import InputNormalization

    fbank = {**_defaults(Fbank), **_arguments(hparams, "compute_features", FBANK_CLASS, file)}
    unsupported = {k: fbank[k] for k, v in (("deltas", False), ("context", False), ("filter_shape", "triangular"),
                                            ("param_change_factor", 1.0), ("param_rand_factor", 0.0)) if fbank[k] != v}
    rate = int(fbank["sample_rate"])
    if round(rate * float(fbank["win_length"]) / 1000) != int(fbank["n_fft"]):
        unsupported["n_fft"] = fbank["n_fft"]
    if unsupported:
        raise InvalidCheckpointError(f"{file}: Fbank settings the sb_fbank frontend does not reproduce: {unsupported}")
    norm = _arguments(hparams, "mean_var_norm", NORM_CLASS, file, required=False)
    if norm is None:
        normalize = "none"
    else:
        norm = {**_defaults(InputNormalization), **norm}
        if norm["norm_type"] != "sentence" or norm["std_norm"] or not norm["mean_norm"]:
            raise InvalidCheckpointError(
                f"{file}: mean_var_norm is InputNormalization(norm_type={norm['norm_type']!r}, mean_norm="
                f"{norm['mean_norm']}, std_norm={norm['std_norm']}); only per-sentence mean normalisation "
                "(norm_type: sentence, std_norm: False, as in spkrec-ecapa-voxceleb) is reproduced")
        normalize = "mean"
    config = FeatureConfig(kind="sb_fbank", n_mels=int(fbank["n_mels"]), win_ms=float(fbank["win_length"]),
                           hop_ms=float(fbank["hop_length"]), f_min=float(fbank["f_min"]),
                           f_max=None if fbank["f_max"] is None else float(fbank["f_max"]), floor_db=-80.0,
                           normalize=normalize)
    return config, rate


def _ecapa_arguments(hparams: dict[str, Any], file: Path) -> tuple[dict[str, Any], int]:
    from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN

    given = _arguments(hparams, "embedding_model", ECAPA_CLASS, file)
    unknown = sorted(set(given) - set(_ECAPA_ARGS) - {"input_size", "device", "activation"})
    if unknown:
        raise InvalidCheckpointError(f"{file}: embedding_model arguments this importer does not know: {unknown}")
    if "activation" in given:
        raise InvalidCheckpointError(f"{file}: embedding_model.activation is set; only the default ReLU imports")
    args = {**_defaults(ECAPA_TDNN), **given}
    return {ours: args[theirs] for theirs, ours in _ECAPA_ARGS.items()}, int(args["input_size"])


def import_speechbrain_ecapa(folder: str | Path) -> tuple[ECAPA, list[Path]]:
    """The zoo ECAPA (eval mode, no classifier head) of a speechbrain ECAPA folder, and the files read."""
    folder = Path(folder)
    hyperparams, weights = folder / "hyperparams.yaml", folder / "embedding_model.ckpt"
    for needed in (hyperparams, weights):
        if not needed.is_file():
            raise FileNotFoundError(
                f"{needed}: missing; a speechbrain ECAPA folder (as spkrec-ecapa-voxceleb) holds hyperparams.yaml "
                "and embedding_model.ckpt. Download the model once (e.g. huggingface-cli download "
                "speechbrain/spkrec-ecapa-voxceleb --local-dir DIR) and give DIR")
    hparams = read_hyperparams(hyperparams)
    frontend, rate = _frontend(hparams, hyperparams)
    arguments, input_size = _ecapa_arguments(hparams, hyperparams)
    if input_size != frontend.n_mels:
        raise InvalidCheckpointError(f"{hyperparams}: embedding_model.input_size {input_size} is not Fbank's "
                                     f"n_mels {frontend.n_mels}")
    model = ECAPA(num_speakers=0, sample_rate=rate, frontend=frontend.to_dict(), **arguments)
    state = read_checkpoint_file(weights)
    state = {f"encoder.{k}": v for k, v in state.items() if isinstance(v, Tensor)}
    load_weights(model, state, str(weights), ECAPA_CLASS, head="keep",
                 what=f"the ECAPA of {hyperparams.name} ({', '.join(f'{k}={v}' for k, v in arguments.items())})")
    files = [hyperparams, weights]
    norm_emb = folder / "mean_var_norm_emb.ckpt"
    if norm_emb.is_file():
        read_checkpoint_file(norm_emb)  # readable and safe; not applied (see the module docstring)
        files.append(norm_emb)
    return model.eval(), files
