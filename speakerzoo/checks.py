"""The range check of the numbers that models and DataModules are given (ground floor: imports
nothing of ours). The command line's argparse types are in :mod:`speakerzoo.commands.argtypes`."""

from __future__ import annotations

import math

__all__ = ["check_number"]


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
