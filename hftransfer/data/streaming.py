"""Streamed data (``--streaming``): splits read as ``datasets`` IterableDatasets, decoded on the fly, resumable exactly.

A ``StreamSpec`` names the files of each split (a glob such as ``shards/train-*.parquet``, or a Hub / local
dataset's own data files) and the builder that reads them (parquet, json, csv, webdataset). ``ExampleStream`` is
what a training DataLoader iterates: every data pass reopens the split with its files in a seeded order
(``seed + pass``), gives this process its part (``split_dataset_by_node``) and shuffles within windows of
``window`` consecutive examples. Its position (the pass, the IterableDataset's ``state_dict()`` at the start of the
current window, and how many of the window's examples were served) is all a checkpoint needs: a resumed stream
reloads that state, re-reads one window and continues with the very next example. ``datasets``' own shuffle buffer
is not used because its content is not part of ``state_dict()`` (a resumed run would lose those examples).
"""
from __future__ import annotations

import glob
import itertools
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import datasets
import numpy as np
import torch

from ..errors import HFTransferError
from .sources import DataSource, is_saved_dataset

logger = logging.getLogger(__name__)

# file suffix -> the datasets builder that streams it
STREAM_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv", ".tsv": "csv",
                   ".tar": "webdataset"}
STREAM_SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class StreamSpec:
    """What one streamed run reads: ``builder`` over ``files`` (split -> its files, sorted), with ``features``
    (a Hub dataset's declared ones; None: what the files say) and builder options (``delimiter`` for TSV)."""

    builder: str
    files: dict[str, tuple[str, ...]]
    features: datasets.Features | None = None
    options: dict = field(default_factory=dict)


def stream_spec(source: DataSource) -> StreamSpec:
    """The splits ``source`` names, as files to stream: a glob / file per ``--*_file``, or the data files of a Hub
    (or local) dataset."""
    if source.dataset_name:
        return _dataset_spec(source.dataset_name, source.dataset_config_name)
    if source.train_dir:
        raise HFTransferError("--streaming reads data files and datasets, not class folders (--train_dir): write the "
                              "images into Parquet or webdataset shards and pass --train_file 'shards/train-*.parquet'")
    if not source.train_file:
        raise HFTransferError("no training data: pass --train_file (a file or a glob such as 'shards/train-*.parquet') "
                              "or --dataset_name")
    files = {split: expand_files(pattern, f"--{split}_file") for split, pattern in
             (("train", source.train_file), ("validation", source.validation_file), ("test", source.test_file))
             if pattern}
    suffixes = {Path(f).suffix.lower() for names in files.values() for f in names}
    if len(suffixes) > 1:
        raise HFTransferError(f"the streamed files have different formats ({', '.join(sorted(suffixes))}): use one "
                              "format for --train_file, --validation_file and --test_file")
    suffix = suffixes.pop()
    if suffix not in STREAM_BUILDERS:
        raise HFTransferError(f"--streaming cannot read '{suffix}' files: use .parquet, .jsonl, .json, .csv, .tsv or "
                              ".tar (webdataset) shards")
    return StreamSpec(STREAM_BUILDERS[suffix], files, options={"delimiter": "\t"} if suffix == ".tsv" else {})


def expand_files(pattern: str, flag: str) -> tuple[str, ...]:
    """The files a path or glob names, sorted (the unshuffled shard order); one error line when there are none."""
    found = sorted(glob.glob(str(Path(pattern).expanduser()), recursive=True))
    found = [f for f in found if Path(f).is_file()]
    if not found:
        raise HFTransferError(f"{flag} '{pattern}' matches no file: pass an existing file or a glob such as "
                              "'shards/train-*.parquet' (quoted, so the shell leaves it to hftransfer)")
    return tuple(found)


