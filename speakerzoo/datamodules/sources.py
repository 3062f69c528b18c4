"""Importers: one function per corpus layout, each returning a sorted list of :class:`Utterance`.

An importer only walks folders and reads text (names, CSV, transcripts); it never decodes
audio. Decoding, resampling and skipping of damaged files happen in
:mod:`speakerzoo.datamodules.prepare`. Every importer

* returns records sorted deterministically (by their path relative to the root, so the
  same folder gives the same corpus on any machine),
* gives absolute, resolved paths,
* raises :class:`SourceError` naming the path and the layout it expected when the folder
  is missing or holds no audio of that layout.

Layouts::

    folder(root)           <speaker>/**/*.{wav,flac,ogg,mp3}        speaker = first folder level
    manifest(csv)          CSV with columns path,speaker[,transcript,session,utt_id]
    fsdd(root)             [recordings/]{digit}_{speaker}_{index}.wav
    speech_commands(root)  {word}/{speaker}_nohash_{n}.wav, _unknown_/{word}_{speaker}_nohash_{n}.wav.wav,
                           _silence_/*.wav and _background_noise_/*.wav (noise: no speaker)
    librispeech(root)      {spk}/{chapter}/{spk}-{chapter}-{utt}.flac + {spk}-{chapter}.trans.txt
    voxceleb(root)         {id}/{video}/{n}.wav (VoxCeleb1/2; VoxCeleb2's .m4a must be converted first)

Example::

    >>> from speakerzoo.datamodules import sources
    >>> records = sources.fsdd("../shared/data/fsdd")          # doctest: +SKIP
    >>> records[0]                                              # doctest: +SKIP
    Utterance(path=PosixPath('.../recordings/0_george_0.wav'), speaker='george', utt_id='0_george_0',
              transcript='zero', session='')
"""

from __future__ import annotations

import csv
import os
import re
import shlex
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from speakerzoo.audio import AUDIO_EXTENSIONS

__all__ = [
    "Utterance",
    "SourceError",
    "SOURCES",
    "folder",
    "manifest",
    "fsdd",
    "speech_commands",
    "librispeech",
    "voxceleb",
]

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# Speech Commands folders whose clips are background noise, not speech of a speaker.
NOISE_FOLDERS = ("_silence_", "_background_noise_")

# Containers soundfile (libsndfile) cannot decode, with the advice to give.
_UNSUPPORTED = (".m4a", ".aac", ".mp4", ".wma", ".opus", ".webm")


@dataclass(frozen=True)
class Utterance:
    """One audio file to be prepared.

    Arguments:
        path: the audio file (absolute).
        speaker: speaker name, or ``None`` for a clip without a speaker (background noise).
        utt_id: identifier unique within the source (usually the relative path without extension).
        transcript: the words spoken, if known.
        session: recording session (LibriSpeech chapter, VoxCeleb video), if known.
    """

    path: Path
    speaker: str | None
    utt_id: str
    transcript: str = ""
    session: str = ""


class SourceError(ValueError):
    """A source folder or manifest that cannot be imported; the message names the path and the expected layout."""


# -- helpers ---------------------------------------------------------------------------------


def _existing_dir(root: str | Path, layout: str) -> Path:
    root = Path(root).expanduser()
    if not root.exists():
        raise SourceError(f"{root}: no such folder (expected {layout})")
    if not root.is_dir():
        raise SourceError(f"{root}: not a folder (expected {layout})")
    return root.resolve()


def _strip_audio_ext(name: str) -> str:
    """``a.wav`` -> ``a``; ``a.wav.wav`` -> ``a`` (Speech Commands' double extension)."""
    while Path(name).suffix.lower() in AUDIO_EXTENSIONS:
        name = name[: -len(Path(name).suffix)]
    return name


