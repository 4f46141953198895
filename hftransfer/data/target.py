"""The target domain of a domain-adaptation run: unlabelled train examples, and labelled splits only reported.

Any modality: text files, image or audio folders (a flat folder of unlabelled files for the train split,
class-per-subfolder folders for the labelled ones), manifests and datasets; audio stays undecoded records here.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import datasets
from datasets import ClassLabel

from ..errors import HFTransferError
from .sources import DataSource, load_raw_splits, load_split_folder, load_unlabelled_folder
from .splits import INDEX_COLUMN, VALIDATION_SPLIT_NAMES, drop_empty_rows, empty_rows, subset, with_index

logger = logging.getLogger(__name__)


@dataclass
class TargetBundle:
    """The target domain of a domain-adaptation run.

    ``train`` is unlabelled (``labels`` is -1 everywhere: a label column, if present, is dropped) and
    trains the adaptation and scores the label-free selection criterion; ``validation`` / ``test``
    carry labels in the source's label ids and are only ever reported (the *oracle* numbers).
    """

    train: datasets.Dataset
    validation: datasets.Dataset | None = None
    test: datasets.Dataset | None = None



def load_target_data(modality: str, source: DataSource, *, id2label: dict[int, str], input_column: str,
                     label_column: str = "label", text_encoding: str = "auto", seed: int = 42,
                     max_train_samples: int | None = None, max_eval_samples: int | None = None,
                     max_predict_samples: int | None = None) -> TargetBundle:
    """The target-domain splits ``source`` names (``--target_*``), labels mapped onto the source's ``id2label``.

    The ``max_*_samples`` limits (the run's ``--max_train_samples`` & co.) cap the target train /
    validation / test splits too.
    """
    raw = _raw_target_splits(modality, source, input_column, label_column, text_encoding)
    if "train" not in raw:
        raise HFTransferError(f"the target dataset has no 'train' split (it has {', '.join(raw) or 'none'}): it "
                              "provides the unlabelled target examples")
    train = _unlabelled_train(raw["train"], input_column)
    train = subset(train, max_train_samples, seed)
    train = train.remove_columns([c for c in train.column_names if c != input_column])
    train = train.add_column("labels", [-1] * len(train)).add_column(INDEX_COLUMN, list(range(len(train))))
    eval_name = next((n for n in VALIDATION_SPLIT_NAMES if n in raw), None)
    labelled = {}
    for split, name, limit in (("validation", eval_name, max_eval_samples), ("test", "test" if "test" in raw else None,
                                                                              max_predict_samples)):
        ds = _labelled_target(raw[name], input_column, label_column, id2label, f"target {split}") if name else None
        if ds is not None and limit is not None:
            ds = with_index(subset(ds, limit, seed))
        labelled[split] = ds
    return TargetBundle(train, labelled["validation"], labelled["test"])


def _raw_target_splits(modality: str, source: DataSource, input_column: str, label_column: str,
                       text_encoding: str) -> dict:
    train_dir = source.train_dir
    if train_dir and Path(train_dir).is_dir() and not any(c.is_dir() for c in Path(train_dir).iterdir()):
        # a flat folder of unlabelled images / audio; labelled class-per-subfolder splits beside it are reported only
        raw = {"train": load_unlabelled_folder(train_dir, modality=modality, column=input_column)}
        for split, folder in (("validation", source.validation_dir), ("test", source.test_dir)):
            if folder:
                raw[split] = load_split_folder(split, folder, modality=modality, column=input_column)
        return raw
    return load_raw_splits(modality, source, image_column=input_column, audio_column=input_column,
                           label_column=label_column, text_encoding=text_encoding)


def _unlabelled_train(train: datasets.Dataset, input_column: str) -> datasets.Dataset:
    """The target train split without empty inputs (counted); one line if the column is missing or nothing is left."""
    if input_column not in train.column_names:
        raise HFTransferError(f"column '{input_column}' not found in the target training data (columns: "
                              f"{', '.join(train.column_names)}): pass "
                              "--image_column_name/--text_column_name/--audio_column_name")
    empty = set(empty_rows(train, [input_column]))
    if empty:
        logger.warning(f"skipped {len(empty)} of {len(train)} target train rows with an empty {input_column}")
        train = train.select([i for i in range(len(train)) if i not in empty])
    if len(train) == 0:
        raise HFTransferError("the target training split is empty: pass unlabelled examples of the target domain")
    return train


def _labelled_target(ds: datasets.Dataset, input_column: str, label_column: str, id2label: dict[int, str],
                     split: str) -> datasets.Dataset:
    """A labelled target split with ``labels`` in the source's ids (matched by label name)."""
    if label_column not in ds.column_names or input_column not in ds.column_names:
        raise HFTransferError(f"the {split} split lacks column '{label_column}' or '{input_column}' (columns: "
                              f"{', '.join(ds.column_names)}): it is only used to report target accuracy, so label "
                              "it or leave it out")
    ds = drop_empty_rows(ds, input_column, label_column, split)
    feature = ds.features[label_column]
    first = ds.select_columns([label_column])[0][label_column] if len(ds) else None  # no image / audio decoded
    if isinstance(feature, (datasets.Sequence, datasets.List, list)) or isinstance(first, list):
        raise HFTransferError(f"the {split} split is multi-label: domain adaptation supports single-label "
                              "classification only")
    names = feature.names if isinstance(feature, ClassLabel) else None
    label2id = {name: i for i, name in id2label.items()}
    values = [names[v] if names else str(v) for v in ds[label_column]]
    unknown = sorted(set(values) - set(label2id))
    if unknown:
        raise HFTransferError(f"{split} label(s) {', '.join(unknown[:5])} are not source labels "
                              f"({', '.join(id2label.values())}): the target domain must use the source's classes")
    ds = ds.remove_columns([c for c in ds.column_names if c != input_column])
    return ds.add_column("labels", [label2id[v] for v in values]).add_column(INDEX_COLUMN, list(range(len(ds))))
