"""Run configuration: one dataclass, filled from defaults < YAML ``--config`` < command-line flags.

Flag names follow transformers' example scripts where the concept is the same
(``--model_name_or_path``, ``--train_dir``, ``--per_device_train_batch_size``, ...). Relative data
paths inside a YAML file are resolved against that file's folder, so a config travels with its
data; ``output_dir`` stays relative to the working directory.
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from .errors import HFTransferError

DATA_SOURCE_FIELDS = ("dataset_name", "train_dir", "train_file")
JOB_FIELDS = ("dataset_name", "dataset_config_name", "train_dir", "validation_dir", "train_file", "validation_file",
               "image_column_name", "text_column_name", "label_column_name", "label_names", "max_train_samples",
               "max_eval_samples", "output_dir", "overwrite_output_dir")
PATH_FIELDS = ("train_dir", "validation_dir", "train_file", "validation_file")


def _f(default, help: str, **kw):
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    # model
    model_name_or_path: str = _f("", "timm model name / hf-hub:repo (image) or transformers model id / folder (text)")
    weights: str = _f("pretrained", "pretrained (bundled offline copy when installed, else the Hub), random, or a state-dict file")
    head: str = _f("linear", "classification head: linear or mlp")
    head_hidden_sizes: list = _f([512], "hidden sizes of the mlp head")
    head_dropout: float = _f(0.0, "dropout before the head's layers")
    pooling: str = _f("mean", "text pooling: mean (mask-aware), cls or pooler")
    # data
    dataset_name: typing.Optional[str] = _f(None, "a datasets Hub name or local dataset script/folder")
    dataset_config_name: typing.Optional[str] = _f(None, "the dataset's configuration name")
    train_dir: typing.Optional[str] = _f(None, "image folder with one subfolder per class")
    validation_dir: typing.Optional[str] = _f(None, "validation image folder (same classes)")
    train_file: typing.Optional[str] = _f(None, "text training data: .csv, .tsv, .json or .jsonl")
    validation_file: typing.Optional[str] = _f(None, "text validation data, same format")
    image_column_name: str = _f("image", "column holding the images")
    text_column_name: str = _f("text", "column holding the texts")
    label_column_name: str = _f("label", "column holding the labels (a list per row = multi-label)")
    label_names: typing.Optional[list] = _f(None, "names for the labels in sorted order, e.g. negative positive")
    validation_fraction: float = _f(0.15, "fraction of train held out when no validation split is given")
    max_train_samples: typing.Optional[int] = _f(None, "truncate training data (random subset, seeded)")
    max_eval_samples: typing.Optional[int] = _f(None, "truncate validation data (random subset, seeded)")
    max_seq_length: int = _f(128, "text: truncate longer sequences (batches are padded dynamically)")
    crop_scale: list = _f([0.08, 1.0], "image: RandomResizedCrop scale range for training")
    color_jitter: float = _f(0.4, "image: color jitter strength for training (0 = off)")
    decode_size: typing.Optional[int] = _f(None, "image: decode once, shrinking the shorter side to this many pixels "
                                          "(default: the model's eval resize size, e.g. 256 for 224 inputs; 0 = keep size)")
    augment: bool = _f(True, "image: random crop/flip/jitter while training (false = eval transform)")
    group_by_length: bool = _f(True, "text: batch sentences of similar length together (less padding)")
    label_smoothing: float = _f(0.0, "cross-entropy label smoothing (single-label)")
    # strategy
    strategy: str = _f("full", "full, linear_probe, partial, gradual or lp_ft")
    unfreeze_top_k: int = _f(2, "partial: number of top backbone groups that train")
    unfreeze_every: int = _f(1, "gradual: epochs between unfreezing one more group")
    lp_epochs: int = _f(1, "lp_ft: epochs of linear probing before fine-tuning everything")
    train_norm: bool = _f(False, "keep normalization layers trainable inside frozen groups")
    bn_stats: str = _f("frozen", "BatchNorm layers kept in eval mode: frozen (those in frozen groups), all, or none")
    feature_cache: str = _f("auto", "auto: compute frozen-backbone features once for epochs where the whole backbone "
                            "is frozen (trained without augmentation); off: run the backbone every epoch")
    feature_cache_dir: typing.Optional[str] = _f(None, "also keep cached features on disk here, reused across runs")
    feature_cache_dtype: str = _f("float32", "float32 or float16 (half the memory)")
    # optimization
    learning_rate: float = _f(1e-4, "backbone learning rate (peak)")
    head_learning_rate: typing.Optional[float] = _f(None, "head learning rate (default: 10x learning_rate)")
    layer_decay: float = _f(1.0, "layer-wise LR decay: group i of n gets lr * decay^(n-1-i); 1 = off")
    l2sp_alpha: float = _f(0.0, "L2-SP: pull of the backbone towards its pretrained weights, alpha/2*||w-w0||^2 (0 = off)")
    l2sp_beta: float = _f(0.0, "L2-SP: plain L2 on the new head, beta/2*||w_head||^2 (used when L2-SP is on)")
    weight_decay: float = _f(0.01, "AdamW weight decay (never on biases and norm weights)")
    lr_scheduler_type: str = _f("cosine", "cosine, linear or constant, after linear warmup")
    warmup_ratio: float = _f(0.1, "fraction of each phase spent warming up")
    num_train_epochs: int = _f(3, "training epochs")
    per_device_train_batch_size: int = _f(32, "batch size per process")
    per_device_eval_batch_size: int = _f(64, "evaluation batch size per process")
    gradient_accumulation_steps: int = _f(1, "batches per optimizer step")
    max_grad_norm: float = _f(1.0, "gradient clipping (0 = off)")
    mixed_precision: typing.Optional[str] = _f(None, "no, fp16 or bf16 (default: accelerate's setting, else bf16 on "
                                               "GPUs that support it and no on CPU)")
    torch_compile: bool = _f(False, "compile the model with torch.compile (inductor); pays off on GPUs and long runs")
    seed: int = _f(42, "random seed")
    # did transfer help?
    compare_scratch: bool = _f(False, "also train the same architecture from random init with the same budget and "
                               "report the transfer gain (all_results.json, model card)")
    scratch_learning_rate: float = _f(1e-3, "peak learning rate of the from-scratch runs (backbone and head)")
    scratch_seeds: int = _f(1, "from-scratch runs (seeds seed, seed+1, ...); 2+ measure seed noise for the verdict")
    # run
    output_dir: str = _f("outputs/run", "where the model, checkpoints and results go")
    overwrite_output_dir: bool = _f(False, "delete what output_dir holds from an earlier run and start afresh")
    resume_from_checkpoint: typing.Optional[str] = _f(None, "a checkpoint folder, or 'latest' in output_dir")
    checkpointing_steps: str = _f("epoch", "'epoch', a number of optimizer steps, or 'no'")
    save_total_limit: int = _f(2, "checkpoints kept (older ones are deleted)")
    metric_for_best_model: str = _f("accuracy", "accuracy or f1: picks the exported epoch")
    dataloader_num_workers: typing.Optional[int] = _f(None, "loader worker processes (default: by core count)")
    num_threads: typing.Optional[int] = _f(None, "torch threads per process on CPU (default: cores / local processes)")
    ddp_timeout: int = _f(1800, "seconds a process waits for the others before failing")
    # publishing (the token comes from HF_TOKEN or `hf auth login`, never from a flag or a file we write)
    push_to_hub: bool = _f(False, "push the exported model and its card to the Hub at the end")
    hub_model_id: typing.Optional[str] = _f(None, "repo id to push to (default: output_dir's name under your user)")
    hub_private: bool = _f(False, "create the Hub repo as private")
    hub_revision: typing.Optional[str] = _f(None, "branch to push to (created if missing)")
    hub_create_pr: bool = _f(False, "open a pull request instead of committing to the branch")
    config: typing.Optional[str] = _f(None, "YAML file with any of these options; flags override it")

    @property
    def effective_head_lr(self) -> float:
        return self.head_learning_rate if self.head_learning_rate is not None else 10 * self.learning_rate

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


RANK_DATA_FIELDS = ("dataset_name", "dataset_config_name", "train_dir", "validation_dir", "train_file", "validation_file",
                    "image_column_name", "text_column_name", "label_column_name", "label_names", "validation_fraction",
                    "max_train_samples", "max_seq_length", "pooling", "per_device_eval_batch_size", "feature_cache_dir",
                    "feature_cache_dtype", "decode_size", "dataloader_num_workers", "num_threads", "seed", "config")


def _rank_to_dict(self) -> dict:
    return dataclasses.asdict(self)


def _rank_train_config(self, model_name_or_path: str, weights: str) -> TrainConfig:
    """The recipe config that reads the same data the same way (so the feature cache keys match)."""
    shared = {name: getattr(self, name) for name in RANK_DATA_FIELDS if name != "config"}
    return TrainConfig(model_name_or_path=model_name_or_path, weights=weights, **shared)


def _rank_fields() -> list[tuple]:
    train_fields = {f.name: f for f in fields(TrainConfig)}
    own = [
        ("candidates", "list", _f([], "backbones to score: timm names / transformers ids / local folders (one modality); "
                                  "random:NAME = random init (a sanity floor), NAME=FILE = weights from a state-dict file")),
        ("output_dir", "str", _f("outputs/rank", "where rank.csv, rank.json and rank.png go")),
    ]
    shared = [(name, TrainConfig.__annotations__[name], _f(train_fields[name].default, train_fields[name].metadata["help"]))
              for name in RANK_DATA_FIELDS]
    return own + shared


# ``hftransfer rank``: the candidate backbones plus the recipes' data options, with the same names,
# defaults and parsing, so a rank run and a recipe run read the same data the same way.
RankConfig = dataclasses.make_dataclass(
    "RankConfig", _rank_fields(),
    namespace={"to_dict": _rank_to_dict, "train_config": _rank_train_config,
               "__doc__": "Options of ``hftransfer rank``: candidates, output_dir and the recipes' data options."})


def _arg_type(tp):
    """(python type, is_list) of a dataclass field annotation."""
    if isinstance(tp, str):
        tp = eval(tp, {"typing": typing, "list": list, "str": str, "int": int, "float": float, "bool": bool})
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
        origin = typing.get_origin(tp)
    if tp is list or origin is list:
        return str, True
    return tp, False


def _bool(value: str) -> bool:
    v = value.lower()
    if v in ("1", "true", "yes", "y", "on"):
        return True
    if v in ("0", "false", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got '{value}'")


def build_parser(description: str, config_cls=TrainConfig, prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description, argument_default=argparse.SUPPRESS)
    for f in fields(config_cls):
        tp, is_list = _arg_type(f.type)
        help_text = f"{f.metadata['help']} (default: {f.default if f.default is not dataclasses.MISSING else f.default_factory()})"
        if tp is bool:
            parser.add_argument(f"--{f.name}", type=_bool, nargs="?", const=True, help=help_text)
        elif is_list:
            parser.add_argument(f"--{f.name}", nargs="+", help=help_text)
        else:
            parser.add_argument(f"--{f.name}", type=tp, help=help_text)
    return parser


def _coerce(name: str, value, config_cls=TrainConfig):
    """Convert YAML / CLI values to the field's type, with a one-line error naming the option."""
    f = {f.name: f for f in fields(config_cls)}[name]
    tp, is_list = _arg_type(f.type)
    if value is None:
        return None
    try:
        if is_list:
            values = value if isinstance(value, list) else str(value).replace(",", " ").split()
            if name in ("head_hidden_sizes",):
                return [int(v) for v in values]
            if name in ("crop_scale",):
                return [float(v) for v in values]
            return [str(v) for v in values]
        if tp is bool:
            return value if isinstance(value, bool) else _bool(str(value))
        return tp(value)
    except (TypeError, ValueError, argparse.ArgumentTypeError):
        raise HFTransferError(f"option '{name}' got {value!r}, which is not a valid {tp.__name__}") from None


