"""A sample of the evaluation embeddings in TensorBoard's projector, labelled by speaker.

:func:`stratified_sample` draws at most ``n`` items with a fixed seed, as evenly over the
speakers as their numbers allow (round robin over a seeded shuffle); :class:`EmbeddingProjector`
writes such a sample of ``pl_module.evaluated[part]["embedding"]`` with ``add_embedding``.

Example::

    >>> stratified_sample(["a", "a", "a", "a", "b", "c"], 4, seed=0).tolist()  # one of b, c, two of a
    [2, 3, 4, 5]
"""

from __future__ import annotations

from typing import Any, Sequence

import lightning as L
import numpy as np
import torch
from torch import Tensor

from speakerzoo.callbacks.common import TensorBoardCallback

__all__ = ["EmbeddingProjector", "stratified_sample"]


def stratified_sample(groups: Sequence[Any], n: int, seed: int = 0) -> np.ndarray:
    """Ascending positions of at most ``n`` items of ``groups`` (one label per item), spread as
    evenly as possible over the groups: items are shuffled with ``seed``, then taken round robin,
    the first of every group, then the second of every group, ... The same ``groups``, ``n`` and
    ``seed`` always give the same positions."""
    total = len(groups)
    if total <= n:
        return np.arange(total)
    order = np.random.default_rng(seed).permutation(total)
    # Rank of each shuffled item within its group: 0 for the first seen, 1 for the second, ...
    seen: dict[str, int] = {}
    within = np.empty(total, dtype=np.int64)
    for position, item in enumerate(order.tolist()):
        key = str(groups[item])
        within[position] = seen.get(key, 0)
        seen[key] = within[position] + 1
    # All firsts (in shuffled order), then all seconds, ...
    chosen = order[np.lexsort((np.arange(total), within))[:n]]
    return np.sort(chosen)


class EmbeddingProjector(TensorBoardCallback):
    """Write a sample of the validation (and test) embeddings to TensorBoard's projector.

    The embeddings are those the model kept of the epoch (``pl_module.evaluated[part]``: the
    corpus ``index`` and ``embedding`` of every evaluated utterance, identical on every rank).
    At most ``max_samples`` are drawn by :func:`stratified_sample` over the speakers, with
    ``seed`` (the same utterances every time while the evaluated set is the same). Metadata
    columns: ``speaker`` (``trainer.datamodule.speakers_of(index)``; the utterance index when the
    datamodule has no such method, with an info message) and ``utterance`` (corpus index).

    When: during ``fit``, by default once, with the embeddings of the last validation of
    training (sampled and written at the end of training, at the step of that validation); with ``every_n_epochs=n``, after the validations
    of epochs ``n-1, 2n-1, ...`` instead. A standalone ``trainer.validate`` and, with
    ``test=True``, every test run are written at their end. Tag ``val/embeddings``
    (``test/embeddings``), at the trainer's global step of that validation. Global rank zero
    only; skipped during the sanity check and without a TensorBoardLogger (one warning).

    Arguments:
        max_samples: embeddings written at most.
        every_n_epochs: ``None``: the last validation of training only; ``n``: every ``n``-th epoch.
        seed: seed of the sample.
        test: also write test embeddings.
    """

    def __init__(self, max_samples: int = 1000, every_n_epochs: int | None = None, seed: int = 0,
                 test: bool = True):
        super().__init__()
        if max_samples < 1:
            raise ValueError(f"max_samples must be >= 1, got {max_samples}")
        if every_n_epochs is not None and every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be None or >= 1, got {every_n_epochs}")
        self.max_samples = int(max_samples)
        self.every_n_epochs = every_n_epochs
        self.seed = int(seed)
        self.test = test
        self._pending_step: int | None = None
        #: ``(tag, step, number of embeddings)`` of every projection written.
        self.written: list[tuple[str, int, int]] = []

    def sample(self, trainer: L.Trainer, pl_module: L.LightningModule, part: str
               ) -> tuple[Tensor, list[list[str]]] | None:
        """``(embeddings [n, D] on CPU, metadata rows [speaker, utterance])`` of ``part``, or ``None``."""
        kept = (getattr(pl_module, "evaluated", None) or {}).get(part)
        if not kept or kept.get("embedding") is None or kept.get("index") is None or len(kept["index"]) == 0:
            self.info_once(f"{part}-none", f"the model kept no {part} embeddings (pl_module.evaluated): "
                                           f"no {part}/embeddings")
            return None
        index = kept["index"].detach().cpu().long()
        speakers_of = getattr(getattr(trainer, "datamodule", None), "speakers_of", None)
        if callable(speakers_of):
            speakers = [str(s) for s in speakers_of(index)]
        else:
            self.info_once("no-speakers", "the datamodule has no speakers_of(index): embeddings are "
                                          "labelled by utterance index only")
            speakers = [str(i) for i in index.tolist()]
        chosen = torch.from_numpy(stratified_sample(speakers, self.max_samples, self.seed))
        embedding = kept["embedding"].detach()[chosen.to(kept["embedding"].device)].float().cpu()
        rows = [[speakers[i], str(int(index[i]))] for i in chosen.tolist()]
        return embedding, rows

    def _write(self, trainer: L.Trainer, tag: str, embedding: Tensor, rows: list[list[str]], step: int) -> None:
        writer = self.writer(trainer)
        if writer is None:
            return
        if any(tag == t and step == s for t, s, _ in self.written):
            # e.g. trainer.validate right after fit: the same model and step, the same directory.
            self.info_once(f"again-{tag}-{step}", f"{tag} was already written at step {step}; not written again")
            return
        writer.add_embedding(embedding, metadata=rows, metadata_header=["speaker", "utterance"],
                             global_step=step, tag=tag)
        self.written.append((tag, step, len(rows)))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.writer(trainer) is None:
            return
        step = self.step(trainer)
        if trainer.state.fn == "fit":
            if self.every_n_epochs is None:
                # pl_module.evaluated["val"] keeps this validation until the next one: sample it
                # at the end of training, when it is known to be the last.
                self._pending_step = step
                return
            if (trainer.current_epoch + 1) % self.every_n_epochs:
                return
        sampled = self.sample(trainer, pl_module, "val")
        if sampled is not None:
            self._write(trainer, "val/embeddings", *sampled, step)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        step, self._pending_step = self._pending_step, None
        if step is None or self.writer(trainer) is None:
            return
        sampled = self.sample(trainer, pl_module, "val")
        if sampled is not None:
            self._write(trainer, "val/embeddings", *sampled, step)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.test or self.writer(trainer) is None:
            return
        sampled = self.sample(trainer, pl_module, "test")
        if sampled is not None:
            self._write(trainer, "test/embeddings", *sampled, self.step(trainer))
