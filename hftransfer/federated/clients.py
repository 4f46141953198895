"""Each client's run: the federation's config with its own data (``--client_data``) or its share of one dataset
(``--partition``), its own folder under ``output_dir/clients/``, and the splits it trains and evaluates on."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from ..config.federated_options import FederatedConfig
from ..data import DataBundle
from ..data.partition import PartitionScheme, check_client_sizes, partition_indices
from ..errors import HFTransferError
from ..files import files_under
from ..training.inputs import data_source

CLIENTS_DIR = "clients"
SOURCE_FIELDS = tuple(f.name for f in dataclasses.fields(type(data_source(FederatedConfig()))))
SPLIT_NAMES = {"train": ("train",), "validation": ("validation", "valid", "val", "dev"), "test": ("test",)}
DATA_FILE_SUFFIXES = {".csv", ".tsv", ".json", ".jsonl", ".parquet", ".txt"}


def client_dir(output_dir: str | Path, client_id: int) -> Path:
    return Path(output_dir) / CLIENTS_DIR / f"client_{client_id}"


def folder_source(folder: Path, modality: str) -> dict:
    """A client's folder as data flags: its train / validation (val, dev) / test subfolders (images, audio) or
    files (text: train.tsv, dev.tsv, ...), else the folder itself as the training data."""
    kind = "file" if modality == "text" else "dir"
    found = {}
    for split, names in SPLIT_NAMES.items():
        for name in names:
            if kind == "dir" and (folder / name).is_dir():
                found[f"{split}_dir"] = str(folder / name)
                break
            files = [p for p in files_under(folder, DATA_FILE_SUFFIXES) if p.parent == folder and p.stem == name]
            if kind == "file" and files:
                found[f"{split}_file"] = str(files[0])
                break
    if "train_dir" in found or "train_file" in found:
        return found
    if kind == "file":
        raise HFTransferError(f"--client_data folder '{folder}' holds no train.* file (csv, tsv, json, jsonl, parquet "
                              "or txt): name the client's training file, or put train / dev / test files in the folder")
    return {"train_dir": str(folder)}


def source_flags(entry, modality: str) -> dict:
    """One ``--client_data`` entry as data flags: a mapping of them (YAML), a folder, a file, or a dataset name."""
    if isinstance(entry, dict):
        unknown = sorted(set(entry) - set(SOURCE_FIELDS))
        if unknown:
            raise HFTransferError(f"--client_data entry {entry} has unknown key(s) {', '.join(unknown)}: use "
                                  f"{', '.join(SOURCE_FIELDS)}")
        return dict(entry)
    path = Path(str(entry))
    if path.is_dir() and not (path / "dataset_dict.json").is_file() and not (path / "dataset_info.json").is_file():
        return folder_source(path, modality)
    if path.is_file():
        return {"train_file": str(path)}
    return {"dataset_name": str(entry)}  # a Hub name or a save_to_disk folder: the datasets loader tells which


def client_config(cfg: FederatedConfig, client_id: int) -> FederatedConfig:
    """Client ``client_id``'s run: the federation's options, its data, and its own output folder (never resumed or
    tracked: the server holds the run's state)."""
    values = {"output_dir": str(client_dir(cfg.output_dir, client_id)), "overwrite_output_dir": True,
              "resume_from_checkpoint": None, "report_to": ["none"], "checkpointing_steps": "no",
              "client_id": client_id}
    if cfg.client_data:
        values.update({name: None for name in SOURCE_FIELDS})
        values.update(source_flags(cfg.client_data[client_id], cfg.modality))
    return dataclasses.replace(cfg, **values)


def select(dataset, indices: np.ndarray):
    return dataset.select(indices.tolist()) if dataset is not None else None


def partition_bundle(bundle: DataBundle, cfg: FederatedConfig, client_id: int) -> DataBundle:
    """With ``--partition``: the client's share of every split (one set of label shares, drawn with --seed)."""
    scheme, clients = PartitionScheme.parse(cfg.partition), cfg.client_count
    num_classes = len(bundle.id2label)
    shares = {}
    for split_seed, split in enumerate(("train", "eval", "test")):
        dataset = getattr(bundle, split)
        if dataset is None:
            continue
        parts = partition_indices(np.asarray(dataset["labels"]), clients, scheme, seed=cfg.seed,
                                  num_classes=num_classes, split_seed=split_seed)
        check_client_sizes([len(p) for p in parts], "training" if split == "train" else split)
        shares[split] = select(dataset, parts[client_id])
    return dataclasses.replace(bundle, **shares)


def onto_label_names(bundle: DataBundle, names: list[str]) -> DataBundle:
    """The client's splits with its label ids re-numbered onto the federation's classes ``names`` (a superset of
    the client's own: under label skew a client may never see some classes)."""
    own = list(bundle.id2label.values())
    if own == list(names):
        return bundle
    missing = sorted(set(own) - set(names))
    if bundle.multi_label or missing:
        raise HFTransferError(f"this client's labels {own} are not all among the federation's classes {list(names)}"
                              + (": multi-label clients must hold the same labels" if bundle.multi_label else
                                 f" ({', '.join(missing)} missing): the server takes the classes of the clients "
                                 "connected when it starts, so start it with --min_clients equal to the number of "
                                 "clients"))
    new_id = [list(names).index(name) for name in own]

    def renumber(dataset):
        if dataset is None:
            return None
        ids = [new_id[i] for i in dataset["labels"]]
        return dataset.remove_columns("labels").add_column("labels", ids)

    return dataclasses.replace(bundle, id2label=dict(enumerate(names)), train=renumber(bundle.train),
                               eval=renumber(bundle.eval), test=renumber(bundle.test))


def label_counts(bundle: DataBundle) -> dict[str, int]:
    """How many training examples of each label the client holds (its label skew, recorded per client)."""
    labels = np.asarray(bundle.train["labels"])
    if labels.ndim != 1:
        return {}
    return {bundle.id2label[i]: int(n) for i, n in enumerate(np.bincount(labels, minlength=len(bundle.id2label)))}
