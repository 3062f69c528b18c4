"""Export an embedding model's inference path to TorchScript and ONNX, and check the files.

The exported graph is the whole of :meth:`~speakerzoo.zoo.base.SpeakerEmbeddingModule.embed`:
waveforms ``[batch, time]`` (float32 at the model's sample rate) and their lengths in samples
``[batch]`` (int64) in, embeddings ``[batch, embedding_dim]`` out. Features are computed inside
the file, so a user of the file needs no feature parameters; the head is left out. Batch and
time are dynamic: one file serves any number of clips of any length (a batch is padded to its
longest clip, as for :meth:`embed`).

What works (torch 2.11, torchaudio 2.11, speechbrain 1.1, onnxruntime 1.31):

* **TorchScript**: ``torch.jit.script`` fails on the zoo's models (the frontend's dataclass
  config; speechbrain's modules), so :func:`to_torchscript` traces, with the lengths as an input
  so that masks and attentive pooling stay data dependent. Two things a naive trace bakes in
  are taken care of. The frontend's Python branch for clips shorter than one FFT window:
  :class:`EmbeddingExtractor` always appends ``n_fft`` zeros and keeps the first
  ``max((T - n_fft) // hop + 1, 1)`` frames, computed from the traced shape. speechbrain's
  ``length_to_mask``, which expands its mask to ``len(lengths)`` rows, a Python constant under
  tracing (and a reason for torch.export to fix the batch size): while exporting it is replaced
  by a broadcasting equivalent (:func:`export_patches`), and the trace is made with a batch of
  one, which broadcasts to any batch even without the patch. The traced module is run on other
  lengths and on a batch of two before it is written.
* **ONNX**: the dynamo exporter (``torch.onnx.export(..., dynamo=True)``, needs onnxscript)
  exports torchaudio's STFT as is, with symbolic batch and time; it writes opset 18 (onnx's
  version converter cannot take this graph down to 17). The legacy TorchScript-based exporter
  (``dynamo=False``) rejects the STFT ("STFT does not currently support complex types"); for it
  the extractor computes the power spectrum as a strided ``conv1d`` with the same windowed DFT
  basis (:class:`DFTSpectrogram`), which exports at opset 17.

:func:`compare_export` / :func:`verify_export` run the file (onnxruntime or ``torch.jit.load``)
on several lengths and batch sizes and compare with ``model.embed``. The file records the
sample rate, embedding size and frontend (ONNX ``metadata_props``; TorchScript extra file
``speakerzoo.json``); :func:`read_metadata` reads them back.

Example::

    >>> import torch
    >>> from speakerzoo.zoo import ECAPA
    >>> model = ECAPA(channels=[16, 16, 16, 16, 48], embedding_dim=8, attention_channels=8, se_channels=8)
    >>> extractor = EmbeddingExtractor(model)
    >>> extractor(torch.randn(2, 8000), torch.tensor([8000, 6000])).shape
    torch.Size([2, 8])

Writing and checking files (``speakerzoo export`` does the same from a checkpoint)::

    to_torchscript(model, "ecapa.pt")             # ExportResult(method="trace", ...)
    to_onnx(model, "ecapa.onnx", opset=18)        # ExportResult(method="dynamo", ...)
    verify_export(model, "ecapa.onnx", lengths=(0.7, 1.3, 3.0))   # largest |difference|
    read_metadata("ecapa.onnx")["sample_rate"]    # 16000
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import json
import logging
import math
import sys
import time
import types
import warnings
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric

from speakerzoo import __version__
from speakerzoo.atomic import replaced_on_success
from speakerzoo.zoo.base import SpeakerEmbeddingModule

INSTALL_HINT = "pip install 'speakerzoo[export]'"
#: Name of the JSON metadata inside a TorchScript file, and the ONNX ``metadata_props`` key.
METADATA_KEY = "speakerzoo"
INPUT_NAMES = ("waveforms", "lengths")
OUTPUT_NAMES = ("embeddings",)
#: Tolerances of :func:`compare_export`: a batch passes when its largest absolute difference is at
#: most ``ATOL`` (times the largest absolute embedding value when that is above 1) and every
#: embedding's cosine with PyTorch's is at least ``MIN_COSINE``.
ATOL = 1e-4
MIN_COSINE = 0.99999


#: Frontends that export does not cover, and what computes them.
NOT_EXPORTABLE_FRONTENDS = {"sb_fbank": "speechbrain's STFT and filterbank modules",
                            "kaldi_fbank": "torchaudio.compliance.kaldi.fbank, one utterance at a time"}


class ExportError(RuntimeError):
    """The model could not be exported, or the exported file does not reproduce the model."""


class MissingExportDependency(ImportError):
    """onnx, onnxruntime or onnxscript is not installed."""


def require(module: str) -> Any:
    """Import ``module`` (onnx, onnxruntime, onnxscript) or raise :class:`MissingExportDependency` saying how to get it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MissingExportDependency(
            f"ONNX export and its check need the {module!r} package, which is not installed: {INSTALL_HINT}"
        ) from error


