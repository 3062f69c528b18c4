"""The batch-invariant embedding engine: waveforms in, one embedding each (middle floor, no argparse).

``embed_waveforms`` embeds waveforms of any lengths in unpadded batches of equal length (or, with
``batching``, in padded buckets for models that mask padding exactly, or cropped buckets), under
kernels whose sums do not depend on the batch (so that each embedding is bitwise what the model
gives the waveform alone), splits recordings longer than :data:`LONG_RECORDING_SECONDS` into
segments and caps the audio of one forward pass (memory bounded whatever the lengths).
With ``passes=K`` it runs ``K`` Monte-Carlo dropout passes of every batch instead of one eval-mode
pass. ``speakerzoo embed``, ``verify`` and ``identify``, the Python API
(:class:`~speakerzoo.inference.SpeakerRecognizer`), MC-dropout uncertainty and the benchmarks use it.
"""

from __future__ import annotations

import contextlib
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from speakerzoo.embeddings import EmbeddingError
from speakerzoo.inference.mc_dropout import mc_dropout

__all__ = [
    "BATCH_SECONDS",
    "LONG_RECORDING_SECONDS",
    "EmbeddingError",
    "BATCHINGS",
    "BUCKET_RATIO",
    "batch_invariant_kernels",
    "bucket_batches",
    "centre_crop",
    "embed_waveforms",
    "length_batches",
    "min_samples",
    "near_equal_segments",
]

#: Recordings longer than this are embedded as the length-weighted mean of the embeddings of
#: near-equal segments no longer than it, and no forward pass is given more audio than
#: :data:`BATCH_SECONDS`: the model's memory then does not grow with a recording's length (a
#: 30-minute file took 4.1 GB as one pass). Shorter recordings are embedded whole, as before.
LONG_RECORDING_SECONDS = 60.0
BATCH_SECONDS = 120.0


def length_batches(lengths: Sequence[int], batch_size: int, max_samples: int | None = None) -> list[list[int]]:
    """Indices of ``lengths`` grouped into batches of *equal* length, at most ``batch_size`` each
    and, with ``max_samples``, at most that many samples in all (but at least one utterance).

    Longest first; within one length, in input order. Every index appears exactly once.

    Example::

        >>> length_batches([5, 3, 5, 5, 4, 3], batch_size=2)
        [[0, 2], [3], [4], [1, 5]]
        >>> length_batches([5, 5, 5], batch_size=8, max_samples=10)
        [[0, 1], [2]]
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    by_length: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
        by_length.setdefault(int(n), []).append(i)
    batches = []
    for n in sorted(by_length, reverse=True):
        same = by_length[n]
        size = batch_size if max_samples is None else max(1, min(batch_size, max_samples // max(n, 1)))
        batches.extend(same[i : i + size] for i in range(0, len(same), size))
    return batches


#: Longest / shortest utterance in a padded or cropped batch (``batching="padded"``/``"crop"``):
#: at most 1 - 1/1.25 = 20 % of a padded batch is padding.
BUCKET_RATIO = 1.25
BATCHINGS = ("auto", "equal", "padded", "crop")


def bucket_batches(lengths: Sequence[int], batch_size: int, max_samples: int | None = None,
                   ratio: float = BUCKET_RATIO) -> list[list[int]]:
    """Indices of ``lengths`` in batches of *similar* length: longest first, each batch at most
    ``batch_size`` utterances, its longest at most ``ratio`` times its shortest and, with
    ``max_samples``, at most that many samples once padded to its longest (but at least one).

    Real corpora have almost no two utterances of equal length (99.7 % of VoxCeleb-like lengths
    fall in batches of one under :func:`length_batches`); buckets batch them anyway.

    >>> bucket_batches([100, 50, 95, 90, 40, 80], batch_size=3)
    [[0, 2, 3], [5], [1, 4]]
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: -int(lengths[i]))
    batches: list[list[int]] = []
    for i in order:
        n = int(lengths[i])
        if batches:
            batch = batches[-1]
            longest = int(lengths[batch[0]])
            if (len(batch) < batch_size and longest <= ratio * n
                    and (max_samples is None or longest * (len(batch) + 1) <= max_samples)):
                batch.append(i)
                continue
        batches.append([i])
    return batches