def scan_audio(root: Path, depth: int | None = None) -> tuple[list[Path], list[Path]]:
    """Audio files under ``root`` (at exactly ``depth`` folder levels below it, or any depth),
    sorted by their path relative to ``root`` as POSIX text, so that the order is the same on
    every machine; and files in containers soundfile cannot decode (``.m4a`` ...).

    Symbolic links to folders outside ``root`` are followed (data is often linked in), but each
    folder and each file is listed once: a link back into the tree (``spk/loop -> ..``) is not
    followed, and a folder or file reached a second time, through any link, is left out. Otherwise
    a loop would list the same clips again and again, under other speakers' names. What was left
    out is reported in one warning.
    """
    audio: list[tuple[str, Path]] = []
    unsupported: list[Path] = []
    left_out: list[Path] = []
    root_depth = len(root.parts)
    inside = root.resolve()
    seen_folders: set[tuple[int, int]] = set()
    seen_files: set[tuple[int, int]] = set()

    def within_tree(link: Path) -> bool:
        target = link.resolve()
        return target == inside or inside in target.parents

    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        here = Path(dirpath)
        level = len(here.parts) - root_depth
        info = here.stat()
        if (info.st_dev, info.st_ino) in seen_folders:
            left_out.append(here)
            dirnames[:] = []
            continue
        seen_folders.add((info.st_dev, info.st_ino))
        kept = []
        for d in sorted(d for d in dirnames if not d.startswith(".")):
            if (here / d).is_symlink() and within_tree(here / d):
                left_out.append(here / d)
            else:
                kept.append(d)
        dirnames[:] = kept
        if depth is not None and level >= depth:
            dirnames[:] = []
            if level > depth:
                continue
        if depth is not None and level != depth:
            continue
        for name in filenames:
            if name.startswith("."):
                continue
            suffix = os.path.splitext(name)[1].lower()
            p = here / name
            if suffix not in AUDIO_EXTENSIONS and suffix not in _UNSUPPORTED:
                continue
            try:
                file_info = p.stat()
            except OSError:  # a dangling link: the decoder reports it as missing
                file_info = None
            if file_info is not None:
                key = (file_info.st_dev, file_info.st_ino)
                if key in seen_files or (p.is_symlink() and within_tree(p)):
                    left_out.append(p)
                    continue
                seen_files.add(key)
            if suffix in AUDIO_EXTENSIONS:
                audio.append((p.relative_to(root).as_posix(), p))
            else:
                unsupported.append(p)
    audio.sort(key=lambda t: t[0])
    if left_out:
        examples = ", ".join(p.relative_to(root).as_posix() for p in sorted(left_out)[:3])
        warnings.warn(f"{root}: left out {len(left_out)} link(s) back into the folder or second path(s) to "
                      f"one folder or file (e.g. {examples}); each file is listed once", stacklevel=2)
    return [p for _, p in audio], sorted(unsupported)


def _audio_files(root: Path, depth: int | None = None) -> list[Path]:
    return scan_audio(root, depth)[0]


def _no_audio(root: Path, layout: str, found: str = "") -> SourceError:
    extra = f"; found {found}" if found else ""
    return SourceError(f"{root}: no audio files of the expected layout ({layout}){extra}")


def _check_unsupported(root: Path, files: list[Path], unsupported: list[Path], layout: str) -> None:
    """Raise for audio in containers soundfile cannot read (e.g. VoxCeleb2's AAC .m4a) without a decodable twin."""
    have = {_strip_audio_ext(p.as_posix()) for p in files}
    bad = [p for p in unsupported if p.with_suffix("").as_posix() not in have]
    if bad:
        ext = bad[0].suffix
        raise SourceError(
            f"{root}: {len(bad)} {ext} file(s) such as {bad[0]} cannot be decoded (soundfile reads wav, flac, ogg "
            f"and mp3 only; expected {layout}). Convert them first with ffmpeg, e.g. "
            f"`find {shlex.quote(str(root))} -name '*{ext}' -exec sh -c 'ffmpeg -v error -i \"$1\" -ac 1 -ar 16000 \"${{1%{ext}}}.wav\"' _ {{}} \\;`"
        )