# ---------------------------------------------------------------------------------------------- modules


class DFTSpectrogram(nn.Module):
    """Power spectrogram as a strided ``conv1d`` with a windowed DFT basis.

    Computes what ``torchaudio.transforms.Spectrogram(n_fft, win_length, hop_length, window,
    power=2, center=False)`` computes, ``|STFT|^2`` of shape ``[B, n_fft // 2 + 1, frames]``,
    without complex numbers, so exporters without STFT support can export it. The window is
    centred in ``n_fft`` samples as ``torch.stft`` does; the basis is built in float64.

    Arguments:
        spectrogram: the ``torchaudio.transforms.Spectrogram`` to replace (its window, sizes).

    Example::

        >>> import torch, torchaudio
        >>> spec = torchaudio.transforms.Spectrogram(n_fft=512, win_length=400, hop_length=160, center=False)
        >>> x = torch.randn(2, 4000)
        >>> torch.allclose(DFTSpectrogram(spec)(x), spec(x), rtol=1e-4, atol=1e-3)
        True
    """

    def __init__(self, spectrogram: nn.Module):
        super().__init__()
        n_fft, win = int(spectrogram.n_fft), int(spectrogram.win_length)
        settings = {name: getattr(spectrogram, name) for name in ("center", "pad", "normalized", "power", "onesided")}
        if settings != {"center": False, "pad": 0, "normalized": False, "power": 2.0, "onesided": True}:
            raise ExportError(f"DFTSpectrogram covers power=2, center=False, pad=0, normalized=False, onesided only; got {settings}")
        window = torch.zeros(n_fft, dtype=torch.float64)
        left = (n_fft - win) // 2
        window[left : left + win] = spectrogram.window.double()
        n = torch.arange(n_fft, dtype=torch.float64)
        k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)
        angle = 2 * math.pi * k[:, None] * n[None, :] / n_fft
        basis = torch.cat([torch.cos(angle), -torch.sin(angle)]) * window  # [2 * bins, n_fft]
        self.register_buffer("basis", basis.float().unsqueeze(1), persistent=False)
        self.hop_length = int(spectrogram.hop_length)
        self.bins = n_fft // 2 + 1

    def forward(self, waveform: Tensor) -> Tensor:
        out = F.conv1d(waveform.unsqueeze(1), self.basis, stride=self.hop_length)  # [B, 2 * bins, frames]
        real, imag = out[:, : self.bins], out[:, self.bins :]
        return real * real + imag * imag