def near_equal_segments(length: int, longest: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of the fewest near-equal segments of at most ``longest`` samples that cover
    ``length`` samples (one segment when it fits).

    >>> near_equal_segments(10, 4)
    [(0, 3), (3, 7), (7, 10)]
    >>> near_equal_segments(3, 4)
    [(0, 3)]
    """
    count = max(1, -(-int(length) // int(longest)))
    edges = [round(k * length / count) for k in range(count + 1)]
    return list(zip(edges[:-1], edges[1:]))


@contextlib.contextmanager
def batch_invariant_kernels(device: torch.device | str = "cpu") -> Iterator[None]:
    """Kernels under which an utterance's embedding does not depend on its batch-mates.

    CPU: native convolutions instead of oneDNN (mkldnn) and NNPACK, which pick algorithms by
    batch size, and one intra-op thread, because a matrix product split across threads sums
    in another order than the same product in one thread. CUDA: cuDNN in deterministic mode
    without benchmarking and without TF32 (batch invariance is not guaranteed there).
    Settings are restored on exit.
    """
    device = torch.device(device)
    with contextlib.ExitStack() as stack:
        if device.type == "cpu":
            # (the attribute, not mkldnn.flags(): that also resets oneDNN's TF32 flag, with a warning each time)
            stack.callback(setattr, torch.backends.mkldnn, "enabled", torch.backends.mkldnn.enabled)
            torch.backends.mkldnn.enabled = False
            stack.enter_context(torch.backends.nnpack.flags(enabled=False))
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            stack.callback(torch.set_num_threads, threads)
        elif device.type == "cuda":
            stack.enter_context(torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True,
                                                           allow_tf32=False))
            tf32 = torch.backends.cuda.matmul.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = False
            stack.callback(setattr, torch.backends.cuda.matmul, "allow_tf32", tf32)
        yield


def _as_tensor(wave: Tensor | np.ndarray) -> Tensor:
    t = torch.as_tensor(wave)
    if t.dim() != 1:
        raise ValueError(f"expected 1-D waveforms, got shape {tuple(t.shape)}")
    return t.float()


def centre_crop(wave, samples: int | None):
    """The middle ``samples`` of a 1-D array or tensor (all of it when shorter, or ``samples`` is ``None``)."""
    if samples is not None and len(wave) > samples:
        start = (len(wave) - samples) // 2
        return wave[start:start + samples]
    return wave


def resolve_batching(model: torch.nn.Module, batching: str) -> str:
    """``"equal"``, ``"padded"`` or ``"crop"`` for ``model`` (``"auto"`` resolved); a ``ValueError``
    for an unknown mode, or for ``"padded"`` with a model whose padding is not exact."""
    if batching not in BATCHINGS:
        raise ValueError(f"batching must be one of {', '.join(BATCHINGS)}, not {batching!r}")
    exact_padding = bool(getattr(model, "exact_padding", False))
    if batching == "auto":
        # Measured on 2 CPU cores (benchmarks/embed_batching.py, 4-20 s utterances): padded buckets
        # ran at 0.6-0.9x the speed of one utterance per pass, since a CPU kernel's cost is per
        # sample and padding adds samples; a GPU is idle at batch size 1. So pad on GPUs only.
        on_gpu = torch.device(getattr(model, "device", "cpu")).type == "cuda"
        return "padded" if exact_padding and on_gpu else "equal"
    if batching == "padded" and not exact_padding:
        raise ValueError(f"{type(model).__name__} does not mask padding exactly (its embeddings of padded "
                         "utterances differ from their embeddings alone): use batching 'equal' (exact) or "
                         "'crop' (buckets cropped to their shortest)")
    return batching


def _batch_tensor(waves: list[Tensor], crop: bool) -> tuple[Tensor, Tensor | None]:
    """``[B, T]`` and lengths (``None`` when all are ``T``): padded with zeros to the longest, or
    each centre-cropped to the shortest."""
    sizes = [w.numel() for w in waves]
    if min(sizes) == max(sizes):
        return torch.stack(waves), None
    if crop:
        return torch.stack([centre_crop(w, min(sizes)) for w in waves]), None
    return torch.nn.utils.rnn.pad_sequence(waves, batch_first=True), torch.tensor(sizes)


def embed_waveforms(
    model: torch.nn.Module,
    waves: Sequence[Tensor | np.ndarray],
    batch_size: int = 32,
    exact: bool = True,
    threads: int | None = None,
    progress: Callable[[int], Any] | None = None,
    long_seconds: float | None = LONG_RECORDING_SECONDS,
    passes: int = 0,
    batching: str = "equal",
) -> Tensor:
    """Embed 1-D waveforms (at ``model.sample_rate``) in batches.

    Arguments:
        model: a :class:`~speakerzoo.zoo.base.SpeakerEmbeddingModule` (anything with
            ``embed(waveforms)`` and a ``device``); run in eval mode, its mode is restored after.
        waves: the waveforms, any lengths.
        batch_size: most utterances per forward pass.
        exact: run under :func:`batch_invariant_kernels`, so that on the CPU each embedding is
            bitwise what ``model.embed(wave[None])`` gives under the same kernels; ``False``
            uses the default kernels (faster batches, last-digit differences between batch sizes).
        threads: batches embedded in parallel on the CPU when ``exact`` (each on one thread);
            default ``torch.get_num_threads()``.
        progress: called with the number of utterances of each finished batch.
        long_seconds: a waveform longer than this is embedded as the length-weighted mean of the
            embeddings of its :func:`near_equal_segments` segments (``None``: always whole). With it, no
            forward pass holds more than :data:`BATCH_SECONDS` of audio, so memory is bounded
            whatever the recordings' lengths.
        passes: ``K > 0``: ``K`` forward passes of each batch under
            :func:`~speakerzoo.inference.mc_dropout.mc_dropout` (dropout sampling, everything else
            in eval mode), one batch after another so that ``torch.manual_seed`` before the call
            makes the masks reproducible; ``0``: one eval-mode pass.
        batching: how waveforms of different lengths share a forward pass:

            * ``"equal"``: only equal lengths are batched, unpadded (every other waveform alone);
              with ``exact``, each embedding is bitwise what the model gives the waveform alone.
            * ``"padded"``: :func:`bucket_batches` of similar lengths, zero-padded to the longest
              and passed with their lengths; only for models whose ``exact_padding`` says that
              padding changes no embedding (tested within 1e-5), else a ``ValueError``.
            * ``"crop"``: the same buckets, every waveform centre-cropped to its bucket's shortest
              (at most 20 % of it is dropped): any model, but the embeddings are of the crops.
            * ``"auto"``: ``"padded"`` for a model with ``exact_padding`` on a GPU, else ``"equal"``
              (on a CPU, padded buckets were slower: the cost of a kernel there is per sample).

    Returns:
        ``[len(waves), D]`` float32 embeddings on the CPU, in the order of ``waves``; with
        ``passes=K``, ``[K, len(waves), D]``.
    """
    passes = int(passes)
    if passes < 0:
        raise ValueError(f"passes must be 0 (one eval-mode pass) or more, not {passes}")
    whole = [_as_tensor(w) for w in waves]
    device = torch.device(getattr(model, "device", "cpu"))
    rate = int(getattr(model, "sample_rate", 16000))
    longest = None if long_seconds is None else max(1, int(round(long_seconds * rate)))
    tensors: list[Tensor] = []  # what is embedded: whole waveforms and the segments of long ones
    owner: list[int] = []
    spans: list[range] = []  # the rows of tensors that make up each waveform
    for i, t in enumerate(whole):
        bounds = [(0, t.numel())] if longest is None else near_equal_segments(t.numel(), longest)
        spans.append(range(len(tensors), len(tensors) + len(bounds)))
        tensors.extend(t[a:b] for a, b in bounds)
        owner.extend([i] * len(bounds))
    max_samples = None if longest is None else max(longest, int(round(BATCH_SECONDS * rate)))
    batching = resolve_batching(model, batching)
    sizes = [t.numel() for t in tensors]
    batches = (length_batches(sizes, batch_size, max_samples) if batching == "equal"
               else bucket_batches(sizes, batch_size, max_samples))
    remaining = Counter(owner)

    def done(batch: list[int]) -> None:
        if progress is not None:
            finished = 0
            for j in batch:
                remaining[owner[j]] -= 1
                finished += remaining[owner[j]] == 0
            if finished:
                progress(finished)

    def run(batch: list[int]) -> Tensor:
        if exact and device.type == "cpu":
            torch.set_num_threads(1)  # per thread: this worker's own OpenMP setting
        x, lengths = _batch_tensor([tensors[i] for i in batch], crop=batching == "crop")
        x = x.to(device)
        lengths = None if lengths is None else lengths.to(device)
        with torch.inference_mode():
            if passes:
                emb = torch.stack([model.embed(x, lengths) for _ in range(passes)], dim=1)  # [b, K, D]
            else:
                emb = model.embed(x, lengths)
        return emb.float().cpu()

    # MC passes run one batch after another: parallel batches would draw their masks in any order.
    parallel = exact and device.type == "cpu" and len(batches) > 1 and not passes
    workers = max(1, threads if threads is not None else torch.get_num_threads())  # read before the kernels set 1
    rows: dict[int, Tensor] = {}
    with contextlib.ExitStack() as modes:
        if passes:
            modes.enter_context(mc_dropout(model))
        else:
            was_training = model.training
            model.eval()
            modes.callback(model.train, was_training)
        with batch_invariant_kernels(device) if exact else contextlib.nullcontext():
            if parallel and workers > 1:
                # One thread per forward keeps the sums in one order; use the cores by running batches side by side.
                with ThreadPoolExecutor(max_workers=workers) as pool:
                    for batch, emb in zip(batches, pool.map(run, batches)):
                        rows.update(zip(batch, emb))
                        done(batch)
            else:
                for batch in batches:
                    rows.update(zip(batch, run(batch)))
                    done(batch)
    if not tensors:
        dim = int(getattr(model, "embedding_dim", 0))
        return torch.zeros(passes, 0, dim) if passes else torch.zeros(0, dim)
    out = []
    for span in spans:
        if len(span) == 1:
            out.append(rows[span[0]])
        else:  # a long recording: the mean of its segments' embeddings, weighted by their lengths
            weights = torch.tensor([float(tensors[k].numel()) for k in span])
            weights = (weights / weights.sum()).reshape(-1, *[1] * rows[span[0]].dim())
            out.append((torch.stack([rows[k] for k in span]) * weights).sum(0))
    emb = torch.stack(out)
    return emb.transpose(0, 1).contiguous() if passes else emb


def min_samples(model: torch.nn.Module, limit: int = 1 << 22) -> int:
    """Shortest waveform (samples) that ``model.embed`` accepts: convolutions that pad by
    reflection need more frames than their padding. Found on silent inputs by doubling, then
    bisection (costs about two forward passes of that length)."""
    device = torch.device(getattr(model, "device", "cpu"))

    def ok(n: int) -> bool:
        try:
            with torch.inference_mode(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model.embed(torch.zeros(1, n, device=device))
            return True
        except RuntimeError:
            return False

    hi = 64
    while not ok(hi):
        if hi >= limit:
            raise EmbeddingError(f"{type(model).__name__} cannot embed even {limit} samples of silence")
        hi *= 2
    lo = hi // 2 if hi > 64 else 0  # ok(hi) holds and ok(lo) fails (or lo = 0)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid
    return hi
