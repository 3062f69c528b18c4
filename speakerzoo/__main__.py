"""``speakerzoo`` and ``python -m speakerzoo``: check the torch/torchaudio pair, then run the CLI.

The check comes first because :mod:`speakerzoo.cli` imports torchaudio at once (through the
zoo and the DataModules): a mismatched pair would otherwise end in an ``OSError`` traceback
from inside torchaudio instead of the one command that fixes it.

``fit``, ``validate``, ``test`` and ``predict`` (LightningCLI) report an error that speakerzoo
raised (a damaged corpus, a checkpoint it refuses, a number a model cannot use) as one line,
as the other commands do, instead of the chained traceback jsonargparse and Lightning wrap it
in. ``SPEAKERZOO_TRACEBACK=1`` shows the traceback. Errors raised elsewhere (a bug, a library
failure) keep their traceback. Called from Python, :func:`speakerzoo.cli.main` raises as usual.
"""

from __future__ import annotations

import os
import sys

from speakerzoo.errors import EXIT_ERROR, user_error


def main(argv: list[str] | None = None) -> None:
    from speakerzoo.environment import torch_pair_problem

    problem = torch_pair_problem()
    if problem is not None:
        print(problem, file=sys.stderr)
        raise SystemExit(2)
    from speakerzoo.cli import main as cli_main

    args = list(sys.argv[1:] if argv is None else argv)
    try:
        cli_main(argv)
    except Exception as error:  # noqa: BLE001 - only speakerzoo's own errors are shortened
        ours = user_error(error)
        if ours is None or os.environ.get("SPEAKERZOO_TRACEBACK"):
            raise
        subcommand = args[0] if args and not args[0].startswith("-") else "speakerzoo"
        print(f"speakerzoo {subcommand}: error: {ours}\n(SPEAKERZOO_TRACEBACK=1 shows where it was raised)",
              file=sys.stderr)
        raise SystemExit(EXIT_ERROR) from None


if __name__ == "__main__":
    main()