def _warn_ignored(root: Path, ignored: list[Path], why: str) -> None:
    if ignored:
        examples = ", ".join(p.relative_to(root).as_posix() for p in ignored[:3])
        warnings.warn(f"{root}: ignored {len(ignored)} audio file(s) {why} (e.g. {examples})", stacklevel=3)


# -- importers -------------------------------------------------------------------------------


def folder(root: str | Path) -> list[Utterance]:
    """``<root>/<speaker>/**/*.{wav,flac,ogg,mp3}``: the first folder level names the speaker.

    ``utt_id`` is the path relative to ``root`` without its extension. Audio files lying
    directly in ``root`` (no speaker folder) are ignored with a warning.
    """
    layout = "<root>/<speaker>/**/*.wav|flac|ogg|mp3"
    root = _existing_dir(root, layout)
    files, unsupported = scan_audio(root)
    _check_unsupported(root, files, unsupported, layout)
    loose = [p for p in files if p.parent == root]
    files = [p for p in files if p.parent != root]
    _warn_ignored(root, loose, "outside a speaker folder")
    if not files:
        raise _no_audio(root, layout, f"{len(loose)} audio file(s) directly in the folder" if loose else "")
    rel = [p.relative_to(root) for p in files]
    ids = [r.with_suffix("").as_posix() for r in rel]
    clashes = {i for i, n in Counter(ids).items() if n > 1}  # a.wav beside a.flac: keep the extension
    return [
        Utterance(path=p, speaker=r.parts[0], utt_id=r.as_posix() if i in clashes else i)
        for p, r, i in zip(files, rel, ids)
    ]


_MANIFEST_COLUMNS = ("path", "speaker", "transcript", "session", "utt_id")