class EmbeddingExtractor(nn.Module):
    """Inference path of an embedding model as a plain module: ``(waveforms [B, T], lengths [B]) -> [B, D]``.

    Computes exactly ``model.embed(waveforms, lengths)`` (frontend, then ``model.encode``; no
    head) in a form that tracing and ``torch.export`` keep dynamic in batch and time: the
    waveforms get ``n_fft`` zeros appended and the frames beyond the unpadded count are cut
    off again, so clips shorter than one analysis window need no Python branch. The model's
    modules are shared, not copied, and are put in eval mode; the LightningModule itself is
    kept out of the module tree (its ``trainer`` property raises under tracing).

    Arguments:
        model: a :class:`~speakerzoo.zoo.base.SpeakerEmbeddingModule`.
        spectrogram: ``"stft"`` (the frontend's own torchaudio STFT) or ``"dft"`` (the same
            power spectrum as a ``conv1d`` with the DFT basis, :class:`DFTSpectrogram`; for
            exporters without STFT support). ``"dft"`` copies the frontend.
    """

    def __init__(self, model: SpeakerEmbeddingModule, spectrogram: str = "stft"):
        super().__init__()
        if not isinstance(model, SpeakerEmbeddingModule):
            raise TypeError(f"EmbeddingExtractor needs a SpeakerEmbeddingModule, got {type(model).__qualname__}")
        if spectrogram not in ("stft", "dft"):
            raise ValueError(f"spectrogram must be 'stft' or 'dft', got {spectrogram!r}")
        self.__dict__["model"] = model  # not a submodule: see the class docstring
        frontend = model.frontend
        if spectrogram == "dft" and frontend.mel is not None:
            frontend = copy.deepcopy(frontend)
            frontend.mel.spectrogram = DFTSpectrogram(frontend.mel.spectrogram)
        self.frontend = frontend
        self.spectrogram = spectrogram
        # Everything encode() may use, without the head and the metrics.
        for name, child in model.named_children():
            if name in ("frontend", "head") or any(isinstance(m, Metric) for m in child.modules()):
                continue
            self.add_module(name, child)
        self.n_fft = int(frontend.n_fft) if frontend.mel is not None else 0
        self.hop_length = int(frontend.hop_length) if frontend.mel is not None else 0
        self.sample_rate = int(model.sample_rate)
        self.embedding_dim = int(model.embedding_dim)
        self.eval()

    def forward(self, waveforms: Tensor, lengths: Tensor) -> Tensor:
        if self.n_fft == 0:  # raw-waveform frontend
            features, frame_lengths = self.frontend(waveforms, lengths)
            return self.model.encode(features, frame_lengths)
        num_samples = waveforms.shape[1]
        padded = F.pad(waveforms, (0, self.n_fft))
        features, frame_lengths = self.frontend(padded, lengths)
        # Frames of the unpadded clip: max((T - n_fft) // hop + 1, 1), as shape arithmetic that
        # the tracer records (tensors) or torch.export keeps symbolic (SymInt).
        if torch.jit.is_tracing():
            frames = torch.clamp(torch.div(num_samples - self.n_fft, self.hop_length, rounding_mode="floor") + 1, min=1)
        else:
            frames = torch.sym_max((num_samples - self.n_fft) // self.hop_length + 1, 1)
        # index_select, not a slice: torch.export cannot prove frames <= features.shape[1] for a slice.
        features = features.index_select(1, torch.arange(frames, device=features.device))
        return self.model.encode(features, frame_lengths)

    def metadata(self) -> dict[str, Any]:
        return export_metadata(self.model)


def export_metadata(model: SpeakerEmbeddingModule) -> dict[str, Any]:
    """What an exported file records about its model (plain JSON data)."""
    cls = type(model)
    return {
        "format": 1,
        "sample_rate": int(model.sample_rate),
        "embedding_dim": int(model.embedding_dim),
        "frontend": model.frontend.config.to_dict(),
        "model_class": f"{cls.__module__}.{cls.__qualname__}",
        "speakerzoo_version": __version__,
        "inputs": "waveforms float32 [batch, time] at sample_rate; lengths int64 [batch] in samples",
        "outputs": "embeddings float32 [batch, embedding_dim]",
    }


# ---------------------------------------------------------------------------------------------- export


def _length_to_mask(length: Tensor, max_len: Any = None, dtype: Any = None, device: Any = None) -> Tensor:
    """speechbrain's ``length_to_mask`` with a broadcast instead of ``expand(len(length), max_len)``:
    the same mask, but ``len()`` of a tensor is a constant to the tracer and forces torch.export
    to specialise the batch dimension."""
    if max_len is None:
        max_len = length.max().long()
    mask = torch.arange(max_len, device=length.device, dtype=length.dtype)[None, :] < length.unsqueeze(1)
    return torch.as_tensor(mask, dtype=length.dtype if dtype is None else dtype, device=length.device if device is None else device)


@contextlib.contextmanager
def export_patches() -> Iterator[None]:
    """While exporting: replace speechbrain's ``length_to_mask`` in the modules that imported it
    by :func:`_length_to_mask` (identical values, dynamic batch); restored afterwards."""
    try:
        from speechbrain.dataio import dataio
    except ImportError:
        yield
        return
    original = dataio.length_to_mask
    # vars(), not getattr(): speechbrain's lazy modules import themselves on attribute access.
    patched = [
        module
        for name, module in list(sys.modules.items())
        if name.startswith("speechbrain.") and isinstance(module, types.ModuleType)
        and vars(module).get("length_to_mask") is original
    ]
    for module in patched:
        module.length_to_mask = _length_to_mask
    try:
        yield
    finally:
        for module in patched:
            module.length_to_mask = original


@dataclass
class ExportResult:
    """What :func:`to_torchscript` / :func:`to_onnx` did.

    ``method``: ``script`` or ``trace`` (TorchScript), ``dynamo`` or ``legacy`` (ONNX);
    ``notes``: what was tried and failed, and the tracer's warnings; ``seconds``: wall time.
    """

    path: Path
    format: str
    method: str
    seconds: float
    notes: list[str] = field(default_factory=list)


def _check_model(model: SpeakerEmbeddingModule) -> None:
    if not isinstance(model, SpeakerEmbeddingModule):
        raise TypeError(f"expected a SpeakerEmbeddingModule, got {type(model).__qualname__}")
    devices = {p.device.type for p in model.parameters()} | {b.device.type for b in model.buffers()}
    if devices - {"cpu"}:
        raise ValueError(f"export runs on the CPU; the model is on {sorted(devices)}: call model.cpu() first")
    kind = model.frontend.config.kind
    if kind in NOT_EXPORTABLE_FRONTENDS:
        raise ExportError(
            f"the {kind} frontend (of imported models: {NOT_EXPORTABLE_FRONTENDS[kind]}) is not exportable yet; "
            "export supports the fbank, mfcc, logmel and waveform frontends. Embed with the checkpoint instead, "
            "or fine-tune a model with one of those frontends")


class _EvalMode:
    """Put every module of ``model`` in eval mode and restore each one's mode afterwards."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __enter__(self) -> None:
        self.modes = [(m, m.training) for m in self.model.modules()]
        self.model.eval()

    def __exit__(self, *exc: Any) -> None:
        for module, mode in self.modes:
            module.training = mode


def _example(model: SpeakerEmbeddingModule, seconds: Sequence[float], seed: int = 0) -> tuple[Tensor, Tensor]:
    """Noise clips of the given durations, zero padded into one batch."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([max(1, int(round(s * model.sample_rate))) for s in seconds], dtype=torch.long)
    waveforms = 0.1 * torch.randn(len(seconds), int(lengths.max()), generator=generator)
    waveforms = waveforms.masked_fill(torch.arange(waveforms.shape[1])[None, :] >= lengths[:, None], 0.0)
    return waveforms, lengths


def _worst(exported: Tensor, reference: Tensor) -> tuple[float, float, float]:
    """Largest absolute difference, smallest cosine, largest absolute reference value."""
    a, b = exported.double(), reference.double()
    if not a.numel():
        return 0.0, 1.0, 0.0
    return float((a - b).abs().max()), float(F.cosine_similarity(a, b, dim=-1).min()), float(b.abs().max())


def _within(diff: float, cosine: float, scale: float) -> bool:
    return diff <= ATOL * max(1.0, scale) and cosine >= MIN_COSINE


def to_torchscript(
    model: SpeakerEmbeddingModule,
    path: str | Path,
    example_seconds: float = 2.0,
    method: str = "auto",
) -> ExportResult:
    """Write ``model``'s inference path as a TorchScript file loadable with ``torch.jit.load``.

    Arguments:
        model: the embedding model (on the CPU; its train/eval modes are restored afterwards).
        path: output file; written under a temporary name in the same folder, then renamed.
        example_seconds: length of the example clip that is traced.
        method: ``script``, ``trace`` or ``auto`` (script, and trace when scripting fails).

    The module is called as ``module(waveforms [B, T] float32, lengths [B] int64)``. A traced
    module is checked on two other lengths and on a batch of two clips of different lengths
    before it is written; :class:`ExportError` if it does not reproduce ``model.embed``.
    """
    _check_model(model)
    if method not in ("auto", "script", "trace"):
        raise ValueError(f"method must be 'auto', 'script' or 'trace', got {method!r}")
    path = Path(path)
    start = time.perf_counter()
    notes: list[str] = []
    with _EvalMode(model), torch.no_grad(), export_patches():
        extractor = EmbeddingExtractor(model)
        module = None
        used = method
        if method in ("auto", "script"):
            try:
                module = torch.jit.script(extractor)
                used = "script"
            except Exception as error:  # noqa: BLE001 - scripting raises many kinds of errors
                reason = f"torch.jit.script failed: {type(error).__name__}: {str(error).strip().splitlines()[0][:200]}"
                if method == "script":
                    raise ExportError(reason) from error
                notes.append(reason)
        if module is None:
            used = "trace"
            # Batch of one: speechbrain's length_to_mask expands to len(lengths), a constant
            # under tracing that broadcasts correctly to any batch only when it is 1.
            example = _example(model, [example_seconds])
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                module = torch.jit.trace(extractor, example, check_trace=False)
            tracer = sorted({str(w.message).split(". ")[0] for w in caught if issubclass(w.category, torch.jit.TracerWarning)})
            notes.extend(f"tracer warning: {message}" for message in tracer)
        # Does the module generalise to other lengths and batch sizes?
        for seconds in ([example_seconds * 0.37], [example_seconds * 1.6, example_seconds * 0.55]):
            row = _compare(module, model, seconds[0], seconds, 1, f"the {used}d TorchScript module")
            if not row.ok:
                raise ExportError(
                    f"the {used}d TorchScript module does not reproduce model.embed on clips of {row.lengths} samples "
                    f"(max abs diff {row.max_abs_diff:.3g}, min cosine {row.min_cosine:.6f}); it was specialised "
                    "to the example input"
                )
        extra = {f"{METADATA_KEY}.json": json.dumps(export_metadata(model), sort_keys=True)}
        with replaced_on_success(path) as tmp:
            torch.jit.save(module, str(tmp), _extra_files=extra)
    return ExportResult(path, "torchscript", used, time.perf_counter() - start, notes)


def to_onnx(
    model: SpeakerEmbeddingModule,
    path: str | Path,
    opset: int = 18,
    exporter: str = "auto",
    example_seconds: float = 2.0,
) -> ExportResult:
    """Write ``model``'s inference path as an ONNX file with dynamic batch and time.

    Arguments:
        model: the embedding model (on the CPU; its train/eval modes are restored afterwards).
        path: output file (one file, weights inside); written under a temporary name, then renamed.
        opset: ONNX opset, at least 17 (the first with STFT). The dynamo exporter writes 18 or
            later (onnx's version converter has no 18 -> 17 adapter for ``Pad``), so opset 17
            means the legacy exporter.
        exporter: ``dynamo`` (``torch.onnx.export(dynamo=True)``, needs onnxscript; opset >= 18),
            ``legacy`` (the TorchScript-based exporter, with the STFT computed as a DFT ``conv1d``)
            or ``auto`` (dynamo, and legacy when dynamo fails, onnxscript is missing or opset is 17).
        example_seconds: length of the example clips.

    Inputs ``waveforms`` (float32 ``[batch, time]``) and ``lengths`` (int64 ``[batch]``), output
    ``embeddings`` (float32 ``[batch, embedding_dim]``); ``metadata_props`` hold ``sample_rate``,
    ``embedding_dim`` and the full metadata as JSON under ``speakerzoo``.
    """
    _check_model(model)
    if exporter not in ("auto", "dynamo", "legacy"):
        raise ValueError(f"exporter must be 'auto', 'dynamo' or 'legacy', got {exporter!r}")
    if opset < 17:
        raise ValueError(f"opset {opset} has no STFT operator; use opset >= 17")
    if exporter == "dynamo" and opset < 18:
        raise ValueError(f"the dynamo exporter writes opset 18 or later, not {opset}; use exporter='legacy' for opset 17")
    onnx = require("onnx")
    path = Path(path)
    start = time.perf_counter()
    notes: list[str] = []
    used = ""
    with replaced_on_success(path) as tmp:
        with _EvalMode(model), torch.no_grad(), export_patches(), _quiet_exporter():
            if exporter == "auto" and opset < 18:
                notes.append(f"opset {opset}: the dynamo exporter writes opset >= 18, so the legacy exporter was used")
            elif exporter in ("auto", "dynamo"):
                try:
                    require("onnxscript")
                    _onnx_dynamo(model, tmp, opset, example_seconds)
                    used = "dynamo"
                except Exception as error:  # noqa: BLE001 - the exporter raises many kinds of errors
                    if exporter == "dynamo":
                        if isinstance(error, MissingExportDependency):
                            raise
                        raise ExportError(f"dynamo ONNX export failed: {type(error).__name__}: {error}") from error
                    notes.append(f"dynamo exporter failed: {type(error).__name__}: {str(error).strip().splitlines()[0][:300]}")
            if not used:
                _onnx_legacy(model, tmp, opset, example_seconds)
                used = "legacy"
        proto = onnx.load(str(tmp))
        written = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)
        if written != opset:
            raise ExportError(f"the {used} exporter wrote opset {written}, not the {opset} asked for")
        meta = export_metadata(model)
        props = {
            "sample_rate": str(meta["sample_rate"]),
            "embedding_dim": str(meta["embedding_dim"]),
            METADATA_KEY: json.dumps(meta, sort_keys=True),
        }
        del proto.metadata_props[:]
        for key, value in props.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        proto.doc_string = f"speakerzoo {meta['model_class']}: waveforms, lengths -> embeddings"
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
    return ExportResult(path, "onnx", used, time.perf_counter() - start, notes)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporters' warnings and log lines (e.g. "torchvision is not installed")."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _onnx_dynamo(model: SpeakerEmbeddingModule, tmp: Path, opset: int, example_seconds: float) -> None:
    extractor = EmbeddingExtractor(model)
    # A batch of two of different lengths: torch.export specialises dimensions of size 1.
    example = _example(model, [example_seconds, example_seconds * 0.6])
    batch = torch.export.Dim("batch", min=1, max=4096)
    samples = torch.export.Dim("time", min=1, max=model.sample_rate * 3600)
    program = torch.onnx.export(
        extractor,
        example,
        None,
        dynamo=True,
        opset_version=opset,
        input_names=list(INPUT_NAMES),
        output_names=list(OUTPUT_NAMES),
        dynamic_shapes={"waveforms": {0: batch, 1: samples}, "lengths": {0: batch}},
        external_data=False,
        verbose=False,
        report=False,
    )
    program.save(str(tmp), external_data=False)