def _dataset_spec(name: str, config_name: str | None) -> StreamSpec:
    """A Hub (or local folder) dataset's data files per split, through its builder: read without downloading."""
    if is_saved_dataset(name):
        raise HFTransferError(f"'{name}' is a save_to_disk folder, already decoded on local disk: drop --streaming, "
                              "or stream its source files with --train_file")
    try:
        builder = datasets.load_dataset_builder(name, config_name)
    except Exception as e:  # datasets raises many types (FileNotFound, DatasetNotFound, ConnectionError)
        raise HFTransferError(f"could not open dataset '{name}' for streaming ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200]}): check the name, or pass --train_file") from None
    data_files = builder.config.data_files or {}
    files = {_split_name(split): tuple(str(f) for f in found) for split, found in data_files.items()}
    files = {split: found for split, found in files.items() if split in STREAM_SPLITS and found}
    if "train" not in files:
        raise HFTransferError(f"dataset '{name}' has no streamable train split (splits: "
                              f"{', '.join(data_files) or 'none'}): pass its files with --train_file")
    return StreamSpec(builder.name, files, builder.info.features, options={})


def _split_name(split: str) -> str:
    return {"valid": "validation", "val": "validation", "dev": "validation"}.get(str(split), str(split))


def open_split(spec: StreamSpec, split: str, files: tuple[str, ...] | None = None) -> datasets.IterableDataset:
    """``split`` as an IterableDataset over ``files`` (default: the split's files, in their sorted order)."""
    names = list(files if files is not None else spec.files[split])
    try:
        return datasets.load_dataset(spec.builder, data_files={split: names}, split=split, streaming=True,
                                     features=spec.features, **spec.options)
    except Exception as e:  # noqa: BLE001 - the builders raise many types for an unreadable file
        raise HFTransferError(f"could not stream {names[0]}{' ...' if len(names) > 1 else ''} as {spec.builder} "
                              f"({type(e).__name__}: {str(e).splitlines()[0][:200]}): fix or remove the file") from None


def raw_columns(ds: datasets.IterableDataset, input_column: str) -> datasets.IterableDataset:
    """Images and audio as their stored bytes / paths (decoded by the pipeline, on the fly, not by ``datasets``)."""
    feature = (ds.features or {}).get(input_column)
    if isinstance(feature, datasets.Image):
        return ds.cast_column(input_column, datasets.Image(decode=False))
    if isinstance(feature, datasets.Audio):
        return ds.cast_column(input_column, datasets.Audio(decode=False))
    return ds


@dataclass(frozen=True)
class StreamLabels:
    """A stream's label set, which cannot be found by scanning it: a ClassLabel's names, or ``--label_names``.

    Integer labels are positions in ``names``; text labels must be one of them."""

    names: tuple[str, ...]

    @classmethod
    def of(cls, features: datasets.Features | None, label_column: str, label_names: list[str] | None) -> "StreamLabels":
        feature = (features or {}).get(label_column)
        if label_names:
            if isinstance(feature, datasets.ClassLabel) and len(feature.names) != len(label_names):
                raise HFTransferError(f"--label_names has {len(label_names)} names but the data's '{label_column}' "
                                      f"has {len(feature.names)} classes ({', '.join(feature.names)})")
            return cls(tuple(label_names))
        if isinstance(feature, datasets.ClassLabel):
            return cls(tuple(feature.names))
        raise HFTransferError(f"--streaming cannot scan the data for its labels, and column '{label_column}' is not a "
                              "ClassLabel: pass --label_names NAME [NAME ...] (integer labels index them, text labels "
                              "must be one of them)")

    def encode(self, value) -> int | None:
        """The label id of ``value`` (None when it is missing); one error line for a label outside the set."""
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        if isinstance(value, (list, tuple)):
            raise HFTransferError("--streaming trains single-label classification, and a row holds a list of labels: "
                                  "drop --streaming for multi-label data")
        if isinstance(value, str) and value in self.names:
            return self.names.index(value)
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and 0 <= value < len(self.names):
            return int(value)
        if isinstance(value, str) and value.strip().isdigit() and int(value) < len(self.names):
            return int(value)  # webdataset's .cls files are text
        shown = ", ".join(self.names[:10])
        raise HFTransferError(f"label {value!r} is not one of the {len(self.names)} labels ({shown}): fix the row, or "
                              "pass the full set with --label_names")


def first_examples(ds: datasets.IterableDataset, limit: int) -> datasets.Dataset:
    """The first ``limit`` examples of a stream as an in-memory Dataset (a bounded evaluation split)."""
    rows = list(itertools.islice(iter(ds), limit))
    if not rows:
        return datasets.Dataset.from_dict({})
    return datasets.Dataset.from_list(rows, features=ds.features)


