"""``speakerzoo checkpoints strip``: an inference checkpoint without optimiser state embeds real
speech exactly as the training checkpoint (float32) or within the stated tolerance (float16),
loads through the same safe path, and is refused where it would overwrite its source."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from speakerzoo import SpeakerRecognizer
from speakerzoo.commands import checkpoints as checkpoints_cmd
from speakerzoo.zoo.strip import HALF_TOLERANCE


def test_stripped_checkpoints_embed_as_the_original(fsdd_tiny_ecapa: Path, fsdd_root: Path, tmp_path: Path, capsys):
    files = [fsdd_root / "recordings" / f"{d}_theo_{i}.wav" for d, i in ((1, 40), (5, 41), (9, 42))]
    original = SpeakerRecognizer.from_pretrained(fsdd_tiny_ecapa, device="cpu", progress=False)
    reference = original.embed_files(files).embedding
    for half in (False, True):
        out = tmp_path / ("half.ckpt" if half else "full.ckpt")
        code = checkpoints_cmd.main(["strip", str(fsdd_tiny_ecapa), "--output", str(out), *(["--half"] if half else [])])
        assert code == 0, capsys.readouterr().err
        assert f"wrote {out}" in capsys.readouterr().out
        saved = torch.load(out, weights_only=True)
        assert "optimizer_states" not in saved and "callbacks" not in saved and "loops" not in saved
        floats = [v for v in saved["state_dict"].values() if v.is_floating_point()]
        assert all(v.dtype == (torch.float16 if half else torch.float32) for v in floats)
        assert saved["speakerzoo"]["stripped"]["dtype"] == ("float16" if half else "float32")
        rec = SpeakerRecognizer.from_pretrained(out, device="cpu", progress=False)
        assert rec.threshold == original.threshold and rec.model.speaker_names == original.model.speaker_names
        mine = rec.embed_files(files).embedding
        if half:
            a, b = F.normalize(reference.double(), dim=-1), F.normalize(mine.double(), dim=-1)
            assert float((a - b).abs().max()) <= HALF_TOLERANCE["max_abs_diff"]
            assert float((a * b).sum(-1).min()) >= HALF_TOLERANCE["min_cosine"]
        else:
            assert torch.equal(mine, reference)
    assert (tmp_path / "half.ckpt").stat().st_size < (tmp_path / "full.ckpt").stat().st_size < fsdd_tiny_ecapa.stat().st_size


def test_strip_refuses_to_overwrite_its_source_and_damaged_files(fsdd_tiny_ecapa: Path, tmp_path: Path, capsys):
    copy = tmp_path / "copy.ckpt"
    copy.write_bytes(fsdd_tiny_ecapa.read_bytes())
    before = copy.read_bytes()
    assert checkpoints_cmd.main(["strip", str(copy), "--output", str(copy)]) == 2
    assert "is the checkpoint being stripped" in capsys.readouterr().err and copy.read_bytes() == before
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(before[: len(before) // 2])
    assert checkpoints_cmd.main(["strip", str(broken), "--output", str(tmp_path / "out.ckpt")]) == 2
    assert "broken.ckpt" in capsys.readouterr().err and not (tmp_path / "out.ckpt").exists()