def manifest(csv_path: str | Path) -> list[Utterance]:
    """A CSV file with a header row: ``path,speaker`` required, ``transcript,session,utt_id`` optional.

    Relative paths resolve against the CSV file's folder. An empty ``speaker`` cell marks a
    clip without a speaker (noise). ``utt_id`` defaults to the path as written in the CSV,
    without its audio extension. Files that do not exist are kept: preparing reports them
    as skipped. Records are sorted by ``utt_id``.
    """
    layout = "a CSV file with a header row and columns path,speaker[,transcript,session,utt_id]"
    csv_path = Path(csv_path).expanduser()
    if not csv_path.is_file():
        raise SourceError(f"{csv_path}: no such manifest file (expected {layout})")
    csv_path = csv_path.resolve()
    with open(csv_path, "rb") as f:
        head = f.read(4)
    if head[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise SourceError(f"{csv_path}: the manifest is UTF-16 text (spreadsheets save it so); save it as UTF-8 "
                          f"CSV, e.g. iconv -f UTF-16 -t UTF-8 {csv_path.name} > manifest-utf8.csv")
    try:
        return _read_manifest(csv_path, layout)
    except UnicodeDecodeError as error:
        raise SourceError(f"{csv_path}: the manifest is not UTF-8 text (byte {error.start} cannot be decoded); "
                          "save it as UTF-8 CSV") from None
    except csv.Error as error:  # e.g. a cell over csv's field size limit: not a manifest, or a broken quote
        raise SourceError(f"{csv_path}: not a readable CSV manifest ({error}); is a quote left open? "
                          f"(expected {layout})") from None


def _read_manifest(csv_path: Path, layout: str) -> list[Utterance]:
    base = csv_path.parent
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [(h or "").strip() for h in (reader.fieldnames or [])]
        missing = [c for c in ("path", "speaker") if c not in header]
        if missing:
            raise SourceError(f"{csv_path}: manifest lacks column(s) {', '.join(missing)} (header: {header}; expected {layout})")
        reader.fieldnames = header
        records = []
        for line, row in enumerate(reader, start=2):
            raw = (row.get("path") or "").strip()
            if not raw:
                raise SourceError(f"{csv_path}:{line}: empty path cell")
            path = Path(raw).expanduser()
            path = (path if path.is_absolute() else base / path).resolve()
            speaker = (row.get("speaker") or "").strip() or None
            utt_id = (row.get("utt_id") or "").strip() or _strip_audio_ext(Path(raw).as_posix())
            records.append(Utterance(path=path, speaker=speaker, utt_id=utt_id,
                                     transcript=(row.get("transcript") or "").strip(),
                                     session=(row.get("session") or "").strip()))
    if not records:
        raise SourceError(f"{csv_path}: manifest has a header but no rows (expected {layout})")
    dup = [i for i, n in Counter(r.utt_id for r in records).items() if n > 1]
    if dup:
        raise SourceError(f"{csv_path}: {len(dup)} utt_id(s) appear more than once, e.g. {sorted(dup)[0]!r}; "
                          f"give each row a unique path or utt_id")
    return sorted(records, key=lambda r: (r.utt_id, r.path.as_posix()))


_FSDD_NAME = re.compile(r"^(\d)_([^_]+)_(\d+)$")


def fsdd(root: str | Path) -> list[Utterance]:
    """Free Spoken Digit Dataset: ``[recordings/]{digit}_{speaker}_{index}.wav``; transcript = the digit as a word."""
    layout = "the FSDD root or its recordings/ folder with {digit}_{speaker}_{index}.wav"
    root = _existing_dir(root, layout)
    rec = root / "recordings" if (root / "recordings").is_dir() else root
    files = _audio_files(rec, depth=0)
    records, odd = [], []
    for p in files:
        m = _FSDD_NAME.match(_strip_audio_ext(p.name))
        if m is None:
            odd.append(p)
            continue
        digit, speaker, _ = m.groups()
        records.append(Utterance(path=p, speaker=speaker, utt_id=_strip_audio_ext(p.name), transcript=DIGITS[int(digit)]))
    _warn_ignored(rec, odd, "not named {digit}_{speaker}_{index}.wav")
    if not records:
        raise _no_audio(rec, layout)
    return records


_SC_NAME = re.compile(r"^([0-9A-Za-z]+)_nohash_(\d+)$")
_SC_UNKNOWN = re.compile(r"^(.+?)_([0-9A-Za-z]+)_nohash_(\d+)$")


def speech_commands(root: str | Path) -> list[Utterance]:
    """Speech Commands (v0.01/v0.02, the full set or its test archive).

    ``{word}/{speaker}_nohash_{n}.wav``; ``_unknown_/{word}_{speaker}_nohash_{n}.wav.wav`` (the
    word is taken from the name); ``_silence_/*.wav`` and ``_background_noise_/*.wav`` are
    noise clips with no speaker and no transcript. Other files (LICENSE, README, lists) are
    ignored. ``utt_id`` is the path relative to the root without its extension(s).
    """
    layout = "{word}/{speaker}_nohash_{n}.wav folders, optionally _unknown_/ and _silence_/"
    root = _existing_dir(root, layout)
    records, odd = [], []
    for p in _audio_files(root, depth=1):
        group = p.parent.name
        stem = _strip_audio_ext(p.name)
        utt_id = f"{group}/{stem}"
        if group in NOISE_FOLDERS:
            records.append(Utterance(path=p, speaker=None, utt_id=utt_id))
            continue
        if group == "_unknown_":
            m = _SC_UNKNOWN.match(stem)
            word, speaker = (m.group(1), m.group(2)) if m else (None, None)
        else:
            m = _SC_NAME.match(stem)
            word, speaker = (group, m.group(1)) if m else (None, None)
        if m is None:
            odd.append(p)
            continue
        records.append(Utterance(path=p, speaker=speaker, utt_id=utt_id, transcript=word))
    _warn_ignored(root, odd, "not named {speaker}_nohash_{n}.wav")
    if not any(r.speaker is not None for r in records):
        raise _no_audio(root, layout)
    return records


_LIBRI_NAME = re.compile(r"^(\d+)-(\d+)-(\d+)$")


def librispeech(root: str | Path) -> list[Utterance]:
    """LibriSpeech (or LibriTTS-like) ``{spk}/{chapter}/{spk}-{chapter}-{utt}.flac``; session = chapter.

    ``root`` may be one subset (``dev-clean``) or the ``LibriSpeech`` folder holding several.
    Transcripts come from ``{spk}-{chapter}.trans.txt`` beside the audio (empty if absent).
    """
    layout = "{speaker}/{chapter}/{speaker}-{chapter}-{utt}.flac with {speaker}-{chapter}.trans.txt"
    root = _existing_dir(root, layout)
    transcripts: dict[Path, dict[str, str]] = {}

    def transcript(p: Path, utt: str) -> str:
        folder_ = p.parent
        if folder_ not in transcripts:
            table: dict[str, str] = {}
            for t in folder_.glob("*.trans.txt"):
                for line in t.read_text(encoding="utf-8").splitlines():
                    key, _, text = line.strip().partition(" ")
                    if key:
                        table[key] = text.strip()
            transcripts[folder_] = table
        return transcripts[folder_].get(utt, "")

    files = _audio_files(root)
    records, odd = [], []
    for p in files:
        utt = _strip_audio_ext(p.name)
        m = _LIBRI_NAME.match(utt)
        if m is None or p.parent.name != m.group(2) or p.parent.parent.name != m.group(1):
            odd.append(p)
            continue
        spk, chapter, _ = m.groups()
        records.append(Utterance(path=p, speaker=spk, utt_id=utt, transcript=transcript(p, utt), session=chapter))
    _warn_ignored(root, odd, "not at {speaker}/{chapter}/{speaker}-{chapter}-{utt}.flac")
    if not records:
        raise _no_audio(root, layout)
    return records


def voxceleb(root: str | Path) -> list[Utterance]:
    """VoxCeleb1/2 ``{id}/{video}/{n}.wav``; session = video, utt_id = ``{id}/{video}/{n}``.

    ``root`` may be any folder above the speaker folders (``vox1_dev_wav/wav``, or its parent).
    VoxCeleb2 is distributed as AAC ``.m4a``, which soundfile cannot decode: such files
    raise :class:`SourceError` with an ffmpeg command to convert them to wav (an ``.m4a``
    with a converted twin beside it is fine).
    """
    layout = "{speaker_id}/{video_id}/{n}.wav (or .flac)"
    root = _existing_dir(root, layout)
    files, unsupported = scan_audio(root)
    _check_unsupported(root, files, unsupported, layout)
    records, odd = [], []
    for p in files:
        rel = p.relative_to(root)
        if len(rel.parts) < 3:
            odd.append(p)
            continue
        spk, video = rel.parts[-3], rel.parts[-2]
        n = _strip_audio_ext(p.name)
        records.append(Utterance(path=p, speaker=spk, utt_id=f"{spk}/{video}/{n}", session=video))
    _warn_ignored(root, odd, "not at {speaker_id}/{video_id}/{n}.wav")
    if not records:
        raise _no_audio(root, layout)
    ids = Counter(r.utt_id for r in records)
    if len(ids) < len(records):  # two copies of one speaker under different parents (e.g. dev/ and test/)
        dup = next(i for i, n in ids.items() if n > 1)
        raise SourceError(f"{root}: utterance {dup} appears more than once; point at a single VoxCeleb part")
    return records


#: Name used on the command line -> importer.
SOURCES: dict[str, Callable[[str | Path], list[Utterance]]] = {
    "folder": folder,
    "manifest": manifest,
    "fsdd": fsdd,
    "speech-commands": speech_commands,
    "librispeech": librispeech,
    "voxceleb": voxceleb,
}
