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

Errors are reported as every command's (:func:`speakerzoo.commands.common.run_command`), as
``speakerzoo export: error: ...``; an export that cannot be made, loaded or checked exits with
:data:`EXIT_FAILED` (1), as it always has, and a usage error with 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from speakerzoo.commands.common import error, run_command
from speakerzoo.errors import EXIT_ERROR
from speakerzoo.inference.loading import load_model
from speakerzoo.zoo.checkpoint import InvalidCheckpointError
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

__all__ = ["EXIT_FAILED", "SUFFIXES", "build_parser", "main", "run"]

#: Exit status of an export that fails: a missing package, a checkpoint that cannot be loaded, an
#: exporter error or a check that does not pass (nothing is written then).
EXIT_FAILED = 1

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


_METHODS = {"script": "torch.jit.script", "trace": "torch.jit.trace", "dynamo": "the dynamo exporter",
            "legacy": "the legacy (TorchScript-based) exporter"}


def _export(args: argparse.Namespace, fmt: str) -> None:
    """Export, check and write as ``args`` say, printing each step's report as it is done; raises
    :class:`ExportError` (or the loader's error) when the file cannot be made or does not pass."""
    # Fail before the (slow) export when a package it will need is missing.
    if fmt == "onnx":
        require("onnx")
        if args.check:
            require("onnxruntime")
        if args.exporter == "dynamo":
            require("onnxscript")
    model = load_model(args.checkpoint, device="cpu")
    output: Path = args.output
    if output.is_dir():
        raise ExportError(f"--output {str(output)!r} is a folder; give a file name")
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = output.with_name(f".{output.name}.{os.getpid()}.export")
    try:
        try:
            if fmt == "onnx":
                result = to_onnx(model, staging, opset=args.opset, exporter=args.exporter)
            else:
                result = to_torchscript(model, staging)
        except ValueError as err:
            raise ExportError(str(err)) from err
        detail = f", opset {args.opset}" if fmt == "onnx" else ""
        print(
            f"exported {type(model).__name__} ({model.sample_rate} Hz, {model.embedding_dim}-d embeddings) "
            f"as {fmt} with {_METHODS[result.method]}{detail} in {result.seconds:.1f} s"
        )
        for note in result.notes:
            if not note.startswith("tracer warning"):
                print(f"  note: {note}")
        if args.check:
            _check(model, staging, output, args.lengths)
        os.replace(staging, output)
    finally:
        staging.unlink(missing_ok=True)
    print(f"wrote {output} ({output.stat().st_size / 1e6:.1f} MB)")


def _check(model, staging: Path, output: Path, lengths: list[float]) -> None:
    """Compare the exported file with PyTorch and print the table; raises when a row fails."""
    start = time.perf_counter()
    try:
        rows = compare_export(model, staging, lengths=lengths, batch_sizes=(1, 2))
    except (ExportError, MissingExportDependency) as err:
        raise ExportError(f"{err}; {output} not written") from err
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
        raise ExportError(f"the exported model differs from PyTorch by up to {worst:.3g}; "
                          f"{output} not written (--no-check writes it anyway)")


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Export as ``args`` say (its reports printed as each step ends); the exit code. Settings that
    argparse cannot check alone are usage errors of ``parser`` (exit code 2)."""
    try:
        fmt = _format(args, parser)
        if any(s <= 0 for s in args.lengths):
            parser.error("--lengths must be positive durations in seconds")
        if fmt == "onnx" and args.opset < 17:
            parser.error(f"--opset {args.opset}: ONNX has no STFT before opset 17")
    except SystemExit as stop:  # parser.error printed the usage error; return its code as main does
        return int(stop.code or 0) if not isinstance(stop.code, str) else EXIT_ERROR
    try:
        _export(args, fmt)
    except (ExportError, MissingExportDependency, FileNotFoundError, InvalidCheckpointError) as err:
        error("export", err)
        return EXIT_FAILED
    return 0


def main(argv: list[str] | None = None) -> int:
    """``speakerzoo export ...``; returns the exit code (0 written, 1 not written, 2 usage error,
    130 interrupted)."""
    parser = build_parser()
    return run_command("export", argv, lambda: parser, lambda args: run(args, parser), str,
                       interrupted=lambda args: f"{args.output} was left as it was")


if __name__ == "__main__":
    sys.exit(main())
