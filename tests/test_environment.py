"""The ``speakerzoo`` command with a torchaudio that cannot load: a message and the fix, no traceback."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from speakerzoo.environment import installed_version, pinned_requirements, torch_pair_problem

REPO = Path(__file__).resolve().parents[1]


def pyproject_pins() -> list[str]:
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return [d for d in dependencies if re.match(r"torch(audio)?==", d)]


def test_torch_and_torchaudio_are_pinned_to_one_exact_pair():
    pins = pyproject_pins()
    assert sorted(p.split("==")[0] for p in pins) == ["torch", "torchaudio"]
    assert all(re.fullmatch(r"torch(audio)?==\d+\.\d+\.\d+", p) for p in pins), pins
    # The installed pair is the pinned one, and it loads.
    assert sorted(pinned_requirements()) == sorted(pins)
    for pin in pins:
        name, version = pin.split("==")
        assert installed_version(name) == version
    assert torch_pair_problem() is None


@pytest.fixture()
def broken_torchaudio(tmp_path):
    """A ``torchaudio`` first on the path that fails as a mismatched wheel does."""
    package = tmp_path / "torchaudio"
    package.mkdir()
    (package / "__init__.py").write_text(
        "raise OSError('/venv/lib/python3.11/site-packages/torchaudio/lib/libtorchaudio.so: "
        "undefined symbol: torch_exception_get_what_without_backtrace')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    return env


def commands() -> list[list[str]]:
    found = [[sys.executable, "-m", "speakerzoo"]]
    script = Path(sys.executable).parent / "speakerzoo"
    if script.exists():  # the console script pip installed (always there after `pip install -e .`)
        found.append([str(script)])
    return found


@pytest.mark.parametrize("command", commands(), ids=lambda c: Path(c[-1]).name)
@pytest.mark.parametrize("subcommand", [["fit", "--help"], ["prepare", "toy", "--output", "x.h5"]],
                         ids=["fit", "prepare"])
def test_a_torchaudio_that_cannot_load_gives_the_versions_and_the_fix(broken_torchaudio, tmp_path, command,
                                                                    subcommand):
    result = subprocess.run([*command, *subcommand], env=broken_torchaudio, cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "undefined symbol: torch_exception_get_what_without_backtrace" in result.stderr
    assert f"torch {installed_version('torch')}, torchaudio {installed_version('torchaudio')}" in result.stderr
    fix = next(line for line in result.stderr.splitlines() if line.startswith("Fix: "))
    assert fix == "Fix: pip install " + " ".join(f'"{pin}"' for pin in pyproject_pins())
    assert not (tmp_path / "x.h5").exists()


def test_a_working_pair_runs_the_command(tmp_path):
    result = subprocess.run([sys.executable, "-m", "speakerzoo", "prepare", "--help"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout
