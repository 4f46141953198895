"""Local CSV / TSV / JSON / JSONL files, checked before ``datasets`` reads them.

``datasets`` reports an unreadable file as "An error occurred while generating the dataset", naming
neither the encoding nor the line. ``check_text_file`` reads the file first: it settles the encoding
(UTF-8, else the one ``--text_encoding`` names, else one detected by charset-normalizer and said so)
and parses every row, so a bad byte, a broken JSON line or a CSV row with the wrong number of fields
becomes one error naming ``file:line`` and the fix.
"""
from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path

from ..errors import HFTransferError

logger = logging.getLogger(__name__)
SUFFIXES = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json"}


def check_text_file(path: str | Path, encoding: str = "auto") -> str:
    """The encoding to read ``path`` with, after checking that every row of it parses."""
    path = Path(path)
    raw = path.read_bytes()
    encoding, text = decode(path, raw, encoding)
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        check_csv_rows(path, text, "\t" if suffix == ".tsv" else ",")
    elif suffix == ".jsonl" or (suffix == ".json" and not _is_single_document(text)):
        check_json_lines(path, text)
    else:
        try:
            json.loads(text)
        except json.JSONDecodeError as e:
            raise HFTransferError(f"{path}:{e.lineno}: not valid JSON ({e.msg}, column {e.colno}): fix that line") from None
    return encoding


def decode(path: Path, raw: bytes, encoding: str) -> tuple[str, str]:
    """(codec, text) of ``raw``: the codec asked for, or UTF-8, or a detected one (announced)."""
    if encoding != "auto":
        try:
            return encoding, raw.decode(encoding)
        except UnicodeDecodeError as e:
            raise HFTransferError(f"{path}:{_line_of(raw, e.start)}: byte 0x{raw[e.start]:02x} at offset {e.start} is "
                                  f"not {encoding}: pass the file's own --text_encoding (auto detects it)") from None
    try:
        return "utf-8", raw.decode("utf-8-sig")  # utf-8-sig: a byte-order mark is not part of the header
    except UnicodeDecodeError as e:
        first_bad = e.start
    from charset_normalizer import from_bytes

    best = from_bytes(raw).best()
    if best is None:
        raise HFTransferError(f"{path}:{_line_of(raw, first_bad)}: byte 0x{raw[first_bad]:02x} at offset {first_bad} is "
                              "not UTF-8 and no other encoding fits: pass --text_encoding (e.g. cp1252, latin-1)")
    codec = best.encoding
    logger.warning(f"{path.name} is not UTF-8 (byte 0x{raw[first_bad]:02x} at offset {first_bad}): reading it as "
                   f"{codec}, detected; pass --text_encoding to choose another")
    return codec, raw.decode(codec)


def check_csv_rows(path: Path, text: str, delimiter: str) -> None:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader, None)
        if not header:
            raise HFTransferError(f"{path}: no header row: the first line must name the columns (e.g. text,label)")
        for row in reader:
            if row and len(row) != len(header):
                raise HFTransferError(
                    f"{path}:{reader.line_num}: {len(row)} field(s), but the header has {len(header)} "
                    f"({delimiter.join(header)}): quote fields that contain '{delimiter}' or fix that line")
    except csv.Error as e:
        raise HFTransferError(f"{path}:{reader.line_num}: {e}: fix the quoting on that line") from None


def check_json_lines(path: Path, text: str) -> None:
    # JSON Lines ends records at "\n" only: str.splitlines() would also split inside a string holding a raw
    # U+0085 / U+2028 (valid JSON, and rotten_tomatoes has one) and call the halves invalid
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise HFTransferError(f"{path}:{number}: not valid JSON ({e.msg}, column {e.colno}): fix that line") from None
        if not isinstance(row, dict):
            raise HFTransferError(f"{path}:{number}: a JSON {type(row).__name__}, not an object: put one "
                                  '{"text": ..., "label": ...} object on each line')


def _is_single_document(text: str) -> bool:
    """A ``.json`` file holding one array / object, rather than JSON Lines."""
    stripped = text.lstrip()
    if stripped.startswith("["):
        return True
    try:
        json.loads(stripped)
        return True
    except json.JSONDecodeError:
        return False


def _line_of(raw: bytes, offset: int) -> int:
    return raw.count(b"\n", 0, offset) + 1
