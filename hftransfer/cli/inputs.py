"""The INPUT arguments of ``hftransfer predict``: expanded into image or audio paths or texts, read, and refused.

An input of another modality (a text file given to an image model, a folder of images given to a
text model, a WAV file given to either) is recognised by its suffixes and skipped like an unreadable one, so
mixed inputs keep working; when nothing usable remains, ``nothing_to_predict`` turns the skips into one error line
naming what was given and what the model reads.

A skip reason that starts with its input is a whole sentence naming its fix (a file-level
``HFTransferError`` message, or an ``OtherModality``); the others (``empty 'text'``, an image
decoder's error) say only what went wrong.
"""
from __future__ import annotations

import csv
import glob
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from ..data.preprocessing import image_suffixes
from ..data.text_files import decode
from ..errors import HFTransferError
from ..files import files_under
from ..models.predictions import Skipped

TABLE_SUFFIXES = {".csv": ",", ".tsv": "\t"}
JSON_SUFFIXES = (".jsonl", ".json")
TEXT_FILE_SUFFIXES = (*TABLE_SUFFIXES, *JSON_SUFFIXES, ".txt")
READS = {  # what a model of each modality reads, and the way out: the end of every other-modality line
    "image": "this image model reads image files, folders or globs; pass those, or predict texts with a text model",
    "text": "this text model reads CSV/TSV/JSONL/JSON/TXT files or - (stdin); pass those, or predict images with "
            "an image model",
    "audio": "this audio model reads audio files (.wav, .flac, .ogg, .mp3, ...), folders or globs; pass those, or "
             "predict other inputs with a model of their modality",
}
A_FILE = {"image": "an image file", "text": "a text file", "audio": "an audio file"}
NOT_OURS = {"image": "an image", "text": "text", "audio": "audio"}
PLURAL = {"image": "images", "text": "texts", "audio": "audio files"}


def input_suffixes() -> dict[str, set[str]]:
    """The file suffixes each modality's model reads (lower case)."""
    from ..data.audio import AUDIO_SUFFIXES

    return {"image": image_suffixes(), "text": set(TEXT_FILE_SUFFIXES), "audio": set(AUDIO_SUFFIXES)}


@dataclass
class OtherModality(Skipped):
    """An input of another modality; ``what`` says what it is (``t.txt is a text file, not an image``)."""

    what: str = ""


def _matches(item: str) -> list[Path]:
    """What one INPUT names: the file or folder itself, else a glob's matches."""
    path = Path(item)
    return [path] if path.exists() else [Path(m) for m in sorted(glob.glob(item, recursive=True))]


def _other_modality(path: Path, modality: str, other: str, theirs: int = 0, ours: int = 0) -> OtherModality:
    """Why a ``modality`` model refuses ``path``: a file of the ``other`` modality, or a folder holding ``theirs``
    files of it and ``ours`` of its own."""
    if path.is_dir():
        mine = f" and {ours} {modality} file(s)" if ours else ""
        what = f"{path} is a folder of {theirs} {other} file(s){mine}, not {PLURAL[modality]}"
    else:
        what = f"{path} is {A_FILE[other]}, not {NOT_OURS[modality]}"
    return OtherModality(str(path), f"{what}: {READS[modality]}", what)


def _files_of(match: Path, modality: str, suffixes: dict[str, set[str]]) -> tuple[list[Path], OtherModality | None]:
    """The files of one match a ``modality`` model reads, or why it refuses the match.

    A folder belongs to the modality most of its files have (ties: the model's), so photos with a
    README are images and texts with a logo are texts, each whole.
    """
    ours = suffixes[modality]
    others = {m: s - ours for m, s in suffixes.items() if m != modality}
    if not match.is_dir():
        other = next((m for m, s in others.items() if match.suffix.lower() in s), None)
        return ([], _other_modality(match, modality, other)) if other else ([match], None)
    own = files_under(match, ours)
    counts = {m: len(files_under(match, s)) for m, s in others.items()}
    other = max(counts, key=counts.get)
    if counts[other] > len(own):
        return [], _other_modality(match, modality, other, theirs=counts[other], ours=len(own))
    return own, None


def _paths(item: str, modality: str, suffixes: dict[str, set[str]], stdin, strict: bool
           ) -> tuple[list[Path], list[Skipped]]:
    """The files one INPUT (``-``: a path per stdin line) names that a ``modality`` model reads, and the refused
    ones."""
    matches = [Path(line.strip()) for line in stdin if line.strip()] if item == "-" else _matches(item)
    paths, skipped = [], []
    for match in matches:
        found, refused = _files_of(match, modality, suffixes)
        if refused is not None and strict:
            raise HFTransferError(refused.reason)
        paths += found
        skipped += [refused] if refused is not None else []
    return paths, skipped


def expand_inputs(items: list[str], modality: str, text_column: str = "text", stdin=None,
                  strict: bool = False) -> tuple[list, list[str], list[Skipped]]:
    """(inputs for ``inference.predict``, what each prediction's ``input`` says, skipped inputs) for the
    INPUT arguments of a ``modality`` model. ``stdin``: the stream ``-`` reads (default ``sys.stdin``)."""
    stdin = stdin if stdin is not None else sys.stdin
    suffixes = input_suffixes()
    inputs, skipped = [], []
    for item in items:
        if item == "-" and modality == "text":
            inputs += [line.rstrip("\r\n") for line in stdin if line.strip()]
            continue
        paths, refused = _paths(item, modality, suffixes, stdin, strict)
        skipped += refused
        if modality != "text":  # image and audio models read the files themselves
            inputs += [str(p) for p in paths]
            continue
        for path in paths:
            texts, unreadable = _texts_of(path, text_column, strict)
            inputs += texts
            skipped += unreadable
    return inputs, inputs, skipped


