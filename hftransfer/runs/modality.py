"""Which modality a Python-API run or prediction is: from the data first (a folder of images or of audio files, a
manifest, a text file), else from the model's name; and folders among an image or audio model's inputs."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from ..config import TrainConfig
from ..config.fields import MODALITIES
from ..config.options import AUTO_MODEL
from ..data.audio import AUDIO_SUFFIXES
from ..data.preprocessing import image_suffixes
from ..errors import HFTransferError
from ..files import files_under
from ..models.factory import modality_of


def media_suffixes(modality: str) -> set[str]:
    """The file suffixes an image or audio model reads."""
    return set(AUDIO_SUFFIXES) if modality == "audio" else image_suffixes()


def infer_modality(cfg: TrainConfig, modality: str | None = None) -> str:
    """``modality`` if given; else the data's (a folder of images or audio files, or a manifest of them: image /
    audio; a text file: text); else the model's (a timm name or folder: image; a transformers folder or any other
    name: text). Audio data takes either kind of backbone (timm on log-mel spectrograms, or an audio encoder)."""
    if modality is not None:
        if modality not in MODALITIES:
            raise HFTransferError(f"modality '{modality}': use {', '.join(repr(m) for m in MODALITIES)} (or leave it "
                                  "out to infer it from the data and the model)")
        return modality
    data = data_modality(cfg)
    if data == "audio":
        return data
    model = model_modality(cfg.model_name_or_path)
    if data and model and data != model:
        raise HFTransferError(f"the data is {data} ({'train_dir' if cfg.train_dir else 'train_file'}) but "
                              f"'{cfg.model_name_or_path}' is a{'n' if model == 'image' else ''} {model} backbone: "
                              f"pass a{'n' if data == 'image' else ''} {data} backbone, or modality= to say which")
    if data or model:
        return data or model
    source = cfg.dataset_name or cfg.train_file or "the default data"
    raise HFTransferError(f"cannot tell whether '{cfg.model_name_or_path}' on {source} is an image, text or audio "
                          "run: pass modality='image', 'text' or 'audio'")


def data_modality(cfg) -> str | None:
    """image / audio for a class-per-subfolder ``train_dir`` (whichever files it holds more of) or a ``train_file``
    manifest with that column, text for a ``train_file`` with the text column, None when the data does not say
    (a datasets name, other columns)."""
    if cfg.train_dir:
        folder = Path(cfg.train_dir)
        audio = len(files_under(folder, set(AUDIO_SUFFIXES))) if folder.is_dir() else 0
        return "audio" if audio > len(files_under(folder, image_suffixes())) else "image"
    if not cfg.train_file:
        return None
    columns = file_columns(Path(cfg.train_file))
    found = [m for m, column in (("image", cfg.image_column_name), ("text", cfg.text_column_name),
                                  ("audio", cfg.audio_column_name)) if column in columns]
    if len(found) == 1:
        return found[0]
    # text is never Parquet: a manifest, of images unless its columns say audio
    return "image" if Path(cfg.train_file).suffix.lower() == ".parquet" else None


def file_columns(path: Path) -> set[str] | None:
    """The columns of a CSV / TSV header or a Parquet schema, or the keys of the first JSON(L) record (empty when
    unreadable)."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            import pyarrow.parquet

            return set(pyarrow.parquet.read_schema(path).names)
        with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:
            if suffix in (".csv", ".tsv"):
                return set(next(csv.reader(f, delimiter="\t" if suffix == ".tsv" else ","), []))
            if suffix == ".json" and f.read(1024).lstrip().startswith(("[", "{")):
                f.seek(0)
                data = json.load(f)
                first = data[0] if isinstance(data, list) and data else data
                return set(first) if isinstance(first, dict) else set()
            f.seek(0)
            line = next((ln for ln in f if ln.strip()), "{}")
            first = json.loads(line)
            return set(first) if isinstance(first, dict) else set()
    except (OSError, ValueError):  # pyarrow's ArrowInvalid is a ValueError
        return set()


def model_modality(name: str) -> str | None:
    """image for a timm name (``hf-hub:``, ``local-dir:``, ``timm/`` included) or a timm folder, text for a
    transformers folder or any other name (a transformers id), None for ``auto`` or an unknown folder."""
    if not name or name == AUTO_MODEL:
        return None
    return modality_of(name)


def expand_folders(inputs, modality: str) -> list:
    """A folder among an image or audio model's inputs stands for its files of that kind (recursive, sorted,
    hidden left out); one path, PIL image, waveform array or audio dict is a list of one."""
    one = isinstance(inputs, (str, os.PathLike, dict)) or hasattr(inputs, "convert") or getattr(inputs, "ndim", 0) == 1
    items = [inputs] if one else list(inputs)
    if not any(isinstance(i, (str, os.PathLike)) and Path(i).is_dir() for i in items):
        return items
    suffixes = media_suffixes(modality)
    out = []
    for item in items:
        if isinstance(item, (str, os.PathLike)) and Path(item).is_dir():
            out += [str(p) for p in files_under(Path(item), suffixes)]
        else:
            out.append(item)
    return out
