"""CAM++ weights from 3D-Speaker or wespeaker -> :class:`~speakerzoo.zoo.campplus.CAMPPlus`.

Both toolkits save a plain state dict (``head.*``, ``xvector.*``; wespeaker's training
checkpoints add the loss head ``projection.*``, which is not part of the embedder and is left
out). The file is read with ``torch.load(weights_only=True)``; the network's sizes are read from
the weights' shapes. The frontends differ:

* 3D-Speaker: Kaldi filterbanks (80 bins, Povey window, no dither) of waveforms in [-1, 1], minus
  their utterance mean (``speakerlab/process/processor.py``): preset ``kaldi_fbank80``;
* wespeaker: the same bins on 16-bit sample values (waveform x 32768) with a Hamming window,
  minus their mean (``wespeaker/dataset/processor.py``), and 1e-7 added to the pooled variance
  (its TSTP pooling): preset ``kaldi_fbank80_int16``, ``std_eps=1e-7``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from torch import Tensor

from speakerzoo.features import PRESETS
from speakerzoo.zoo.campplus import DTDNN_BLOCKS, CAMPPlus
from speakerzoo.zoo.checkpoint import InvalidCheckpointError, load_weights, read_checkpoint_file

__all__ = ["FLAVOURS", "campplus_state_dict", "import_campplus"]

#: flavour -> (frontend preset, std_eps of the statistics pooling)
FLAVOURS = {"3dspeaker": ("kaldi_fbank80", 0.0), "wespeaker": ("kaldi_fbank80_int16", 1e-7)}

#: Keys of a training checkpoint that are not the embedder (wespeaker's margin-softmax head).
_NOT_THE_EMBEDDER = ("projection.",)


def campplus_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The CAM++ embedder's weights in ``path`` (a state dict, or one under ``state_dict`` / ``model``,
    with or without DDP's ``module.`` prefix; keys that are not the embedder are left out)."""
    data = read_checkpoint_file(path)
    for key in ("state_dict", "model"):
        if isinstance(data.get(key), Mapping):
            data = data[key]
            break
    state = {k.removeprefix("module."): v for k, v in data.items() if isinstance(v, Tensor)}
    state = {k: v for k, v in state.items() if not k.startswith(_NOT_THE_EMBEDDER)}
    if "head.conv1.weight" not in state or "xvector.dense.linear.weight" not in state:
        raise InvalidCheckpointError(
            f"{path}: not a CAM++ state dict (no head.conv1.weight / xvector.dense.linear.weight; it has "
            f"{', '.join(sorted(state)[:5]) or 'no tensors'}...). Give 3D-Speaker's campplus_*.pt or wespeaker's "
            "avg_model.pt of a CAM++ recipe")
    return state


def _sizes(state: Mapping[str, Tensor], path: str | Path) -> dict[str, int]:
    m_channels = int(state["head.conv1.weight"].shape[0])
    tdnn = state["xvector.tdnn.linear.weight"]  # [init_channels, m_channels * feat_dim / 8, 5]
    growth = int(state["xvector.block1.tdnnd1.cam_layer.linear_local.weight"].shape[0])
    for i, (layers, _, _) in enumerate(DTDNN_BLOCKS, start=1):
        found = len({k.split(".")[2] for k in state if k.startswith(f"xvector.block{i}.tdnnd")})
        if found != layers:
            raise InvalidCheckpointError(f"{path}: D-TDNN block {i} has {found} layers, CAM++ has {layers}; "
                                         "another architecture (only the paper's CAM++ sizes are imported)")
    return dict(feat_dim=8 * int(tdnn.shape[1]) // m_channels, m_channels=m_channels, init_channels=int(tdnn.shape[0]),
                growth_rate=growth,
                bn_size=int(state["xvector.block1.tdnnd1.linear1.weight"].shape[0]) // growth,
                embedding_dim=int(state["xvector.dense.linear.weight"].shape[0]))


def import_campplus(path: str | Path, flavour: Literal["3dspeaker", "wespeaker"] = "3dspeaker"
                    ) -> tuple[CAMPPlus, list[Path]]:
    """A :class:`CAMPPlus` (eval mode, no classifier head) with the weights of ``path``, and the
    files read."""
    if flavour not in FLAVOURS:
        raise ValueError(f"flavour must be one of {sorted(FLAVOURS)}, got {flavour!r}")
    state = campplus_state_dict(path)
    sizes = _sizes(state, path)
    preset, std_eps = FLAVOURS[flavour]
    if sizes["feat_dim"] != PRESETS[preset].n_mels:
        raise InvalidCheckpointError(f"{path}: the weights take {sizes['feat_dim']} filterbank bins; the {flavour} "
                                     f"frontend has {PRESETS[preset].n_mels}")
    del sizes["feat_dim"]
    model = CAMPPlus(num_speakers=0, sample_rate=16000, frontend=preset, std_eps=std_eps, **sizes)
    load_weights(model, {f"encoder.{k}": v for k, v in state.items()}, str(path), "CAM++", head="keep",
                 what=f"CAMPPlus({', '.join(f'{k}={v}' for k, v in sizes.items())})")
    return model.eval(), [Path(path)]