def _texts_of(path: Path, column: str, strict: bool) -> tuple[list[str], list[Skipped]]:
    """``read_texts`` with the skip policy: an unusable file or row is skipped, or with ``strict`` refused."""
    try:
        texts, skipped = read_texts(path, column)
    except HFTransferError as e:
        if strict:
            raise
        return [], [Skipped(str(path), str(e))]
    if strict and skipped:
        first = skipped[0]
        raise HFTransferError(f"{first.input}: {first.reason}: fix that row, or leave out --strict to skip it")
    return texts, skipped


def nothing_to_predict(items: list[str], modality: str, skipped: list[Skipped]) -> HFTransferError:
    """The one line for a run with no usable input: the other modality first, else the first skip, else none found."""
    foreign = [s for s in skipped if isinstance(s, OtherModality)]
    if foreign:
        others = len(skipped) - 1
        more = f" ({others} other input(s) skipped too)" if others else ""
        return HFTransferError(f"{foreign[0].what}{more}: {READS[modality]}")
    if not skipped:
        found = {"image": "image files", "audio": "audio files"}.get(modality, "texts")
        fix = "CSV/TSV/JSONL/JSON/TXT files, or - for stdin" if modality == "text" else f"{found}, folders or globs"
        return HFTransferError(f"no {found} found in {' '.join(items)}: pass {fix}")
    first, count = skipped[0], len(skipped)
    if first.reason.startswith(first.input):  # already a whole sentence naming its fix
        return HFTransferError(first.reason if count == 1 else f"none of the {count} inputs could be read, e.g. "
                               f"{first.reason}")
    head = f"{first.input} could not be read" if count == 1 else \
        f"none of the {count} inputs could be read, e.g. {first.input}"
    return HFTransferError(f"{head} ({first.reason}): pass "
                           + ("non-empty texts" if modality == "text" else f"readable {PLURAL[modality]}"))


def read_texts(path: Path, column: str = "text") -> tuple[list[str], list[Skipped]]:
    """The texts of one file and its unreadable rows (``file:line`` and why); an unusable file raises.

    Encoding: UTF-8, else the one charset-normalizer detects (said so), as the recipes read text files.
    """
    _, content = decode(path, path.read_bytes(), "auto")
    suffix = path.suffix.lower()
    if suffix in TABLE_SUFFIXES:
        return _table_texts(path, content, column, TABLE_SUFFIXES[suffix])
    if suffix in JSON_SUFFIXES:
        return _json_texts(path, content, column)
    return [line for line in content.splitlines() if line.strip()], []


def _table_texts(path: Path, content: str, column: str, delimiter: str):
    reader = csv.DictReader(io.StringIO(content, newline=""), delimiter=delimiter)
    if column not in (reader.fieldnames or []):
        raise HFTransferError(f"{path} has no column '{column}' (columns: {', '.join(reader.fieldnames or [])}): "
                              "pass --text_column_name")
    texts, skipped = [], []
    try:
        for row in reader:
            value = row.get(column)
            if isinstance(value, str) and value.strip():
                texts.append(value)
            else:
                skipped.append(Skipped(f"{path}:{reader.line_num}", f"empty '{column}'"))
    except csv.Error as e:
        raise HFTransferError(f"{path}:{reader.line_num}: {e}: fix the quoting on that line") from None
    return texts, skipped


def _json_rows(path: Path, content: str) -> tuple[list, str]:
    """(``(number, row or JSONDecodeError)`` pairs, ``"item"`` for a JSON array or ``"line"`` for JSON Lines)."""
    stripped = content.lstrip()
    if stripped.startswith("["):  # one JSON array (of objects or strings), not JSON Lines
        try:
            return list(enumerate(json.loads(stripped), 1)), "item"
        except json.JSONDecodeError as e:
            raise HFTransferError(f"{path}:{e.lineno}: not valid JSON ({e.msg}): fix that line") from None
    rows = []
    for number, line in enumerate(content.splitlines(), 1):
        if line.strip():
            try:
                rows.append((number, json.loads(line)))
            except json.JSONDecodeError as e:
                rows.append((number, e))
    return rows, "line"


def _json_texts(path: Path, content: str, column: str):
    rows, where = _json_rows(path, content)
    texts, skipped = [], []
    for number, row in rows:
        value = row.get(column) if isinstance(row, dict) else row
        if isinstance(value, str) and value.strip():
            texts.append(value)
            continue
        if isinstance(row, json.JSONDecodeError):
            reason = f"not valid JSON ({row.msg}, column {row.colno})"
        elif isinstance(row, dict) and column not in row:
            reason = f"no '{column}' key (keys: {', '.join(row)}); pass --text_column_name"
        else:
            reason = f"empty or non-text '{column}'"
        skipped.append(Skipped(f"{path}:{number}" if where == "line" else f"{path} item {number}", reason))
    return texts, skipped


__all__ = ["OtherModality", "expand_inputs", "nothing_to_predict", "read_texts"]
