"""Validation and test of embedding models on cosine trials, DDP-safe.

:class:`TrialEvaluation` is the evaluation half of
:class:`~speakerzoo.zoo.base.SpeakerEmbeddingModule` (which derives from it). Each validation or
test step embeds its batch (``embed_unpadded``) and keeps ``(index, embedding)``; at the end of the
epoch the embeddings of all processes are gathered (duplicates from padded distributed shards are
dropped), the trials come from ``trainer.datamodule.trials("val" | "test")`` (a
:class:`~speakerzoo.scoring.Trials`), each process scores its share of the trial rows, and
torchmetrics combines the shares. Logged: ``{part}/eer`` (a fraction), ``{part}/mindcf``
(normalised, ``p_target = dcf_p_target``) and ``{part}/ident_acc``. A model with more to evaluate
(e.g. :class:`~speakerzoo.zoo.wav2vec2_mtl.Wav2Vec2MultiTask`'s word error rate) calls
:meth:`~TrialEvaluation.collect_embeddings` for its speaker batches and extends
:meth:`~TrialEvaluation.score_evaluation`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torchmetrics import MeanMetric

from speakerzoo.scoring import (
    EqualErrorRate,
    MinDCF,
    Trials,
    eer_threshold,
    score_trials,
    subset_trials,
)

__all__ = ["Batch", "TrialEvaluation"]

Batch = dict[str, Tensor]

#: The parts evaluated on trials.
PARTS = ("val", "test")


class TrialEvaluation:
    """Trial scoring of a LightningModule that embeds batches (mixed into ``SpeakerEmbeddingModule``).

    The module provides ``embed_unpadded(batch) -> [B, D]`` and calls :meth:`init_trial_evaluation`
    in its ``__init__``. Batches carry ``index [B]`` (corpus utterance indices).
    """

    #: Prior of a target trial for ``val/mindcf`` and ``test/mindcf``.
    dcf_p_target: float = 0.01

    def init_trial_evaluation(self) -> None:
        """Create the metrics and the per-epoch state (called by ``__init__``)."""
        self.trial_metrics = nn.ModuleDict(
            {
                part: nn.ModuleDict(
                    {"eer": EqualErrorRate(), "mindcf": MinDCF(p_target=self.dcf_p_target), "ident_acc": MeanMetric()}
                )
                for part in PARTS
            }
        )
        self._collected: dict[str, tuple[list[Tensor], list[Tensor]]] = {}
        self._warned: set[str] = set()
        #: What the last validation / test epoch scored, for callbacks (set at the end of the
        #: epoch, identical on every rank): ``{"val": {"index", "embedding", "scores", "labels"}}``.
        self.evaluated: dict[str, dict[str, Tensor]] = {}
        #: Cosine threshold at the equal error rate of the last validation epoch; stored in
        #: checkpoints and restored by ``from_pretrained`` (``speakerzoo verify``'s default).
        self.eer_threshold: float | None = None

    # ------------------------------------------------------------------ Lightning hooks

    def on_validation_epoch_start(self) -> None:
        self._collected["val"] = ([], [])

    def validation_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor] | None:
        """Returns ``{"index" [B], "embedding" [B, D]}`` (detached) for callbacks."""
        return self.collect_embeddings("val", batch)

    def on_validation_epoch_end(self) -> None:
        self.score_evaluation("val")

    def on_test_epoch_start(self) -> None:
        self._collected["test"] = ([], [])

    def test_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor] | None:
        return self.collect_embeddings("test", batch)

    def on_test_epoch_end(self) -> None:
        self.score_evaluation("test")

    # ------------------------------------------------------------------ the machinery

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            rank_zero_warn(message)

    def collect_embeddings(self, part: str, batch: Batch) -> dict[str, Tensor] | None:
        """Embed an evaluation batch of ``part`` and keep it for the epoch's scoring; returns
        ``{"index", "embedding"}`` (``None``, with a one-time warning, for a batch without ``index``)."""
        embeddings = self.embed_unpadded(batch).detach().float()
        if "index" not in batch:
            self._warn_once(f"{part}-index", f"{part} batches carry no 'index'; no trials can be scored")
            return None
        index, emb = self._collected.setdefault(part, ([], []))
        batch_index = batch["index"].detach().to(self.device).long()
        index.append(batch_index)
        emb.append(embeddings)
        return {"index": batch_index, "embedding": embeddings}

    def has_collected(self, part: str) -> bool:
        """Whether this epoch's ``part`` steps kept any embeddings so far."""
        return bool(self._collected.get(part, ([], []))[0])

    def gather_embeddings(self, part: str) -> tuple[Tensor, Tensor]:
        """The epoch's embeddings of all processes (and forgets them): ``(index [K] sorted unique,
        emb [K, D])``, identical on every rank."""
        index_list, emb_list = self._collected.pop(part, ([], []))
        dim = emb_list[0].shape[-1] if emb_list else getattr(self, "embedding_dim", 0)
        index = torch.cat(index_list) if index_list else torch.zeros(0, dtype=torch.long, device=self.device)
        emb = torch.cat(emb_list) if emb_list else torch.zeros(0, dim, device=self.device)
        world = self.trainer.world_size if self._trainer is not None else 1
        if world > 1:
            # Shards may differ in size: pad to the largest with index -1, gather, drop the padding.
            sizes = self.all_gather(torch.tensor(index.numel(), device=self.device))
            longest = int(sizes.max())
            if longest == 0:
                return index, emb
            pad = longest - index.numel()
            index = self.all_gather(F.pad(index, (0, pad), value=-1)).reshape(-1)
            emb = self.all_gather(F.pad(emb, (0, 0, 0, pad))).reshape(-1, dim)
            keep = index >= 0
            index, emb = index[keep], emb[keep]
        # A DistributedSampler pads shards by repeating utterances: keep the first copy.
        unique, inverse = torch.unique(index, return_inverse=True)
        positions = torch.arange(index.numel(), device=index.device)
        first = torch.full_like(unique, index.numel()).scatter_reduce(0, inverse, positions, reduce="amin")
        return unique, emb[first]

    def evaluation_trials(self, part: str) -> Trials | None:
        """``trainer.datamodule.trials(part)``, or ``None`` without a datamodule that has them."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        get = getattr(datamodule, "trials", None)
        return get(part) if callable(get) else None

    def score_evaluation(self, part: str) -> dict[str, Tensor]:
        """Score the gathered embeddings on the trials of ``part`` and log the metrics; returns
        the values logged (empty when nothing could be scored)."""
        index, emb = self.gather_embeddings(part)
        self.evaluated.pop(part, None)
        trials = self.evaluation_trials(part)
        if trials is None:
            self._warn_once(
                f"{part}-trials",
                f"no trials for '{part}' (the datamodule has no trials({part!r})): "
                f"{part}/eer, {part}/mindcf and {part}/ident_acc are not logged",
            )
            return {}
        usable = subset_trials(trials, index)
        sanity = self._trainer is not None and self.trainer.sanity_checking
        if not sanity and (len(usable.pairs) < len(trials.pairs) or len(usable.ident) < len(trials.ident)):
            self._warn_once(
                f"{part}-partial",
                f"{part}: only {len(usable.pairs)}/{len(trials.pairs)} trial pairs and {len(usable.ident)}/"
                f"{len(trials.ident)} identification rows have all their utterances embedded "
                f"(limit_{part}_batches?); scoring those",
            )
        if not sanity and 0 < usable.ident.shape[0] and usable.ident.shape[1] < 101:
            self._warn_once(
                f"{part}-short-rows",
                f"{part}: the part is too small for 99 distinct negatives per identification row, so "
                f"{part}/ident_acc picks 1 of {usable.ident.shape[1] - 1} candidates, not 1 of 100",
            )
        world = self.trainer.world_size if self._trainer is not None else 1
        rank = self.global_rank if self._trainer is not None else 0
        # Every rank holds the same embeddings and trials, so these decisions agree across ranks.
        labels = usable.pairs[:, 2]
        n_target = int((labels == 1).sum())
        verify = 0 < n_target < labels.numel()
        identify = usable.ident.shape[0] > 0
        if not (verify or identify):
            if not sanity:
                # Log NaN rather than nothing: ModelCheckpoint/EarlyStopping monitor val/eer and
                # stop the run when the key is missing; they treat NaN as the worst value.
                self._warn_once(f"{part}-empty", f"{part}: no trial could be scored this epoch; {part}/eer is NaN")
                for name in ("eer", "mindcf", "ident_acc"):
                    self.log(f"{part}/{name}", float("nan"), sync_dist=True)
            return {}
        scores, labels = self._keep_evaluated(part, index, emb, usable, verify)
        metrics = self.trial_metrics[part]
        values = {}
        if verify:
            # Each rank feeds its share of the pairs; the metrics concatenate the shares.
            metrics["eer"].update(scores[rank::world], labels[rank::world])
            metrics["mindcf"].update(scores[rank::world], labels[rank::world])
            values["eer"] = metrics["eer"].compute()
            values["mindcf"] = metrics["mindcf"].compute()
        if identify:
            _, _, hits = score_trials(index, emb, Trials(pairs=usable.pairs[:0], ident=usable.ident[rank::world]))
            metrics["ident_acc"].update(hits.float())
            values["ident_acc"] = metrics["ident_acc"].compute()
        for metric in metrics.values():
            metric.reset()
        for name, value in values.items():
            # The values are already global (identical on every rank); sync_dist only averages equal numbers.
            self.log(f"{part}/{name}", value.float(), prog_bar=name == "eer", sync_dist=True)
        return values

    def _keep_evaluated(self, part: str, index: Tensor, emb: Tensor, usable: Trials,
                        verify: bool) -> tuple[Tensor, Tensor]:
        """Score every usable pair (on every rank: one dot product per pair), keep them in
        :attr:`evaluated` for callbacks and the validation EER threshold; returns ``(scores, labels)``."""
        scores, labels, _ = score_trials(index, emb, Trials(pairs=usable.pairs, ident=usable.ident[:0]))
        self.evaluated[part] = {"index": index, "embedding": emb, "scores": scores, "labels": labels}
        sanity = self._trainer is not None and self.trainer.sanity_checking
        if part == "val" and verify and not sanity:
            self.eer_threshold = float(eer_threshold(scores, labels))
        return scores, labels
