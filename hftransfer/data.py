"""Data: ``datasets`` inputs -> checked, labelled train/eval splits.

Inputs are a Hub (or local script) dataset name, a class-per-subfolder image folder, or CSV/JSON(L)
text files. Every problem a user can fix (missing column, empty split, unreadable image, a
validation label never seen in training) raises :class:`HFTransferError` before training starts.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import datasets
from datasets import ClassLabel, DatasetDict

from .errors import HFTransferError

INDEX_COLUMN = "__index__"
VALIDATION_SPLIT_NAMES = ("validation", "valid", "val", "dev")


@dataclass
class DataBundle:
    """Train/eval splits with integer ``labels`` (multi-hot floats when multi-label) and label names."""

    train: datasets.Dataset
    eval: datasets.Dataset
    id2label: dict[int, str]
    multi_label: bool
    input_column: str


def load_raw_splits(modality: str, dataset_name=None, dataset_config_name=None, train_dir=None, validation_dir=None,
                    train_file=None, validation_file=None, cache_dir=None) -> DatasetDict:
    """Load the user's data as a DatasetDict, translating loader failures into one-line errors."""
    if dataset_name:
        try:
            return datasets.load_dataset(dataset_name, dataset_config_name, cache_dir=cache_dir)
        except Exception as e:  # datasets raises many types (FileNotFound, DatasetNotFound, ConnectionError)
            raise HFTransferError(
                f"could not load dataset '{dataset_name}' ({type(e).__name__}: {str(e).splitlines()[0][:200]}): "
                "check the name, or pass local data with --train_dir/--train_file"
            ) from None
    if modality == "image":
        if not train_dir:
            raise HFTransferError("no training data: pass --train_dir (class-per-subfolder images) or --dataset_name")
        files = {"train": _image_folder_pattern(train_dir, "--train_dir")}
        if validation_dir:
            files["validation"] = _image_folder_pattern(validation_dir, "--validation_dir")
        return _load("imagefolder", files, cache_dir)
    if not train_file:
        raise HFTransferError("no training data: pass --train_file (CSV/JSON/JSONL) or --dataset_name")
    files = {"train": _existing_file(train_file, "--train_file")}
    if validation_file:
        files["validation"] = _existing_file(validation_file, "--validation_file")
    extensions = {Path(f).suffix.lower() for f in files.values()}
    if len(extensions) > 1:
        raise HFTransferError(f"--train_file and --validation_file have different formats ({', '.join(extensions)}): use one format")
    loader = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json"}.get(extensions.pop())
    if loader is None:
        raise HFTransferError(f"unsupported text file type '{Path(train_file).suffix}': use .csv, .tsv, .json or .jsonl")
    kwargs = {"delimiter": "\t"} if Path(train_file).suffix.lower() == ".tsv" else {}
    return _load(loader, files, cache_dir, **kwargs)


def _load(builder: str, data_files: dict, cache_dir, **kwargs) -> DatasetDict:
    try:
        return datasets.load_dataset(builder, data_files=data_files, cache_dir=cache_dir, **kwargs)
    except Exception as e:
        raise HFTransferError(
            f"could not read {', '.join(map(str, data_files.values()))} as {builder} "
            f"({type(e).__name__}: {str(e).splitlines()[0][:200]}): fix or remove the offending file"
        ) from None


def _image_folder_pattern(path: str, flag: str) -> str:
    p = Path(path)
    if not p.is_dir():
        raise HFTransferError(f"{flag} '{path}' is not a directory: pass a folder with one subfolder per class")
    if not any(child.is_dir() for child in p.iterdir()):
        raise HFTransferError(f"{flag} '{path}' has no class subfolders: put images in {path}/<class_name>/")
    return str(p / "**")


def _existing_file(path: str, flag: str) -> str:
    if not Path(path).is_file():
        raise HFTransferError(f"{flag} '{path}' does not exist: pass an existing CSV/JSON/JSONL file")
    return path


