"""The checkpoint registry: names for trained checkpoints, each with its sha256 and class.

A registry is a YAML file that maps a name to where a checkpoint is (``path``, relative to the
registry file or absolute, or ``url``: ``http(s)://`` or ``file://``), its ``sha256``, its model
``class`` (``speakerzoo.zoo.ecapa.ECAPA``), the training ``corpus`` and the measured ``eer``
(a fraction in [0, 1]), with optional ``notes``::

    ecapa-toy:
      path: ecapa-toy.ckpt
      sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
      class: speakerzoo.zoo.ecapa.ECAPA
      corpus: toy (40 speakers x 24 utterances, seed 0), split by speaker
      eer: 0.125
      notes: configs/ecapa_small.yaml, 6 epochs

:func:`resolve` turns a name (or a path) into a local file whose digest has been checked:
a ``path`` is hashed where it is; a ``url`` is downloaded once into the cache directory
(``$SPEAKERZOO_CACHE``, else ``~/.cache/speakerzoo``), under a temporary name that is renamed
only once the whole file is there and its digest matches. A digest that does not match raises
:class:`ChecksumError` ("tampered or incomplete"), naming the file and both digests.

Which registry: the ``registry`` argument, else ``$SPEAKERZOO_REGISTRY``, else the
``checkpoints/registry.yaml`` of the source checkout this package runs from (if any).

This module is on the zoo floor: it imports nothing of ``speakerzoo.datamodules``.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

import yaml

#: Environment variable naming the registry file to use by default.
REGISTRY_ENV = "SPEAKERZOO_REGISTRY"
#: Environment variable naming the download cache directory.
CACHE_ENV = "SPEAKERZOO_CACHE"
#: Names: a letter or digit, then letters, digits, ``.``, ``_``, ``-`` (they also name cache files).
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_FIELDS = ("path", "url", "sha256", "class", "corpus", "eer", "licence", "notes")
_DEFAULT_HEADER = (
    "# speakerzoo checkpoint registry: NAME -> path (relative to this file, or absolute) or url,\n"
    "# sha256, class, corpus, eer (fraction), licence (of the weights and their data), notes.\n"
    "# Managed with `speakerzoo checkpoints add/list/verify`.\n"
)


class RegistryError(ValueError):
    """A registry file that cannot be read, or an entry that is malformed."""


class ChecksumError(RegistryError):
    """A checkpoint file whose sha256 is not the one its registry entry records."""


class UnknownCheckpointError(FileNotFoundError, LookupError):
    """Neither an existing checkpoint file nor a name in the registry."""


@dataclass(frozen=True)
class RegistryEntry:
    """One registered checkpoint; ``class_path`` is the YAML key ``class``."""

    name: str
    sha256: str
    class_path: str
    corpus: str
    eer: float
    path: str | None = None
    url: str | None = None
    notes: str | None = None
    licence: str | None = None

    def to_yaml(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.path is not None:
            out["path"] = self.path
        if self.url is not None:
            out["url"] = self.url
        out.update({"sha256": self.sha256, "class": self.class_path, "corpus": self.corpus, "eer": self.eer})
        if self.licence:
            out["licence"] = self.licence
        if self.notes:
            out["notes"] = self.notes
        return out

    @property
    def source(self) -> str:
        """``path`` or ``url``, as written in the registry."""
        return self.path if self.path is not None else str(self.url)


@dataclass
class Registry:
    """The entries of one registry file (``file`` is ``None`` for no registry at all)."""

    file: Path | None
    entries: dict[str, RegistryEntry]

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def names(self) -> list[str]:
        return sorted(self.entries)

    def describe(self) -> str:
        """Where the registry is and the names it knows, for error messages."""
        if self.file is None:
            return (f"no checkpoint registry is configured (set ${REGISTRY_ENV} to a registry.yaml, "
                    f"or pass registry=...)")
        known = ", ".join(self.names()) if self.entries else "none"
        return f"registry {self.file} knows: {known}"

    def get(self, name: str) -> RegistryEntry:
        """The entry called ``name``; :class:`UnknownCheckpointError` (listing the known names) if none."""
        if name not in self.entries:
            raise UnknownCheckpointError(f"no checkpoint named {name!r}: {self.describe()}")
        return self.entries[name]

    def local_path(self, entry: RegistryEntry) -> Path | None:
        """The file of a ``path`` entry (relative paths are relative to the registry file); ``None`` for URLs."""
        if entry.path is None:
            return None
        path = Path(entry.path).expanduser()
        if not path.is_absolute() and self.file is not None:
            path = self.file.parent / path
        return path


# ----------------------------------------------------------------------------------- reading


def default_registry_path() -> Path | None:
    """``$SPEAKERZOO_REGISTRY``, else ``checkpoints/registry.yaml`` of the source checkout (if present)."""
    env = os.environ.get(REGISTRY_ENV)
    if env:
        return Path(env).expanduser()
    root = Path(__file__).resolve().parents[2]  # speakerzoo/zoo/registry.py -> the checkout
    candidate = root / "checkpoints" / "registry.yaml"
    if candidate.is_file() and (root / "pyproject.toml").is_file():
        return candidate
    return None


def load_registry(path: str | Path | Registry | None = None) -> Registry:
    """Read a registry file (default: :func:`default_registry_path`).

    A given ``path`` must exist (a :class:`Registry` is returned as is); with no path and no
    default registry, the registry is empty.
    Raises :class:`RegistryError` for a file that is not a registry, naming the file and entry.
    """
    if isinstance(path, Registry):
        return path
    if path is None:
        path = default_registry_path()
        if path is None:
            return Registry(None, {})
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint registry {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise RegistryError(f"{path} is not valid YAML: {error}") from error
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise RegistryError(f"{path}: a registry maps names to entries, got a {type(data).__name__}")
    entries = {}
    for name, fields in data.items():
        entries[str(name)] = _parse_entry(str(name), fields, path)
    return Registry(path, entries)


def _parse_entry(name: str, fields: Any, where: Path) -> RegistryEntry:
    def bad(message: str) -> RegistryError:
        return RegistryError(f"{where}: entry {name!r}: {message}")

    if not NAME_PATTERN.match(name):
        raise bad(f"names are letters, digits, '.', '_' and '-' (pattern {NAME_PATTERN.pattern})")
    if not isinstance(fields, Mapping):
        raise bad(f"expected a mapping of {', '.join(_FIELDS)}, got {fields!r:.60}")
    unknown = sorted(set(map(str, fields)) - set(_FIELDS))
    if unknown:
        raise bad(f"unknown field(s) {unknown}; allowed: {', '.join(_FIELDS)}")
    if ("path" in fields) == ("url" in fields):
        raise bad("give exactly one of 'path' and 'url'")
    for key in ("sha256", "class", "corpus", "eer"):
        if fields.get(key) is None:
            raise bad(f"missing {key!r}")
    sha = str(fields["sha256"]).lower()
    if not _SHA256.match(sha):
        raise bad(f"sha256 must be 64 hex digits, got {fields['sha256']!r}")
    try:
        eer = float(fields["eer"])
    except (TypeError, ValueError):
        raise bad(f"eer must be a number (a fraction in [0, 1]), got {fields['eer']!r}") from None
    if not 0.0 <= eer <= 1.0:
        raise bad(f"eer is a fraction in [0, 1], got {eer}")
    url = fields.get("url")
    if url is not None:
        url = str(url)
        _check_scheme(url, f"{where}: entry {name!r}")
    return RegistryEntry(
        name=name, sha256=sha, class_path=str(fields["class"]), corpus=str(fields["corpus"]), eer=eer,
        path=None if fields.get("path") is None else str(fields["path"]), url=url,
        notes=None if fields.get("notes") is None else str(fields["notes"]),
        licence=None if fields.get("licence") is None else str(fields["licence"]),
    )


def _check_scheme(url: str, where: str) -> None:
    scheme = urllib.parse.urlparse(url).scheme.lower()
    if scheme not in ("http", "https", "file"):
        raise RegistryError(f"{where}: url must be http(s):// or file://, got {url!r}")


# ----------------------------------------------------------------------------------- digests and files


def sha256_of(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify_file(path: str | Path, expected: str, what: str = "") -> Path:
    """``path`` if its sha256 is ``expected``; else :class:`ChecksumError` naming both digests."""
    path = Path(path)
    actual = sha256_of(path)
    if actual != expected.lower():
        label = f" (registry entry {what!r})" if what else ""
        raise ChecksumError(
            f"{path}{label}: sha256 mismatch, the file is tampered or incomplete "
            f"(expected {expected.lower()}, actual {actual})")
    return path


def cache_dir() -> Path:
    """``$SPEAKERZOO_CACHE``, else ``~/.cache/speakerzoo``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "speakerzoo"


