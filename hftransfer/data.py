"""Data: ``datasets`` inputs -> checked, labelled train/eval splits -> preprocessed DataLoaders.

Inputs are a Hub (or local script) dataset name, a class-per-subfolder image folder, or CSV/JSON(L)
text files. Every problem a user can fix (missing column, empty split, unreadable image, a
validation label never seen in training) raises :class:`HFTransferError` before training starts.
"""
from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from pathlib import Path

import datasets
import torch
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


def decode_images(ds: datasets.Dataset, column: str, shorter_side: int | None = None,
                  desc: str = "decoding images") -> datasets.Dataset:
    """Decode every image once: RGB, shrunk so its shorter side is ``shorter_side`` (never enlarged).

    Runs as a ``datasets`` map, so the result is cached on disk by the data's fingerprint and later
    runs and epochs skip the JPEG decode and the big resize; a corrupt or non-image file is named
    here, before training, instead of mid-epoch. The shrink target is the eval transform's resize
    size, which the eval crop and random resized crops of training cut from.
    """
    from PIL import Image

    def fn(batch):
        out = []
        for i, item in enumerate(batch[column]):
            source = item.get("path") or f"example {i}"
            try:
                im = Image.open(io.BytesIO(item["bytes"]) if item.get("bytes") is not None else item["path"])
                im.load()
            except Exception as e:
                raise HFTransferError(f"cannot read image '{source}' ({type(e).__name__}): remove or replace that file") from None
            im = im.convert("RGB")
            if shorter_side and min(im.size) > shorter_side:
                scale = shorter_side / min(im.size)
                im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.BICUBIC)
            out.append(im)
        return {column: out}

    raw = ds.cast_column(column, datasets.Image(decode=False))
    return raw.map(fn, batched=True, batch_size=32, desc=desc, features=ds.features)


# ---- preprocessing ------------------------------------------------------------------------------
def resize_size(data_config: dict) -> int:
    """The eval transform's resize (shorter side) before its center crop, as timm computes it."""
    return math.floor(data_config["input_size"][-1] / data_config.get("crop_pct", 0.875))


def image_transforms(data_config: dict, train: bool, crop_scale=(0.08, 1.0), hflip: float = 0.5,
                     color_jitter: float | None = 0.4, augment: bool = True, as_uint8: bool = False):
    """Train (random resized crop, flip, jitter) or eval (resize + center crop) transform for a timm model.

    Sizes, interpolation, crop fraction and mean/std come from timm's ``data_config``.
    ``augment=False`` trains on the eval transform. ``as_uint8`` stops at a uint8 tensor: batches
    travel 4x smaller and the backbone normalizes on the device; otherwise the output is the
    normalized float tensor timm's own transforms give.
    """
    from torchvision.transforms import v2

    size = data_config["input_size"][-1]
    interpolation = v2.InterpolationMode(data_config.get("interpolation", "bilinear"))
    if train and augment:
        steps = [v2.RandomResizedCrop(size, scale=tuple(crop_scale), interpolation=interpolation)]
        steps += [v2.RandomHorizontalFlip(hflip)] if hflip > 0 else []
        steps += [v2.ColorJitter(color_jitter, color_jitter, color_jitter)] if color_jitter else []
    else:
        steps = [v2.Resize(resize_size(data_config), interpolation=interpolation), v2.CenterCrop(size)]
    steps.append(v2.PILToTensor())
    if not as_uint8:
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(data_config["mean"], data_config["std"])]
    return v2.Compose(steps)


def with_image_transform(ds: datasets.Dataset, column: str, transform) -> datasets.Dataset:
    """Apply ``transform`` on access (fresh augmentation every epoch), yielding ``pixel_values``."""

    def apply(batch):
        out = {"pixel_values": [transform(im if im.mode == "RGB" else im.convert("RGB")) for im in batch[column]]}
        for key in ("labels", INDEX_COLUMN):
            if key in batch:
                out[key] = batch[key]
        return out

    return ds.with_transform(apply)


def tokenize(ds: datasets.Dataset, column: str, tokenizer, max_length: int) -> datasets.Dataset:
    """Tokenize once (cached by ``datasets``) without padding; batches are padded dynamically."""

    def fn(batch):
        texts = [t if isinstance(t, str) else "" for t in batch[column]]
        return tokenizer(texts, truncation=True, max_length=max_length)

    return ds.map(fn, batched=True, remove_columns=[column], desc="tokenizing")


class LengthGroupedSampler(torch.utils.data.Sampler):
    """Random order, but batches of similar lengths: less padding, same examples per epoch.

    Indices are shuffled (seeded by ``seed + epoch``), cut into mega-batches of ``mega_batches``
    batches, and sorted by length inside each, so consecutive batches hold similar lengths while the
    epoch stays random. ``set_epoch`` (called through accelerate's loaders) makes the order a
    function of the epoch, so a resumed run sees the same batches.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int = 0, mega_batches: int = 50):
        self.lengths, self.batch_size, self.seed, self.mega = list(lengths), batch_size, seed, mega_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=g).tolist()
        size = self.batch_size * self.mega
        for start in range(0, len(order), size):
            yield from sorted(order[start:start + size], key=lambda i: -self.lengths[i])


def collate_images(examples: list[dict]) -> dict[str, torch.Tensor]:
    batch = {"pixel_values": torch.stack([e["pixel_values"] for e in examples])}
    batch["labels"] = torch.tensor([e["labels"] for e in examples])
    if INDEX_COLUMN in examples[0]:
        batch[INDEX_COLUMN] = torch.tensor([e[INDEX_COLUMN] for e in examples])
    return batch


def available_cores() -> int:
    """CPU cores this process may run on (respects taskset / container CPU sets)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_num_workers() -> int:
    """Loader workers: leave most cores to the model on small machines, cap at 8 on big ones."""
    cores = available_cores()
    return 0 if cores <= 2 else min(8, cores // 2)
