"""Export: TorchScript and ONNX files of the inference path agree with ``model.embed``; the command."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import sys
import zipfile
from pathlib import Path

import lightning
import pytest
import torch
from torch import nn

import speakerzoo.commands.export as command
from speakerzoo.datamodules import SpeakerDataModule
from speakerzoo.datamodules.toy import prepare_toy
from speakerzoo.zoo import ECAPA, SpeakerEmbeddingModule
from speakerzoo.zoo.export import (
    ATOL,
    INSTALL_HINT,
    DFTSpectrogram,
    EmbeddingExtractor,
    ExportError,
    MissingExportDependency,
    _example,
    compare_export,
    load_exported,
    read_metadata,
    to_onnx,
    to_torchscript,
    verify_export,
)

TINY = dict(num_speakers=4, channels=[32, 32, 32, 32, 96], embedding_dim=16, attention_channels=8, se_channels=8)
SR = 16000
EXPORT_SECONDS = 1.0  # example length at export; the exporters also use 0.6 x this
# Checked lengths, none of them used at export; each alone, in a batch of 2 and of 3 (different lengths).
CHECK_SECONDS = (0.45, 1.7, 2.6)
ORT_REASON = "onnxruntime is not installed (pip install 'speakerzoo[export]'); ONNX files cannot be run"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_ecapa() -> ECAPA:
    """Tiny ECAPA in eval mode whose BatchNorm layers are not the identity."""
    torch.manual_seed(0)
    model = ECAPA(**TINY)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


@pytest.fixture(scope="module")
def model() -> ECAPA:
    return tiny_ecapa()


@pytest.fixture(scope="module")
def torchscript_file(model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ts")
    result = to_torchscript(model, folder / "ecapa.pt", example_seconds=EXPORT_SECONDS)
    return result


@pytest.fixture(scope="module")
def onnx_file(model, tmp_path_factory):
    pytest.importorskip("onnxruntime", reason=ORT_REASON)
    folder = tmp_path_factory.mktemp("onnx")
    return to_onnx(model, folder / "ecapa.onnx", opset=18, example_seconds=EXPORT_SECONDS)


def assert_reproduces(model, path, batch_sizes=(1, 2, 3)):
    rows = compare_export(model, path, lengths=CHECK_SECONDS, batch_sizes=batch_sizes)
    assert len(rows) == len(CHECK_SECONDS) * len(batch_sizes)
    export_samples = {int(EXPORT_SECONDS * SR), int(round(0.6 * EXPORT_SECONDS * SR))}
    for row in rows:
        assert not export_samples & set(row.lengths)
        assert row.ok, row
        assert row.max_abs_diff < 1e-4 and row.min_cosine > 0.99999, row
        assert row.reference_scale > 0.05  # real embeddings, not zeros
    assert {len(row.lengths) for row in rows} == set(batch_sizes)
    assert any(len(set(row.lengths)) == max(batch_sizes) > 1 for row in rows)  # padded batches of different lengths
    return rows


def test_model_is_not_trivial(model):
    # The comparisons below would prove little for a model whose BatchNorm is the identity or
    # whose embeddings do not depend on the input.
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm1d))
    assert bn.running_mean.abs().max() > 0.1 and (bn.running_var - 1).abs().max() > 0.1
    waveforms, lengths = _example(model, [1.0, 0.8, 0.5], seed=5)
    with torch.no_grad():
        emb = model.embed(waveforms, lengths)
    assert emb.std(0).min() > 1e-3


# ----------------------------------------------------------------------------- the wrapper


def test_dft_spectrogram_matches_torchaudio(model):
    spectrogram = model.frontend.mel.spectrogram
    x = 0.1 * torch.randn(3, 5000, generator=torch.Generator().manual_seed(1))
    reference = spectrogram(x)
    dft = DFTSpectrogram(spectrogram)(x)
    assert dft.shape == reference.shape == (3, 257, (5000 - 512) // 160 + 1)
    torch.testing.assert_close(dft, reference, rtol=1e-3, atol=1e-5 * float(reference.max()))


@pytest.mark.parametrize("spectrogram, atol", [("stft", 1e-6), ("dft", 1e-5)])
def test_extractor_is_embed_without_head(model, spectrogram, atol):
    extractor = EmbeddingExtractor(model, spectrogram=spectrogram)
    assert "head" not in dict(extractor.named_children()) and "trial_metrics" not in dict(extractor.named_children())
    # 1200 samples: just above the shortest clip the tiny ECAPA can embed (its reflect padding)
    for seconds in ([1.3, 0.075, 0.9], [0.5]):
        waveforms, lengths = _example(model, seconds, seed=2)
        with torch.no_grad():
            out, reference = extractor(waveforms, lengths), model.embed(waveforms, lengths)
        assert out.shape == (len(seconds), 16)
        torch.testing.assert_close(out, reference, atol=atol, rtol=0)


# ----------------------------------------------------------------------------- TorchScript


def test_torchscript_reproduces_embed_on_other_lengths_and_batches(model, torchscript_file):
    result = torchscript_file
    assert result.method == "trace" and result.format == "torchscript"
    assert any(note.startswith("torch.jit.script failed") for note in result.notes)
    assert zipfile.is_zipfile(result.path)
    assert [p.name for p in result.path.parent.iterdir()] == ["ecapa.pt"]  # no temporary file left
    rows = assert_reproduces(model, result.path)
    assert verify_export(model, result.path, lengths=CHECK_SECONDS, batch_sizes=(1, 2, 3)) == max(
        row.max_abs_diff for row in rows
    )
    # The plain file, as a user loads it.
    extra = {"speakerzoo.json": ""}
    module = torch.jit.load(str(result.path), _extra_files=extra)
    meta = json.loads(extra["speakerzoo.json"])
    assert meta["sample_rate"] == SR and meta["embedding_dim"] == 16 and meta["frontend"]["n_mels"] == 80
    assert read_metadata(result.path) == meta
    waveforms, lengths = _example(model, [2.2, 1.1], seed=9)
    with torch.no_grad():
        torch.testing.assert_close(module(waveforms, lengths), model.embed(waveforms, lengths), atol=1e-5, rtol=0)


def test_export_keeps_the_model_modes(tmp_path):
    model = tiny_ecapa().train()
    model.frontend.eval()
    to_torchscript(model, tmp_path / "m.pt", example_seconds=0.5)
    assert model.training and model.encoder.training and not model.frontend.training


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_check_catches_a_batch_baked_into_a_naive_trace(model, tmp_path):
    # Tracing embed() as is, with a batch of two, bakes len(lengths) = 2 into speechbrain's masks.
    class Naive(nn.Module):
        def __init__(self):
            super().__init__()
            self.__dict__["model"] = model
            self.frontend, self.encoder = model.frontend, model.encoder

        def forward(self, waveforms, lengths):
            return self.model.embed(waveforms, lengths)

    with torch.no_grad():
        traced = torch.jit.trace(Naive(), _example(model, [1.0, 0.6]), check_trace=False)
    traced.save(str(tmp_path / "naive.pt"))
    with pytest.raises(ExportError, match="shape"):
        compare_export(model, tmp_path / "naive.pt", lengths=(0.8,), batch_sizes=(1,))


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_to_torchscript_refuses_a_trace_that_does_not_generalise(model, tmp_path, monkeypatch):
    # Without the extractor's patch of speechbrain's length_to_mask, a trace made with a batch of
    # two keeps that batch size; to_torchscript must notice before writing anything.
    import speakerzoo.zoo.export as export

    example = export._example

    def batch_of_two(model, seconds, seed=0):
        return example(model, list(seconds) * 2 if seed == 0 else seconds, seed)

    monkeypatch.setattr(export, "export_patches", contextlib.nullcontext)
    monkeypatch.setattr(export, "_example", batch_of_two)
    with pytest.raises(ExportError, match="shape"):
        to_torchscript(model, tmp_path / "m.pt", example_seconds=0.5)
    assert list(tmp_path.iterdir()) == []


def scaled_copy(path: Path, factor: float) -> None:
    """Rewrite a TorchScript export so that its embeddings are ``factor`` times too large."""

    class Scaled(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner
            self.factor = factor

        def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
            return self.inner(waveforms, lengths) * self.factor

    torch.jit.script(Scaled(torch.jit.load(str(path)))).save(str(path))


def test_check_flags_wrong_embeddings(model, torchscript_file, tmp_path):
    path = tmp_path / "off.pt"
    path.write_bytes(torchscript_file.path.read_bytes())
    scaled_copy(path, 1.01)  # cosine stays 1: only the absolute tolerance can catch it
    rows = compare_export(model, path, lengths=(0.9,), batch_sizes=(1, 2))
    assert not any(row.ok for row in rows)
    assert verify_export(model, path, lengths=(0.9,)) > 10 * ATOL


# ----------------------------------------------------------------------------- ONNX


def test_onnx_dynamo_reproduces_embed_with_dynamic_batch_and_time(model, onnx_file):
    import onnx

    result = onnx_file
    assert result.method == "dynamo" and result.format == "onnx"
    assert [p.name for p in result.path.parent.iterdir()] == ["ecapa.onnx"]
    assert_reproduces(model, result.path)
    proto = onnx.load(str(result.path))
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) == 18
    inputs = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in proto.graph.input}
    assert set(inputs) == {"waveforms", "lengths"}
    assert all(isinstance(d, str) for d in inputs["waveforms"])  # symbolic batch and time
    assert inputs["lengths"][0] == inputs["waveforms"][0]
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["sample_rate"] == "16000" and props["embedding_dim"] == "16"
    assert json.loads(props["speakerzoo"])["model_class"] == "speakerzoo.zoo.ecapa.ECAPA"
    assert read_metadata(result.path)["sample_rate"] == SR


def test_onnx_opset17_uses_the_legacy_exporter_with_a_dft_frontend(model, tmp_path):
    pytest.importorskip("onnxruntime", reason=ORT_REASON)
    import onnx

    result = to_onnx(model, tmp_path / "legacy.onnx", opset=17, example_seconds=EXPORT_SECONDS)
    assert result.method == "legacy"
    proto = onnx.load(str(result.path))
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) == 17
    ops = {node.op_type for node in proto.graph.node}
    assert "STFT" not in ops and "Conv" in ops
    assert_reproduces(model, result.path, batch_sizes=(1, 2))


def test_missing_onnx_packages_say_how_to_install(model, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    fake = tmp_path / "model.onnx"
    fake.write_bytes(b"\x08\x07")
    with pytest.raises(MissingExportDependency, match="onnxruntime.*" + "pip install 'speakerzoo\\[export\\]'"):
        load_exported(fake)
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(MissingExportDependency, match="'onnx'") as info:
        to_onnx(model, tmp_path / "x.onnx")
    assert INSTALL_HINT in str(info.value)
    assert not (tmp_path / "x.onnx").exists()


# ----------------------------------------------------------------------------- other frontends and models


class WaveformModel(SpeakerEmbeddingModule):
    """A raw-waveform embedding model (no spectral frontend): strided conv, masked mean."""

    def __init__(self, num_speakers=0, sample_rate=16000, frontend="waveform", embedding_dim=8):
        super().__init__(num_speakers=num_speakers, sample_rate=sample_rate, frontend=frontend)
        self.save_hyperparameters()
        self.embedding_dim = embedding_dim
        self.conv = nn.Conv1d(1, embedding_dim, 400, stride=160)

    def encode(self, waveforms, lengths):
        hidden = torch.tanh(self.conv(waveforms.unsqueeze(1)))
        frames = torch.clamp((lengths - 400) // 160 + 1, min=1)
        mask = (torch.arange(hidden.shape[-1])[None, :] < frames[:, None]).to(hidden.dtype)
        return (hidden * mask[:, None]).sum(-1) / frames[:, None]


@pytest.mark.parametrize("frontend", ["logmel64", "mfcc26", "waveform"])
def test_other_frontends_export(frontend, tmp_path):
    torch.manual_seed(0)
    if frontend == "waveform":
        model = WaveformModel().eval()
    else:
        model = ECAPA(frontend=frontend, **{**TINY, "num_speakers": 0}).eval()
    files = [to_torchscript(model, tmp_path / "m.pt", example_seconds=EXPORT_SECONDS).path]
    if importlib.util.find_spec("onnxruntime") is not None:  # the fast exporter; dynamo is covered above
        files.append(to_onnx(model, tmp_path / "m.onnx", opset=17, example_seconds=EXPORT_SECONDS).path)
    for path in files:
        rows = compare_export(model, path, lengths=(0.45, 2.6), batch_sizes=(1, 3))
        assert all(row.ok and row.max_abs_diff < 1e-4 for row in rows), rows
        assert read_metadata(path)["frontend"]["kind"] == model.frontend.config.kind


# ----------------------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ckpt")
    corpus = prepare_toy(folder / "t.h5", speakers=14, utterances=4, progress=False)
    datamodule = SpeakerDataModule(corpus, speakers_per_batch=4, num_workers=0, crop_seconds=1.0)
    torch.manual_seed(0)
    model = ECAPA(**{**TINY, "num_speakers": datamodule.num_speakers})
    trainer = lightning.Trainer(
        max_steps=2, use_distributed_sampler=False, logger=False, enable_checkpointing=False, accelerator="cpu",
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
    )
    trainer.fit(model, datamodule=datamodule)  # train-mode forwards: BatchNorm statistics move
    trainer.save_checkpoint(folder / "ecapa.ckpt")
    return folder / "ecapa.ckpt"


@pytest.mark.parametrize("fmt, name", [("torchscript", "ecapa.pt"), ("onnx", "ecapa.onnx")])
def test_command_exports_a_checkpoint(checkpoint, tmp_path, capsys, fmt, name):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime", reason=ORT_REASON)
    output = tmp_path / "out" / name
    assert command.main([str(checkpoint), "--format", fmt, "--output", str(output)]) == 0
    printed = capsys.readouterr().out
    assert f"as {fmt} with" in printed and f"wrote {output}" in printed
    for seconds in ("0.70 s", "1.30 s", "3.00 s"):
        assert sum(seconds in line and line.rstrip().endswith("yes") for line in printed.splitlines()) == 2
    assert [p.name for p in output.parent.iterdir()] == [name]
    meta = read_metadata(output)
    assert (meta["sample_rate"], meta["embedding_dim"]) == (SR, 16)
    # The file embeds new audio as the checkpoint's model does.
    model = SpeakerEmbeddingModule.from_pretrained(checkpoint)
    waveforms, lengths = _example(model, [1.9, 0.85], seed=11)
    with torch.no_grad():
        torch.testing.assert_close(load_exported(output)(waveforms, lengths), model.embed(waveforms, lengths),
                                   atol=1e-4, rtol=0)


def test_command_refuses_to_write_a_file_that_fails_the_check(checkpoint, tmp_path, capsys, monkeypatch):
    def off_by_one_percent(model, path, **kwargs):
        result = to_torchscript(model, path, **kwargs)
        scaled_copy(Path(path), 1.01)
        return result

    monkeypatch.setattr(command, "to_torchscript", off_by_one_percent)
    output = tmp_path / "bad.pt"
    assert command.main([str(checkpoint), "--output", str(output), "--lengths", "0.8"]) == 1
    captured = capsys.readouterr()
    assert "NO" in captured.out and "not written" in captured.err
    assert list(tmp_path.iterdir()) == []
    # --no-check writes it anyway.
    assert command.main([str(checkpoint), "--output", str(output), "--no-check"]) == 0
    assert output.is_file() and "check against" not in capsys.readouterr().out


def test_command_without_onnxruntime_says_how_to_install(checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    output = tmp_path / "m.onnx"
    assert command.main([str(checkpoint), "--format", "onnx", "--output", str(output)]) == 1
    err = capsys.readouterr().err
    assert "onnxruntime" in err and "pip install 'speakerzoo[export]'" in err
    assert not output.exists()


def test_command_usage_errors(checkpoint, tmp_path, capsys):
    assert command.main([str(tmp_path / "missing.ckpt"), "--output", str(tmp_path / "m.pt")]) == 1
    assert "missing.ckpt" in capsys.readouterr().err
    # format neither given nor implied by the suffix: a usage error, returned like every command's
    assert command.main([str(checkpoint), "--output", str(tmp_path / "model.bin")]) == 2
    assert "--format" in capsys.readouterr().err
    assert command.main([str(checkpoint), "--format", "onnx", "--opset", "16",
                         "--output", str(tmp_path / "m.onnx")]) == 2
    assert "opset 17" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("frontend", ["sb_fbank80", "kaldi_fbank80"])
def test_imported_models_frontends_are_refused_with_the_reason(frontend, tmp_path):
    from speakerzoo.zoo.export import ExportError, to_torchscript

    model = ECAPA(num_speakers=0, frontend=frontend, channels=[16, 16, 16, 16, 48], embedding_dim=8,
                  attention_channels=8, se_channels=8)
    with pytest.raises(ExportError, match=f"the {frontend.rstrip('80')} frontend .* is not exportable yet"):
        to_torchscript(model, tmp_path / "model.pt")
    assert not (tmp_path / "model.pt").exists()
