"""``speakerzoo`` and ``python -m speakerzoo``: check the torch/torchaudio pair, then run the CLI.

The check comes first because :mod:`speakerzoo.cli` imports torchaudio at once (through the
zoo and the DataModules): a mismatched pair would otherwise end in an ``OSError`` traceback
from inside torchaudio instead of the one command that fixes it.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    from speakerzoo.environment import torch_pair_problem

    problem = torch_pair_problem()
    if problem is not None:
        print(problem, file=sys.stderr)
        raise SystemExit(2)
    from speakerzoo.cli import main as cli_main

    cli_main(argv)


if __name__ == "__main__":
    main()