def _onnx_legacy(model: SpeakerEmbeddingModule, tmp: Path, opset: int, example_seconds: float) -> None:
    extractor = EmbeddingExtractor(model, spectrogram="dft")
    example = _example(model, [example_seconds])  # batch of one: see to_torchscript
    torch.onnx.export(
        extractor,
        example,
        str(tmp),
        dynamo=False,
        opset_version=opset,
        input_names=list(INPUT_NAMES),
        output_names=list(OUTPUT_NAMES),
        dynamic_axes={"waveforms": {0: "batch", 1: "time"}, "lengths": {0: "batch"}, "embeddings": {0: "batch"}},
    )


# ---------------------------------------------------------------------------------------------- loading and checking


def detect_format(path: str | Path) -> str:
    """``torchscript`` (a zip archive) or ``onnx`` (anything else that exists)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"exported model {str(path)!r} does not exist")
    return "torchscript" if zipfile.is_zipfile(path) else "onnx"


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata :func:`to_torchscript` / :func:`to_onnx` stored in a file (``{}`` if none)."""
    path = Path(path)
    if detect_format(path) == "torchscript":
        extra = {f"{METADATA_KEY}.json": ""}
        torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        text = extra[f"{METADATA_KEY}.json"]
        return json.loads(text) if text else {}
    onnx = require("onnx")
    proto = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in proto.metadata_props}
    return json.loads(props[METADATA_KEY]) if METADATA_KEY in props else {}


