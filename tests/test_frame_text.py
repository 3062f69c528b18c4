"""The frame text format of seed 000 (issue 5's line filter): real MFCC frames written as lines,
cut into 1,000-character blocks as a generator samples them, and read back."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from speakerzoo.features import Frontend
from speakerzoo.frame_text import frames_to_text, parse_block, parse_line

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def real_frames(fsdd_root):
    """26 MFCC per 25 ms frame, every 10 ms (seed 000 §III-B), of two real FSDD clips."""
    frontend = Frontend("mfcc26", sample_rate=8000)
    files = sorted((fsdd_root / "recordings").glob("*_george_*.wav"))[:2]
    frames = []
    for f in files:
        wave, rate = sf.read(f, dtype="float32")
        assert rate == 8000
        feats, n = frontend(torch.from_numpy(wave)[None])
        frames.append(feats[0, : int(n[0])].numpy())
    return np.concatenate(frames)


def test_good_lines_round_trip(real_frames):
    text = frames_to_text(real_frames, np.ones(len(real_frames), int), decimals=4)
    assert text.count("\n") == len(real_frames) and all(line.count(",") == 26 for line in text.splitlines())
    parsed = parse_block(text, dim=26, classes={1})
    assert parsed.malformed == 0 and not parsed.cut
    np.testing.assert_allclose(parsed.frames, real_frames, atol=5e-5)
    assert parsed.labels.tolist() == [1] * len(real_frames)


def test_blocks_of_1000_characters_drop_exactly_the_cut_lines(real_frames):
    """Cut the text every 1,000 characters, as sampling does: every line that lies wholly inside a
    block is kept, in order; every line that a boundary cuts is dropped, and nothing else."""
    text = frames_to_text(real_frames, np.ones(len(real_frames), int))
    lines = text.splitlines(keepends=True)
    starts = np.cumsum([0] + [len(line) for line in lines])
    whole = [k for k, line in enumerate(lines) if starts[k] // 1000 == (starts[k] + len(line) - 1) // 1000]
    kept, cut, previous_cut = [], 0, False
    for b in range(0, len(text), 1000):
        parsed = parse_block(text[b:b + 1000], dim=26, classes={1}, after_cut=previous_cut)
        kept.append(parsed.frames)
        cut += parsed.cut
        previous_cut = parsed.cut
    kept = np.concatenate(kept)
    assert len(whole) < len(lines) and cut > 0
    np.testing.assert_allclose(kept, real_frames[whole], atol=5e-4)


def test_the_rest_of_a_line_cut_in_its_first_number_is_not_taken_for_a_line():
    line = ",".join(["12.5"] * 26) + ",1\n"
    head, rest = line[:1], line[1:]  # cut after "1": the rest "2.5,...,1" has 26 values and a class
    assert parse_block(head, dim=26).cut
    assert len(parse_block(rest, dim=26).frames) == 1  # read alone it passes for a whole line
    assert len(parse_block(rest, dim=26, after_cut=True).frames) == 0


@pytest.mark.parametrize("line", [
    ",".join(["1.0"] * 25) + ",1",            # 25 values
    ",".join(["1.0"] * 27) + ",1",            # 27 values
    ",".join(["1.0"] * 26),                   # no class
    ",".join(["1.0"] * 25) + ",abc,1",        # not a number
    ",".join(["1.0"] * 25) + ",nan,1",        # not finite
    ",".join(["1.0"] * 25) + ",,1",           # an empty field
    ",".join(["1.0"] * 26) + ",1.5",          # a class that is no integer
    ",".join(["1.0"] * 26) + ",7",            # a class not asked for
    "",                                       # an empty line
])
def test_malformed_lines_are_dropped(line):
    assert parse_line(line, dim=26, classes={0, 1}) is None
    good = ",".join(["0.25"] * 26) + ",0"
    parsed = parse_block(f"{good}\n{line}\n{good}\n", dim=26, classes={0, 1})
    assert parsed.malformed == 1 and len(parsed.frames) == 2 and not parsed.cut


def test_a_block_without_a_line_break_yields_nothing():
    parsed = parse_block(",".join(["1.0"] * 26) + ",1", dim=26)
    assert parsed.frames.shape == (0, 26) and parsed.cut and parsed.malformed == 0


def test_frames_that_cannot_be_written_are_refused():
    with pytest.raises(ValueError, match="NaN"):
        frames_to_text([[float("nan"), 1.0]], [1])
    with pytest.raises(ValueError, match="labels"):
        frames_to_text([[0.0, 1.0]], [1, 0])
