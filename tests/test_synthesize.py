"""``speakerzoo synthesize`` (seed 000 §III-A): a generator learns one FSDD speaker's real training
frames as text, and the frames read back from its 1,000-character blocks become a frame file that
the frame task adds to its training part."""

from __future__ import annotations

import numpy as np
import pytest

from speakerzoo.commands.synthesize import GENERATOR_SETTINGS, EpochLosses, main, sample_frames, synthesize, train_generator
from speakerzoo.datamodules import FrameDataModule
from speakerzoo.datamodules.frames import read_frame_file
from speakerzoo.frame_text import frames_to_text

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.filterwarnings("ignore:.*does not have many workers"),
]


def test_synthesize_writes_well_formed_frames_of_the_subject(fsdd_corpus, tmp_path):
    # 13 MFCCs written without decimals make short lines, which a small LSTM learns in seconds
    path, losses, sampled = synthesize(
        str(fsdd_corpus), "jackson", tmp_path / "jackson.h5", num_frames=40, features="mfcc13",
        subject_utterances=8, decimals=0, epochs=4, lstm_units=64, seq_len=100, batch_size=16, lr=5e-3)
    frames, labels, info = read_frame_file(path)
    assert frames.shape == (40, 13) and np.all(labels == 1) and np.isfinite(frames).all()
    assert info["subject"] == "jackson" and info["settings"]["generator"] == "lstm"
    assert info["settings"]["real_frames"] > 0 and info["settings"]["blocks"] == sampled.blocks
    # the values are whole numbers (decimals=0) in the range of the real frames
    assert np.array_equal(frames, np.round(frames))
    real = FrameDataModule(str(fsdd_corpus), subject="jackson", features="mfcc13", subject_utterances=8).subject_frames()
    inside = (frames >= real.min(0)) & (frames <= real.max(0))
    assert inside.mean() > 0.5, inside.mean()  # mostly within each coefficient's real range (0.71 here)
    assert len(losses.train) == 4 and losses.train[-1] < losses.train[0]
    assert losses.best()[1] in range(1, 5)
    # the frame task takes them as the subject's training frames
    task = FrameDataModule(str(fsdd_corpus), subject="jackson", features="mfcc13", subject_utterances=8,
                           synthetic=str(path), synthetic_frames=30)
    base = FrameDataModule(str(fsdd_corpus), subject="jackson", features="mfcc13", subject_utterances=8)
    assert np.array_equal(task.class_counts(), base.class_counts() + [0, 30])


def test_an_untrained_generator_fails_with_the_fix(fsdd_corpus):
    frames = FrameDataModule(str(fsdd_corpus), subject="theo", subject_utterances=2).subject_frames()
    text = frames_to_text(frames, np.ones(len(frames), int))
    generator, _ = train_generator(text, "lstm", lstm_units=8, epochs=1, seq_len=50, batch_size=64)
    with pytest.raises(RuntimeError, match="has not learnt the frame format; train it for more epochs"):
        sample_frames(generator, 1000, max_blocks=8, batch_size=8)


def test_each_generator_trains_with_its_own_settings_unless_given(fsdd_corpus):
    """GPT-2 on characters gets its measured recipe (2 x 64, windows of 128 that also bound its
    sampling context), the LSTM its own; a given setting wins."""
    frames = FrameDataModule(str(fsdd_corpus), subject="theo", subject_utterances=2).subject_frames()
    text = frames_to_text(frames[:40], np.ones(40, int))
    gpt2, losses = train_generator(text, "gpt2", epochs=1)
    recipe = GENERATOR_SETTINGS["gpt2"]
    assert (gpt2.model.config.n_layer, gpt2.model.config.n_embd) == (2, 64) == \
        (recipe["gpt2"]["n_layer"], recipe["gpt2"]["n_embd"])
    assert gpt2.window == recipe["seq_len"] == 128 and gpt2.hparams.lr == recipe["lr"] and len(losses.train) == 1
    assert train_generator(text, "gpt2", epochs=1, seq_len=64)[0].window == 64
    lstm, _ = train_generator(text, "lstm", lstm_units=8, epochs=1)
    assert lstm.hparams.lr == GENERATOR_SETTINGS["lstm"]["lr"] != recipe["lr"]
    with pytest.raises(ValueError, match="unknown generator 'rnn'; choose one of lstm, gpt2"):
        train_generator(text, "rnn")


def test_epoch_losses_best():
    losses = EpochLosses()
    losses.train = [2.0, 1.5, 1.7]
    assert losses.best() == (1.5, 2)


def test_command_line_help_and_errors(fsdd_corpus, tmp_path, capsys):
    assert main(["--help"]) == 0 and "--generator {lstm,gpt2}" in capsys.readouterr().out
    assert main([str(fsdd_corpus), "--subject", "nobody", "--output", str(tmp_path / "x.h5"), "--quiet"]) == 2
    assert "no speaker 'nobody'" in capsys.readouterr().err
    missing = tmp_path / "gone"
    assert main([str(fsdd_corpus), "--subject", "theo", "--generator", "gpt2", "--gpt2-pretrained", str(missing),
                 "--output", str(tmp_path / "x.h5"), "--quiet", "--subject-utterances", "2"]) == 2
    assert str(missing) in capsys.readouterr().err
    assert not (tmp_path / "x.h5").exists()
