"""Inference checkpoints: a training checkpoint without what only training needs (middle floor).

A Lightning checkpoint carries the optimiser state (AdamW's two moments: twice the weights
again), the loops, the callbacks' state and, for resuming, the schedulers. To embed, verify or
fine-tune from it, a model needs only its weights, hyper-parameters and the ``speakerzoo``
metadata (class, frontend, sample rate, speaker names, EER threshold). :func:`strip_checkpoint`
writes that, optionally with float16 weights (half the size again; they are cast back to
float32 when loaded), with fresh tensor digests, and checks that the written file loads through
the same safe path (:meth:`~speakerzoo.zoo.base.SpeakerEmbeddingModule.from_pretrained`) and
embeds as the original does: bitwise in float32, within :data:`HALF_TOLERANCE` in float16. It
cannot resume training (``--ckpt_path``); ``init_from`` and every inference command take it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from speakerzoo.atomic import replaced_on_success
from speakerzoo.zoo.checkpoint import InvalidCheckpointError, read_model_checkpoint, tensor_digests
from speakerzoo.zoo.registry import sha256_of

__all__ = ["HALF_TOLERANCE", "StripResult", "probe_embeddings", "strip_checkpoint"]

#: float16 weights against the float32 original, on L2-normalised embeddings of noise clips.
HALF_TOLERANCE = {"max_abs_diff": 1e-2, "min_cosine": 0.999}

KEPT = ("epoch", "global_step", "pytorch-lightning_version")


@dataclass(frozen=True)
class StripResult:
    """What :func:`strip_checkpoint` wrote and measured."""

    source: str
    output: str
    dtype: str
    bytes_before: int
    bytes_after: int
    max_abs_diff: float  # of normalised embeddings, stripped against original
    min_cosine: float
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def probe_embeddings(model: Any, seconds: tuple[float, ...] = (0.8, 1.5, 3.0)) -> torch.Tensor:
    """Normalised embeddings (float64) of fixed noise clips of ``seconds`` by ``model`` (in eval mode):
    what a rewritten checkpoint must reproduce (here, and for :mod:`speakerzoo.zoo.importers`)."""
    generator = torch.Generator().manual_seed(0)
    rows = []
    with torch.no_grad():
        for length in seconds:
            wave = 0.1 * torch.randn(1, int(length * model.sample_rate), generator=generator)
            rows.append(model.embed(wave).double())
    return F.normalize(torch.cat(rows), dim=-1)


def _embeddings(path: Path) -> torch.Tensor:
    """:func:`probe_embeddings` of the model in ``path``."""
    from speakerzoo.zoo.base import SpeakerEmbeddingModule

    return probe_embeddings(SpeakerEmbeddingModule.from_pretrained(str(path)))


def strip_checkpoint(source: str | Path, output: str | Path, half: bool = False) -> StripResult:
    """Write the inference checkpoint of ``source`` (a file or registered name) to ``output``
    (complete or not at all); ``half``: float16 floating-point weights. Raises
    :class:`~speakerzoo.zoo.checkpoint.InvalidCheckpointError` when the written file does not
    embed as the original within the tolerance (then nothing is written)."""
    path, checkpoint, meta, _ = read_model_checkpoint(source)
    output = Path(output)
    if output.resolve() == Path(path).resolve():
        raise InvalidCheckpointError(f"{output} is the checkpoint being stripped; write to another file")
    state = {k: (v.half() if half and v.is_floating_point() else v).detach().clone().contiguous()
             for k, v in checkpoint["state_dict"].items()}
    meta = dict(meta)
    meta["tensor_sha256"] = tensor_digests(state)
    meta["stripped"] = {"from_sha256": sha256_of(path), "dtype": "float16" if half else "float32"}
    stripped = {"state_dict": state, "hyper_parameters": checkpoint.get("hyper_parameters", {}), "speakerzoo": meta,
                **{k: checkpoint[k] for k in KEPT if k in checkpoint}}
    output.parent.mkdir(parents=True, exist_ok=True)
    with replaced_on_success(output) as tmp:
        torch.save(stripped, tmp)
        reference, mine = _embeddings(Path(path)), _embeddings(tmp)
        diff = float((reference - mine).abs().max())
        cosine = float((reference * mine).sum(-1).min())
        if not half and diff != 0.0:
            raise InvalidCheckpointError(f"{path}: the stripped float32 checkpoint embeds differently (max |diff| "
                                         f"{diff:.3g}); this is a bug, please report it")
        if half and (diff > HALF_TOLERANCE["max_abs_diff"] or cosine < HALF_TOLERANCE["min_cosine"]):
            raise InvalidCheckpointError(
                f"{path}: with float16 weights the embeddings move too far (max |diff| {diff:.3g}, min cosine "
                f"{cosine:.5f}; tolerance {HALF_TOLERANCE}); strip it without --half")
    return StripResult(str(path), str(output), "float16" if half else "float32", Path(path).stat().st_size,
                       output.stat().st_size, diff, cosine, sha256_of(output))