def cached_path(entry: RegistryEntry) -> Path:
    """Where the download of a ``url`` entry is kept (the digest is in the name: a new one is fetched anew)."""
    suffix = Path(urllib.parse.urlparse(entry.url or "").path).suffix or ".ckpt"
    return cache_dir() / f"{entry.name}-{entry.sha256[:16]}{suffix}"


def download(entry: RegistryEntry, timeout: float = 60.0) -> Path:
    """The cached file of a ``url`` entry, downloaded first if absent; its digest is checked either way.

    The download goes to a temporary file in the cache directory, hashed as it arrives, and is
    renamed to its final name only when complete and matching; otherwise it is deleted.
    """
    if entry.url is None:
        raise RegistryError(f"registry entry {entry.name!r} has no url")
    _check_scheme(entry.url, f"registry entry {entry.name!r}")
    target = cached_path(entry)
    if target.is_file():
        return verify_file(target, entry.sha256, entry.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(entry.url, timeout=timeout) as response:  # noqa: S310 - scheme checked
            while block := response.read(1 << 20):
                digest.update(block)
                out.write(block)
        actual = digest.hexdigest()
        if actual != entry.sha256:
            raise ChecksumError(
                f"{entry.url} (registry entry {entry.name!r}): sha256 mismatch, the download is tampered or "
                f"incomplete (expected {entry.sha256}, actual {actual}); nothing was kept")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def resolve_entry(name_or_path: str | Path, registry: str | Path | Registry | None = None,
                  ) -> tuple[Path, RegistryEntry | None]:
    """``(file, entry)`` for a registry name or an existing file (``entry`` None).

    A registered name always means the registry's file, checked against its sha256 (downloaded
    into the cache first for a ``url``), even when a file of that name lies in the working
    directory: otherwise any such file would be taken unchecked. Write a path with a folder
    (``./NAME``) to load that file instead.
    Raises :class:`UnknownCheckpointError` (a ``FileNotFoundError``; the message lists the known
    names), :class:`ChecksumError`, or ``FileNotFoundError`` for a registered path that is gone.
    """
    name = str(name_or_path)
    path = Path(name).expanduser()
    bare = not isinstance(name_or_path, PurePath) and "/" not in name and os.sep not in name
    reg = None
    if bare:
        try:
            reg = load_registry(registry)
        except (RegistryError, FileNotFoundError):
            if not path.is_file():
                raise
    if (reg is None or name not in reg) and path.is_file():
        return path, None
    reg = reg if reg is not None else load_registry(registry)
    if name not in reg:
        what = "is a directory, not a checkpoint file" if path.exists() else "is not a checkpoint file"
        raise UnknownCheckpointError(f"{name!r} {what}, nor a registered name: {reg.describe()}")
    entry = reg.entries[name]
    local = reg.local_path(entry)
    if local is not None:
        if not local.is_file():
            raise FileNotFoundError(f"registry entry {name!r} ({reg.file}) points to {str(local)!r}, which does not exist")
        return verify_file(local, entry.sha256, name), entry
    return download(entry), entry


def resolve(name_or_path: str | Path, registry: str | Path | Registry | None = None) -> Path:
    """A local checkpoint file for a path (returned as is when it exists) or a registry name (checked)."""
    return resolve_entry(name_or_path, registry)[0]


def class_matches(registered: str, actual: str) -> bool:
    """Whether a registry ``class`` names the class path ``actual`` (full path, or the bare class name)."""
    return registered == actual or ("." not in registered and actual.rpartition(".")[2] == registered)


# ----------------------------------------------------------------------------------- writing


def checkpoint_class(path: str | Path) -> str:
    """The model class path a speakerzoo checkpoint records (read with ``weights_only=True``)."""
    from speakerzoo.zoo.checkpoint import InvalidCheckpointError, read_checkpoint_file  # reading a registry needs no torch

    try:
        checkpoint = read_checkpoint_file(path)
    except InvalidCheckpointError as error:
        raise RegistryError(str(error)) from None
    meta = checkpoint.get("speakerzoo") if isinstance(checkpoint, Mapping) else None
    if not isinstance(meta, Mapping) or "class_path" not in meta:
        raise RegistryError(f"{path} is not a speakerzoo checkpoint (no 'speakerzoo' entry with a class path)")
    return str(meta["class_path"])


def parse_eer(value: str | float) -> float:
    """An EER as a fraction: ``0.125``, or a percentage written ``"12.5%"``."""
    text = str(value).strip()
    try:
        eer = float(text[:-1]) / 100.0 if text.endswith("%") else float(text)
    except ValueError:
        raise RegistryError(f"eer must be a fraction (0.125) or a percentage (12.5%), got {value!r}") from None
    if not 0.0 <= eer <= 1.0:
        raise RegistryError(f"eer is a fraction in [0, 1] (or a percentage with %), got {value!r}")
    return eer


def add_entry(name: str, checkpoint: str | Path, corpus: str, eer: str | float,
              registry: str | Path | None = None, url: str | None = None, notes: str | None = None,
              overwrite: bool = False, licence: str | None = None) -> RegistryEntry:
    """Register ``checkpoint`` as ``name`` and write the registry file; returns the new entry.

    The sha256 is computed and the class read from the file. Without ``url`` the entry records
    the file's path: relative to the registry file when the checkpoint lies under its folder,
    absolute otherwise. With ``url`` it records the URL (the local file only gives digest and class).
    ``registry`` defaults to :func:`default_registry_path` and is created if absent; the comments
    at the top of an existing registry file are kept. An existing name needs ``overwrite=True``.
    """
    if not NAME_PATTERN.match(name):
        raise RegistryError(f"bad name {name!r}: use letters, digits, '.', '_' and '-' (starting with a letter or digit)")
    reg_path = Path(registry) if registry is not None else default_registry_path()
    if reg_path is None:
        raise RegistryError(f"no registry file to add to: pass registry=... (--registry) or set ${REGISTRY_ENV}")
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint {str(checkpoint)!r} does not exist or is not a file")
    reg = load_registry(reg_path) if reg_path.exists() else Registry(reg_path, {})
    if name in reg and not overwrite:
        raise RegistryError(f"{reg_path} already has an entry {name!r} (overwrite it with --force / overwrite=True)")
    if url is not None:
        _check_scheme(url, f"entry {name!r}")
        stored_path = None
    else:
        absolute = checkpoint.resolve()
        base = reg_path.resolve().parent
        stored_path = absolute.relative_to(base).as_posix() if absolute.is_relative_to(base) else str(absolute)
    entry = RegistryEntry(name=name, sha256=sha256_of(checkpoint), class_path=checkpoint_class(checkpoint),
                          corpus=str(corpus), eer=parse_eer(eer), path=stored_path, url=url,
                          notes=notes or None, licence=licence or None)
    entries = dict(reg.entries)
    entries[name] = entry
    write_registry(reg_path, entries)
    return entry


def write_registry(path: str | Path, entries: Mapping[str, RegistryEntry]) -> None:
    """Write ``entries`` to ``path`` (temporary file, then rename), keeping the file's leading comments."""
    path = Path(path)
    header = _DEFAULT_HEADER
    if path.is_file():
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        kept = []
        for line in lines:
            if line.strip() and not line.lstrip().startswith("#"):
                break
            kept.append(line)
        if any(line.strip() for line in kept):
            header = "".join(kept)
    body = yaml.safe_dump({name: entries[name].to_yaml() for name in sorted(entries)} or {},
                          sort_keys=False, allow_unicode=True, default_flow_style=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(header if header.endswith("\n") else header + "\n")
            out.write(body)
        if path.exists():
            shutil.copymode(path, tmp_name)
        else:
            os.chmod(tmp_name, 0o644)  # mkstemp makes it private
        os.replace(tmp_name, path)
    finally:
        Path(tmp_name).unlink(missing_ok=True)