@dataclass
class StreamPosition:
    """Where an ``ExampleStream`` is: data ``data_pass``, the source's state at the start of window ``window``
    (None: the pass's start), ``served`` examples of that window, ``yielded`` examples in all."""

    data_pass: int = 0
    window: int = 0
    window_state: dict | None = None
    served: int = 0
    yielded: int = 0


class ExampleStream(torch.utils.data.IterableDataset):
    """``length`` model-ready examples of one process, read pass after pass from ``open_pass(p)`` (an IterableDataset
    of pass ``p``, already this process's part), shuffled within windows, made ready by ``prepare(row, index)``
    (None skips the row). ``index`` (``index_base + yielded * index_stride``) is unique across processes: it seeds
    the example's augmentation. Iterated in the training process only (its position is the checkpoint's)."""

    def __init__(self, open_pass: Callable[[int], datasets.IterableDataset],
                 prepare: Callable[[dict, int], dict | None], *, length: int, window: int, seed: int,
                 index_base: int = 0, index_stride: int = 1):
        self.open_pass, self.prepare, self.length = open_pass, prepare, length
        self.window_size, self.seed = max(1, window), seed
        self.index_base, self.index_stride = index_base, index_stride
        self.position = StreamPosition()

    def __len__(self) -> int:
        return self.length

    def state_dict(self) -> dict:
        return asdict(self.position)

    def load_state_dict(self, state: dict) -> None:
        self.position = StreamPosition(**state)

    def __iter__(self):
        position, empty_passes = self.position, 0
        while position.yielded < self.length:
            source = self.open_pass(position.data_pass)
            if position.window_state is not None:
                source.load_state_dict(position.window_state)
            rows, state, produced = iter(source), position.window_state, 0
            while position.yielded < self.length:
                window = list(itertools.islice(rows, self.window_size))
                if not window:
                    break
                order = np.random.default_rng([self.seed, position.data_pass, position.window]).permutation(len(window))
                for k in order[position.served:]:
                    position.served += 1  # before the yield: a checkpoint taken after it counts this example
                    example = self.prepare(window[k], self.index_base + position.yielded * self.index_stride)
                    if example is None:
                        continue
                    position.yielded += 1
                    produced += 1
                    yield example
                    if position.yielded >= self.length:
                        return
                # the next window starts where this one ended; the source's state is only current once it has run
                state = source.state_dict()
                position.window, position.window_state, position.served = position.window + 1, state, 0
            empty_passes = empty_passes + 1 if not produced else 0
            if empty_passes > 1:
                raise HFTransferError("the training stream has no usable example on this process: pass more data (or "
                                      "more shards than processes)")
            position.data_pass, position.window, position.window_state, position.served = (
                position.data_pass + 1, 0, None, 0)


def shuffled_files(files: tuple[str, ...], seed: int, data_pass: int) -> tuple[str, ...]:
    """The shard order of ``data_pass``: a permutation seeded by (``seed``, ``data_pass``)."""
    order = np.random.default_rng([seed, data_pass]).permutation(len(files))
    return tuple(files[i] for i in order)


@dataclass(frozen=True)
class StreamingSplit:
    """A streamed training split: ``labels`` over ``spec``'s ``split`` files, read ``input_column`` and
    ``label_column`` only, at most ``limit`` examples per pass (None: all). ``len()`` is ``examples``: how many the run
    draws from it in all (a stream has no known size)."""

    spec: StreamSpec
    labels: StreamLabels
    input_column: str
    label_column: str
    seed: int
    examples: int
    limit: int | None = None
    split: str = "train"

    def __len__(self) -> int:
        return self.examples

    def open_pass(self, data_pass: int) -> datasets.IterableDataset:
        """Pass ``data_pass`` over every process's data: the files in that pass's seeded order (in their sorted order
        with ``limit``, so that every pass reads the same first ``limit`` examples)."""
        files = self.spec.files[self.split]
        ds = open_split(self.spec, self.split, files if self.limit else shuffled_files(files, self.seed, data_pass))
        ds = raw_columns(ds, self.input_column).select_columns([self.input_column, self.label_column])
        return ds.take(self.limit) if self.limit else ds

    def label_of(self, row: dict) -> int | None:
        return self.labels.encode(row[self.label_column])
