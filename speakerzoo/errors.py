"""Which errors are the user's to fix, and how every command reports them (ground floor).

speakerzoo's own errors (``CorpusError``, ``InvalidCheckpointError``, ``AudioError``, ...) carry a
message that names the input and the fix; so do the ``ValueError``/``OSError`` that its own code
raises. :func:`user_error` finds such an error in an exception's chain. Every command
(:func:`speakerzoo.commands.common.run_command`) and the LightningCLI entry point
(:mod:`speakerzoo.__main__`) print it as one line and exit with :data:`EXIT_ERROR`; anything else
(a bug, a library failure) keeps its traceback.
"""

from __future__ import annotations

import traceback
from pathlib import Path

__all__ = ["EXIT_ERROR", "EXIT_INTERRUPTED", "EXIT_OK", "user_error"]

EXIT_OK = 0
#: A usage error or an input the user must fix (the message says how); argparse's own code.
EXIT_ERROR = 2
#: Ctrl-C or SIGTERM: 128 + SIGINT, as shells report it.
EXIT_INTERRUPTED = 130

PACKAGE = Path(__file__).resolve().parent


def user_error(error: BaseException, os_and_value_errors: bool = False) -> BaseException | None:
    """The first exception in ``error``'s chain (itself, then its causes) whose message speakerzoo
    wrote for the user: one of its own error classes, or a ``ValueError``/``OSError`` raised by its
    own code. With ``os_and_value_errors``, any ``ValueError`` or ``OSError`` (a file that cannot be
    opened, a number out of range) counts as the user's too: the commands' policy, whose inputs are
    files and numbers the user named."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if type(current).__module__.startswith("speakerzoo."):
            return current
        if isinstance(current, (ValueError, OSError)):
            if os_and_value_errors:
                return current
            frames = traceback.extract_tb(current.__traceback__)
            if frames:
                origin = Path(frames[-1].filename).resolve()
                if PACKAGE in origin.parents and origin.name != "__main__.py":
                    return current
        current = current.__cause__ or current.__context__
    return None
