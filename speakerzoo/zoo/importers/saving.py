"""Writing an imported model as a speakerzoo checkpoint, checked to embed as the model in memory."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from speakerzoo.atomic import replaced_on_success
from speakerzoo.zoo.base import SpeakerEmbeddingModule
from speakerzoo.zoo.checkpoint import InvalidCheckpointError, write_metadata
from speakerzoo.zoo.registry import sha256_of
from speakerzoo.zoo.strip import probe_embeddings

__all__ = ["ImportResult", "save_imported"]


@dataclass(frozen=True)
class ImportResult:
    """What an import wrote: the checkpoint, its class and size, and the files it came from."""

    output: str
    class_path: str
    origin: str
    files: dict[str, str]  # source file -> sha256
    parameters: int
    embedding_dim: int
    frontend: dict[str, Any]
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def save_imported(model: SpeakerEmbeddingModule, output: str | Path, origin: str,
                  files: list[str | Path]) -> ImportResult:
    """Save ``model`` (in eval mode) as a checkpoint at ``output``, complete or not at all, with
    ``speakerzoo.imported`` naming ``origin`` and the sha256 of each source file; the written file
    must rebuild through ``from_pretrained`` and embed bitwise as ``model`` does."""
    model = model.eval()
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    checkpoint: dict[str, Any] = {"state_dict": state, "hyper_parameters": dict(model.hparams)}
    write_metadata(model, checkpoint, train_seed=None)
    digests = {str(f): sha256_of(f) for f in files}
    checkpoint["speakerzoo"]["imported"] = {"from": origin, "files": digests}
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with replaced_on_success(output) as tmp:
        torch.save(checkpoint, tmp)
        reloaded = SpeakerEmbeddingModule.from_pretrained(str(tmp))
        if not torch.equal(probe_embeddings(reloaded), probe_embeddings(model)):
            raise InvalidCheckpointError(f"{output}: the written checkpoint embeds differently from the imported "
                                         "model; this is a bug, please report it")
    cls = type(model)
    return ImportResult(str(output), f"{cls.__module__}.{cls.__qualname__}", origin, digests,
                        sum(p.numel() for p in model.parameters()), int(model.embedding_dim),
                        model.frontend.config.to_dict(), sha256_of(output))
