"""Checkpoint files that try to run code, or to choose the model against the user's config.

Each payload is a real pickle whose unpickling would run ``touch MARKER`` through ``os.system``;
no loading path may create the marker, and each refusal names the file and what to do.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch

from speakerzoo.datamodules.toy import prepare_toy
from speakerzoo.zoo import FrameDNN, SpeakerEmbeddingModule
from speakerzoo.zoo.checkpoint import InvalidCheckpointError, read_checkpoint_file
from cli_run import QUIET, REPO, SMALL, TINY, cli, fit_tiny


class Payload:
    """Unpickled, runs a shell command (what an attacker's checkpoint does)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture()
def marker(tmp_path) -> Path:
    return tmp_path / "PAYLOAD-RAN"


@pytest.fixture()
def evil(tmp_path, marker) -> Path:
    """A Lightning-shaped checkpoint with a payload among its entries."""
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"net.0.weight": torch.zeros(2, 2)}, "epoch": 0, "extra": Payload(marker)}, path)
    # The payload is real: an unrestricted unpickler runs it (checked on its own pickle, then removed).
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.exists()
    marker.unlink()
    return path


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    return prepare_toy(tmp_path_factory.mktemp("toy") / "toy.h5", speakers=12, utterances=6, seed=5, progress=False)


@pytest.fixture(scope="module")
def ecapa_ckpt(toy, tmp_path_factory) -> Path:
    """A real ECAPA checkpoint of one short epoch through the CLI."""
    return fit_tiny(toy, tmp_path_factory.mktemp("ecapa"), batches=1)


def run_cli(capsys, *args: str) -> str:
    """``speakerzoo ARGS`` expected to be refused: its exit code 2 and stderr."""
    with pytest.raises(SystemExit) as exit_info:
        cli(*args)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_reading_a_payload_checkpoint_is_refused_with_the_reference(evil, marker):
    with pytest.raises(InvalidCheckpointError) as error:
        read_checkpoint_file(evil)
    message = str(error.value)
    assert str(evil) in message and "system" in message and "could run code" in message
    assert "will likely succeed" not in message  # torch's advice to retry unsafely is not repeated
    assert not marker.exists()


def test_init_from_a_payload_checkpoint_runs_nothing(evil, marker):
    # `fit -c configs/frame_dnn.yaml --model.init_args.init_from evil.ckpt` reaches this call at setup.
    model = FrameDNN(num_speakers=2, sample_rate=8000, speaker_names=["a", "b"], init_from=str(evil))
    with pytest.raises(InvalidCheckpointError, match="evil.ckpt: refusing to load"):
        model.init_weights_from(evil)
    assert not marker.exists()


def test_from_pretrained_on_a_payload_checkpoint_runs_nothing(evil, marker):
    with pytest.raises(InvalidCheckpointError, match="evil.ckpt: refusing to load"):
        SpeakerEmbeddingModule.from_pretrained(evil)
    assert not marker.exists()


@pytest.mark.parametrize("subcommand", ["fit", "test"])
def test_ckpt_path_with_a_payload_runs_nothing(evil, marker, toy, subcommand, capsys):
    err = run_cli(capsys, subcommand, "-c", SMALL, *TINY, f"--data.init_args.corpus={toy}", f"--ckpt_path={evil}")
    assert f"speakerzoo {subcommand}: error: {evil}: refusing to load" in err
    assert not marker.exists()


def test_a_checkpoint_does_not_choose_the_model_class_or_its_init_from(evil, marker, toy, tmp_path, capsys):
    # Passes weights-only loading, but its hyper-parameters ask LightningCLI for a FrameDNN that
    # initialises itself from the payload file.
    clean = tmp_path / "clean.ckpt"
    torch.save({"state_dict": {}, "epoch": 0,
                "hyper_parameters": {"_class_path": "speakerzoo.zoo.frame_dnn.FrameDNN", "init_from": str(evil)}},
               clean)
    err = run_cli(capsys, "fit", "-c", SMALL, *TINY, f"--data.init_args.corpus={toy}", f"--ckpt_path={clean}")
    assert "holds a speakerzoo.zoo.frame_dnn.FrameDNN model, but the config asks for speakerzoo.zoo.ECAPA" in err
    assert str(clean) in err
    assert not marker.exists()


def test_a_remote_ckpt_path_is_refused_before_any_download(toy, capsys):
    # Lightning would fetch it and unpickle it without weights_only. Nothing listens on port 9.
    url = "http://127.0.0.1:9/evil.ckpt"
    err = run_cli(capsys, "fit", "-c", SMALL, *TINY, f"--data.init_args.corpus={toy}", f"--ckpt_path={url}")
    assert f"{url}: speakerzoo loads checkpoints from local files only" in err


def test_weights_only_false_is_refused(ecapa_ckpt, toy, capsys):
    err = run_cli(capsys, "test", "-c", SMALL, *TINY, f"--data.init_args.corpus={toy}", f"--ckpt_path={ecapa_ckpt}",
                  "--weights_only=false")
    assert "--weights_only false" in err


