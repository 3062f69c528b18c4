"""``speakerzoo enrol``: keep enrolled speakers in a store file for one checkpoint, so that
``verify`` and ``identify`` can use them later with ``--store``.

Adds speakers (``--enrol``, ``--enrol-dir``, ``--enrol-embeddings``) under a ``--profile``
(several per speaker: a speaker scores its best profile), replaces a profile (``--replace``),
removes speakers or profiles (``--remove NAME`` or ``NAME:PROFILE``) and lists the store. The
store records the checkpoint's sha256 and is refused for another one; it is rewritten under a
temporary name, so an interrupted update keeps the previous store. The work is
:class:`speakerzoo.SpeakerRecognizer`'s (:meth:`~speakerzoo.SpeakerRecognizer.enrol_store`,
:meth:`~speakerzoo.SpeakerRecognizer.save_store`); the file is :mod:`speakerzoo.inference.speaker_store`.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path
from typing import Any

from speakerzoo.commands.common import run_command
from speakerzoo.commands.options import add_enrol_arguments, add_model_arguments
from speakerzoo.inference.enrolment import EnrolError
from speakerzoo.inference.recognizer import SpeakerRecognizer

__all__ = ["build_parser", "main", "run"]

EXAMPLES = """examples:
  speakerzoo enrol speakers.h5 -c best.ckpt --enrol alice=a1.wav,a2.wav --enrol bob=b1.wav
  speakerzoo enrol speakers.h5 -c best.ckpt --enrol alice=phone1.wav --profile phone
  speakerzoo enrol speakers.h5 -c best.ckpt --enrol alice=new1.wav,new2.wav --replace
  speakerzoo enrol speakers.h5 -c best.ckpt --remove bob --remove alice:phone
  speakerzoo enrol speakers.h5 -c best.ckpt --list
  speakerzoo identify unknown.wav -c best.ckpt --store speakers.h5
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="speakerzoo enrol",
        description=textwrap.fill(
            "Enrol speakers into a store file for one checkpoint, to verify or identify against later "
            "(`speakerzoo verify|identify --store STORE.h5`). A speaker may have several profiles (a microphone, a "
            "session); it scores its best one. The store records the checkpoint and is refused for another.",
            width=100),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("output", type=Path, metavar="STORE.h5", help="the store to create or update")
    add_model_arguments(parser)
    add_enrol_arguments(parser)
    change = parser.add_argument_group("changes")
    change.add_argument("--profile", default="default", help="the profile the new recordings enrol (default: default)")
    change.add_argument("--replace", action="store_true",
                        help="the new recordings replace what the named speakers had under --profile")
    change.add_argument("--remove", action="append", default=[], metavar="NAME[:PROFILE]",
                        help="remove a speaker, or one of its profiles (repeatable)")
    change.add_argument("--list", action="store_true", help="only list the store")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    return parser


def run(args: argparse.Namespace) -> dict[str, Any]:
    rec = SpeakerRecognizer.from_pretrained(args.checkpoint, device=args.device, progress=not args.quiet)
    existed = args.output.is_file()
    if existed:
        rec.enrol_store(args.output)
    elif args.list or args.remove:
        raise EnrolError(f"{args.output}: no such speaker store; create it with --enrol NAME=FILE ...")
    adding = bool(args.enrol or args.enrol_dir or args.enrol_embeddings or args.store)
    if args.list and (adding or args.remove):
        raise EnrolError("--list only lists; give the changes without it")
    for item in args.remove:
        name, _, profile = item.partition(":")
        rec.forget(name, profile or None)
    if adding:
        if args.replace:
            new = [name for name, _ in args.enrol]
            for name in new:
                if name in rec.enrolment.embeddings and args.profile in rec.enrolment.profile_list(name):
                    rec.forget(name, args.profile)
        for store in args.store:
            rec.enrol_store(store)
        if args.enrol or args.enrol_dir or args.enrol_embeddings:
            rec.enrol_from(files=args.enrol, folders=args.enrol_dir, embedding_files=args.enrol_embeddings,
                           profile=args.profile)
    elif args.replace:
        raise EnrolError("--replace needs the new recordings: --enrol NAME=FILE[,FILE...]")
    elif not args.list and not args.remove:
        raise EnrolError("nothing to do: give --enrol NAME=FILE ..., --remove NAME or --list")
    if not args.list:
        rec.save_store(args.output)
    return {"store": str(args.output), "checkpoint": str(rec.checkpoint), "written": not args.list,
            "created": not existed, "speakers": rec.enrolment.profile_counts()}


def render(result: dict[str, Any]) -> str:
    verb = "listed" if not result["written"] else ("created" if result["created"] else "updated")
    lines = [f"{verb} {result['store']} ({len(result['speakers'])} speakers; checkpoint {result['checkpoint']})"]
    width = max([7, *(len(n) for n in result["speakers"])])
    for name, profiles in result["speakers"].items():
        text = ", ".join(f"{p}: {n} utterance{'s' if n != 1 else ''}" for p, n in profiles.items())
        lines.append(f"  {name:<{width}}  {text}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``speakerzoo enrol ...``; returns the exit code (0 done, 2 error, 130 interrupted)."""
    return run_command("enrol", argv, build_parser, run, render)


if __name__ == "__main__":
    sys.exit(main())
