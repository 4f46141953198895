"""Data: ``datasets`` inputs -> checked, labelled train/eval splits.

Inputs are a Hub (or local script) dataset name, a folder written by ``save_to_disk``, a
class-per-subfolder image folder, image manifests (CSV/TSV/JSON(L)/Parquet files listing image paths
or bytes and labels: ``manifests``), or CSV/JSON(L) text files (checked row by row and decoded first:
``text_files``). Every problem a user can fix (missing column, a single class, empty split,
unreadable or missing image, a validation label never seen in training) raises
:class:`HFTransferError` before training starts. Rows whose input or label is empty are skipped,
and the count is printed; the held-out validation split is stratified by label.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
from datasets import ClassLabel, DatasetDict

from ..errors import HFTransferError
from ..files import write_text
from .manifests import MANIFEST_SUFFIXES, csv_label_lists, has_csv_label_lists, resolve_images
from .text_files import SUFFIXES, check_text_file

logger = logging.getLogger(__name__)

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
    test: datasets.Dataset | None = None  # scored once, with the exported model
    target: "TargetBundle | None" = None  # domain adaptation: the domain the model will serve


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


def load_raw_splits(modality: str, dataset_name=None, dataset_config_name=None, train_dir=None, validation_dir=None,
                    train_file=None, validation_file=None, cache_dir=None, text_encoding: str = "auto",
                    test_dir=None, test_file=None, image_column: str = "image",
                    label_column: str = "label") -> DatasetDict:
    """Load the user's data as a DatasetDict, translating loader failures into one-line errors.

    For images, ``train_file`` & co. are manifests (``manifests``); ``image_column`` / ``label_column``
    say which of their columns hold the images and the labels.
    """
    if dataset_name and is_saved_dataset(dataset_name):
        return _load_from_disk(dataset_name, dataset_config_name)
    if dataset_name:
        try:
            return datasets.load_dataset(dataset_name, dataset_config_name, cache_dir=cache_dir)
        except Exception as e:  # datasets raises many types (FileNotFound, DatasetNotFound, ConnectionError)
            raise HFTransferError(
                f"could not load dataset '{dataset_name}' ({type(e).__name__}: {str(e).splitlines()[0][:200]}): "
                "check the name, or pass local data with --train_dir/--train_file"
            ) from None
    if modality == "image":
        mixed = mixed_image_inputs(train_dir, validation_dir, test_dir, train_file, validation_file, test_file)
        if mixed:
            raise HFTransferError(mixed)
        if train_file:
            manifests = {"train": train_file, **({"validation": validation_file} if validation_file else {}),
                         **({"test": test_file} if test_file else {})}
            return _load_image_manifests(manifests, image_column, label_column, cache_dir, text_encoding)
        if not train_dir:
            raise HFTransferError("no training data: pass --train_dir (class-per-subfolder images), --train_file "
                                  "(a CSV/JSONL/Parquet manifest) or --dataset_name")
        folders = {"train": train_dir, **({"validation": validation_dir} if validation_dir else {}),
                   **({"test": test_dir} if test_dir else {})}
        return _load_image_folders(folders, cache_dir)
    if not train_file:
        raise HFTransferError("no training data: pass --train_file (CSV/JSON/JSONL) or --dataset_name")
    files = {"train": _existing_file(train_file, "--train_file")}
    if validation_file:
        files["validation"] = _existing_file(validation_file, "--validation_file")
    if test_file:
        files["test"] = _existing_file(test_file, "--test_file")
    extensions = {Path(f).suffix.lower() for f in files.values()}
    if len(extensions) > 1:
        raise HFTransferError(f"--train_file, --validation_file and --test_file have different formats "
                              f"({', '.join(sorted(extensions))}): use one format")
    loader = SUFFIXES.get(extensions.pop())
    if loader is None:
        raise HFTransferError(f"unsupported text file type '{Path(train_file).suffix}': use .csv, .tsv, .json or .jsonl")
    files = {split: as_utf8(path, check_text_file(path, text_encoding)) for split, path in files.items()}
    kwargs = {"delimiter": "\t"} if Path(train_file).suffix.lower() == ".tsv" else {}
    return _load(loader, files, cache_dir, **kwargs)


def as_utf8(path: str, encoding: str) -> str:
    """``path`` itself when it is UTF-8, else a UTF-8 copy (kept by content hash, so ``datasets`` caches it)."""
    if encoding.replace("_", "-").lower() in ("utf-8", "utf8", "ascii"):
        return path
    raw = Path(path).read_bytes()
    copy = Path(datasets.config.HF_DATASETS_CACHE) / "hftransfer_utf8" / (
        f"{Path(path).stem}-{hashlib.sha1(raw).hexdigest()[:16]}{Path(path).suffix}")
    if not copy.is_file():
        write_text(copy, raw.decode(encoding))
    return str(copy)


def mixed_image_inputs(train_dir=None, validation_dir=None, test_dir=None, train_file=None, validation_file=None,
                       test_file=None) -> str | None:
    """The error line when image folders and manifests name different splits of one run, else None.

    Refused rather than merged: a folder's labels are class folder names, a manifest's are its
    label column (possibly lists), and no single rule turns one into the other.
    """
    dirs = {"--train_dir": train_dir, "--validation_dir": validation_dir, "--test_dir": test_dir}
    files = {"--train_file": train_file, "--validation_file": validation_file, "--test_file": test_file}
    dirs, files = [k for k, v in dirs.items() if v], [k for k, v in files.items() if v]
    if not dirs or not files or (dirs == ["--train_dir"] and files == ["--train_file"]):
        return None  # one kind of input, or the plain "both name training data" mistake, said elsewhere
    return (f"{', '.join(files)} (manifest) and {', '.join(dirs)} (image folder) mix two kinds of input: give every "
            "split as a manifest (--*_file) or every split as a class-per-subfolder folder (--*_dir)")


def is_saved_dataset(path: str) -> bool:
    """Whether ``path`` is a folder written by ``DatasetDict.save_to_disk`` or ``Dataset.save_to_disk``."""
    p = Path(path).expanduser()
    return p.is_dir() and ((p / datasets.config.DATASETDICT_JSON_FILENAME).is_file()
                           or (p / datasets.config.DATASET_STATE_JSON_FILENAME).is_file())


def _load_from_disk(path: str, config_name: str | None) -> DatasetDict:
    """A ``save_to_disk`` folder with its features (ClassLabel names, Image columns) intact; a single
    ``Dataset`` becomes the train split."""
    if config_name:
        raise HFTransferError(f"--dataset_config_name '{config_name}' does not apply to '{path}', a folder written by "
                              "save_to_disk: drop --dataset_config_name")
    try:
        loaded = datasets.load_from_disk(str(Path(path).expanduser()))
    except Exception as e:
        raise HFTransferError(f"could not load the saved dataset '{path}' ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200]}): save it again with save_to_disk") from None
    return loaded if isinstance(loaded, DatasetDict) else DatasetDict({"train": loaded})


def _load_image_manifests(files: dict[str, str], image_column: str, label_column: str, cache_dir,
                          text_encoding: str) -> DatasetDict:
    """One load per manifest (each resolves its relative image paths from its own folder), one format.

    CSV and JSON manifests are checked row by row and decoded like text files first; a CSV label
    list rule seen in any split makes every split multi-label (``manifests``).
    """
    for split, path in files.items():
        _existing_file(path, f"--{split}_file", "an image manifest (.csv, .tsv, .jsonl or .parquet)")
    suffixes = {Path(f).suffix.lower() for f in files.values()}
    if len(suffixes) > 1:
        raise HFTransferError(f"the image manifests have different formats ({', '.join(sorted(suffixes))}): "
                              "use one format for --train_file, --validation_file and --test_file")
    suffix = suffixes.pop()
    builder = MANIFEST_SUFFIXES.get(suffix)
    if builder is None:
        raise HFTransferError(f"unsupported image manifest type '{suffix}': use .csv, .tsv, .jsonl, .json or .parquet "
                              "(or --train_dir for a class-per-subfolder folder)")
    kwargs = {"delimiter": "\t"} if suffix == ".tsv" else {}
    out = {}
    for split, path in files.items():
        readable = path if builder == "parquet" else as_utf8(path, check_text_file(path, text_encoding))
        ds = _load(builder, {split: readable}, cache_dir, **kwargs)[split]
        out[split] = resolve_images(ds, image_column, Path(path))
    if builder == "csv" and any(has_csv_label_lists(ds, label_column) for ds in out.values()):
        out = {split: csv_label_lists(ds, label_column, Path(files[split])) for split, ds in out.items()}
    return DatasetDict(out)


def _load(builder: str, data_files: dict, cache_dir, **kwargs) -> DatasetDict:
    try:
        return datasets.load_dataset(builder, data_files=data_files, cache_dir=cache_dir, **kwargs)
    except Exception as e:
        raise HFTransferError(
            f"could not read {', '.join(map(str, data_files.values()))} as {builder} "
            f"({type(e).__name__}: {str(e).splitlines()[0][:200]}): fix or remove the offending file"
        ) from None


def _load_image_folders(folders: dict[str, str], cache_dir) -> DatasetDict:
    """One ``imagefolder`` load per split, with one label set: the union of every split's class folders.

    Loading the splits together would make ``imagefolder`` drop the labels whenever the folders sit
    at different depths (``data/train`` and ``/elsewhere/val``); a single class folder would leave no
    label column at all, where the one-class case should be reported as such.
    """
    classes = {split: _class_folders(folder, f"--{split}_dir") for split, folder in folders.items()}
    names = sorted(set().union(*classes.values()))
    out = {}
    for split, folder in folders.items():
        ds = _load("imagefolder", {split: str(Path(folder) / "**")}, cache_dir)[split]
        own = classes[split]
        if "label" in ds.column_names:
            remap = {i: names.index(name) for i, name in enumerate(ds.features["label"].names)}
            ds = ds.map(lambda y: {"label": [remap[v] for v in y]}, input_columns="label", batched=True,
                        features=datasets.Features({**ds.features, "label": ClassLabel(names=names)}),
                        desc=f"labelling {split} images")
        else:  # imagefolder adds no label column for a single class folder
            ds = ds.add_column("label", [names.index(own[0])] * len(ds))
            ds = ds.cast_column("label", ClassLabel(names=names))
        out[split] = ds
    return DatasetDict(out)


def _class_folders(path: str, flag: str) -> list[str]:
    p = Path(path)
    if not p.is_dir():
        raise HFTransferError(f"{flag} '{path}' is not a directory: pass a folder with one subfolder per class")
    classes = sorted(child.name for child in p.iterdir() if child.is_dir() and not child.name.startswith("."))
    if not classes:
        raise HFTransferError(f"{flag} '{path}' has no class subfolders: put images in {path}/<class_name>/")
    return classes


def _existing_file(path: str, flag: str, what: str = "CSV/JSON/JSONL file") -> str:
    if not Path(path).is_file():
        raise HFTransferError(f"{flag} '{path}' does not exist: pass an existing {what}")
    return path


def prepare_splits(raw: DatasetDict, input_column: str, label_column: str, validation_fraction: float = 0.15,
                   seed: int = 42, max_train_samples: int | None = None, max_eval_samples: int | None = None,
                   label_names: list[str] | None = None, max_predict_samples: int | None = None) -> DataBundle:
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

    if max_train_samples is not None:
        train = train.shuffle(seed=seed).select(range(min(max_train_samples, len(train))))
    if max_eval_samples is not None:
        eval_ds = eval_ds.shuffle(seed=seed).select(range(min(max_eval_samples, len(eval_ds))))

    test = _test_split(raw, input_column, label_column)
    if test is not None and max_predict_samples is not None:
        test = test.shuffle(seed=seed).select(range(min(max_predict_samples, len(test))))
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
    ds = ds.add_column(INDEX_COLUMN, list(range(len(ds))))
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
    return value is None or (isinstance(value, str) and not value.strip())


def drop_empty_rows(ds: datasets.Dataset, input_column: str, label_column: str, split: str) -> datasets.Dataset:
    """Skip rows whose input or label is missing or blank, saying how many and which (images and text alike).

    An empty list of labels is kept: in multi-label data it means "none of the labels".
    """
    view = ds.select_columns([input_column, label_column])
    if isinstance(view.features[input_column], datasets.Image):
        view = view.cast_column(input_column, datasets.Image(decode=False))  # read paths, do not decode
    empty = [i for i, (x, y) in enumerate(zip(view[input_column], view[label_column]))
             if _is_empty(y) or (x is None if isinstance(x, dict) or x is None else _is_empty(x))]
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


def load_data(options, modality: str, data_seed: int | None = None) -> DataBundle:
    """The labelled splits ``options`` (a ``TrainConfig`` / ``RankConfig``) names, for a ``modality`` model.

    ``data_seed`` (default ``options.seed``) seeds the held-out split and the subsets.
    """
    input_column = options.image_column_name if modality == "image" else options.text_column_name
    raw = load_raw_splits(modality, options.dataset_name, options.dataset_config_name, options.train_dir,
                          options.validation_dir, options.train_file, options.validation_file,
                          text_encoding=options.text_encoding, test_dir=options.test_dir, test_file=options.test_file,
                          image_column=options.image_column_name, label_column=options.label_column_name)
    return prepare_splits(raw, input_column, options.label_column_name, options.validation_fraction,
                          options.seed if data_seed is None else data_seed, options.max_train_samples,
                          options.max_eval_samples, options.label_names, options.max_predict_samples)


def load_target_data(options, modality: str, id2label: dict[int, str], data_seed: int | None = None) -> TargetBundle:
    """The target-domain splits ``options`` names (``--target_*``), labels mapped onto the source's ``id2label``.

    ``--max_train_samples`` / ``--max_eval_samples`` / ``--max_predict_samples`` cap the target train /
    validation / test splits too.
    """
    input_column = options.image_column_name if modality == "image" else options.text_column_name
    label_column = options.label_column_name
    seed = options.seed if data_seed is None else data_seed
    train_dir = options.target_train_dir
    if train_dir and Path(train_dir).is_dir() and not any(c.is_dir() for c in Path(train_dir).iterdir()):
        # a flat folder of unlabelled images
        raw = {"train": _load("imagefolder", {"train": str(Path(train_dir) / "**")}, None, drop_labels=True)["train"]}
        for split, folder in (("validation", options.target_validation_dir), ("test", options.target_test_dir)):
            if folder:  # labelled, class-per-subfolder: reported only
                raw[split] = _load_image_folders({split: folder}, None)[split]
    else:
        raw = load_raw_splits(modality, options.target_dataset_name, None, train_dir, options.target_validation_dir,
                              options.target_train_file, options.target_validation_file,
                              text_encoding=options.text_encoding, test_dir=options.target_test_dir,
                              test_file=options.target_test_file, image_column=options.image_column_name,
                              label_column=label_column)
    if "train" not in raw:
        raise HFTransferError(f"the target dataset has no 'train' split (it has {', '.join(raw) or 'none'}): it "
                              "provides the unlabelled target examples")
    train = raw["train"]
    if input_column not in train.column_names:
        raise HFTransferError(f"column '{input_column}' not found in the target training data (columns: "
                              f"{', '.join(train.column_names)}): pass --image_column_name/--text_column_name")
    view = train.select_columns([input_column])
    if isinstance(view.features[input_column], datasets.Image):
        view = view.cast_column(input_column, datasets.Image(decode=False))
    keep = [i for i, x in enumerate(view[input_column]) if not (x is None if isinstance(x, dict) or x is None else _is_empty(x))]
    if len(keep) < len(train):
        logger.warning(f"skipped {len(train) - len(keep)} of {len(train)} target train rows with an empty {input_column}")
        train = train.select(keep)
    if len(train) == 0:
        raise HFTransferError("the target training split is empty: pass unlabelled examples of the target domain")
    if options.max_train_samples is not None:
        train = train.shuffle(seed=seed).select(range(min(options.max_train_samples, len(train))))
    train = train.remove_columns([c for c in train.column_names if c != input_column])
    train = train.add_column("labels", [-1] * len(train)).add_column(INDEX_COLUMN, list(range(len(train))))
    eval_name = next((n for n in VALIDATION_SPLIT_NAMES if n in raw), None)
    validation = _labelled_target(raw[eval_name], input_column, label_column, id2label, "target validation") \
        if eval_name else None
    if validation is not None and options.max_eval_samples is not None:
        validation = validation.shuffle(seed=seed).select(range(min(options.max_eval_samples, len(validation))))
        validation = validation.remove_columns(INDEX_COLUMN).add_column(INDEX_COLUMN, list(range(len(validation))))
    test = _labelled_target(raw["test"], input_column, label_column, id2label, "target test") if "test" in raw else None
    if test is not None and options.max_predict_samples is not None:
        test = test.shuffle(seed=seed).select(range(min(options.max_predict_samples, len(test))))
        test = test.remove_columns(INDEX_COLUMN).add_column(INDEX_COLUMN, list(range(len(test))))
    return TargetBundle(train, validation, test)


def _labelled_target(ds: datasets.Dataset, input_column: str, label_column: str, id2label: dict[int, str],
                     split: str) -> datasets.Dataset:
    """A labelled target split with ``labels`` in the source's ids (matched by label name)."""
    if label_column not in ds.column_names or input_column not in ds.column_names:
        raise HFTransferError(f"the {split} split lacks column '{label_column}' or '{input_column}' (columns: "
                              f"{', '.join(ds.column_names)}): it is only used to report target accuracy, so label "
                              "it or leave it out")
    ds = drop_empty_rows(ds, input_column, label_column, split)
    feature = ds.features[label_column]
    if isinstance(feature, (datasets.Sequence, list)) or (len(ds) and isinstance(ds[0][label_column], list)):
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
