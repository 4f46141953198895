"""Image manifests: CSV / TSV / JSON(L) / Parquet files that list images and their labels, row by row.

``data`` reads a manifest with ``datasets``; this module says what its cells mean and checks them
before training:

- **image column** (``--image_column_name``): a path, relative to the manifest's own folder (so a
  manifest travels with its images) or absolute; raw bytes (a Parquet binary column); or a
  ``{"bytes": ..., "path": ...}`` record as ``datasets`` writes an ``Image`` column (the bytes win,
  a record without bytes is a path). Every path is checked up front: a missing file is one error
  naming the manifest and the row, instead of a failure mid-epoch. An empty cell is an empty row,
  which ``data`` skips and counts.
- **label column** (``--label_column_name``): one label per row, or a list (JSON(L) or Parquet
  lists) for multi-label data. CSV has no lists, so a CSV cell is a list when it is a JSON list
  (``["cat", "dog"]``, ``[]`` = none of the labels) or contains ``|`` (``cat|dog``); once any cell
  of any split is a list, every cell is read as one (a plain ``cat`` becomes ``["cat"]``), so all
  splits share one multi-label encoding.

Rows are numbered from 1 in messages, the CSV header not counted.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import datasets
import pyarrow as pa

from ..errors import HFTransferError

# manifest suffix -> datasets builder; .json holds JSON Lines or one array of row objects
MANIFEST_SUFFIXES = {".csv": "csv", ".tsv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
LABEL_SEPARATOR = "|"


def resolve_images(ds: datasets.Dataset, column: str, manifest: Path) -> datasets.Dataset:
    """``ds`` with ``column`` as a ``datasets.Image`` column whose paths are absolute and exist.

    Relative paths are taken from ``manifest``'s folder (the original file: ``data`` may read a
    UTF-8 copy kept elsewhere). The existence check reads the paths through Arrow, bytes untouched,
    and runs on every load, also when ``datasets`` has the resolved column cached.
    """
    if column not in ds.column_names:
        raise HFTransferError(f"{manifest}: no image column '{column}' (columns: {', '.join(ds.column_names)}): "
                              "pass --image_column_name")
    try:
        ds = ds.cast_column(column, datasets.Image(decode=False))  # strings, binary and records -> {bytes, path}
    except (TypeError, ValueError, pa.ArrowException):
        raise HFTransferError(f"{manifest}: column '{column}' holds {ds.features[column]}, not image paths or bytes: "
                              "pass --image_column_name naming the image column") from None
    records = ds.select_columns([column]).with_format("arrow")[:][column].combine_chunks()
    has_bytes = records.field("bytes").is_valid().to_pylist()
    folder = Path(os.path.abspath(manifest)).parent  # the folder the user sees the manifest in, links unfollowed
    missing = []
    for row, (path, embedded) in enumerate(zip(records.field("path").to_pylist(), has_bytes), 1):
        if embedded or not path or not path.strip():
            continue  # bytes need no file; an empty cell is an empty row, skipped later
        if not (folder / path).is_file():  # an absolute path stays itself under "/"
            missing.append((row, path))
    if missing:
        row, path = missing[0]
        more = f" (and {len(missing) - 1} more row(s))" if len(missing) > 1 else ""
        raise HFTransferError(f"{manifest}: row {row}: image '{path}' not found ({_absolute(folder, path)}){more}: "
                              "fix the path (relative paths start at the manifest's folder) or remove the row")

    def absolute(record):
        if record is None or record["bytes"] is not None:
            return record
        if not record["path"] or not record["path"].strip():
            return None  # an empty cell: drop_empty_rows skips (and counts) the row
        return {"bytes": None, "path": _absolute(folder, record["path"])}

    ds = ds.map(lambda values: {column: [absolute(v) for v in values]}, input_columns=column, batched=True,
                features=ds.features, desc=f"resolving image paths of {Path(manifest).name}")
    return ds.cast_column(column, datasets.Image())


def _absolute(folder: Path, path: str) -> str:
    """``path`` from ``folder`` (itself when absolute), ``..`` folded away but links kept as written."""
    return os.path.normpath(folder / path)


def has_csv_label_lists(ds: datasets.Dataset, column: str) -> bool:
    """Whether any label cell of a CSV manifest is written as a list (``[...]`` or ``a|b``)."""
    if column not in ds.column_names or not _is_string(ds.features[column]):
        return False  # numbers (or a column pandas typed otherwise) cannot be lists
    return any(isinstance(v, str) and (v.strip().startswith("[") or LABEL_SEPARATOR in v) for v in ds[column])


def csv_label_lists(ds: datasets.Dataset, column: str, manifest: Path) -> datasets.Dataset:
    """``column`` of a CSV manifest as a list of string labels per row; an empty cell stays empty (None)."""
    if column not in ds.column_names:
        return ds  # prepare_splits names the missing column
    features = datasets.Features({**ds.features, column: datasets.List(datasets.Value("string"))})
    return ds.map(lambda values, index: {column: [_label_list(v, manifest, i + 1) for v, i in zip(values, index)]},
                  input_columns=column, with_indices=True, batched=True, features=features,
                  desc=f"reading label lists of {Path(manifest).name}")


def _label_list(value, manifest: Path, row: int) -> list[str] | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        return [str(value)]  # a number in a column pandas read as mixed
    text = value.strip()
    if text.startswith("["):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as e:
            raise HFTransferError(f"{manifest}: row {row}: label cell {text[:60]!r} is not a JSON list ({e.msg}): "
                                  'write it as ["a", "b"] (double quotes) or a|b') from None
        if not isinstance(parsed, list) or any(isinstance(v, (list, dict)) or v is None for v in parsed):
            raise HFTransferError(f"{manifest}: row {row}: label cell {text[:60]!r} is not a flat list of labels: "
                                  'write it as ["a", "b"] or a|b')
        return [str(v) for v in parsed]
    return [part.strip() for part in text.split(LABEL_SEPARATOR) if part.strip()]


def _is_string(feature) -> bool:
    return isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")
