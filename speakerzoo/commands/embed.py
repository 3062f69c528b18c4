"""``speakerzoo embed``: embeddings of audio files or of a corpus, written to one HDF5 file.

Inputs (what ``INPUT`` is decides how it is read):

* a folder: every audio file below it (``.wav .flac .ogg .mp3``, sorted by relative path);
  the first folder level names the speaker (``<speaker>/...``), files lying directly in the
  folder have none; ``--no-speakers`` records no speakers at all;
* a ``.csv`` manifest (``path,speaker[,transcript,session,utt_id]``, as ``speakerzoo prepare manifest``);
* any other text file: a file list, one path per line (``#`` comments and blank lines skipped);
* a corpus file (``.h5`` from ``speakerzoo prepare``), optionally one part of one split
  (``--split speaker --part test``).

Relative paths in lists and manifests are read from the list's folder.

**Batching does not change an embedding.** For models that mask padding exactly
(``exact_padding``: SE-CNN-BiGRU, Deep Speaker, ResNet-MFCC; tested within 1e-5) utterances
of similar lengths (within 1.25x) can be batched padded (``--batching padded``, the ``auto``
default for them on a GPU, which batch size 1 leaves idle): real corpora have almost no two
utterances of equal length. On a CPU ``auto`` keeps equal lengths: padded buckets measured
0.6-0.9x its speed there (``benchmarks/embed_batching.py``). Other models
(ECAPA, CAM++, wav2vec2) are grouped by *exact* length (``--batching equal``: equal lengths
batched together, every other utterance alone), so their batches are never padded:
speechbrain's ECAPA reflect-pads its convolutions at the end of the padded tensor, so padding
would change the embedding of every shorter utterance in a batch; ``--batching crop`` batches
them anyway by cutting each bucket to its shortest utterance. Even without
padding, CPU kernels are not batch-invariant: oneDNN and NNPACK convolutions, and a matrix
product split across threads, round differently for one utterance than for several (measured:
up to 5e-6 absolute on embeddings of magnitude 10). With ``exact=True`` (the default) on the
CPU, :func:`embed_waveforms` therefore runs under :func:`batch_invariant_kernels` (native
convolutions, one intra-op thread per forward; batches run in parallel threads instead), where
an utterance's embedding is bitwise the same in any batch as alone. On CUDA the batches are
still unpadded, but bitwise equality with one-at-a-time embedding is not guaranteed.

The embeddings file is described in :mod:`speakerzoo.embeddings`; the work is
:func:`speakerzoo.inference.file_embedding.embed_source`, which the Python API shares.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

import torch

from speakerzoo.commands.argtypes import positive_float, positive_int
from speakerzoo.inference.engine import BATCHINGS
from speakerzoo.commands.common import run_command, warn
from speakerzoo.inference.file_embedding import embed_source

__all__ = ["build_parser", "main"]


EXAMPLES = """examples:
  speakerzoo embed data/speech_commands.h5 --split speaker --part test --checkpoint best.ckpt --output emb/test.h5
  speakerzoo embed my_speakers/ --checkpoint best.ckpt --output emb/mine.h5 --max-seconds 20
  speakerzoo embed files.txt --checkpoint best.ckpt --output emb/files.h5 --device cuda --batch-size 64
  speakerzoo embed list.csv --checkpoint best.ckpt --output emb/list.h5
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="speakerzoo embed",
        description=textwrap.fill(
            "Embed audio with a trained model into an HDF5 embeddings file (embedding [N, D] float32, "
            "utt_id, speaker, path; model, checkpoint sha256, sample rate and frontend as attributes). "
            "INPUT is a folder (every audio file below it; the first folder level names the speaker), "
            "a manifest .csv (path,speaker[,...]), a text file with one audio path per line, or a corpus .h5 "
            "from `speakerzoo prepare`. Utterances are batched only with others of exactly the same length, "
            "so padding never changes an embedding. Files that cannot be decoded are skipped and listed."
        , width=100),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("input", type=Path, metavar="INPUT", help="folder, file list, manifest .csv or corpus .h5")
    parser.add_argument("--checkpoint", "-c", required=True, metavar="CKPT",
                        help="checkpoint file (or registered checkpoint name) of an embedding model")
    parser.add_argument("--output", "-o", required=True, type=Path, metavar="OUT.h5", help="embeddings file to write")
    parser.add_argument("--split", choices=("speaker", "utterance"), help="corpus input: the split ...")
    parser.add_argument("--part", choices=("train", "val", "test"), help="... and the part of it to embed")
    parser.add_argument("--batch-size", type=positive_int, default=32, metavar="N",
                        help="most utterances per forward pass (default: 32)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available, else cpu)")
    parser.add_argument("--max-seconds", type=positive_float, metavar="S",
                        help="centre-crop longer utterances to S seconds (default: whole utterances)")
    parser.add_argument("--no-speakers", action="store_true",
                        help="folder input: do not take speaker names from the first folder level")
    parser.add_argument("--fast", action="store_true",
                        help="default kernels instead of batch-invariant ones: faster on some machines, but an "
                             "embedding may then differ in its last digits with its batch-mates")
    parser.add_argument("--batching", choices=BATCHINGS, default="auto",
                        help="how utterances of different lengths share a forward pass: 'equal' batches only "
                             "equal lengths (bitwise what each gives alone); 'padded' pads buckets of similar "
                             "lengths (within 1.25x), for models that mask padding exactly (SE-CNN-BiGRU, Deep "
                             "Speaker, ResNet-MFCC: within 1e-5); 'crop' cuts each bucket to its shortest (any "
                             "model; embeddings of the crops); 'auto' (default): padded where exact on a GPU, else equal")
    parser.add_argument("--threads", type=positive_int, metavar="N",
                        help=f"CPU: batches embedded in parallel (default: {torch.get_num_threads()})")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar; print only the output path")
    return parser


def run(args: argparse.Namespace) -> str:
    """Embed as ``args`` say; the report to print (with ``--quiet``, the output path)."""
    summary = embed_source(args.checkpoint, args.input, args.output, split=args.split, part=args.part,
                           speakers=not args.no_speakers, device=args.device, batch_size=args.batch_size,
                           max_seconds=args.max_seconds, exact=not args.fast, threads=args.threads,
                           progress=not args.quiet, batching=args.batching)
    if not args.quiet:
        return str(summary)
    if summary.skipped:
        warn("embed", f"skipped {len(summary.skipped)} file(s); run without --quiet for the list")
    return str(summary.output)


def main(argv: list[str] | None = None) -> int:
    """``speakerzoo embed ...``; returns the exit code (0 done, 2 error, 130 interrupted)."""
    return run_command("embed", argv, build_parser, run, str, interrupted=lambda args: f"{args.output} was left as it was")


if __name__ == "__main__":
    sys.exit(main())
