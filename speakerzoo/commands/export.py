"""``speakerzoo export``: a checkpoint's inference path (waveforms -> embeddings) as TorchScript or ONNX.

::

    speakerzoo export runs/.../best.ckpt --format onnx --output ecapa.onnx
    speakerzoo export runs/.../best.ckpt --format torchscript --output ecapa.pt --lengths 0.5 2 10

The file takes ``waveforms`` (float32 ``[batch, time]`` at the model's sample rate) and
``lengths`` (int64 ``[batch]``, samples) and returns ``embeddings`` (float32 ``[batch, dim]``);
batch and time are dynamic. The sample rate, embedding size and frontend are stored in the
file (see :func:`speakerzoo.zoo.export.read_metadata`).

By default (``--check``) the written model is run on clips of several lengths, alone and in a
batch of two, and compared with the PyTorch model; the differences are printed and, if any
exceeds the tolerance, nothing is written and the command exits with status 1. The file is
written under a temporary name and renamed only when complete and checked.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from speakerzoo.zoo.base import InvalidCheckpointError, SpeakerEmbeddingModule
from speakerzoo.zoo.export import (
    ATOL,
    MIN_COSINE,
    ExportError,
    MissingExportDependency,
    compare_export,
    require,
    to_onnx,
    to_torchscript,
)

SUFFIXES = {".onnx": "onnx", ".pt": "torchscript", ".ts": "torchscript", ".torchscript": "torchscript", ".jit": "torchscript"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="speakerzoo export",
        description="Export an embedding model (frontend + backbone + pooling -> embedding) to TorchScript or ONNX, "
        "and check the file against PyTorch.",
    )
    parser.add_argument("checkpoint", help="speakerzoo checkpoint file or registered name (as for SpeakerEmbeddingModule.from_pretrained)")
    parser.add_argument(
        "--format",
        choices=("torchscript", "onnx"),
        default=None,
        help="output format (default: from the --output suffix: .onnx -> onnx; .pt, .ts, .jit -> torchscript)",
    )
    parser.add_argument("--output", "-o", required=True, type=Path, help="file to write")
    parser.add_argument(
        "--opset",
        type=int,
        default=18,
        help="ONNX opset, default 18 (>= 17; the dynamo exporter writes >= 18, so 17 means the legacy exporter)",
    )
    parser.add_argument(
        "--exporter",
        choices=("auto", "dynamo", "legacy"),
        default="auto",
        help="ONNX exporter: torch.onnx's dynamo one (needs onnxscript), the legacy TorchScript-based one, "
        "or auto (default): dynamo, and legacy if that fails",
    )
    parser.add_argument(
        "--check",
        action=argparse.BooleanOptionalAction,
        default=True,
        help=f"compare the exported model with PyTorch (default) and refuse to write it if an embedding differs "
        f"by more than {ATOL:g} (times the largest embedding value when above 1) or has a cosine below {MIN_COSINE}",
    )
    parser.add_argument(
        "--lengths",
        type=float,
        nargs="+",
        default=[0.7, 1.3, 3.0],
        metavar="SECONDS",
        help="clip lengths used by --check, each alone and in a batch of two (default: 0.7 1.3 3.0)",
    )
    return parser


def _format(args: argparse.Namespace, parser: argparse.ArgumentParser) -> str:
    if args.format:
        return args.format
    guessed = SUFFIXES.get(args.output.suffix.lower())
    if guessed is None:
        parser.error(f"cannot tell the format from {str(args.output)!r}; pass --format torchscript or --format onnx")
    return guessed


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    fmt = _format(args, parser)
    if any(s <= 0 for s in args.lengths):
        parser.error("--lengths must be positive durations in seconds")
    if fmt == "onnx" and args.opset < 17:
        parser.error(f"--opset {args.opset}: ONNX has no STFT before opset 17")
    try:
        # Fail before the (slow) export when a package it will need is missing.
        if fmt == "onnx":
            require("onnx")
            if args.check:
                require("onnxruntime")
            if args.exporter == "dynamo":
                require("onnxscript")
    except MissingExportDependency as error:
        print(f"speakerzoo export: {error}", file=sys.stderr)
        return 1

    try:
        model = SpeakerEmbeddingModule.from_pretrained(args.checkpoint, map_location="cpu")
    except (FileNotFoundError, InvalidCheckpointError) as error:
        print(f"speakerzoo export: {error}", file=sys.stderr)
        return 1

    output: Path = args.output
    if output.is_dir():
        print(f"speakerzoo export: --output {str(output)!r} is a folder; give a file name", file=sys.stderr)
        return 1
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = output.with_name(f".{output.name}.{os.getpid()}.export")
    try:
        try:
            if fmt == "onnx":
                result = to_onnx(model, staging, opset=args.opset, exporter=args.exporter)
            else:
                result = to_torchscript(model, staging)
        except (ExportError, MissingExportDependency, ValueError) as error:
            print(f"speakerzoo export: {error}", file=sys.stderr)
            return 1
        how = {"script": "torch.jit.script", "trace": "torch.jit.trace", "dynamo": "the dynamo exporter",
               "legacy": "the legacy (TorchScript-based) exporter"}[result.method]
        detail = f", opset {args.opset}" if fmt == "onnx" else ""
        print(
            f"exported {type(model).__name__} ({model.sample_rate} Hz, {model.embedding_dim}-d embeddings) "
            f"as {fmt} with {how}{detail} in {result.seconds:.1f} s"
        )
        for note in result.notes:
            if not note.startswith("tracer warning"):
                print(f"  note: {note}")

        if args.check:
            start = time.perf_counter()
            try:
                rows = compare_export(model, staging, lengths=args.lengths, batch_sizes=(1, 2))
            except (ExportError, MissingExportDependency) as error:
                print(f"speakerzoo export: {error}; {output} not written", file=sys.stderr)
                return 1
            print(
                f"check against PyTorch ({time.perf_counter() - start:.1f} s; passes with max |diff| <= {ATOL:g} "
                f"x max(1, max |embedding|) and cosine >= {MIN_COSINE}):"
            )
            print(f"  {'length':>8}  {'clips (samples)':<18} {'max |diff|':>10}  {'max |emb|':>9}  {'min cosine':>12}  ok")
            for row in rows:
                clips = ", ".join(str(n) for n in row.lengths)
                print(
                    f"  {row.seconds:>6.2f} s  {clips:<18} {row.max_abs_diff:>10.2e}  {row.reference_scale:>9.3g}  "
                    f"{row.min_cosine:>12.9f}  {'yes' if row.ok else 'NO'}"
                )
            failed = [row for row in rows if not row.ok]
            if failed:
                worst = max(row.max_abs_diff for row in failed)
                print(
                    f"speakerzoo export: the exported model differs from PyTorch by up to {worst:.3g}; "
                    f"{output} not written (--no-check writes it anyway)",
                    file=sys.stderr,
                )
                return 1
        os.replace(staging, output)
    finally:
        staging.unlink(missing_ok=True)
    print(f"wrote {output} ({output.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
