"""The checkpoint registry: names, sha256 checks, file:// downloads, class checks and `speakerzoo checkpoints`."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from cli_run import exit_code as cli
from speakerzoo.zoo import (
    ECAPA,
    ChecksumError,
    InvalidCheckpointError,
    RegistryError,
    SpeakerEmbeddingModule,
    UnknownCheckpointError,
    load_registry,
    resolve,
)
from speakerzoo.zoo import registry as reg

REPO = Path(__file__).resolve().parents[1]
TINY = dict(channels=[16, 16, 16, 16, 48], embedding_dim=16, attention_channels=8, se_channels=8)
CLASS = "speakerzoo.zoo.ecapa.ECAPA"


def save_checkpoint(model: SpeakerEmbeddingModule, path: Path) -> Path:
    """What Lightning writes for a model (state dict, hyper-parameters, our on_save_checkpoint entry)."""
    checkpoint = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}
    model.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)
    return path


@pytest.fixture
def ckpt(tmp_path) -> Path:
    torch.manual_seed(0)
    (tmp_path / "models").mkdir()
    return save_checkpoint(ECAPA(num_speakers=3, speaker_names=["a", "b", "c"], **TINY), tmp_path / "models" / "tiny.ckpt")


def write_registry(path: Path, entries: dict) -> Path:
    path.write_text(yaml.safe_dump(entries))
    return path


def entry(**fields) -> dict:
    return {"class": CLASS, "corpus": "toy", "eer": 0.25, **fields}


def same_weights(model: torch.nn.Module, path: Path) -> bool:
    state = torch.load(path, weights_only=True)["state_dict"]
    return all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_sha256_of_matches_hashlib(ckpt):
    assert reg.sha256_of(ckpt, chunk=1000) == hashlib.sha256(ckpt.read_bytes()).hexdigest()


def test_name_resolution_relative_path_and_env(ckpt, tmp_path, monkeypatch):
    digest = reg.sha256_of(ckpt)
    registry = write_registry(tmp_path / "registry.yaml", {"tiny": entry(path="models/tiny.ckpt", sha256=digest)})
    assert resolve("tiny", registry) == tmp_path / "models" / "tiny.ckpt"
    model = SpeakerEmbeddingModule.from_pretrained("tiny", registry=registry)
    assert type(model) is ECAPA and model.speaker_names == ["a", "b", "c"] and same_weights(model, ckpt)
    # the default registry comes from $SPEAKERZOO_REGISTRY
    monkeypatch.setenv("SPEAKERZOO_REGISTRY", str(registry))
    assert same_weights(ECAPA.from_pretrained("tiny"), ckpt)
    # A file in the working directory named like an entry does not replace the registered (and
    # checked) file; a path with a folder loads that file. Unregistered bare names are paths.
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(1)
    other = save_checkpoint(ECAPA(num_speakers=3, **TINY), tmp_path / "tiny")
    assert resolve("tiny") == tmp_path / "models" / "tiny.ckpt"
    assert same_weights(SpeakerEmbeddingModule.from_pretrained("tiny"), ckpt)
    assert SpeakerEmbeddingModule.from_pretrained("tiny").checkpoint_path == tmp_path / "models" / "tiny.ckpt"
    assert resolve("./tiny") == Path("tiny") and resolve(Path("tiny")) == Path("tiny")
    assert same_weights(SpeakerEmbeddingModule.from_pretrained("./tiny"), other)
    shutil.copy(other, tmp_path / "untitled.ckpt")
    assert same_weights(SpeakerEmbeddingModule.from_pretrained("untitled.ckpt"), other)


def test_a_tampered_checkpoint_is_rejected(ckpt, tmp_path):
    digest = reg.sha256_of(ckpt)
    registry = write_registry(tmp_path / "registry.yaml", {"tiny": entry(path=str(ckpt), sha256=digest)})
    data = bytearray(ckpt.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte, inside the tensor data: torch.load alone would not notice
    ckpt.write_bytes(bytes(data))
    actual = reg.sha256_of(ckpt)
    with pytest.raises(ChecksumError) as error:
        SpeakerEmbeddingModule.from_pretrained("tiny", registry=registry)
    message = str(error.value)
    assert "tampered or incomplete" in message and str(ckpt) in message
    assert f"expected {digest}" in message and f"actual {actual}" in message
    # and a truncated one likewise
    ckpt.write_bytes(bytes(data[: len(data) // 3]))
    with pytest.raises(ChecksumError, match="tampered or incomplete"):
        resolve("tiny", registry)


def test_file_url_is_downloaded_into_the_cache_with_digest_check(ckpt, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("SPEAKERZOO_CACHE", str(cache))
    digest = reg.sha256_of(ckpt)
    published = tmp_path / "published" / "tiny-v1.ckpt"
    published.parent.mkdir()
    shutil.copy(ckpt, published)
    registry = write_registry(tmp_path / "registry.yaml", {
        "tiny": entry(url=published.as_uri(), sha256=digest),
        "corrupt": entry(url=published.as_uri(), sha256="0" * 64),
    })
    local = resolve("tiny", registry)
    assert local.parent == cache and local.suffix == ".ckpt" and reg.sha256_of(local) == digest
    assert [p.name for p in cache.iterdir()] == [local.name]  # no temporary file left behind
    published.unlink()  # now served from the cache
    assert same_weights(SpeakerEmbeddingModule.from_pretrained("tiny", registry=registry), ckpt)
    # a download whose digest does not match is not kept
    shutil.copy(ckpt, published)
    with pytest.raises(ChecksumError, match=r"tampered or incomplete \(expected 0{64}, actual " + digest):
        resolve("corrupt", registry)
    assert [p.name for p in cache.iterdir()] == [local.name]
    # a cached file that changed afterwards is caught too
    local.write_bytes(local.read_bytes()[:-10])
    with pytest.raises(ChecksumError, match=str(local)):
        resolve("tiny", registry)


def test_unknown_name_lists_the_known_names(ckpt, tmp_path):
    registry = write_registry(tmp_path / "registry.yaml", {
        "tiny": entry(path=str(ckpt), sha256=reg.sha256_of(ckpt)),
        "other": entry(path="nowhere.ckpt", sha256="1" * 64),
    })
    with pytest.raises(UnknownCheckpointError) as error:
        SpeakerEmbeddingModule.from_pretrained("tinny", registry=registry)
    assert isinstance(error.value, FileNotFoundError)
    assert "'tinny'" in str(error.value) and "knows: other, tiny" in str(error.value) and str(registry) in str(error.value)
    with pytest.raises(FileNotFoundError, match="nowhere.ckpt"):
        resolve("other", registry)


def test_registry_class_must_be_the_checkpoint_class(ckpt, tmp_path):
    digest = reg.sha256_of(ckpt)
    registry = write_registry(tmp_path / "registry.yaml", {
        "wrong": entry(path=str(ckpt), sha256=digest, **{"class": "speakerzoo.zoo.other.Wav2Vec"}),
        "short": entry(path=str(ckpt), sha256=digest, **{"class": "ECAPA"}),
    })
    with pytest.raises(InvalidCheckpointError, match=r"'wrong' says class speakerzoo\.zoo\.other\.Wav2Vec .* holds a "
                                                     r"speakerzoo\.zoo\.ecapa\.ECAPA checkpoint"):
        SpeakerEmbeddingModule.from_pretrained("wrong", registry=registry)
    assert type(SpeakerEmbeddingModule.from_pretrained("short", registry=registry)) is ECAPA
    # init_from goes through the same checks
    model = ECAPA(num_speakers=3, **TINY)
    with pytest.raises(InvalidCheckpointError, match="'wrong' says class"):
        model.init_weights_from("wrong", registry=registry)
    assert model.init_weights_from("short", registry=registry).dropped == []


def test_a_registered_file_with_objects_is_not_unpickled(tmp_path):
    class_bomb = tmp_path / "bomb.ckpt"
    torch.save({"state_dict": {}, "speakerzoo": {"class_path": CLASS}, "x": Path("/")}, class_bomb)
    registry = write_registry(tmp_path / "registry.yaml", {"bomb": entry(path=str(class_bomb),
                                                                         sha256=reg.sha256_of(class_bomb))})
    with pytest.raises(InvalidCheckpointError, match="plain data"):
        SpeakerEmbeddingModule.from_pretrained("bomb", registry=registry)


@pytest.mark.parametrize("fields,match", [
    ({"path": "a.ckpt", "url": "file:///a.ckpt"}, "exactly one of 'path' and 'url'"),
    ({"path": "a.ckpt", "sha256": "xyz"}, "64 hex digits"),
    ({"path": "a.ckpt", "eer": 12.5}, r"fraction in \[0, 1\]"),
    ({"url": "ftp://host/a.ckpt"}, "http"),
    ({"path": "a.ckpt", "weights": "x"}, "unknown field"),
])
def test_malformed_entries_name_the_file_and_entry(tmp_path, fields, match):
    registry = write_registry(tmp_path / "registry.yaml", {"bad": {**entry(sha256="2" * 64), **fields}})
    with pytest.raises(RegistryError, match=match) as error:
        load_registry(registry)
    assert str(registry) in str(error.value) and "'bad'" in str(error.value)


def test_checkpoints_command_add_list_verify(ckpt, tmp_path, capsys, monkeypatch):
    registry = tmp_path / "registry.yaml"
    # the shipped registry's documentation, without its entries
    header = [line for line in (REPO / "checkpoints" / "registry.yaml").read_text().splitlines() if line.startswith("#")]
    registry.write_text("\n".join(header) + "\n")
    assert cli("checkpoints", "add", "tiny", str(ckpt), "--corpus", "toy, 3 speakers", "--eer", "12.5%",
               "--notes", "a test", "--licence", "CC0 (synthetic)", "--registry", str(registry)) == 0
    assert cli("checkpoints", "add", "tiny-url", str(ckpt), "--corpus", "toy", "--eer", "0.3",
               "--url", "https://example.invalid/tiny.ckpt", "--registry", str(registry)) == 0
    text = registry.read_text()
    assert text.startswith("# speakerzoo checkpoint registry") and "# Format" in text  # comments kept
    entries = load_registry(registry).entries
    assert entries["tiny"].path == "models/tiny.ckpt"  # under the registry's folder: relative
    assert entries["tiny"].sha256 == reg.sha256_of(ckpt) and entries["tiny"].class_path == CLASS
    assert entries["tiny"].eer == pytest.approx(0.125) and entries["tiny"].notes == "a test"
    assert entries["tiny"].licence == "CC0 (synthetic)" and entries["tiny-url"].licence is None
    assert "licence: CC0 (synthetic)" in text
    assert entries["tiny-url"].url == "https://example.invalid/tiny.ckpt" and entries["tiny-url"].path is None
    capsys.readouterr()

    assert cli("checkpoints", "list", "--registry", str(registry)) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("tiny "))
    assert "ECAPA" in row and "12.50%" in row and "models/tiny.ckpt" in row and reg.sha256_of(ckpt)[:12] in row

    assert cli("checkpoints", "verify", "--registry", str(registry)) == 0
    out = capsys.readouterr().out
    assert "ok       tiny:" in out and "skipped  tiny-url" in out  # nothing is downloaded without --download

    # the same name again needs --force
    assert cli("checkpoints", "add", "tiny", str(ckpt), "--corpus", "x", "--eer", "0.1", "--registry", str(registry)) == 1
    assert "already has an entry 'tiny'" in capsys.readouterr().err

    data = bytearray(ckpt.read_bytes())
    data[-100] ^= 1
    ckpt.write_bytes(bytes(data))
    assert cli("checkpoints", "verify", "tiny", "--registry", str(registry)) == 1
    out = capsys.readouterr().out
    assert "FAILED   tiny" in out and "tampered or incomplete" in out
    # a file named like the entry in the working directory does not make the tampered one "ok"
    (tmp_path / "tiny").write_bytes(b"not the registered file")
    monkeypatch.chdir(tmp_path)
    assert cli("checkpoints", "verify", "tiny", "--registry", str(registry)) == 1
    assert "FAILED   tiny" in capsys.readouterr().out
    assert cli("checkpoints", "verify", "nope", "--registry", str(registry)) == 1
    assert "knows: tiny, tiny-url" in capsys.readouterr().err
