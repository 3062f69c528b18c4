"""argparse value types and parsing shared by the speakerzoo commands (top floor; the range check of
numbers that models and DataModules are given is :func:`speakerzoo.checks.check_number`)."""

from __future__ import annotations

import argparse
import math
from typing import Callable


def number_at_least(kind: type, low: float, strict: bool = False) -> Callable[[str], float]:
    """An argparse ``type=`` that parses ``kind`` and refuses values below ``low`` (or equal, if
    ``strict``), and NaN and infinities (``float("nan")`` would pass every comparison)."""
    def parse(text: str):
        value = kind(text)
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number: {text}")
        if value < low or (strict and value == low):
            bound = f"greater than {low}" if strict else f"at least {low}"
            raise argparse.ArgumentTypeError(f"must be {bound}: {text}")
        return value

    parse.__name__ = f"{kind.__name__} >{'' if strict else '='} {low}"
    return parse


positive_int = number_at_least(int, 0, strict=True)
non_negative_int = number_at_least(int, 0)
positive_float = number_at_least(float, 0, strict=True)
non_negative_float = number_at_least(float, 0)


def fraction(text: str) -> float:
    """A fraction in ``[0, 1]`` (an argparse ``type=``)."""
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a fraction in [0, 1]: {text}")
    return value


def probability(text: str) -> float:
    """A probability strictly between 0 and 1, as a prior must be (an argparse ``type=``)."""
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1): {text}")
    return value


def parse_or_exit_code(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace | int:
    """The parsed ``argv``, or the exit code argparse stopped with: 0 after ``--help``, 2 after a
    usage error (already printed). Commands return the code from ``main`` instead of exiting,
    so that they can run inside a test or another program."""
    try:
        return parser.parse_args(argv)
    except SystemExit as stop:
        return int(stop.code or 0) if not isinstance(stop.code, str) else 2
