"""Character-level generators of MFCC frame text (seed 000 §III-A, Table II).

Bird et al. augment a speaker's data with synthetic MFCC frames made by a language model: the
subject's frames are written as text, one frame per line (26 comma-separated values and a
class, see :mod:`speakerzoo.frame_text`), a generator is trained on that text, and synthetic
text is sampled from it in blocks of 1,000 characters, each read back with
:func:`~speakerzoo.frame_text.parse_block`. Table II compares two families of generators:

* a character-level LSTM with 64, 128, 256 or 512 units in 1 to 3 layers and dropout 0.2
  between layers (:class:`CharLSTM`);
* GPT-2, either fine-tuned from a pretrained model (with its own BPE tokenizer) or a small
  configuration trained from scratch on characters.

:class:`TextGenerator` wraps both in one LightningModule: it trains on next-character windows
cut by :func:`text_windows` and samples independent blocks of exactly ``block_chars``
characters with :meth:`TextGenerator.sample`. A pretrained GPT-2 is only ever loaded from a
local directory written by ``save_pretrained`` (never from the hub).

Example::

    >>> text = "1.25,-0.50,1\\n0.75,2.00,1\\n" * 20
    >>> gen = TextGenerator("lstm", alphabet=text, lstm_units=16)
    >>> ids = gen.encode(text)
    >>> gen.decode(ids[:13])
    '1.25,-0.50,1\\n'
    >>> inputs, targets = text_windows(ids, seq_len=50)[0]
    >>> gen(inputs[None]).shape                       # [batch, time, vocabulary]
    torch.Size([1, 50, 9])
    >>> blocks = gen.sample(2, block_chars=30, seed=0)
    >>> [len(b) for b in blocks], blocks == gen.sample(2, block_chars=30, seed=0)
    ([30, 30], True)
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from speakerzoo.zoo.vocabulary import CharVocabulary

__all__ = ["CharLSTM", "GenerationError", "TextGenerator", "text_windows", "ARCHITECTURES"]

ARCHITECTURES = ("lstm", "gpt2")


class GenerationError(RuntimeError):
    """A generator that cannot write the text asked for; the message says what to do."""


class CharLSTM(nn.Module):
    """Character LSTM of Table II: embedding -> LSTM (``layers`` deep, ``dropout`` between
    layers) -> dropout -> linear over the vocabulary."""

    def __init__(self, vocab_size: int, units: int = 128, layers: int = 1, dropout: float = 0.2,
                 embedding_dim: int = 32):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.lstm = nn.LSTM(embedding_dim, units, num_layers=layers, batch_first=True,
                            dropout=dropout if layers > 1 else 0.0)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(units, vocab_size)

    def forward(self, ids: Tensor, state: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """``ids [B, T]`` -> ``(logits [B, T, V], (h, c))``; pass the state back to continue."""
        out, state = self.lstm(self.embedding(ids), state)
        return self.head(self.dropout(out)), state


def text_windows(ids: Tensor, seq_len: int, stride: int | None = None) -> TensorDataset:
    """Next-token windows of a 1-D id tensor: ``(inputs [N, seq_len], targets [N, seq_len])``
    with ``targets`` the inputs shifted by one; a window starts every ``stride`` ids (default
    ``seq_len``)."""
    stride = seq_len if stride is None else stride
    if seq_len < 1 or stride < 1:
        raise ValueError(f"seq_len and stride must be positive, got seq_len={seq_len}, stride={stride}")
    ids = torch.as_tensor(ids, dtype=torch.long).reshape(-1)
    if len(ids) < seq_len + 1:
        raise ValueError(f"text of {len(ids)} tokens is too short for windows of seq_len={seq_len}: "
                         f"it needs at least seq_len + 1 = {seq_len + 1} tokens")
    windows = ids.unfold(0, seq_len + 1, stride)
    return TensorDataset(windows[:, :-1].contiguous(), windows[:, 1:].contiguous())


def _load_pretrained(directory: str):
    """GPT-2 and its tokenizer from a local ``save_pretrained`` directory (never the hub)."""
    from transformers import AutoConfig, AutoTokenizer, GPT2LMHeadModel

    hint = (f"pretrained={directory!r} must be a local directory holding a GPT-2 model saved with "
            "`save_pretrained` (config.json, the weights and the tokenizer files)")
    if not (Path(directory) / "config.json").is_file():
        raise ValueError(f"{hint}; no such directory or no config.json in it")
    try:
        config = AutoConfig.from_pretrained(directory, local_files_only=True)
        if config.model_type != "gpt2":
            raise ValueError(f"its config.json is for model type {config.model_type!r}")
        model = GPT2LMHeadModel.from_pretrained(directory, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{hint}: {err}") from err
    return model, tokenizer


class TextGenerator(L.LightningModule):
    """A generator of frame text: ``architecture`` ``"lstm"`` (a :class:`CharLSTM` on the
    characters of ``alphabet``) or ``"gpt2"`` (a small GPT-2 on characters configured by
    ``gpt2`` overrides of ``GPT2Config``, or with ``pretrained`` a local directory: that model
    and its own tokenizer, for fine-tuning; ``alphabet`` is then ignored).

    Train it on :func:`text_windows` batches ``(inputs, targets)`` of :meth:`encode`-d text
    (next-token cross-entropy over all positions, logged as ``train/loss`` and ``val/loss``);
    sample with :meth:`sample`.

    ``window``: the length of the training windows of the GPT-2 on characters
    (:func:`~speakerzoo.commands.synthesize.train_generator` sets it to its ``seq_len``; default
    ``n_positions``; the LSTM and a pretrained GPT-2 ignore it). Sampling never shows the model a context longer than that: a GPT-2 trained
    on windows of 200 characters has untrained position embeddings beyond 200, and a block of
    1,000 characters sampled straight through came out garbled (0.03 well-formed lines per block,
    measured).
    """

    def __init__(self, architecture: str = "lstm", alphabet: str | None = None, lstm_units: int = 128,
                 lstm_layers: int = 1, dropout: float = 0.2, gpt2: dict | None = None,
                 pretrained: str | None = None, lr: float = 2e-3, weight_decay: float = 0.0,
                 window: int | None = None):
        super().__init__()
        self.save_hyperparameters()
        self.vocab: CharVocabulary | None = None
        self.tokenizer = None
        if architecture not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {architecture!r}; choose one of {', '.join(ARCHITECTURES)}")
        if architecture == "gpt2" and pretrained is not None:
            self.model, self.tokenizer = _load_pretrained(str(pretrained))
            return
        if not alphabet:
            raise ValueError(f"architecture {architecture!r} on characters needs the alphabet (the characters "
                             "of the training text, e.g. alphabet=text)")
        self.vocab = CharVocabulary.from_text(alphabet)
        if architecture == "lstm":
            self.model = CharLSTM(len(self.vocab), units=lstm_units, layers=lstm_layers, dropout=dropout)
            return
        from transformers import GPT2Config, GPT2LMHeadModel

        newline = self.vocab.encode("\n").item()
        config = dict(vocab_size=len(self.vocab), n_positions=1024, n_embd=128, n_layer=4, n_head=4,
                      bos_token_id=newline, eos_token_id=newline, resid_pdrop=dropout, embd_pdrop=dropout,
                      attn_pdrop=dropout)
        self.model = GPT2LMHeadModel(GPT2Config(**{**config, **(gpt2 or {})}))

    # -- text <-> ids ----------------------------------------------------------------------
    def encode(self, text: str) -> Tensor:
        """1-D LongTensor of token ids of ``text`` (characters, or the pretrained tokenizer's)."""
        if self.vocab is not None:
            return self.vocab.encode(text)
        return torch.tensor(self.tokenizer.encode(text, add_special_tokens=False), dtype=torch.long)

    def decode(self, ids) -> str:
        """The text of token ids (special tokens of a pretrained tokenizer are left out)."""
        if self.vocab is not None:
            return self.vocab.decode(ids)
        ids = ids.tolist() if isinstance(ids, Tensor) else list(ids)
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    # -- training --------------------------------------------------------------------------
    def forward(self, ids: Tensor) -> Tensor:
        """``ids [B, T]`` -> next-token logits ``[B, T, V]``."""
        if self.hparams.architecture == "lstm":
            return self.model(ids)[0]
        return self.model(input_ids=ids).logits

    def _loss(self, batch) -> Tensor:
        inputs, targets = batch
        return F.cross_entropy(self(inputs).flatten(0, 1), targets.flatten())

    def training_step(self, batch, batch_idx):
        loss = self._loss(batch)
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        loss = self._loss(batch)
        self.log("val/loss", loss, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def configure_optimizers(self):
        if self.hparams.weight_decay:
            return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)

    # -- sampling --------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, num_blocks: int, block_chars: int = 1000, temperature: float = 1.0, prompt: str = "\n",
               seed: int | None = None, batch_size: int = 64, progress: bool = False) -> list[str]:
        """``num_blocks`` independent blocks of exactly ``block_chars`` characters each, the text
        generated after ``prompt`` (not included), sampled from ``softmax(logits / temperature)``,
        ``batch_size`` blocks at a time. A ``seed`` makes the blocks reproducible (for the same
        ``batch_size``); without it the global torch RNG is used."""
        if num_blocks < 0 or block_chars < 1 or batch_size < 1:
            raise ValueError(f"need num_blocks >= 0, block_chars >= 1 and batch_size >= 1, got "
                             f"{num_blocks}, {block_chars}, {batch_size}")
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        prompt_ids = self.encode(prompt).to(self.device)
        if len(prompt_ids) == 0:
            raise ValueError(f"prompt {prompt!r} has no tokens; sampling needs at least one (e.g. '\\n')")
        if self.vocab is not None and self.hparams.architecture == "gpt2" and len(prompt_ids) >= self.window:
            raise ValueError(f"prompt of {len(prompt_ids)} characters fills the model's window={self.window}")
        sizes = [min(batch_size, num_blocks - start) for start in range(0, num_blocks, batch_size)]
        if progress:
            from tqdm.auto import tqdm

            sizes = tqdm(sizes, desc="sampling", unit="batch")
        was_training = self.training
        self.eval()
        try:
            if self.vocab is not None:  # one token per character
                generator = None if seed is None else torch.Generator(device=self.device).manual_seed(seed)
                sample = self._sample_lstm if self.hparams.architecture == "lstm" else self._sample_gpt2_chars
                return [self.decode(row) for n in sizes
                        for row in sample(prompt_ids, n, block_chars, temperature, generator).cpu()]
            with self._forked_rng(seed):
                return [text for n in sizes for text in self._sample_gpt2_bpe(prompt_ids, n, block_chars, temperature)]
        finally:
            self.train(was_training)

    @property
    def window(self) -> int:
        """The longest context the char GPT-2 is shown: its training window, or ``n_positions``."""
        return self.hparams.window or self.model.config.n_positions

    def _sample_lstm(self, prompt_ids: Tensor, n: int, block_chars: int, temperature: float,
                     generator: torch.Generator | None) -> Tensor:
        logits, state = self.model(prompt_ids.expand(n, -1))
        out = torch.empty(n, block_chars, dtype=torch.long, device=self.device)
        for t in range(block_chars):
            probs = torch.softmax(logits[:, -1] / temperature, dim=-1)
            out[:, t] = torch.multinomial(probs, 1, generator=generator).squeeze(1)
            logits, state = self.model(out[:, t:t + 1], state)
        return out

    def _sample_gpt2_chars(self, prompt_ids: Tensor, n: int, block_chars: int, temperature: float,
                           generator: torch.Generator | None) -> Tensor:
        """``block_chars`` characters after the prompt, with a context of at most :attr:`window`:
        when it is full, sampling goes on from its last three quarters (re-encoded at positions
        from 0, as in training).

        Our loop rather than ``generate``: transformers' growing cache concatenates its keys
        and values at every step, 65 % of a step's time at 256 blocks (profiled); a
        ``StaticCache`` of ``window`` slots, emptied at each restart, made a step 2.2 times
        faster (13.9 -> 6.4 ms), and ``generate`` has no window."""
        from transformers import StaticCache

        window = self.window
        keep = max(1, window * 3 // 4)
        cache = StaticCache(config=self.model.config, max_cache_len=window)
        text = torch.cat([prompt_ids.expand(n, -1), torch.empty(n, block_chars, dtype=torch.long,
                                                                 device=self.device)], dim=1)
        start, feed = 0, text[:, :len(prompt_ids)]
        for t in range(len(prompt_ids), text.shape[1]):
            logits = self.model(input_ids=feed, past_key_values=cache, use_cache=True).logits[:, -1]
            text[:, t] = torch.multinomial(torch.softmax(logits.float() / temperature, dim=-1), 1,
                                           generator=generator).squeeze(1)
            if t + 1 - start <= window:
                feed = text[:, t:t + 1]
            else:  # the window is full: restart from its last `keep` characters
                start = t + 1 - keep
                feed = text[:, start:t + 1]
                cache.reset()
        return text[:, len(prompt_ids):]

    @contextlib.contextmanager
    def _forked_rng(self, seed: int | None):
        """``generate`` takes no generator: seed the global RNG inside a fork of it instead."""
        if seed is None:
            yield
            return
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            yield

    def _generate(self, context: Tensor, new_tokens: int, temperature: float) -> Tensor:
        """``new_tokens`` sampled after ``context [B, T]``, never stopped early by an end token."""
        # eos_token_id=None: the end token must not end a block early
        pads = (self.model.config.pad_token_id, self.model.config.eos_token_id,
                getattr(self.tokenizer, "pad_token_id", None), getattr(self.tokenizer, "eos_token_id", None))
        pad = next((p for p in pads if isinstance(p, int)), 0)
        out = self.model.generate(context, attention_mask=torch.ones_like(context), do_sample=True,
                                  temperature=temperature, top_k=0, max_new_tokens=new_tokens,
                                  eos_token_id=None, pad_token_id=pad)
        return out[:, context.shape[1]:]

    def _sample_gpt2_bpe(self, prompt_ids: Tensor, n: int, block_chars: int, temperature: float) -> list[str]:
        """A pretrained GPT-2 (trained on all its positions): ``generate`` until the decoded text
        has ``block_chars`` characters, then cut to them."""
        context = prompt_ids.expand(n, -1)
        limit = self.model.config.n_positions
        if len(prompt_ids) >= limit:
            raise ValueError(f"prompt of {len(prompt_ids)} tokens fills the model's context of {limit}")
        rows = list(self._generate(context, min(block_chars, limit - len(prompt_ids)), temperature))
        texts = [self.decode(row) for row in rows]
        for _ in range(100):
            # rows still short have all grown alike so far: same length, one batch
            short = [i for i, text in enumerate(texts) if len(text) < block_chars]
            if not short:
                return [text[:block_chars] for text in texts]
            more = min(block_chars - min(len(texts[i]) for i in short), limit // 2)
            full = torch.cat([context[short], torch.stack([rows[i] for i in short])], dim=1)
            extra = self._generate(full[:, -(limit - more):], more, temperature)
            for row, i in enumerate(short):
                rows[i] = torch.cat([rows[i], extra[row]])
                texts[i] = self.decode(rows[i])
        raise GenerationError(f"GPT-2 gave fewer than {block_chars} characters after 100 rounds of sampling (its "
                              "tokens decode to little or no text): fine-tune it longer on the frame text, or use "
                              "the character-level GPT-2 (no --pretrained) or the LSTM")
