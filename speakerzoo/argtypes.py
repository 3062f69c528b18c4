"""argparse value types and parsing shared by the speakerzoo commands, and the range check of numbers
that models and DataModules are given (ground floor: imports nothing of ours)."""

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


def parse_or_exit_code(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace | int:
    """The parsed ``argv``, or the exit code argparse stopped with: 0 after ``--help``, 2 after a
    usage error (already printed). Commands return the code from ``main`` instead of exiting,
    so that they can run inside a test or another program."""
    try:
        return parser.parse_args(argv)
    except SystemExit as stop:
        return int(stop.code or 0) if not isinstance(stop.code, str) else 2



def check_number(name: str, value: float, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False, hint: str = "") -> float:
    """``value`` as a float when it is finite and within ``[low, high]`` (``low_open``/``high_open``:
    that end excluded); otherwise a ``ValueError`` naming ``name``, the range and ``hint``.

    Models and DataModules check what they are given with it, so that a config's impossible
    number (a negative learning rate, an AAM scale of 0) stops the run at once with its name,
    instead of training that cannot learn or a crash deep inside a later step.

    >>> check_number("lr", 0.001, low=0, low_open=True)
    0.001
    >>> check_number("lr", -0.1, low=0, low_open=True, hint="e.g. 0.001")
    Traceback (most recent call last):
    ...
    ValueError: lr must be a number > 0, not -0.1 (e.g. 0.001)
    """
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    bounds = []
    if low is not None:
        bounds.append(f"> {low:g}" if low_open else f">= {low:g}")
    if high is not None:
        bounds.append(f"< {high:g}" if high_open else f"<= {high:g}")
    ok = math.isfinite(number)
    if ok and low is not None:
        ok = number > low if low_open else number >= low
    if ok and high is not None:
        ok = number < high if high_open else number <= high
    if not ok:
        where = f"a number {' and '.join(bounds)}" if bounds else "a finite number"
        raise ValueError(f"{name} must be {where}, not {value!r}" + (f" ({hint})" if hint else ""))
    return number