def load_config(argv: list[str] | None, defaults: dict | None = None, description: str = "", config_cls=TrainConfig,
                prog: str | None = None):
    """Merge dataclass defaults < recipe ``defaults`` < ``--config`` YAML < explicit flags."""
    parser = build_parser(description, config_cls, prog)
    cli = vars(parser.parse_args(argv))
    user = {**_read_yaml(cli.get("config")), **cli}
    defaults = dict(defaults or {})
    if any(k in user for k in DATA_SOURCE_FIELDS):  # the user's own data: none of the default job's data/output settings apply
        defaults = {k: v for k, v in defaults.items() if k not in JOB_FIELDS}
    values = {**defaults, **user}
    known = {f.name for f in fields(config_cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise HFTransferError(f"unknown option(s) {', '.join(unknown)} in the config: see --help for the valid names")
    return config_cls(**{k: _coerce(k, v, config_cls) for k, v in values.items()})


def _read_yaml(path: str | None) -> dict:
    if not path:
        return {}
    p = Path(path)
    if not p.is_file():
        raise HFTransferError(f"config file '{path}' not found: pass an existing YAML file to --config")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise HFTransferError(f"config file '{path}' is not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise HFTransferError(f"config file '{path}' must hold a mapping of option: value")
    for key in PATH_FIELDS:
        if isinstance(data.get(key), str) and data[key] != "latest" and not Path(data[key]).is_absolute():
            data[key] = str((p.parent / data[key]).resolve())
    return data


def save_config(config: TrainConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
