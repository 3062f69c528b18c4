"""Is the installed torch/torchaudio pair one that loads? Asked before anything imports torchaudio.

torchaudio's compiled library is built against one exact torch release, while its metadata
only asks for ``torch>=X``: pip can pair ``torch 2.11.0`` with ``torchaudio 2.11.1``, and then
every import of torchaudio dies with ``OSError: ... libtorchaudio.so: undefined symbol ...``.
:func:`torch_pair_problem` turns that into a message naming both versions and the one
command that installs the pair speakerzoo pins (read from speakerzoo's own metadata, so the
pins are written only in ``pyproject.toml``).

>>> torch_pair_problem() is None   # this environment's pair loads
True
"""

from __future__ import annotations

import re
from importlib import metadata

_PINNED = ("torch", "torchaudio")


def installed_version(distribution: str) -> str:
    """The installed version of ``distribution``, or ``"not installed"``."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def pinned_requirements() -> list[str]:
    """speakerzoo's own ``torch==…`` and ``torchaudio==…`` requirements, as installed."""
    try:
        requires = metadata.requires("speakerzoo") or []
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        requires = []
    pins = []
    for requirement in requires:
        match = re.match(r"^\s*(torch|torchaudio)\s*(==\s*[^\s;,]+)", requirement)
        if match and ";" not in requirement:
            pins.append(match.group(1) + match.group(2).replace(" ", ""))
    return sorted(pins, key=lambda pin: _PINNED.index(pin.split("=")[0])) or list(_PINNED)


def torch_pair_problem() -> str | None:
    """``None`` when torchaudio loads against the installed torch; otherwise what is wrong and the fix."""
    try:
        import torchaudio  # noqa: F401
    except (ImportError, OSError) as error:
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        fix = "pip install " + " ".join(f'"{pin}"' for pin in pinned_requirements())
        return (
            f"speakerzoo: torchaudio cannot be loaded: {type(error).__name__}: {first_line}\n"
            f"Installed: torch {installed_version('torch')}, torchaudio {installed_version('torchaudio')}. "
            "torchaudio's wheels are built against one exact torch release, so the two must be "
            "installed as the pair speakerzoo pins.\n"
            f"Fix: {fix}\n"
            "(or install speakerzoo again with the tested versions: pip install -c constraints.txt -e .)"
        )
    return None