def test_a_checkpoint_of_another_model_is_refused_under_a_config(ecapa_ckpt, toy, tmp_path, capsys):
    # `test -c configs/se_cnn_bigru.yaml --ckpt_path ecapa.ckpt` used to evaluate the ECAPA silently.
    err = run_cli(capsys, "test", "-c", str(REPO / "configs/se_cnn_bigru.yaml"), f"--data.init_args.corpus={toy}",
                  f"--ckpt_path={ecapa_ckpt}")
    assert f"{ecapa_ckpt} holds a speakerzoo.zoo.ECAPA model, but the config asks for" in err
    assert "SECNNBiGRU" in err and "config.yaml" in err
    # The same checkpoint under its own config is tested as usual.
    cli("test", "-c", SMALL, *TINY, *QUIET, f"--data.init_args.corpus={toy}", f"--ckpt_path={ecapa_ckpt}",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'test'}")


@pytest.mark.parametrize("damage", ["random", "truncated"])
def test_a_damaged_ckpt_path_is_named_plainly(ecapa_ckpt, toy, tmp_path, damage, capsys):
    bad = tmp_path / f"{damage}.ckpt"
    data = ecapa_ckpt.read_bytes()
    bad.write_bytes(os.urandom(4096) if damage == "random" else data[: len(data) // 2])
    assert not zipfile.is_zipfile(bad)
    err = run_cli(capsys, "test", "-c", SMALL, *TINY, f"--data.init_args.corpus={toy}", f"--ckpt_path={bad}")
    assert f"{bad} is not a PyTorch checkpoint" in err
    assert "will likely succeed" not in err and "Traceback" not in err  # torch's advice to load unsafely


@pytest.mark.parametrize("command", ["verify", "embed", "identify"])
def test_commands_check_the_registry_class_of_a_name(ecapa_ckpt, fsdd_root, tmp_path, monkeypatch, command, capsys):
    # A registry entry whose class is not the file's: export refused it, verify/embed/identify did not.
    from speakerzoo.zoo import registry as reg

    registry = tmp_path / "registry.yaml"
    registry.write_text(
        f"wrong:\n  path: {ecapa_ckpt}\n  sha256: {reg.sha256_of(ecapa_ckpt)}\n"
        "  class: speakerzoo.zoo.se_cnn_bigru.SECNNBiGRU\n  corpus: toy\n  eer: 0.2\n")
    monkeypatch.setenv("SPEAKERZOO_REGISTRY", str(registry))
    wavs = sorted((fsdd_root / "recordings").glob("*_george_*.wav"))[:2]
    args = {"verify": ["verify", "--checkpoint", "wrong", *map(str, wavs)],
            "identify": ["identify", "--checkpoint", "wrong", "--enrol", f"george={wavs[0]}", str(wavs[1])],
            "embed": ["embed", "--checkpoint", "wrong", "--output", str(tmp_path / "e.h5"), str(fsdd_root / "recordings")]}
    with pytest.raises(SystemExit) as exit_info:
        cli(*args[command])
    assert exit_info.value.code != 0
    err = capsys.readouterr().err
    assert "registry entry 'wrong' says class speakerzoo.zoo.se_cnn_bigru.SECNNBiGRU" in err
    assert not (tmp_path / "e.h5").exists()


def test_a_changed_weight_in_the_file_is_an_error_not_other_scores(ecapa_ckpt, toy, tmp_path, capsys):
    # One weight changed where it lies in the file (the zip keeps tensors as raw bytes): torch.load
    # does not notice, and the model used to load and score differently.
    checkpoint = torch.load(ecapa_ckpt, weights_only=True)
    assert set(checkpoint["speakerzoo"]["tensor_sha256"]) == set(checkpoint["state_dict"])
    weight = checkpoint["state_dict"]["head.classifier.weight"]
    data = bytearray(ecapa_ckpt.read_bytes())
    raw = weight.contiguous().numpy().tobytes()
    at = data.find(raw[:64])
    assert at > 0 and data.find(raw[:64], at + 1) < 0  # the tensor's bytes, found once
    data[at + 13] ^= 0x10
    flipped = tmp_path / "flipped.ckpt"
    flipped.write_bytes(bytes(data))
    assert not torch.equal(torch.load(flipped, weights_only=True)["state_dict"]["head.classifier.weight"], weight)
    with pytest.raises(InvalidCheckpointError, match=r"flipped\.ckpt is damaged: 1 weight tensor\(s\) differ .*"
                                                     r"head\.classifier\.weight"):
        SpeakerEmbeddingModule.from_pretrained(flipped)
    err = run_cli(capsys, "test", "-c", SMALL, *TINY, f"--data.init_args.corpus={toy}", f"--ckpt_path={flipped}")
    assert f"{flipped} is damaged" in err