def load_exported(path: str | Path) -> Callable[[Tensor, Tensor], Tensor]:
    """A function ``(waveforms [B, T], lengths [B]) -> embeddings [B, D]`` running the file
    (``torch.jit.load`` or an onnxruntime CPU session)."""
    path = Path(path)
    if detect_format(path) == "torchscript":
        module = torch.jit.load(str(path), map_location="cpu").eval()

        def run_torchscript(waveforms: Tensor, lengths: Tensor) -> Tensor:
            with torch.no_grad():
                return module(waveforms.float(), lengths.long())

        return run_torchscript
    ort = require("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run_onnx(waveforms: Tensor, lengths: Tensor) -> Tensor:
        feeds = {INPUT_NAMES[0]: waveforms.float().cpu().numpy(), INPUT_NAMES[1]: lengths.long().cpu().numpy()}
        return torch.from_numpy(session.run(None, feeds)[0])

    return run_onnx


@dataclass(frozen=True)
class Comparison:
    """One check of an exported file against ``model.embed``: clips of ``lengths`` samples in one batch."""

    seconds: float
    lengths: tuple[int, ...]
    max_abs_diff: float
    min_cosine: float
    reference_scale: float  # largest absolute value of model.embed's embeddings
    seconds_exported: float  # wall time of the exported module on this batch
    seconds_pytorch: float  # and of model.embed

    @property
    def ok(self) -> bool:
        """Within :data:`ATOL` (scaled by ``reference_scale`` when above 1) and :data:`MIN_COSINE`."""
        return _within(self.max_abs_diff, self.min_cosine, self.reference_scale)


def compare_export(
    model: SpeakerEmbeddingModule,
    exported_path: str | Path,
    lengths: Sequence[float] = (0.7, 1.3, 3.0),
    batch_sizes: Sequence[int] = (1, 2),
    seed: int = 0,
) -> list[Comparison]:
    """Run an exported file and ``model.embed`` on the same noise clips; one row per length and batch size.

    For each duration in ``lengths`` (seconds) and each batch size ``b``, a batch of ``b`` clips,
    the first of that duration and the others shorter (down to 60 %), zero padded as a
    DataModule pads them.
    """
    _check_model(model)
    run = load_exported(exported_path)
    rows = []
    with _EvalMode(model), torch.no_grad():
        for seconds in lengths:
            for b in batch_sizes:
                durations = [seconds * (1 - 0.4 * i / max(b - 1, 1)) for i in range(b)]
                rows.append(_compare(run, model, float(seconds), durations, seed, str(exported_path)))
    return rows


def _compare(
    run: Callable[[Tensor, Tensor], Tensor],
    model: SpeakerEmbeddingModule,
    seconds: float,
    durations: Sequence[float],
    seed: int,
    name: str,
) -> Comparison:
    """One batch of noise clips of ``durations`` through ``run`` and ``model.embed`` (eval mode, no grad)."""
    waveforms, lengths = _example(model, durations, seed=seed)
    t0 = time.perf_counter()
    reference = model.embed(waveforms, lengths)
    t1 = time.perf_counter()
    try:
        out = run(waveforms, lengths)
    except Exception as error:  # noqa: BLE001 - onnxruntime and TorchScript raise their own types
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ExportError(f"{name} fails on clips of {lengths.tolist()} samples: {type(error).__name__}: {first}") from error
    t2 = time.perf_counter()
    if out.shape != reference.shape:
        raise ExportError(
            f"{name}: embeddings of shape {tuple(out.shape)} for clips of {lengths.tolist()} samples, expected "
            f"{tuple(reference.shape)} (a dimension was fixed at export)"
        )
    diff, cosine, scale = _worst(out, reference)
    return Comparison(seconds, tuple(int(n) for n in lengths), diff, cosine, scale, t2 - t1, t1 - t0)


def verify_export(
    model: SpeakerEmbeddingModule,
    exported_path: str | Path,
    lengths: Sequence[float] = (0.7, 1.3, 3.0),
    batch_sizes: Sequence[int] = (1, 2),
) -> float:
    """Largest absolute difference between the exported file's embeddings and ``model.embed``'s
    over :func:`compare_export`'s batches."""
    return max(row.max_abs_diff for row in compare_export(model, exported_path, lengths, batch_sizes))


__all__ = [
    "ATOL",
    "Comparison",
    "DFTSpectrogram",
    "EmbeddingExtractor",
    "ExportError",
    "ExportResult",
    "INSTALL_HINT",
    "MIN_COSINE",
    "MissingExportDependency",
    "compare_export",
    "detect_format",
    "export_metadata",
    "load_exported",
    "read_metadata",
    "require",
    "to_onnx",
    "to_torchscript",
    "verify_export",
]
