"""Where examples come from: ``datasets`` inputs read into a ``DatasetDict`` of raw splits.

Inputs are a Hub (or local script) dataset name, a folder written by ``save_to_disk``, a
class-per-subfolder image or audio folder, image or audio manifests (CSV/TSV/JSON(L)/Parquet files listing
file paths or bytes and labels: ``manifests``), or CSV/JSON(L) text files (checked row by row and decoded
first: ``text_files``). A loader failure becomes one :class:`HFTransferError` line naming the file and the
fix; ``splits`` then checks and labels what was read.

Audio folders are scanned here for the files soundfile reads (``audio_files.AUDIO_SUFFIXES``; other files are
ignored, as ``imagefolder`` ignores non-images), not with ``datasets``' ``audiofolder``; audio columns are
``Audio(decode=False)`` records (path or bytes), decoded by ``AudioPipeline.prepare``, never by ``datasets``.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import datasets
from datasets import ClassLabel, DatasetDict

from ..errors import HFTransferError
from ..files import write_text
from .audio_files import AUDIO_SUFFIXES, audio_dataset, audio_files_under, resolve_audio
from .manifests import MANIFEST_SUFFIXES, csv_label_lists, has_csv_label_lists, resolve_images
from .text_files import SUFFIXES, check_text_file


@dataclass(frozen=True)
class DataSource:
    """Where a run's examples come from: a ``datasets`` name / ``save_to_disk`` folder, or per-split image or
    audio folders (``*_dir``), or per-split files (``*_file``: text files, or image / audio manifests)."""

    dataset_name: str | None = None
    dataset_config_name: str | None = None
    train_dir: str | None = None
    validation_dir: str | None = None
    test_dir: str | None = None
    train_file: str | None = None
    validation_file: str | None = None
    test_file: str | None = None


def load_raw_splits(modality: str, source: DataSource, *, image_column: str = "image", label_column: str = "label",
                    text_encoding: str = "auto", cache_dir: str | None = None,
                    audio_column: str = "audio") -> DatasetDict:
    """Load the user's data as a DatasetDict, translating loader failures into one-line errors.

    For images and audio, ``train_file`` & co. are manifests (``manifests``); ``image_column`` /
    ``audio_column`` and ``label_column`` say which of their columns hold the files and the labels. An audio
    folder's files are in ``audio_column``.
    """
    if source.dataset_name and is_saved_dataset(source.dataset_name):
        return _load_from_disk(source.dataset_name, source.dataset_config_name)
    if source.dataset_name:
        return _load_named_dataset(source.dataset_name, source.dataset_config_name, cache_dir)
    if modality == "image":
        return _load_image_splits(source, image_column, label_column, text_encoding, cache_dir)
    if modality == "audio":
        return _load_audio_splits(source, audio_column, label_column, text_encoding, cache_dir)
    return _load_text_files(source, text_encoding, cache_dir)


def _load_named_dataset(name: str, config_name: str | None, cache_dir) -> DatasetDict:
    try:
        return datasets.load_dataset(name, config_name, cache_dir=cache_dir)
    except Exception as e:  # datasets raises many types (FileNotFound, DatasetNotFound, ConnectionError)
        raise HFTransferError(
            f"could not load dataset '{name}' ({type(e).__name__}: {str(e).splitlines()[0][:200]}): "
            "check the name, or pass local data with --train_dir/--train_file"
        ) from None


def _by_split(train, validation, test) -> dict[str, str]:
    """``{"train": ..., "validation": ..., "test": ...}`` for the splits that are given."""
    return {split: value for split, value in (("train", train), ("validation", validation), ("test", test)) if value}


def _load_image_splits(source: DataSource, image_column: str, label_column: str, text_encoding: str,
                       cache_dir) -> DatasetDict:
    mixed = mixed_image_inputs(source.train_dir, source.validation_dir, source.test_dir, source.train_file,
                               source.validation_file, source.test_file)
    if mixed:
        raise HFTransferError(mixed)
    if source.train_file:
        manifests = _by_split(source.train_file, source.validation_file, source.test_file)
        return _load_manifests(manifests, image_column, label_column, cache_dir, text_encoding)
    if not source.train_dir:
        raise HFTransferError("no training data: pass --train_dir (class-per-subfolder images), --train_file "
                              "(a CSV/JSONL/Parquet manifest) or --dataset_name")
    return _load_image_folders(_by_split(source.train_dir, source.validation_dir, source.test_dir), cache_dir)


def _load_audio_splits(source: DataSource, audio_column: str, label_column: str, text_encoding: str,
                       cache_dir) -> DatasetDict:
    mixed = mixed_image_inputs(source.train_dir, source.validation_dir, source.test_dir, source.train_file,
                               source.validation_file, source.test_file, kind="audio")
    if mixed:
        raise HFTransferError(mixed)
    if source.train_file:
        manifests = _by_split(source.train_file, source.validation_file, source.test_file)
        return _load_manifests(manifests, audio_column, label_column, cache_dir, text_encoding, kind="audio")
    if not source.train_dir:
        raise HFTransferError("no training data: pass --train_dir (class-per-subfolder audio files), --train_file "
                              "(a CSV/JSONL/Parquet manifest) or --dataset_name")
    return _load_audio_folders(_by_split(source.train_dir, source.validation_dir, source.test_dir), audio_column)


def _load_text_files(source: DataSource, text_encoding: str, cache_dir) -> DatasetDict:
    if not source.train_file:
        raise HFTransferError("no training data: pass --train_file (CSV/JSON/JSONL) or --dataset_name")
    files = {split: _existing_file(path, f"--{split}_file")
             for split, path in _by_split(source.train_file, source.validation_file, source.test_file).items()}
    train_file = source.train_file
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
                       test_file=None, *, kind: str = "image") -> str | None:
    """The error line when (``kind``: image or audio) folders and manifests name different splits of one run.

    Refused rather than merged: a folder's labels are class folder names, a manifest's are its
    label column (possibly lists), and no single rule turns one into the other.
    """
    dirs = {"--train_dir": train_dir, "--validation_dir": validation_dir, "--test_dir": test_dir}
    files = {"--train_file": train_file, "--validation_file": validation_file, "--test_file": test_file}
    dirs, files = [k for k, v in dirs.items() if v], [k for k, v in files.items() if v]
    if not dirs or not files or (dirs == ["--train_dir"] and files == ["--train_file"]):
        return None  # one kind of input, or the plain "both name training data" mistake, said elsewhere
    return (f"{', '.join(files)} (manifest) and {', '.join(dirs)} ({kind} folder) mix two kinds of input: give every "
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


def _load_manifests(files: dict[str, str], column: str, label_column: str, cache_dir, text_encoding: str,
                    kind: str = "image") -> DatasetDict:
    """One load per manifest (each resolves its relative ``kind`` (image or audio) file paths from its own
    folder), one format.

    CSV and JSON manifests are checked row by row and decoded like text files first; a CSV label
    list rule seen in any split makes every split multi-label (``manifests``).
    """
    for split, path in files.items():
        _existing_file(path, f"--{split}_file", f"an {kind} manifest (.csv, .tsv, .jsonl or .parquet)")
    suffixes = {Path(f).suffix.lower() for f in files.values()}
    if len(suffixes) > 1:
        raise HFTransferError(f"the {kind} manifests have different formats ({', '.join(sorted(suffixes))}): "
                              "use one format for --train_file, --validation_file and --test_file")
    suffix = suffixes.pop()
    builder = MANIFEST_SUFFIXES.get(suffix)
    if builder is None:
        raise HFTransferError(f"unsupported {kind} manifest type '{suffix}': use .csv, .tsv, .jsonl, .json or "
                              ".parquet (or --train_dir for a class-per-subfolder folder)")
    kwargs = {"delimiter": "\t"} if suffix == ".tsv" else {}
    out = {}
    for split, path in files.items():
        readable = path if builder == "parquet" else as_utf8(path, check_text_file(path, text_encoding))
        ds = _load(builder, {split: readable}, cache_dir, **kwargs)[split]
        out[split] = (resolve_audio if kind == "audio" else resolve_images)(ds, column, Path(path))
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


def _load_audio_folders(folders: dict[str, str], column: str) -> DatasetDict:
    """Class-per-subfolder audio folders, one label set (the union of every split's class folders): ``column``
    holds each audio file found under a class folder (at any depth), ``label`` its class folder's name."""
    classes = {split: _class_folders(folder, f"--{split}_dir", "audio files") for split, folder in folders.items()}
    names = sorted(set().union(*classes.values()))
    out = {}
    for split, folder in folders.items():
        paths, labels = [], []
        for name in classes[split]:
            found = audio_files_under(Path(folder).resolve() / name)
            paths += [str(f) for f in found]
            labels += [names.index(name)] * len(found)
        if not paths:
            raise HFTransferError(f"no audio files under the class folders of --{split}_dir '{folder}' (looked for "
                                  f"{_suffix_list()}): put audio files in {folder}/<class_name>/")
        out[split] = audio_dataset({column: paths, "label": labels}, {"label": ClassLabel(names=names)}, column)
    return DatasetDict(out)


def _suffix_list() -> str:
    common = [s for s in (".wav", ".flac", ".ogg", ".mp3", ".aiff") if s in AUDIO_SUFFIXES]
    return ", ".join(common) + ", ..."


def load_split_folder(split: str, folder: str, cache_dir=None, *, modality: str = "image",
                      column: str = "audio") -> datasets.Dataset:
    """One labelled class-per-subfolder image (or audio: files in ``column``) folder as a split."""
    if modality == "audio":
        return _load_audio_folders({split: folder}, column)[split]
    return _load_image_folders({split: folder}, cache_dir)[split]


def load_unlabelled_folder(folder: str, cache_dir=None, *, modality: str = "image",
                           column: str = "audio") -> datasets.Dataset:
    """Every image (or audio file, in ``column``) under ``folder`` (a flat folder, or subfolders whose names are
    ignored), with no label column."""
    if modality != "audio":
        return _load("imagefolder", {"train": str(Path(folder) / "**")}, cache_dir, drop_labels=True)["train"]
    if not Path(folder).is_dir():
        raise HFTransferError(f"--target_train_dir '{folder}' is not a directory: pass a folder of audio files")
    paths = [str(f) for f in audio_files_under(Path(folder).resolve())]
    if not paths:
        raise HFTransferError(f"no audio files under '{folder}' (looked for {_suffix_list()}): put the unlabelled "
                              "target-domain audio files there")
    return audio_dataset({column: paths}, {}, column)


def _class_folders(path: str, flag: str, what: str = "images") -> list[str]:
    p = Path(path)
    if not p.is_dir():
        raise HFTransferError(f"{flag} '{path}' is not a directory: pass a folder with one subfolder per class")
    classes = sorted(child.name for child in p.iterdir() if child.is_dir() and not child.name.startswith("."))
    if not classes:
        raise HFTransferError(f"{flag} '{path}' has no class subfolders: put {what} in {path}/<class_name>/")
    return classes


def _existing_file(path: str, flag: str, what: str = "CSV/JSON/JSONL file") -> str:
    if not Path(path).is_file():
        raise HFTransferError(f"{flag} '{path}' does not exist: pass an existing {what}")
    return path
