"""wav2vec2 with two task heads: CTC speech recognition and a speaker embedding (seed 003).

Vaessen & van Leeuwen, "Towards multi-task learning of speech and speaker recognition":
transformers' ``Wav2Vec2Model`` (BASE layout, 12 transformer layers), a CTC head (one linear
layer over characters) on the last layer ``C^12`` and a speaker head on layer ``C^n``
(n = 6 or 12) that pools the sequence into an embedding (mean, first token or ECAPA-TDNN)
trained with AAM softmax (s = 30, m = 0.2). Training steps are *disjoint* (one speech batch
and one speaker batch, ``L = λ_s·L_s + λ_k·L_k``), *joint* (one batch with both labels) or
single-task; the batches come from :class:`~speakerzoo.datamodules.multitask.MultiTaskDataModule`.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, NamedTuple

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN
from torch import Tensor, nn
from torchmetrics.text import WordErrorRate
from transformers import Wav2Vec2Config, Wav2Vec2Model

from speakerzoo.features import valid_mask
from speakerzoo.zoo.base import SpeakerEmbeddingModule
from speakerzoo.zoo.checkpoint import local_weights_dir
from speakerzoo.zoo.ctc import greedy_ctc
from speakerzoo.zoo.heads import AAMSoftmax
from speakerzoo.zoo.pooling import masked_mean, relative_lengths
from speakerzoo.zoo.schedules import tri_stage
from speakerzoo.zoo.vocabulary import LIBRISPEECH_CHARACTERS, CharVocabulary

POOLINGS = ("mean", "first", "ecapa")
#: Config entries that describe a saved file rather than the network.
_FILE_KEYS = ("transformers_version", "architectures", "model_type", "_name_or_path", "torch_dtype", "dtype")


class HiddenStates(NamedTuple):
    """What one wav2vec2 pass gives: ``states[k]`` is ``C^k [B, frames, hidden]`` after k
    transformer layers (``C^0``: their input), ``last`` the network's output (``C^L``, after the
    final layer norm of stable-layer-norm models; ``None`` when the pass stopped early), and the
    valid ``frame_lengths [B]``."""

    states: list[Tensor]
    last: Tensor | None
    frame_lengths: Tensor


class Wav2Vec2MultiTask(SpeakerEmbeddingModule):
    """wav2vec2 with a CTC speech head and a speaker head; one or both tasks train.

    Arguments:
        frontend: raw audio (wav2vec2 reads 16 kHz waveforms): ``waveform_meanvar``, zero mean and
            unit variance per utterance as wav2vec2's feature extractor does for the BASE models,
            or ``waveform`` as it is.
        vocabulary: the CTC characters (class 0 is the blank); transcripts are lower-cased.
            Default: LibriSpeech's letters, apostrophe and space.
        pretrained: a local directory with wav2vec2 weights in transformers' format (e.g.
            ``facebook/wav2vec2-base`` saved with ``save_pretrained``; ``Wav2Vec2ForPreTraining``
            and ``Wav2Vec2ForCTC`` directories work too). Nothing is downloaded. Checkpoints carry
            the weights and the full configuration, so rebuilding one needs no directory.
        config: ``Wav2Vec2Config`` fields over the BASE layout (or over the directory's
            configuration), e.g. a tiny network for tests or ``mask_time_prob`` / ``layerdrop``.
        speaker_layer: n, the transformer layer whose output ``C^n`` the speaker head pools
            (1..L; ``None``: the last). Speaker batches stop after layer n.
        pooling: ``mean`` (over valid frames), ``first`` (the first token) or ``ecapa``
            (speechbrain's ECAPA-TDNN over ``C^n``, as WavLM does).
        ecapa: ``ECAPA_TDNN`` arguments for ``pooling: ecapa`` (default: 192-d embedding,
            channels ``[512, 512, 512, 512, 1536]``).
        margin, scale: of the AAM softmax speaker loss (seed: 0.2 and 30).
        speech_weight: λ_s of ``λ_s·L_s + (1 - λ_s)·L_k`` when a step has both tasks (seed: 0.5
            or 0.9); a single-task step uses its one loss as it is.
        freeze_steps: the whole wav2vec2 network is frozen (runs without gradients, only the
            heads train) for the first N optimiser steps (seed: 3k), then fine-tuned.
        freeze_feature_encoder: keep the CNN feature encoder frozen throughout (seed: always);
            only worth turning off when training from random weights.
        lr, weight_decay: Adam's peak rate (the seed searched {1, 3} x 10^{-4, -5, -6}) and decay.
        warmup, hold, init_lr_scale, final_lr_scale: the tri-stage schedule over the whole run
            (:func:`~speakerzoo.zoo.schedules.tri_stage`; seed: 10 % warm-up, 40 % constant,
            50 % exponential decay).
        **kwargs: ``num_speakers``, ``sample_rate``, ``speaker_names``, ``init_from``: see
            :class:`~speakerzoo.zoo.base.SpeakerEmbeddingModule` (``num_speakers=0``: no speaker
            classifier, e.g. single-task speech recognition; embeddings still work). No
            ``warmup_epochs``: ``warmup`` is the tri-stage schedule's.

    LayerDrop is applied here, not by transformers: the configuration's ``layerdrop`` is
    read and set to 0 inside the network, because transformers' LayerDrop leaves skipped layers
    out of ``hidden_states``, so that ``hidden_states[n]`` would not be ``C^n``. Here a skipped
    layer passes its input on (``C^k = C^{k-1}``, fairseq's semantics) and is not computed.
    wav2vec2's own time masking (``mask_time_prob``) and dropout apply in training as configured.

    Logged: ``train/loss``, ``train/speech_loss`` (CTC), ``train/speaker_loss`` (AAM),
    ``train/acc``, ``train/lr``; ``val/wer`` (greedy CTC decoding, torchmetrics), ``val/eer``,
    ``val/mindcf``, ``val/ident_acc`` and ``val/selection`` = ¼·WER + ¾·EER (the seed's model
    selection; the one metric there is in single-task runs); ``test/...`` likewise.

    Example::

        >>> import torch
        >>> tiny = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        ...             conv_dim=[16, 16], conv_stride=[5, 4], conv_kernel=[10, 4],
        ...             num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
        >>> model = Wav2Vec2MultiTask(num_speakers=3, config=tiny, speaker_layer=1).eval()
        >>> model.embed(torch.randn(2, 4000), torch.tensor([4000, 3000])).shape
        torch.Size([2, 32])
        >>> len(model.transcribe(torch.randn(2, 4000)))
        2
    """

    def __init__(
        self,
        frontend: str | dict = "waveform_meanvar",
        vocabulary: str = LIBRISPEECH_CHARACTERS,
        pretrained: str | None = None,
        config: dict | None = None,
        speaker_layer: int | None = None,
        pooling: str = "mean",
        ecapa: dict | None = None,
        margin: float = 0.2,
        scale: float = 30.0,
        speech_weight: float = 0.5,
        freeze_steps: int = 3000,
        freeze_feature_encoder: bool = True,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        warmup: float = 0.1,
        hold: float = 0.4,
        init_lr_scale: float = 0.01,
        final_lr_scale: float = 0.05,
        **kwargs,
    ):
        # Adam with the tri-stage schedule: no warmup_epochs argument.
        super().__init__(frontend=frontend, lr=lr, weight_decay=weight_decay, warmup_epochs=0.0, **kwargs)
        self.save_hyperparameters(ignore="warmup_epochs")
        if self.frontend.dim is not None:
            raise ValueError("Wav2Vec2MultiTask reads raw audio: set frontend: waveform_meanvar (or waveform)")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, not {pooling!r}")
        if not 0.0 <= speech_weight <= 1.0:
            raise ValueError(f"speech_weight (λ_s) must be in [0, 1], got {speech_weight}")
        self.vocabulary = CharVocabulary(vocabulary)
        self.pretrained = None if pretrained is None else str(pretrained)
        self.wav2vec2 = self._build_wav2vec2(self.pretrained, config or {})
        layers = self.wav2vec2.config.num_hidden_layers
        self.speaker_layer = layers if speaker_layer is None else int(speaker_layer)
        if not 1 <= self.speaker_layer <= layers:
            raise ValueError(f"speaker_layer must be in 1..{layers} (the transformer layers), got {speaker_layer}")
        # C^0..C^L are recorded by hooks on the transformer layers: their input once, then each output.
        # (transformers' output_hidden_states would do, but it hooks only the layers present at its
        # first call, and _only_layers changes them.)
        self._recorded: list[Tensor] | None = None
        for layer in self.wav2vec2.encoder.layers:
            layer.register_forward_pre_hook(self._record_input)
            layer.register_forward_hook(self._record_output)
        self.freeze_feature_encoder = bool(freeze_feature_encoder)
        if self.freeze_feature_encoder:
            self.wav2vec2.freeze_feature_encoder()
        self.freeze_steps = int(freeze_steps)
        self.speech_weight = float(speech_weight)
        self.schedule = {"warmup": warmup, "hold": hold, "init_scale": init_lr_scale, "final_scale": final_lr_scale}
        hidden = self.wav2vec2.config.hidden_size
        self.pooling = pooling
        if pooling == "ecapa":
            options = {"lin_neurons": 192, "channels": [512, 512, 512, 512, 1536], **(ecapa or {})}
            self.ecapa = ECAPA_TDNN(input_size=hidden, **options)
            self.embedding_dim = int(options["lin_neurons"])
        else:
            self.ecapa = None
            self.embedding_dim = hidden
        self.ctc_dropout = nn.Dropout(self.wav2vec2.config.final_dropout)
        self.ctc_head = nn.Linear(hidden, len(self.vocabulary))
        self.head = AAMSoftmax(self.embedding_dim, self.num_speakers, margin, scale) if self.num_speakers else None
        self.wer = nn.ModuleDict({part: WordErrorRate() for part in ("val", "test")})
        self._wer_seen: set[str] = set()

    # ------------------------------------------------------------------ network

    def _build_wav2vec2(self, pretrained: str | None, overrides: dict) -> Wav2Vec2Model:
        base: dict = {}  # Wav2Vec2Config's defaults are the BASE layout
        if pretrained is not None:
            path = local_weights_dir(pretrained, "wav2vec2", "model.safetensors or pytorch_model.bin",
                                     "facebook/wav2vec2-base")
            base = Wav2Vec2Config.from_pretrained(str(path), local_files_only=True).to_dict()
        unknown = sorted(k for k in overrides if k not in Wav2Vec2Config().to_dict())
        if unknown:
            raise ValueError(f"config: {unknown} are no Wav2Vec2Config fields")
        # A new config, not update(): derived fields (the number of CNN layers) follow the overrides.
        config = Wav2Vec2Config(**{k: v for k, v in {**base, **overrides}.items() if k not in _FILE_KEYS})
        self.layerdrop = float(config.layerdrop)
        config.layerdrop = 0.0  # applied by _hidden_states, see the class docstring
        if pretrained is None:
            return Wav2Vec2Model(config)
        try:
            return Wav2Vec2Model.from_pretrained(str(path), config=config, local_files_only=True)
        except (OSError, RuntimeError, ValueError) as error:
            raise ValueError(f"{path}: cannot load wav2vec2 weights with this configuration ({error}); "
                             "leave out config fields that change the layout") from None

    @property
    def num_layers(self) -> int:
        return int(self.wav2vec2.config.num_hidden_layers)

    def _record_input(self, module: nn.Module, args: tuple) -> None:
        if self._recorded is not None and not self._recorded:
            self._recorded.append(args[0])

    def _record_output(self, module: nn.Module, args: tuple, output: Tensor | tuple) -> None:
        if self._recorded is not None:
            self._recorded.append(output[0] if isinstance(output, tuple) else output)

    @contextlib.contextmanager
    def _only_layers(self, keep: list[int]) -> Iterator[None]:
        """Run the encoder over the transformer layers ``keep`` alone (LayerDrop, early exit)."""
        encoder = self.wav2vec2.encoder
        layers = encoder.layers
        if keep == list(range(len(layers))):
            yield
            return
        encoder.layers = nn.ModuleList([layers[i] for i in keep])
        try:
            yield
        finally:
            encoder.layers = layers

    def hidden_states(self, waveforms: Tensor, lengths: Tensor | None = None, depth: int | None = None) -> HiddenStates:
        """``C^0..C^depth`` of a batch of waveforms (default: every layer), with LayerDrop in training."""
        return self._hidden_states(*self.frontend(waveforms, lengths), depth=depth)

    def _hidden_states(self, inputs: Tensor, lengths: Tensor, depth: int | None = None) -> HiddenStates:
        """:meth:`hidden_states` of the frontend's output (the normalised audio)."""
        depth = self.num_layers if depth is None else int(depth)
        config = self.wav2vec2.config
        # transformers' convention: BASE models (group norm) take zero padding and no mask.
        mask = None
        if config.feat_extract_norm == "layer":
            mask = valid_mask(lengths, inputs.shape[1]).long()
        keep = [k for k in range(depth) if not (self.training and self.layerdrop > 0
                                                and float(torch.rand(())) < self.layerdrop)]
        self._recorded = []
        try:
            with self._only_layers(keep):
                out = self.wav2vec2(inputs, attention_mask=mask)
        finally:
            recorded, self._recorded = self._recorded, None
        if not recorded:  # every layer dropped: the encoder's output is its input
            recorded = [out.last_hidden_state]
        # C^k is the output of the last layer run among the first k (its input if none ran).
        states = [recorded[sum(1 for i in keep if i < k)] for k in range(depth + 1)]
        frame_lengths = self.wav2vec2._get_feat_extract_output_lengths(lengths).long()
        return HiddenStates(states, out.last_hidden_state if depth == self.num_layers else None, frame_lengths)

    def pool(self, sequence: Tensor, frame_lengths: Tensor) -> Tensor:
        """A speaker embedding ``[B, embedding_dim]`` from a layer's output ``[B, frames, hidden]``."""
        if self.pooling == "first":
            return sequence[:, 0]
        if self.pooling == "ecapa":
            return self.ecapa(sequence, lengths=relative_lengths(frame_lengths, sequence)).squeeze(1)
        return masked_mean(sequence, frame_lengths)

    def encode(self, features: Tensor, frame_lengths: Tensor) -> Tensor:
        """Waveforms ``[B, T]`` with lengths in samples (the ``waveform`` frontend) -> speaker embeddings."""
        hidden = self._hidden_states(features, frame_lengths, depth=self.speaker_layer)
        return self.pool(hidden.states[self.speaker_layer], hidden.frame_lengths)

    def layer_means(self, features: Tensor, frame_lengths: Tensor) -> Tensor:
        """Every transformer layer's mean-pooled output ``[B, L, hidden]`` (the seed's Figure 1), of
        the frontend's output like :meth:`encode` (``model.embed_unpadded(batch, model.layer_means)``)."""
        hidden = self._hidden_states(features, frame_lengths)
        return torch.stack([masked_mean(s, hidden.frame_lengths) for s in hidden.states[1:]], dim=1)

    def ctc_logits(self, last: Tensor) -> Tensor:
        return self.ctc_head(self.ctc_dropout(last))

    @torch.no_grad()
    def transcribe(self, waveforms: Tensor, lengths: Tensor | None = None) -> list[str]:
        """Greedy CTC transcripts of a batch of waveforms ``[B, T]`` at ``sample_rate``."""
        hidden = self.hidden_states(waveforms, lengths)
        paths = greedy_ctc(self.ctc_logits(hidden.last), hidden.frame_lengths)
        return [self.vocabulary.decode(p) for p in paths]

    # ------------------------------------------------------------------ losses

    def ctc_loss(self, hidden: HiddenStates, transcripts: list[str]) -> Tensor:
        """Mean CTC loss (per target character), always computed in float32 (fp16 CTC goes NaN)."""
        targets, target_lengths = self.vocabulary.encode_transcripts(transcripts)
        logits = self.ctc_logits(hidden.last)
        with torch.autocast(device_type=logits.device.type, enabled=False):
            log_probs = F.log_softmax(logits.float(), dim=-1).transpose(0, 1)
            return F.ctc_loss(log_probs, targets.to(logits.device), hidden.frame_lengths,
                              target_lengths.to(logits.device), blank=0, reduction="mean", zero_infinity=True)

    def speaker_loss(self, hidden: HiddenStates, speakers: Tensor) -> tuple[Tensor, Tensor]:
        embeddings = self.pool(hidden.states[self.speaker_layer], hidden.frame_lengths)
        return self.training_loss(embeddings, speakers)

    @property
    def frozen(self) -> bool:
        """Whether the wav2vec2 network is in its freeze window (the first ``freeze_steps`` steps)."""
        return self.global_step < self.freeze_steps

    def _forward(self, batch: dict[str, Tensor], depth: int) -> HiddenStates:
        context = torch.no_grad() if self.frozen else contextlib.nullcontext()
        with context:
            return self._hidden_states(*self.features(batch), depth=depth)

    def step_losses(self, batch: dict[str, dict]) -> tuple[dict[str, Tensor], tuple[Tensor, Tensor] | None]:
        """The losses of one training batch ``{"speech": ..., "speaker": ..., "joint": ...}``
        (see :class:`~speakerzoo.datamodules.multitask.MultiTaskDataModule`) and the speaker
        ``(logits, targets)``: a disjoint step runs one pass per task, a joint step one pass for both."""
        losses: dict[str, Tensor] = {}
        speaker_out = None
        if "joint" in batch:
            part = batch["joint"]
            hidden = self._forward(part, self.num_layers)
            losses["speech"] = self.ctc_loss(hidden, part["transcripts"])
            losses["speaker"], logits = self.speaker_loss(hidden, part["speakers"])
            speaker_out = (logits, part["speakers"])
        if "speech" in batch:
            part = batch["speech"]
            losses["speech"] = self.ctc_loss(self._forward(part, self.num_layers), part["transcripts"])
        if "speaker" in batch:
            part = batch["speaker"]
            losses["speaker"], logits = self.speaker_loss(self._forward(part, self.speaker_layer), part["speakers"])
            speaker_out = (logits, part["speakers"])
        if not losses:
            raise ValueError(f"a training batch needs 'speech', 'speaker' or 'joint' data, got keys {sorted(batch)}")
        return losses, speaker_out

    def training_step(self, batch: dict[str, dict], batch_idx: int) -> dict[str, Tensor]:
        losses, speaker_out = self.step_losses(batch)
        if len(losses) == 2:
            loss = self.speech_weight * losses["speech"] + (1.0 - self.speech_weight) * losses["speaker"]
        else:
            (loss,) = losses.values()
        size = next(len(part["lengths"]) for part in batch.values())
        self.log("train/loss", loss.detach(), on_step=True, on_epoch=True, prog_bar=True, batch_size=size)
        for task, value in losses.items():
            self.log(f"train/{task}_loss", value.detach(), on_step=True, on_epoch=True, batch_size=size)
        if self._trainer is not None and self.trainer.optimizers:
            self.log("train/lr", float(self.trainer.optimizers[0].param_groups[0]["lr"]), on_step=True,
                     on_epoch=False, batch_size=size)
        if speaker_out is None:
            return {"loss": loss}
        logits, targets = speaker_out
        accuracy = (logits.detach().argmax(-1) == targets).float().mean()
        self.log("train/acc", accuracy, on_step=True, on_epoch=True, batch_size=len(targets))
        return {"loss": loss, "logits": logits.detach(), "targets": targets}

    # ------------------------------------------------------------------ evaluation

    def _evaluate(self, part: str, batch: dict) -> dict[str, Tensor] | None:
        if "transcripts" not in batch:
            return self.collect_embeddings(part, batch)
        hypotheses = self.transcribe(batch["waveforms"], batch["lengths"])
        self.wer[part].update(hypotheses, [self.vocabulary.normalize(t) for t in batch["transcripts"]])
        self._wer_seen.add(part)
        return None

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor] | None:
        """Speech batches (with ``transcripts``) update the WER; speaker batches are embedded for the trials."""
        return self._evaluate("val", batch)

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor] | None:
        return self._evaluate("test", batch)

    def score_evaluation(self, part: str) -> dict[str, Tensor]:
        """The trial metrics of the speaker batches (if any), ``{part}/wer`` of the speech batches
        (if any) and ``{part}/selection``."""
        values = super().score_evaluation(part) if self.has_collected(part) else {}
        if part in self._wer_seen:
            self._wer_seen.discard(part)
            values["wer"] = self.wer[part].compute()
            self.wer[part].reset()
            self.log(f"{part}/wer", values["wer"], prog_bar=True)
        # The seed's model selection, over the tasks that train (a single-task run may still
        # evaluate the other task, e.g. the speaker information of a speech model).
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        counted = [name for name, trains in (("wer", getattr(datamodule, "trains_speech", True)),
                                             ("eer", getattr(datamodule, "trains_speaker", True)))
                   if trains and name in values]
        if len(counted) == 2:
            selection = 0.25 * values["wer"] + 0.75 * values["eer"]
        else:
            selection = values[counted[0]] if counted else None
        if selection is not None:
            self.log(f"{part}/selection", selection)
        return values

    # ------------------------------------------------------------------ training set-up

    def setup(self, stage: str) -> None:
        super().setup(stage)
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        characters = getattr(datamodule, "characters", None)
        if stage == "fit" and callable(characters):
            missing = self.vocabulary.missing(characters())
            if missing:
                raise ValueError(
                    f"the training transcripts have characters {missing} that the CTC vocabulary "
                    f"{self.vocabulary.characters!r} lacks; add them to model.init_args.vocabulary")
        if stage == "fit" and self.freeze_feature_encoder and self.pretrained is None and self.init_from is None:
            rank_zero_warn(
                "Wav2Vec2MultiTask: the CNN feature encoder is frozen but no pretrained weights were given, so it "
                "stays random; give --model.init_args.pretrained DIR (a wav2vec2 directory) or train it too with "
                "--model.init_args.freeze_feature_encoder false")

    def configure_optimizers(self) -> Any:
        """Adam on everything that trains (the frozen CNN gets no state), tri-stage rate per step."""
        optimizer = torch.optim.Adam([p for p in self.parameters() if p.requires_grad], lr=self.lr,
                                     weight_decay=self.weight_decay)
        total = self.trainer.estimated_stepping_batches
        if not (0 < total < float("inf")):
            return optimizer
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, tri_stage(int(total), **self.schedule))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ checkpoints

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        # The weights and the whole configuration are in the checkpoint: rebuilding it must not
        # need the pretrained directory.
        config = self.wav2vec2.config.to_diff_dict()
        config["layerdrop"] = self.layerdrop
        checkpoint["hyper_parameters"]["config"] = {k: v for k, v in config.items() if k not in _FILE_KEYS}
        checkpoint["hyper_parameters"]["pretrained"] = None
        checkpoint["speakerzoo"]["wav2vec2_weights"] = self.pretrained
