"""The one error policy and exit codes of every ``speakerzoo`` command outside LightningCLI.

A command is a thin shell (see DESIGN.md): ``build_parser()``, ``run(args) -> result`` (one
call into the library) and ``render(result) -> str``. :func:`run_command` joins them: it parses
``argv``, runs, prints the rendered result (or, when the command has ``--json`` and it was
given, the result as JSON) and returns the exit code:

* :data:`~speakerzoo.errors.EXIT_OK` (0) done; also after ``--help``;
* :data:`~speakerzoo.errors.EXIT_ERROR` (2) a usage error (argparse's message), or an input the
  user must fix: ``speakerzoo NAME: error: MESSAGE`` on stderr, the message naming the file and
  the fix (:func:`speakerzoo.errors.user_error` decides what counts);
* :data:`~speakerzoo.errors.EXIT_INTERRUPTED` (130) Ctrl-C or SIGTERM, with what was kept.

Anything else (a bug) keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable

from speakerzoo.commands.argtypes import parse_or_exit_code
from speakerzoo.errors import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, user_error

__all__ = ["error", "run_command", "warn"]


def error(name: str, message: object) -> int:
    """Print ``speakerzoo NAME: error: MESSAGE`` on stderr; returns :data:`EXIT_ERROR`."""
    print(f"speakerzoo {name}: error: {message}", file=sys.stderr)
    return EXIT_ERROR


def warn(name: str, message: object) -> None:
    """Print ``speakerzoo NAME: warning: MESSAGE`` on stderr."""
    print(f"speakerzoo {name}: warning: {message}", file=sys.stderr)


def run_command(
    name: str,
    argv: list[str] | None,
    build_parser: Callable[[], argparse.ArgumentParser],
    run: Callable[[argparse.Namespace], Any],
    render: Callable[[Any], str | None],
    interrupted: Callable[[argparse.Namespace], str] | None = None,
) -> int:
    """The ``main`` of a command: parse, ``run(args)``, print ``render(result)`` (nothing when it
    returns ``None`` or ``""``) or the JSON of the result with ``--json``; returns the exit code.

    ``run`` may itself return an ``int``: an exit code, with its output already printed.
    ``interrupted(args)`` says what an interruption left (default: "interrupted").
    """
    args = parse_or_exit_code(build_parser(), argv)
    if isinstance(args, int):
        return args
    try:
        result = run(args)
    except KeyboardInterrupt:
        note = interrupted(args) if interrupted is not None else ""
        print(f"speakerzoo {name}: interrupted" + (f"; {note}" if note else ""), file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:  # noqa: BLE001 - only errors written for the user are shortened
        ours = user_error(err, os_and_value_errors=True)
        if ours is None:
            raise
        return error(name, ours)
    if isinstance(result, int) and not isinstance(result, bool):
        return result
    if getattr(args, "json", False):
        payload = result.to_dict() if hasattr(result, "to_dict") else result
        print(json.dumps(payload, indent=2))
    else:
        text = render(result)
        if text:
            print(text)
    return EXIT_OK
