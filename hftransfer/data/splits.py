"""Labelled splits: raw splits -> checked train / validation / test with integer ``labels`` and an example id.

Every problem a user can fix (missing column, a single class, an empty split, a validation label never
seen in training) raises :class:`HFTransferError` before training starts. Rows whose input or label
is empty are skipped, and the count is printed; the held-out validation split is stratified by label.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import datasets
import numpy as np
from datasets import ClassLabel, DatasetDict

from ..errors import HFTransferError

logger = logging.getLogger(__name__)

INDEX_COLUMN = "__index__"  # each example's position in its split: evaluation and the feature cache order by it
VALIDATION_SPLIT_NAMES = ("validation", "valid", "val", "dev")


@dataclass
class DataBundle:
    """Train/eval splits with integer ``labels`` (multi-hot floats when multi-label) and label names."""

    train: datasets.Dataset
    eval: datasets.Dataset
    id2label: dict[int, str]
    multi_label: bool
    input_column: str
    test: datasets.Dataset | None = None  # scored once, with the exported model
    target: "TargetBundle | None" = None  # noqa: F821 - domain adaptation: the domain the model will serve (data.target)


def subset(ds: datasets.Dataset, limit: int | None, seed: int) -> datasets.Dataset:
    """A seeded random subset of at most ``limit`` examples (``--max_*_samples``); ``ds`` itself when ``limit`` is None."""
    if limit is None:
        return ds
    return ds.shuffle(seed=seed).select(range(min(limit, len(ds))))


def with_index(ds: datasets.Dataset) -> datasets.Dataset:
    """``ds`` with a fresh ``INDEX_COLUMN`` 0..n-1 (replacing an earlier one)."""
    if INDEX_COLUMN in ds.column_names:
        ds = ds.remove_columns(INDEX_COLUMN)
    return ds.add_column(INDEX_COLUMN, list(range(len(ds))))


def prepare_splits(raw: DatasetDict, input_column: str, label_column: str, validation_fraction: float = 0.15, *,
                   seed: int = 42, max_train_samples: int | None = None, max_eval_samples: int | None = None,
                   max_predict_samples: int | None = None, label_names: list[str] | None = None) -> DataBundle:
    """Check columns and labels, pick or hold out the validation split, encode labels as ``labels``."""
    if "train" not in raw:
        raise HFTransferError(f"the dataset has no 'train' split (it has {', '.join(raw) or 'none'}): provide training data")
    train = raw["train"]
    for column, flag in ((input_column, "--image_column_name/--text_column_name"), (label_column, "--label_column_name")):
        if column not in train.column_names:
            raise HFTransferError(
                f"column '{column}' not found in the training data (columns: {', '.join(train.column_names)}): pass {flag}"
            )
    train = drop_empty_rows(train, input_column, label_column, "train")
    if len(train) == 0:
        raise HFTransferError("the training split is empty: provide at least one example per class")

    eval_name = next((n for n in VALIDATION_SPLIT_NAMES if n in raw), None)
    label_feature = train.features[label_column]
    if eval_name is None:
        if not 0 < validation_fraction < 1:
            raise HFTransferError(
                f"no validation split and --validation_fraction is {validation_fraction}: pass validation data or a fraction in (0, 1)"
            )
        if len(train) < 2:
            raise HFTransferError("only one training example: need at least two to hold out a validation split")
        train, eval_ds = hold_out(train, label_column, validation_fraction, seed)
    else:
        eval_ds = raw[eval_name]
        if label_column not in eval_ds.column_names or input_column not in eval_ds.column_names:
            raise HFTransferError(
                f"the '{eval_name}' split lacks column '{label_column}' or '{input_column}' (columns: {', '.join(eval_ds.column_names)})"
            )
        eval_ds = drop_empty_rows(eval_ds, input_column, label_column, eval_name)
    if len(eval_ds) == 0:
        raise HFTransferError("the validation split is empty: provide validation examples or a larger --validation_fraction")

    train, eval_ds = subset(train, max_train_samples, seed), subset(eval_ds, max_eval_samples, seed)
    test = _test_split(raw, input_column, label_column)
    if test is not None:
        test = subset(test, max_predict_samples, seed)
    multi_label = isinstance(train.select_columns(label_column)[0][label_column], list)
    id2label, encode = _label_encoding(train, eval_ds, label_column, label_feature, multi_label, label_names)
    if test is not None:
        _label_encoding(train, test, label_column, label_feature, multi_label, label_names, split="test")
    train, eval_ds = (_encoded(ds, input_column, label_column, encode) for ds in (train, eval_ds))
    test = _encoded(test, input_column, label_column, encode) if test is not None else None
    return DataBundle(train, eval_ds, id2label, multi_label, input_column, test)


def _encoded(ds: datasets.Dataset, input_column: str, label_column: str, encode) -> datasets.Dataset:
    """``labels`` encoded, an example id (evaluation counts each example once across processes and the
    feature cache restores order by it), and nothing but the input column besides."""
    if label_column != "labels" and "labels" in ds.column_names:
        ds = ds.remove_columns("labels")
    # input_columns: only the label column is read, images are not decoded here
    ds = ds.map(lambda v: {"labels": encode(v)}, input_columns=label_column, batched=True, desc="encoding labels")
    ds = with_index(ds)
    return ds.remove_columns([c for c in ds.column_names if c not in {input_column, "labels", INDEX_COLUMN}])


def _test_split(raw: DatasetDict, input_column: str, label_column: str) -> datasets.Dataset | None:
    """The ``test`` split with non-empty rows, or None; it must have the training columns."""
    if "test" not in raw:
        return None
    test = raw["test"]
    if label_column not in test.column_names or input_column not in test.column_names:
        raise HFTransferError(f"the 'test' split lacks column '{label_column}' or '{input_column}' (columns: "
                              f"{', '.join(test.column_names)}): label the test data, or pass --do_predict false")
    test = drop_empty_rows(test, input_column, label_column, "test")
    return test if len(test) else None


def _is_empty(value) -> bool:
    """A missing value or blank text; an image or audio cell (a dict of path / bytes) counts as present."""
    return value is None or (isinstance(value, str) and not value.strip())


def empty_rows(ds: datasets.Dataset, columns: list[str]) -> list[int]:
    """Rows whose value in any of ``columns`` is missing or blank (images and audio are read as paths, not decoded:
    ``datasets`` 5 would decode audio through torchcodec)."""
    view = ds.select_columns(columns)
    for column in columns:
        if isinstance(view.features[column], datasets.Image):
            view = view.cast_column(column, datasets.Image(decode=False))
        elif isinstance(view.features[column], datasets.Audio):
            view = view.cast_column(column, datasets.Audio(decode=False))
    values = zip(*(view[column] for column in columns))
    return [i for i, row in enumerate(values) if any(_is_empty(v) for v in row)]


def drop_empty_rows(ds: datasets.Dataset, input_column: str, label_column: str, split: str) -> datasets.Dataset:
    """Skip rows whose input or label is missing or blank, saying how many and which (images and text alike).

    An empty list of labels is kept: in multi-label data it means "none of the labels".
    """
    empty = empty_rows(ds, [input_column, label_column])
    if not empty:
        return ds
    shown = ", ".join(str(i + 1) for i in empty[:5]) + (", ..." if len(empty) > 5 else "")
    logger.warning(f"skipped {len(empty)} of {len(ds)} {split} rows with an empty {input_column} or {label_column} "
                   f"(row {shown})")
    keep = sorted(set(range(len(ds))) - set(empty))
    return ds.select(keep)


def hold_out(train: datasets.Dataset, label_column: str, fraction: float, seed: int) -> tuple:
    """Split off ``fraction`` of ``train`` as validation, stratified by label (seeded).

    Every class keeps at least one training example, so a class with a single example stays in
    training. Multi-label data is split at random.
    """
    rng = np.random.default_rng(seed)
    labels = train[label_column]
    if labels and isinstance(labels[0], list):
        order = rng.permutation(len(train))
        n_eval = max(1, round(fraction * len(train)))
        return train.select(sorted(order[n_eval:])), train.select(sorted(order[:n_eval]))
    by_class: dict = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    eval_idx = []
    for label in sorted(by_class, key=str):
        members = rng.permutation(by_class[label])
        eval_idx += list(members[: min(len(members) - 1, round(fraction * len(members)))])
    if not eval_idx:  # tiny data: take one example of the largest class
        largest = max(by_class.values(), key=len)
        if len(largest) < 2:
            raise HFTransferError("every class has a single example, so none can be held out for validation: pass "
                                  "validation data (--validation_dir / --validation_file) or more examples")
        eval_idx = [int(rng.choice(largest))]
    eval_set = set(int(i) for i in eval_idx)
    return (train.select([i for i in range(len(train)) if i not in eval_set]), train.select(sorted(eval_set)))


def _label_encoding(train, eval_ds, label_column, feature, multi_label, label_names, split: str = "validation"):
    """Label names and a batch encoder; fail on ``split`` (``eval_ds``) labels that training never shows."""
    inner = getattr(feature, "feature", feature)  # List/Sequence(ClassLabel) for multi-label
    if isinstance(inner, ClassLabel):
        names = list(inner.names)
        to_id = lambda v: v  # noqa: E731  (already integer ids)
        train_ids = _flatten(train[label_column], multi_label)
        eval_ids = _flatten(eval_ds[label_column], multi_label)
        used = sorted(set(train_ids))
        unseen = sorted(set(eval_ids) - set(train_ids))
        if unseen:
            raise HFTransferError(
                f"{split} label(s) {', '.join(names[i] for i in unseen)} never occur in the training data: "
                f"add training examples of them or drop them from the {split} data"
            )
        if len(used) < len(names):  # e.g. an image folder with a class only under val/
            remap = {old: new for new, old in enumerate(used)}
            names = [names[i] for i in used]
            to_id = remap.__getitem__
    else:
        train_values = _flatten(train[label_column], multi_label)
        eval_values = _flatten(eval_ds[label_column], multi_label)
        if any(v is None for v in train_values + eval_values):
            raise HFTransferError(f"column '{label_column}' has empty labels: fill them in or drop those rows")
        values = sorted(set(train_values), key=lambda v: (isinstance(v, str), v))
        unseen = sorted(set(eval_values) - set(values), key=str)
        if unseen:
            raise HFTransferError(
                f"{split} label(s) {', '.join(map(str, unseen[:5]))} never occur in the training data: "
                f"add training examples of them or drop them from the {split} data"
            )
        lookup = {v: i for i, v in enumerate(values)}
        names = [str(v) for v in values]
        to_id = lookup.__getitem__
    if len(names) < 2 and not multi_label:
        only = f" ('{names[0]}')" if names else ""
        raise HFTransferError(f"the training data has only one class{only}: classification needs at least two, "
                              "add examples of another class")
    if label_names:
        if len(label_names) != len(names):
            raise HFTransferError(f"--label_names has {len(label_names)} names but the data has {len(names)} labels ({', '.join(names)})")
        names = list(label_names)
    num = len(names)

    def encode(batch_values):
        if not multi_label:
            return [to_id(v) for v in batch_values]
        rows = []
        for values in batch_values:
            row = [0.0] * num
            for v in values:
                row[to_id(v)] = 1.0
            rows.append(row)
        return rows

    return dict(enumerate(names)), encode


def _flatten(values, multi_label):
    return [v for row in values for v in row] if multi_label else list(values)
