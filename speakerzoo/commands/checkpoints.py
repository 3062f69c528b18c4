"""``speakerzoo checkpoints {list,add,verify,strip,import}``: the checkpoint registry from the command
line, inference checkpoints, and other toolkits' pretrained weights as checkpoints.

::

    speakerzoo checkpoints add ecapa-toy runs/speakerzoo/version_0/checkpoints/best-005.ckpt \\
        --corpus "toy, 40 speakers, split by speaker" --eer 0.125
    speakerzoo checkpoints list
    speakerzoo checkpoints verify            # every entry; or: verify ecapa-toy
    speakerzoo checkpoints strip runs/.../best-014.ckpt --output checkpoints/ecapa-sc.ckpt --half
    speakerzoo checkpoints import speechbrain pretrained/spkrec-ecapa-voxceleb --output ecapa-vox.ckpt
    speakerzoo checkpoints import 3dspeaker campplus_cn_en_common.pt --output campplus.ckpt

``add`` computes the sha256 and reads the model class from the checkpoint; ``verify`` re-hashes
the files (URL entries only when downloaded, or with ``--download``); ``list`` prints a table;
``strip`` writes an inference checkpoint (:func:`speakerzoo.zoo.strip.strip_checkpoint`: weights,
optionally float16, hyper-parameters and metadata, no optimiser state) and checks it embeds as
the original; ``import`` reads speechbrain's ECAPA or 3D-Speaker's / wespeaker's CAM++ weights
without running anything from them (:mod:`speakerzoo.zoo.importers`) and writes a checkpoint that
every command loads.
The registry is ``--registry FILE``, else ``$SPEAKERZOO_REGISTRY``, else the source checkout's
``checkpoints/registry.yaml`` (see :mod:`speakerzoo.zoo.registry`).

Errors are reported as every command's (:func:`speakerzoo.commands.common.run_command`), as
``speakerzoo checkpoints ACTION: error: ...``, but a registry that cannot be read or changed and a
checkpoint that fails ``verify`` exit with :data:`EXIT_FAILED` (1), as they always have.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from speakerzoo.commands.common import error, run_command
from speakerzoo.zoo import registry as reg

__all__ = ["EXIT_FAILED", "build_parser", "main", "run"]

#: Exit status of a registry error (unreadable file, unknown or duplicate name) or a failed ``verify``.
EXIT_FAILED = 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="speakerzoo checkpoints",
        description="The registry of trained checkpoints: name -> file or URL, sha256, class, corpus, EER.",
    )
    sub = parser.add_subparsers(dest="action", required=True, metavar="{list,add,verify,strip,import}")

    def registry_option(p: argparse.ArgumentParser) -> None:
        p.add_argument("--registry", metavar="FILE",
                       help=f"registry file (default: ${reg.REGISTRY_ENV}, else checkpoints/registry.yaml "
                            "of the source checkout)")

    p_list = sub.add_parser("list", help="print the registered checkpoints as a table")
    registry_option(p_list)

    p_add = sub.add_parser("add", help="register a checkpoint (sha256 and class are read from the file)")
    p_add.add_argument("name", help="registry name (letters, digits, '.', '_', '-')")
    p_add.add_argument("checkpoint", help="the .ckpt file")
    p_add.add_argument("--corpus", required=True, help="what it was trained on")
    p_add.add_argument("--eer", required=True, help="measured EER: a fraction (0.125) or a percentage (12.5%%)")
    p_add.add_argument("--url", help="record this http(s):// or file:// URL instead of the file's path")
    p_add.add_argument("--licence", help="licence of the weights and of the data they were trained on")
    p_add.add_argument("--notes", help="free text (recipe, epochs, ...)")
    p_add.add_argument("--force", action="store_true", help="replace an entry of the same name")
    registry_option(p_add)

    p_verify = sub.add_parser("verify", help="re-check the sha256 of one or all registered checkpoints")
    p_verify.add_argument("name", nargs="?", help="only this entry")
    p_verify.add_argument("--download", action="store_true",
                          help="download URL entries that are not in the cache yet (otherwise they are skipped)")
    registry_option(p_verify)

    p_strip = sub.add_parser("strip", help="write an inference checkpoint: weights, hyper-parameters and metadata, "
                                           "no optimiser state")
    p_strip.add_argument("checkpoint", help="the .ckpt file or registered name")
    p_strip.add_argument("--output", "-o", required=True, help="the inference checkpoint to write")
    p_strip.add_argument("--half", action="store_true",
                         help="float16 weights (half the size; cast back to float32 when loaded; checked to embed "
                              "within max |diff| 0.01 and cosine 0.999 of the original)")

    from speakerzoo.zoo.importers import IMPORTERS

    p_import = sub.add_parser(
        "import", help="another toolkit's pretrained weights as a speakerzoo checkpoint",
        description="Import pretrained weights: " + "; ".join(f"{k}: {v}" for k, v in IMPORTERS.items())
        + ". Nothing in the files is run (no pickled code, no YAML objects); the written checkpoint is "
          "checked to rebuild and embed as the imported model.")
    p_import.add_argument("source", choices=sorted(IMPORTERS), help="the toolkit the weights come from")
    p_import.add_argument("path", help="the folder (speechbrain) or .pt file (3dspeaker, wespeaker)")
    p_import.add_argument("--output", "-o", required=True, help="the checkpoint to write")
    return parser


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    return "\n".join(lines)


def _list(registry: reg.Registry) -> str:
    if registry.file is None:
        return registry.describe()
    if not registry.entries:
        return f"{registry.file}: no checkpoints registered"
    rows = []
    for name in registry.names():
        e = registry.entries[name]
        rows.append([name, e.class_path.rpartition(".")[2], f"{100 * e.eer:.2f}%", e.corpus, e.source,
                     e.sha256[:12]])
    return f"{registry.file}:\n" + _table(rows, ["NAME", "CLASS", "EER", "CORPUS", "SOURCE", "SHA256"])


def _verify(registry: reg.Registry, name: str | None, download: bool) -> int:
    """Re-hash the entries, printing one line per entry as it is checked (hashing takes a while)."""
    names = [registry.get(name).name] if name is not None else registry.names()
    if not names:
        print(f"{registry.file or 'no registry'}: no checkpoints registered")
        return 0
    failed = 0
    for n in names:
        entry = registry.entries[n]
        try:
            if entry.url is not None and not download and not reg.cached_path(entry).is_file():
                print(f"skipped  {n}: {entry.url} is not downloaded (--download fetches it)")
                continue
            path = reg.resolve(n, registry)
            print(f"ok       {n}: {path}")
        except (OSError, reg.RegistryError) as err:
            failed += 1
            print(f"FAILED   {n}: {err}")
    if failed:
        print(f"{failed} of {len(names)} checkpoint(s) failed verification", file=sys.stderr)
    return EXIT_FAILED if failed else 0


def run(args: argparse.Namespace) -> str | int:
    """The action of ``args``: the text to print (``add``, ``list``), or the exit code of ``verify``
    (its lines already printed) or of a registry error."""
    if args.action == "strip":
        from speakerzoo.zoo.strip import strip_checkpoint

        r = strip_checkpoint(args.checkpoint, args.output, half=args.half)
        return (f"wrote {r.output}: {r.bytes_after / 2**20:.1f} MiB ({r.dtype} weights; {r.source} was "
                f"{r.bytes_before / 2**20:.1f} MiB), sha256 {r.sha256}\n"
                f"  embeddings against the original: max |diff| {r.max_abs_diff:.2e}, min cosine {r.min_cosine:.6f}")
    if args.action == "import":
        from speakerzoo.zoo.importers import import_pretrained

        r = import_pretrained(args.source, args.path, args.output)
        return (f"wrote {r.output}: {r.class_path.rpartition('.')[2]} from {r.origin} ({r.parameters / 1e6:.2f} M "
                f"parameters, {r.embedding_dim}-d embeddings, frontend {r.frontend['kind']}), sha256 {r.sha256}\n"
                f"  register it: speakerzoo checkpoints add NAME {r.output} --corpus \"...\" --eer ... --licence \"...\"")
    try:
        if args.action == "add":
            entry = reg.add_entry(args.name, args.checkpoint, corpus=args.corpus, eer=args.eer,
                                  registry=args.registry, url=args.url, notes=args.notes, overwrite=args.force,
                                  licence=args.licence)
            where = args.registry or reg.default_registry_path()
            return f"added {entry.name}: {entry.class_path}, sha256 {entry.sha256}, {entry.source} -> {where}"
        registry = reg.load_registry(args.registry)
        if args.action == "list":
            return _list(registry)
        return _verify(registry, args.name, args.download)
    except (OSError, reg.RegistryError) as err:
        error(f"checkpoints {args.action}", err)
        return EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    """``speakerzoo checkpoints ...``; returns the exit code (0 done, 1 registry error or failed
    verification, 2 usage error, 130 interrupted)."""
    return run_command("checkpoints", None if argv is None else list(argv), build_parser, run, str)


if __name__ == "__main__":
    raise SystemExit(main())
