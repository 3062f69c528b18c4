"""What ``benchmarks/device_check.py`` needs on a GPU machine that has no ``../shared`` and no network.

Run here, once, before the GPU run::

    python benchmarks/device_bundle.py

It writes ``.device/`` in the repository (ignored by git, so it travels only where a tool is
told to carry it):

* ``.device/data/``: a copy of the check's subset of the shared corpora
  (:func:`device_check.subset`; about 20 MB), in their own layout, so that
  ``speakerzoo prepare`` reads it as it reads the originals;
* ``.device/whl/``: wheels for CPython 3.12 on x86-64 Linux of the packages speakerzoo needs
  that a machine with PyTorch, Lightning and transformers preinstalled may lack
  (:data:`WHEELS`: speechbrain, jsonargparse, soundfile and what they pull in), at the versions
  of ``constraints.txt``.

On the GPU machine, from the repository root (``docs/benchmarks.md``, "GPU check")::

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .device/whl/*.whl
    PYTHONPATH=/tmp/site:$PWD python3 benchmarks/device_check.py --out results/device_check
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

from device_check import GPU, REPO, SHARED_DATA, subset

#: Packages of speakerzoo's install missing from a PyTorch + Lightning + transformers image
#: (the device machine's, as its package list says), with the ones they need.
WHEELS = ("speechbrain", "HyperPyYAML", "ruamel.yaml", "ruamel.yaml.clib", "jsonargparse", "docstring_parser",
          "typeshed_client", "soundfile", "cffi", "pycparser")

PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")


def pinned(names: tuple[str, ...], constraints: Path) -> list[str]:
    """``NAME==VERSION`` of each name as ``constraints`` pins it."""
    pins = {}
    for line in constraints.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;#]+)", line.strip())
        if match:
            pins[re.sub(r"[-_.]+", "-", match.group(1)).lower()] = match.group(2)
    out = []
    for name in names:
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key not in pins:
            raise SystemExit(f"device_bundle: {name} is not pinned in {constraints}")
        out.append(f"{name}=={pins[key]}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, default=SHARED_DATA, help="the shared data folder (default: ../shared/data)")
    parser.add_argument("--output", type=Path, default=REPO / ".device", help="bundle folder (default: .device)")
    parser.add_argument("--python-version", default="3.12", help="the GPU machine's Python (default: 3.12)")
    args = parser.parse_args(argv)

    data = args.output / "data"
    if data.exists():
        shutil.rmtree(data)
    files = subset(args.data_root, GPU)
    for rel in files:
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(args.data_root / rel, data / rel)
    size = sum((data / rel).stat().st_size for rel in files)
    print(f"device_bundle: {len(files)} audio files, {size / 2**20:.1f} MiB in {data}")

    wheels = args.output / "whl"
    if wheels.exists():
        shutil.rmtree(wheels)
    wheels.mkdir(parents=True)
    platforms = [flag for p in PLATFORMS for flag in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", args.python_version, "--implementation", "cp", *platforms, "-d", str(wheels),
                    *pinned(WHEELS, REPO / "constraints.txt")], check=True)
    size = sum(p.stat().st_size for p in wheels.glob("*.whl"))
    print(f"device_bundle: {len(list(wheels.glob('*.whl')))} wheels, {size / 2**20:.1f} MiB in {wheels}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