def prepare_splits(raw: DatasetDict, input_column: str, label_column: str, validation_fraction: float = 0.15,
                   seed: int = 42, max_train_samples: int | None = None, max_eval_samples: int | None = None,
                   label_names: list[str] | None = None) -> DataBundle:
    """Check columns and labels, pick or hold out the validation split, encode labels as ``labels``."""
    if "train" not in raw:
        raise HFTransferError(f"the dataset has no 'train' split (it has {', '.join(raw) or 'none'}): provide training data")
    train = raw["train"]
    for column, flag in ((input_column, "--image_column_name/--text_column_name"), (label_column, "--label_column_name")):
        if column not in train.column_names:
            raise HFTransferError(
                f"column '{column}' not found in the training data (columns: {', '.join(train.column_names)}): pass {flag}"
            )
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
        stratify = label_column if isinstance(label_feature, ClassLabel) else None
        try:
            split = train.train_test_split(test_size=validation_fraction, seed=seed, stratify_by_column=stratify)
        except ValueError:  # too few examples of some class to stratify
            split = train.train_test_split(test_size=validation_fraction, seed=seed)
        train, eval_ds = split["train"], split["test"]
    else:
        eval_ds = raw[eval_name]
        if label_column not in eval_ds.column_names or input_column not in eval_ds.column_names:
            raise HFTransferError(
                f"the '{eval_name}' split lacks column '{label_column}' or '{input_column}' (columns: {', '.join(eval_ds.column_names)})"
            )
    if len(eval_ds) == 0:
        raise HFTransferError("the validation split is empty: provide validation examples or a larger --validation_fraction")

    if max_train_samples is not None:
        train = train.shuffle(seed=seed).select(range(min(max_train_samples, len(train))))
    if max_eval_samples is not None:
        eval_ds = eval_ds.shuffle(seed=seed).select(range(min(max_eval_samples, len(eval_ds))))

    multi_label = isinstance(train.select_columns(label_column)[0][label_column], list)
    id2label, encode = _label_encoding(train, eval_ds, label_column, label_feature, multi_label, label_names)
    if label_column != "labels" and "labels" in train.column_names:
        train, eval_ds = train.remove_columns("labels"), eval_ds.remove_columns("labels")
    # input_columns: only the label column is read, images are not decoded here
    train = train.map(lambda v: {"labels": encode(v)}, input_columns=label_column, batched=True, desc="encoding labels")
    eval_ds = eval_ds.map(lambda v: {"labels": encode(v)}, input_columns=label_column, batched=True, desc="encoding labels")
    # example ids: evaluation counts each example once across processes; the feature cache restores order
    train = train.add_column(INDEX_COLUMN, list(range(len(train))))
    eval_ds = eval_ds.add_column(INDEX_COLUMN, list(range(len(eval_ds))))
    keep = {input_column, "labels", INDEX_COLUMN}
    train = train.remove_columns([c for c in train.column_names if c not in keep])
    eval_ds = eval_ds.remove_columns([c for c in eval_ds.column_names if c not in keep])
    return DataBundle(train, eval_ds, id2label, multi_label, input_column)


def _label_encoding(train, eval_ds, label_column, feature, multi_label, label_names):
    """Label names and a batch encoder; fail on validation labels that training never shows."""
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
                f"validation label(s) {', '.join(names[i] for i in unseen)} never occur in the training data: "
                "add training examples of them or drop them from validation"
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
                f"validation label(s) {', '.join(map(str, unseen[:5]))} never occur in the training data: "
                "add training examples of them or drop them from validation"
            )
        lookup = {v: i for i, v in enumerate(values)}
        names = [str(v) for v in values]
        to_id = lookup.__getitem__
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


def load_data(options, modality: str, data_seed: int | None = None) -> DataBundle:
    """The labelled splits ``options`` (a ``TrainConfig`` / ``RankConfig``) names, for a ``modality`` model.

    ``data_seed`` (default ``options.seed``) seeds the held-out split and the subsets.
    """
    input_column = options.image_column_name if modality == "image" else options.text_column_name
    raw = load_raw_splits(modality, options.dataset_name, options.dataset_config_name, options.train_dir,
                          options.validation_dir, options.train_file, options.validation_file)
    return prepare_splits(raw, input_column, options.label_column_name, options.validation_fraction,
                          options.seed if data_seed is None else data_seed, options.max_train_samples,
                          options.max_eval_samples, options.label_names)
