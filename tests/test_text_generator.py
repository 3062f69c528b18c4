"""The frame-text generators of seed 000 (§III-A, Table II): a character LSTM and GPT-2 (on
characters from scratch, or from a local pretrained directory with its own BPE tokenizer),
trained on real FSDD MFCC frames written as text and sampled in blocks of 1,000 characters."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from speakerzoo.datamodules.corpus import Corpus
from speakerzoo.frame_text import frames_to_text, parse_block
from speakerzoo.zoo.text_generator import CharLSTM, TextGenerator, text_windows
from speakerzoo.zoo.vocabulary import CharVocabulary

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.filterwarnings("ignore:.*does not have many workers"),
]

TINY_GPT2 = dict(n_embd=32, n_layer=1, n_head=2, n_positions=1100)


@pytest.fixture(scope="module")
def real_frames(fsdd_corpus) -> np.ndarray:
    """Real 26-MFCC frames of six utterances of one FSDD speaker (george)."""
    corpus = Corpus(fsdd_corpus)
    speaker = corpus.speakers.index("george")
    utterances = np.flatnonzero(corpus.speaker == speaker)[:6]
    frames = np.concatenate([corpus.features("mfcc26", int(i)) for i in utterances])
    corpus.close()
    assert frames.shape[1] == 26 and len(frames) > 100
    return frames


@pytest.fixture(scope="module")
def frame_text(real_frames) -> str:
    return frames_to_text(real_frames, np.ones(len(real_frames), int), decimals=2)


def _batch_loss(gen: TextGenerator, batch) -> float:
    """Next-character loss of one batch in eval mode (no dropout); the training flag is restored."""
    was_training = gen.training
    gen.eval()
    with torch.no_grad():
        inputs, targets = batch
        loss = F.cross_entropy(gen(inputs).flatten(0, 1), targets.flatten()).item()
    gen.train(was_training)
    return loss


def _fit(gen: TextGenerator, dataset, steps: int, batch_size: int = 16) -> None:
    train, val = torch.utils.data.random_split(dataset, [len(dataset) - 8, 8], torch.Generator().manual_seed(0))
    loader = DataLoader(train, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(0))
    trainer = L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", num_sanity_val_steps=0)
    trainer.fit(gen, loader, DataLoader(val, batch_size=8))
    assert trainer.global_step == steps
    assert {"train/loss", "val/loss"} <= set(trainer.callback_metrics)


def _round_trip(gen: TextGenerator, text: str, real_frames: np.ndarray, seq_len: int, steps: int) -> None:
    ids = gen.encode(text)
    assert gen.decode(ids) == text
    dataset = text_windows(ids, seq_len=seq_len)
    probe = dataset[:16]
    before = _batch_loss(gen, probe)
    _fit(gen, dataset, steps)
    after = _batch_loss(gen, probe)
    assert after < before, (before, after)

    gen.train()
    blocks = gen.sample(3, block_chars=1000, seed=0)
    assert gen.training  # the training flag is restored after sampling
    assert len(blocks) == 3 and all(len(b) == 1000 for b in blocks)
    assert set("".join(blocks)) <= set(gen.vocab.characters)
    assert len(set(blocks)) == 3  # independent blocks
    assert gen.sample(3, block_chars=1000, seed=0) == blocks
    assert gen.sample(3, block_chars=1000, seed=1) != blocks
    for block in blocks:  # after so little training the sampled lines may all be malformed
        parsed = parse_block(block, dim=26, classes={1})
        assert parsed.frames.shape[1] == 26 and len(parsed.frames) == len(parsed.labels)

    # a block of real lines cut at 1,000 characters, as sampling cuts it, parses back to those lines
    lines = text.splitlines(keepends=True)
    whole = 0
    while sum(len(line) for line in lines[:whole + 1]) < 1000:
        whole += 1
    block = "".join(lines[:whole + 1])[:1000]
    parsed = parse_block(block, dim=26, classes={1})
    assert parsed.cut and parsed.malformed == 0 and len(parsed.frames) == whole
    np.testing.assert_allclose(parsed.frames, np.round(real_frames[:whole], 2), atol=1e-4)
    assert parsed.labels.tolist() == [1] * whole


def test_char_lstm_round_trip(frame_text, real_frames):
    torch.manual_seed(0)
    gen = TextGenerator("lstm", alphabet=frame_text, lstm_units=32, lr=1e-2)
    assert isinstance(gen.model, CharLSTM) and len(gen.vocab) == len(set(frame_text))
    _round_trip(gen, frame_text, real_frames, seq_len=100, steps=40)


def test_char_gpt2_round_trip(frame_text, real_frames):
    torch.manual_seed(0)
    gen = TextGenerator("gpt2", alphabet=frame_text, gpt2=TINY_GPT2, lr=3e-3)
    newline = gen.vocab.encode("\n").item()
    config = gen.model.config
    assert (config.vocab_size, config.n_embd, config.n_positions) == (len(gen.vocab), 32, 1100)
    assert config.bos_token_id == config.eos_token_id == newline and config.resid_pdrop == 0.2
    # "\n" is the end token: generate() must not stop a block at its first line break
    _round_trip(gen, frame_text, real_frames, seq_len=128, steps=30)
    # blocks longer than the model's positions: sampling slides its window
    assert [len(b) for b in gen.sample(2, block_chars=1500, seed=0)] == [1500, 1500]
    with pytest.raises(ValueError, match="window=1100"):
        gen.sample(1, block_chars=10, prompt="\n" * 1100)


def _sample_by_recomputing(gen: TextGenerator, prompt: Tensor, n: int, block_chars: int, seed: int) -> Tensor:
    """The reference of the windowed sampler: every step runs the model on the whole context
    (at most ``gen.window`` characters, restarted from its last three quarters when full)."""
    generator = torch.Generator().manual_seed(seed)
    window, keep = gen.window, gen.window * 3 // 4
    text, start = prompt.expand(n, -1), 0
    while text.shape[1] < len(prompt) + block_chars:
        if text.shape[1] - start > window:
            start = text.shape[1] - keep
        logits = gen.model(input_ids=text[:, start:]).logits[:, -1]
        token = torch.multinomial(torch.softmax(logits.float(), dim=-1), 1, generator=generator)
        text = torch.cat([text, token], dim=1)
    return text[:, len(prompt):]


def test_char_gpt2_sampler_equals_recomputing_the_window_every_step(frame_text):
    """The KV-cache sampler shows the model exactly the contexts a full recomputation would,
    positions from 0 after every restart (float64, so the draws cannot differ by rounding)."""
    torch.manual_seed(0)
    gen = TextGenerator("gpt2", alphabet=frame_text, gpt2=TINY_GPT2, window=24).double().eval()
    with torch.no_grad():  # a sharper model than random init, so that a wrong context shows
        for p in gen.model.parameters():
            p.mul_(4)
    blocks = gen.sample(3, block_chars=90, seed=5)
    with torch.no_grad():
        reference = _sample_by_recomputing(gen, gen.encode("\n"), 3, 90, seed=5)
    assert blocks == [gen.decode(row) for row in reference]
    # a model that saw all 1,100 positions would draw other characters once past the window
    wide = TextGenerator("gpt2", alphabet=frame_text, gpt2=TINY_GPT2).double().eval()
    wide.load_state_dict(gen.state_dict())
    assert wide.window == 1100 and wide.sample(3, block_chars=90, seed=5) != blocks


def _save_tiny_pretrained(directory, text: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(text.splitlines(keepends=True), trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    end = tokenizer.eos_token_id
    # a small context, so that a 1,000-character block takes several rounds of generate()
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=128, n_embd=32, n_layer=1, n_head=2,
                                       bos_token_id=end, eos_token_id=end))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return model, tokenizer


def test_gpt2_from_a_local_pretrained_directory(tmp_path, frame_text):
    torch.manual_seed(0)
    saved, tokenizer = _save_tiny_pretrained(tmp_path, frame_text)
    gen = TextGenerator("gpt2", pretrained=str(tmp_path), alphabet="ignored")
    assert gen.vocab is None and gen.tokenizer is not None
    torch.testing.assert_close(gen.model.transformer.wte.weight, saved.transformer.wte.weight, rtol=0, atol=0)
    torch.testing.assert_close(gen.model.transformer.h[0].mlp.c_fc.weight, saved.transformer.h[0].mlp.c_fc.weight,
                               rtol=0, atol=0)

    ids = gen.encode(frame_text[:2000])
    assert ids.tolist() == tokenizer.encode(frame_text[:2000], add_special_tokens=False)
    assert len(ids) < 2000 and gen.decode(ids) == frame_text[:2000]  # BPE: fewer tokens than characters
    inputs, targets = text_windows(ids, seq_len=64)[:2]
    assert gen(inputs).shape == (2, 64, len(tokenizer))

    blocks = gen.sample(2, block_chars=1000, seed=0)
    assert [len(b) for b in blocks] == [1000, 1000]
    assert gen.sample(2, block_chars=1000, seed=0) == blocks


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="lstm, gpt2"):
        TextGenerator("transformer", alphabet="0123")
    with pytest.raises(ValueError, match="alphabet"):
        TextGenerator("lstm")
    missing = tmp_path / "no-such-model"
    with pytest.raises(ValueError, match="save_pretrained") as err:
        TextGenerator("gpt2", pretrained=str(missing))
    assert str(missing) in str(err.value)
    with pytest.raises(ValueError, match="'x'"):
        CharVocabulary.from_text("0123456789.,-\n").encode("1.5,x,1")
    with pytest.raises(ValueError, match="too short"):
        text_windows(torch.arange(10), seq_len=10)
    assert len(text_windows(torch.arange(11), seq_len=10)) == 1


def test_dropout_between_and_after_lstm_layers():
    deep = CharLSTM(20, units=32, layers=3)
    assert deep.lstm.dropout == 0.2 and deep.lstm.num_layers == 3
    single = CharLSTM(20, units=32, layers=1)
    assert single.lstm.dropout == 0 and isinstance(single.dropout, nn.Dropout) and single.dropout.p == 0.2
    logits, (h, c) = deep(torch.zeros(2, 5, dtype=torch.long))
    assert logits.shape == (2, 5, 20) and h.shape == (3, 2, 32)


def test_a_pretrained_gpt2_that_writes_no_text_is_a_one_line_error(tmp_path, frame_text, monkeypatch):
    from speakerzoo.errors import user_error
    from speakerzoo.zoo.text_generator import GenerationError

    torch.manual_seed(0)
    _save_tiny_pretrained(tmp_path, frame_text)
    gen = TextGenerator("gpt2", pretrained=str(tmp_path), alphabet="ignored")
    monkeypatch.setattr(gen, "decode", lambda ids: "")  # every token decodes to nothing
    with pytest.raises(GenerationError, match="fewer than 50 characters after 100 rounds") as err:
        gen.sample(1, block_chars=50, seed=0)
    assert user_error(err.value) is err.value  # the commands print it as one line, no traceback
