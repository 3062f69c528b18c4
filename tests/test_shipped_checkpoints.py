"""The checkpoints shipped in ``checkpoints/``: every registry entry verifies, loads by name on a
fresh clone and tells unseen real speakers apart; ``speakerzoo verify --checkpoint NAME`` works
with no training; ``init_from: NAME`` starts fine-tuning from one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cli_run import exit_code
from speakerzoo.commands import verify as verify_cmd
from speakerzoo.zoo import SpeakerEmbeddingModule, load_registry
from speakerzoo.zoo import registry as reg

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "checkpoints" / "registry.yaml"
NAMES = sorted(load_registry(SHIPPED).entries)
# Speech Commands speakers of the test part of the shipped models' corpus (benchmarks/train_zoo.py:
# the pooled corpus split by speaker with seed 0), never trained on; four clips each.
UNSEEN_SPEAKERS = ["105a0eea", "3d86b69a", "4620dc14", "5e3dde6b", "5ff3f9a1", "68dd409e", "692a88e6", "6f2f57c1"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def shipped_registry(monkeypatch):
    monkeypatch.delenv("SPEAKERZOO_REGISTRY", raising=False)
    monkeypatch.setenv("SPEAKERZOO_CACHE", "/nonexistent-speakerzoo-cache")  # nothing may be downloaded


def test_the_shipped_registry_has_the_zoo_models_small_and_documented():
    assert reg.default_registry_path() == SHIPPED
    text = SHIPPED.read_text()
    for field in ("path:", "url:", "sha256:", "class:", "corpus:", "eer:", "licence:", "notes:", "SPEAKERZOO_CACHE"):
        assert field in text, field
    entries = load_registry(SHIPPED).entries
    classes = {e.class_path for e in entries.values()}
    assert {"speakerzoo.zoo.ecapa.ECAPA", "speakerzoo.zoo.se_cnn_bigru.SECNNBiGRU",
            "speakerzoo.zoo.deep_speaker.DeepSpeaker"} <= classes
    total = 0
    for entry in entries.values():
        assert entry.url is None and entry.path == f"{entry.name}.ckpt"  # beside the registry, committed
        assert entry.licence and "CC BY 4.0" in entry.licence and 0 < entry.eer < 0.5
        total += (SHIPPED.parent / entry.path).stat().st_size
    assert total <= 40 * 2**20


def test_checkpoints_verify_passes_for_every_entry(capsys):
    assert exit_code("checkpoints", "verify") == 0
    out = capsys.readouterr().out
    for name in NAMES:
        assert name in out


@pytest.mark.parametrize("name", NAMES)
def test_a_shipped_model_loads_by_name_and_separates_unseen_speakers(name, speech_commands_root):
    model = SpeakerEmbeddingModule.from_pretrained(name)
    assert not model.training and model.sample_rate == 16000
    from speakerzoo import SpeakerRecognizer

    rec = SpeakerRecognizer.from_pretrained(name)
    files = [f for s in UNSEEN_SPEAKERS for f in sorted(speech_commands_root.glob(f"*/{s}_nohash_*.wav"))[:4]]
    assert len(files) == 4 * len(UNSEEN_SPEAKERS)
    emb = F.normalize(rec.embed_files(files).embedding, dim=1)
    cos = emb @ emb.T
    speaker = torch.arange(len(files)) // 4
    same = (speaker[:, None] == speaker[None]) & ~torch.eye(len(files), dtype=torch.bool)
    different = speaker[:, None] != speaker[None]
    # Measured: mean same-speaker cosine 0.54-0.70, different-speaker 0.02-0.16.
    assert float(cos[same].mean()) > float(cos[different].mean()) + 0.25


def test_verify_with_a_registered_name_needs_no_training(fsdd_root, capsys):
    a = fsdd_root / "recordings" / "1_theo_40.wav"
    b = fsdd_root / "recordings" / "7_theo_41.wav"
    capsys.readouterr()
    assert verify_cmd.main(["--checkpoint", "ecapa-c256-sc16k", str(a), str(b), "--json", "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out)
    (trial,) = result["trials"]
    assert result["threshold"] == pytest.approx(load_threshold("ecapa-c256-sc16k"))
    assert trial["decision"] == ("ACCEPT" if trial["score"] >= result["threshold"] else "REJECT")
    assert verify_cmd.main(["--checkpoint", "ecapa-c256-sc16k", str(a), str(b)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] in ("ACCEPT", "REJECT")


def load_threshold(name: str) -> float:
    checkpoint = torch.load(SHIPPED.parent / f"{name}.ckpt", map_location="cpu", weights_only=True)
    return float(checkpoint["speakerzoo"]["eer_threshold"])


def test_init_from_a_registered_name_loads_all_but_the_head():
    shipped = SpeakerEmbeddingModule.from_pretrained("ecapa-c256-sc16k")
    hparams = {k: v for k, v in shipped.hparams.items() if k not in ("num_speakers", "speaker_names", "init_from")}
    model = type(shipped)(num_speakers=5, init_from="ecapa-c256-sc16k", **hparams)
    report = model.init_weights_from("ecapa-c256-sc16k")
    assert report.dropped and all(k.startswith("head.") for k in report.dropped)
    for key, value in shipped.state_dict().items():
        if not key.startswith("head."):
            assert torch.equal(model.state_dict()[key], value.to(model.state_dict()[key].dtype)), key
