"""Run options grouped by concern, with their defaults, help, allowed values and ``validate()``.

``TrainConfig`` combines the groups (model, data, augmentation, strategy, optimization, comparison,
run, hub), so every option is still ``cfg.<flag name>``; ``RankConfig`` (``hftransfer rank``)
inherits the data group, so ranking reads data with the recipes' names, defaults and checks. Each
field carries its help text, its fixed ``choices`` or its numeric ``Range``; ``validate()`` checks
them all, plus paths and combinations, before a run reads, writes or deletes anything. Parsing
(flags, YAML) is in ``config``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Optional

from accelerate.utils import LoggerType
from accelerate.utils import imports as accelerate_imports

from ..adaptation.methods import METHODS as ADAPTATION_METHODS
from ..adaptation.methods import SELECTION_CRITERIA
from ..errors import HFTransferError
from ..models.bundled import bundled_backbones
from ..models.norms import BN_STATS
from ..tuning.strategies import LORA_STRATEGIES, STRATEGIES

DATA_SOURCE_FIELDS = ("dataset_name", "train_dir", "train_file")
METRICS = ("accuracy", "f1", "loss", "eval_accuracy", "eval_f1", "eval_loss")
PATH_FIELDS = ("train_dir", "validation_dir", "test_dir", "train_file", "validation_file", "test_file",
               "target_train_dir", "target_validation_dir", "target_test_dir", "target_train_file",
               "target_validation_file", "target_test_file")
TARGET_SOURCE_FIELDS = ("target_dataset_name", "target_train_dir", "target_train_file")
# --report_to: accelerate's trackers (whatever this accelerate supports), plus transformers' "all" and "none"
TRACKERS = tuple(t.value for t in LoggerType if t is not LoggerType.ALL)
REPORT_TO = ("none", "all", *TRACKERS)
TRACKER_PACKAGES = {"comet_ml": "comet-ml"}  # pip names that differ from accelerate's tracker names
AUTO_MODEL = "auto"  # --model_name_or_path auto: rank the candidates, fine-tune the best (see auto.py)
RANDOM_PREFIX = "random:"  # a candidate at random init: a sanity floor that is ranked but never chosen
AUTO_METRICS = ("h_score", "logme")


@dataclass(frozen=True)
class Range:
    """Allowed numbers of an option: ``lo < v`` (or ``<=`` when ``lo_inclusive``), likewise for ``hi``."""

    lo: float | None = None
    hi: float | None = None
    lo_inclusive: bool = True
    hi_inclusive: bool = True

    def __contains__(self, v) -> bool:
        ok_lo = self.lo is None or (v >= self.lo if self.lo_inclusive else v > self.lo)
        ok_hi = self.hi is None or (v <= self.hi if self.hi_inclusive else v < self.hi)
        return ok_lo and ok_hi

    def __str__(self) -> str:
        parts = []
        if self.lo is not None:
            parts.append(f"{'>=' if self.lo_inclusive else '>'} {self.lo:g}")
        if self.hi is not None:
            parts.append(f"{'<=' if self.hi_inclusive else '<'} {self.hi:g}")
        return "a number " + " and ".join(parts)


POSITIVE = Range(0, lo_inclusive=False)
AT_LEAST_ONE = Range(1)
NON_NEGATIVE = Range(0)
FRACTION = Range(0, 1, hi_inclusive=False)  # [0, 1)
OPEN_FRACTION = Range(0, 1, lo_inclusive=False, hi_inclusive=False)  # (0, 1)


def _f(default, help: str, choices: tuple | None = None, valid: Range | None = None):
    metadata = {"help": help, "choices": choices, "valid": valid}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def tracker_installed(name: str) -> bool:
    """Whether accelerate can use tracker ``name`` here: its own check, which also refuses versions it
    does not support (e.g. aim >= 4), run now rather than when accelerate was imported."""
    check = getattr(accelerate_imports, f"is_{name}_available", None)
    if check is None:  # a tracker newer than the checks this accelerate has
        import importlib.util

        return importlib.util.find_spec(name) is not None
    return bool(check())


def _pooling():  # one definition for the recipes and for ranking
    return _f("mean", "text pooling: mean (mask-aware), cls or pooler", ("mean", "cls", "pooler"))


def check_paths(options: "Options", dir_flags: tuple[str, ...], file_flags: tuple[str, ...], dir_hint: str,
                file_hint: str) -> None:
    """One line naming the first ``--flag`` whose folder (``dir_flags``) or file (``file_flags``) is not there."""
    for flags, is_kind, other, hint in ((dir_flags, Path.is_dir, "is a file", dir_hint),
                                        (file_flags, Path.is_file, "is a folder", file_hint)):
        for flag in flags:
            path = getattr(options, flag)
            if path and not is_kind(Path(path)):
                what = other if Path(path).exists() else "does not exist"
                raise HFTransferError(f"--{flag} '{path}' {what}: {hint}")


class Options:
    """Shared behaviour of the option groups and of the configs built from them."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> "Options":
        """Check every value before the run touches anything; one ``HFTransferError`` line per problem."""
        for f in fields(self):
            value, choices, valid = getattr(self, f.name), f.metadata.get("choices"), f.metadata.get("valid")
            for v in (value if isinstance(value, list) else [value]):  # a list option: each of its values
                if choices and v is not None and v not in choices:
                    raise HFTransferError(f"unknown {f.name} '{v}' (--{f.name}): use one of {', '.join(map(str, choices))}")
                if valid is not None and v is not None and v not in valid:
                    raise HFTransferError(f"--{f.name} {v} is out of range: use {valid}")
        return self


@dataclass
class SessionOptions(Options):
    """How this process runs, whatever it runs."""

    config: Optional[str] = _f(None, "YAML file with any of these options; flags override it")
    seed: int = _f(42, "random seed")
    num_threads: Optional[int] = _f(None, "torch threads per process on CPU (default: cores / local processes)",
                                    valid=AT_LEAST_ONE)
    dataloader_num_workers: Optional[int] = _f(None, "loader worker processes (default: by core count)",
                                               valid=NON_NEGATIVE)


@dataclass
class DataOptions(Options):
    """Which examples, which columns, how they are split and preprocessed for the backbone."""

    dataset_name: Optional[str] = _f(None, "a datasets Hub name, a local dataset script/folder, or a folder written by "
                                     "save_to_disk (a single Dataset = the train split)")
    dataset_config_name: Optional[str] = _f(None, "the dataset's configuration name")
    train_dir: Optional[str] = _f(None, "image folder with one subfolder per class")
    validation_dir: Optional[str] = _f(None, "validation image folder (same classes)")
    train_file: Optional[str] = _f(None, "training data file: text as .csv, .tsv, .json or .jsonl; images as a manifest "
                                   "(.csv, .tsv, .jsonl or .parquet) of image paths (relative to it) or bytes and labels")
    validation_file: Optional[str] = _f(None, "validation data file (text or image manifest), same format")
    test_dir: Optional[str] = _f(None, "image test folder (same classes), scored once with the exported model")
    test_file: Optional[str] = _f(None, "test data file (text or image manifest), same format, scored once with the "
                                  "exported model")
    image_column_name: str = _f("image", "column holding the images")
    text_column_name: str = _f("text", "column holding the texts")
    label_column_name: str = _f("label", "column holding the labels (a list per row = multi-label)")
    label_names: Optional[list[str]] = _f(None, "names for the labels in sorted order, e.g. negative positive")
    validation_fraction: float = _f(0.15, "fraction of train held out (stratified) when no validation split is given",
                                    valid=OPEN_FRACTION)
    max_train_samples: Optional[int] = _f(None, "truncate training data (random subset, seeded)", valid=AT_LEAST_ONE)
    max_eval_samples: Optional[int] = _f(None, "truncate validation data (random subset, seeded)", valid=AT_LEAST_ONE)
    max_predict_samples: Optional[int] = _f(None, "truncate test data (random subset, seeded)", valid=AT_LEAST_ONE)
    max_seq_length: int = _f(128, "text: truncate longer sequences (batches are padded dynamically)", valid=Range(2))
    text_encoding: str = _f("auto", "text files' encoding: auto (UTF-8, else detected and said so) or a codec name "
                            "such as utf-8, cp1252, latin-1")
    decode_size: Optional[int] = _f(None, "image: decode once, shrinking the shorter side to this many pixels "
                                    "(default: the model's eval resize size, e.g. 256 for 224 inputs; 0 = keep size)",
                                    valid=NON_NEGATIVE)
    per_device_eval_batch_size: int = _f(64, "evaluation (and feature extraction) batch size per process",
                                         valid=AT_LEAST_ONE)
    feature_cache_dir: Optional[str] = _f(None, "also keep cached features on disk here, reused across runs")
    feature_cache_dtype: str = _f("float32", "float32 or float16 (half the memory)", ("float32", "float16"))

    def uses_own_data(self) -> bool:
        return any(getattr(self, name) for name in DATA_SOURCE_FIELDS)

    def validate(self) -> "DataOptions":
        super().validate()
        if self.train_dir and self.train_file:
            raise HFTransferError("--train_dir and --train_file both name training data: pass one of them")
        from ..data.sources import mixed_image_inputs  # imported here: parsing options should not import datasets

        mixed = mixed_image_inputs(self.train_dir, self.validation_dir, self.test_dir, self.train_file,
                                   self.validation_file, self.test_file)
        if mixed:
            raise HFTransferError(mixed)
        for flag, partner in (("validation_dir", "train_dir"), ("validation_file", "train_file"),
                              ("test_dir", "train_dir"), ("test_file", "train_file")):
            if getattr(self, flag) and not getattr(self, partner) and not self.dataset_name:
                raise HFTransferError(f"--{flag} is given without --{partner}: pass the training data too")
        check_paths(self, ("train_dir", "validation_dir", "test_dir"), ("train_file", "validation_file", "test_file"),
                    "pass a folder with one subfolder per class",
                    "pass an existing CSV/TSV/JSON/JSONL file (or, for images, a .parquet manifest)")
        if self.feature_cache_dir and Path(self.feature_cache_dir).is_file():
            raise HFTransferError(f"--feature_cache_dir '{self.feature_cache_dir}' is a file: pass a folder (created if missing)")
        if self.text_encoding != "auto":
            import codecs

            try:
                codecs.lookup(self.text_encoding)
            except LookupError:
                raise HFTransferError(f"--text_encoding '{self.text_encoding}' is not a known codec: use auto, utf-8, "
                                      "cp1252, latin-1, utf-16, ...") from None
        return self


@dataclass
class ModelOptions(Options):
    """The backbone, its weights, and the head put on it."""

    model_name_or_path: str = _f("", "timm model name / hf-hub:repo (image) or transformers model id / folder (text)")
    weights: str = _f("pretrained", "pretrained (bundled offline copy when installed, else the Hub), random, or a state-dict file")
    head: str = _f("linear", "classification head: linear or mlp", ("linear", "mlp"))
    head_hidden_sizes: list[int] = _f([512], "hidden sizes of the mlp head", valid=AT_LEAST_ONE)
    head_dropout: float = _f(0.0, "dropout before the head's layers", valid=FRACTION)
    pooling: str = _pooling()
    image_size: Optional[int] = _f(None, "image: train and serve at this many pixels square instead of the model's "
                                   "default input size (e.g. 64 for small digit images; recorded in the export)",
                                   valid=Range(8))
    label_smoothing: float = _f(0.0, "cross-entropy label smoothing (single-label)", valid=FRACTION)
    candidates: list[str] = _f([], "with --model_name_or_path auto: backbones to rank besides the bundled ones (timm "
                               "names / transformers ids / folders; random:NAME = a random-init floor, never chosen; "
                               "NAME=FILE = weights from a state-dict file)")
    bundled_candidates: bool = _f(True, "with --model_name_or_path auto: also rank the installed bundled checkpoints "
                                  "of the modality (tf_efficientnet_lite0/1/2; all-MiniLM-L6-v2)")
    auto_metric: str = _f("h_score", "with --model_name_or_path auto: the score that picks the backbone (h_score: "
                          "steadier across resampled splits in bench/RESULTS.md; logme)", AUTO_METRICS)

    def auto_candidates(self, modality: str) -> list[str]:
        """What ``--model_name_or_path auto`` ranks for ``modality``: the installed bundled checkpoints
        (unless ``--bundled_candidates false``), then ``--candidates``, each once, in that order."""
        bundled = bundled_backbones(modality) if self.bundled_candidates else []
        return list(dict.fromkeys([*bundled, *self.candidates]))


@dataclass
class AugmentationOptions(Options):
    """How training batches differ from evaluation ones."""

    augment: bool = _f(True, "image: random crop/flip/jitter while training (false = eval transform)")
    crop_scale: list[float] = _f([0.08, 1.0], "image: RandomResizedCrop scale range for training",
                                 valid=Range(0, 1, lo_inclusive=False))
    color_jitter: float = _f(0.4, "image: color jitter strength for training (0 = off)", valid=NON_NEGATIVE)
    group_by_length: bool = _f(True, "text: batch sentences of similar length together (less padding)")


@dataclass
class StrategyOptions(Options):
    """Which layer groups train when, and what frozen layers do."""

    strategy: str = _f("full", "full, linear_probe, partial, gradual, lp_ft, lora or lp_lora", STRATEGIES)
    unfreeze_top_k: int = _f(2, "partial: number of top backbone groups that train", valid=NON_NEGATIVE)
    unfreeze_every: int = _f(1, "gradual: epochs between unfreezing one more group", valid=AT_LEAST_ONE)
    lp_epochs: int = _f(1, "lp_ft: epochs of linear probing before fine-tuning everything", valid=NON_NEGATIVE)
    train_norm: bool = _f(False, "keep normalization layers trainable inside frozen groups")
    bn_stats: str = _f("frozen", "BatchNorm layers kept in eval mode: frozen (those in frozen groups), all, or none", BN_STATS)
    feature_cache: str = _f("auto", "auto: compute frozen-backbone features once for epochs where the whole backbone "
                            "is frozen (trained without augmentation); off: run the backbone every epoch", ("auto", "off"))


@dataclass
class LoraOptions(Options):
    """LoRA adapters (peft) of --strategy lora / lp_lora."""

    lora_r: int = _f(8, "LoRA rank r of every adapter", valid=AT_LEAST_ONE)
    lora_alpha: float = _f(16.0, "LoRA scaling alpha: the update is (alpha / r) * B @ A", valid=POSITIVE)
    lora_dropout: float = _f(0.0, "dropout on the adapters' inputs", valid=FRACTION)
    lora_target_modules: list[str] = _f([], "layers that get adapters, by name or dotted suffix (default per family: "
                                        "text encoders' query/key/value; timm Linear qkv/proj/fc1/fc2 and 1x1 "
                                        "convolutions)")


@dataclass
class OptimizationOptions(Options):
    """Learning rates, schedule, regularization, batch and precision."""

    learning_rate: float = _f(1e-4, "backbone learning rate (peak)", valid=POSITIVE)
    head_learning_rate: Optional[float] = _f(None, "head learning rate (default: 10x learning_rate)", valid=POSITIVE)
    layer_decay: float = _f(1.0, "layer-wise LR decay: group i of n gets lr * decay^(n-1-i); 1 = off",
                            valid=Range(0, 1, lo_inclusive=False))
    l2sp_alpha: float = _f(0.0, "L2-SP: pull of the backbone towards its pretrained weights, alpha/2*||w-w0||^2 (0 = off)",
                           valid=NON_NEGATIVE)
    l2sp_beta: float = _f(0.0, "L2-SP: plain L2 on the new head, beta/2*||w_head||^2 (used when L2-SP is on)",
                          valid=NON_NEGATIVE)
    weight_decay: float = _f(0.01, "AdamW weight decay (never on biases and norm weights)", valid=NON_NEGATIVE)
    lr_scheduler_type: str = _f("cosine", "cosine, linear or constant, after linear warmup", ("cosine", "linear", "constant"))
    warmup_ratio: float = _f(0.1, "fraction of each phase spent warming up", valid=FRACTION)
    num_train_epochs: int = _f(3, "training epochs", valid=AT_LEAST_ONE)
    per_device_train_batch_size: int = _f(32, "batch size per process", valid=AT_LEAST_ONE)
    gradient_accumulation_steps: int = _f(1, "batches per optimizer step", valid=AT_LEAST_ONE)
    max_grad_norm: float = _f(1.0, "gradient clipping (0 = off)", valid=NON_NEGATIVE)
    mixed_precision: Optional[str] = _f(None, "no, fp16 or bf16 (default: accelerate's setting, else bf16 on "
                                        "GPUs that support it and no on CPU)", ("no", "fp16", "bf16"))
    torch_compile: bool = _f(False, "compile the model with torch.compile (inductor); pays off on GPUs and long runs")
    gradient_checkpointing: bool = _f(False, "recompute the backbone's activations in the backward pass instead of "
                                      "storing them: less memory, slower steps (non-reentrant, so frozen lower layers "
                                      "and adapters still get their gradients)")

    @property
    def effective_head_lr(self) -> float:
        return self.head_learning_rate if self.head_learning_rate is not None else 10 * self.learning_rate

    @property
    def l2sp_active(self) -> bool:
        return self.l2sp_alpha > 0 or self.l2sp_beta > 0


@dataclass
class ComparisonOptions(Options):
    """Did transfer help? The same architecture from random init, same budget."""

    compare_scratch: bool = _f(False, "also train the same architecture from random init with the same budget and "
                               "report the transfer gain (all_results.json, model card)")
    scratch_learning_rate: float = _f(1e-3, "peak learning rate of the from-scratch runs (backbone and head)",
                                      valid=POSITIVE)
    scratch_seeds: int = _f(1, "from-scratch runs (seeds seed, seed+1, ...); 2+ measure seed noise for the verdict",
                            valid=AT_LEAST_ONE)


@dataclass
class AdaptationOptions(Options):
    """Unsupervised domain adaptation: labelled source data (the data options) and unlabelled target data."""

    domain_adaptation: str = _f("none", "none (source only), dann, cdan (CDAN+E) or mcc: trains on source labels and "
                                "unlabelled target examples together", ADAPTATION_METHODS)
    target_dataset_name: Optional[str] = _f(None, "target domain as a dataset (Hub name or save_to_disk folder): its "
                                            "train split is used unlabelled; validation / test splits only report")
    target_train_dir: Optional[str] = _f(None, "unlabelled target images: a flat folder, or class subfolders (ignored)")
    target_train_file: Optional[str] = _f(None, "unlabelled target data file (text, or an image manifest); a label "
                                          "column, if present, is ignored")
    target_validation_dir: Optional[str] = _f(None, "labelled target images, reported as the oracle score, never used "
                                              "to select")
    target_validation_file: Optional[str] = _f(None, "labelled target data file, reported as the oracle score, never "
                                               "used to select")
    target_test_dir: Optional[str] = _f(None, "labelled target test images, scored once with the exported model")
    target_test_file: Optional[str] = _f(None, "labelled target test file, scored once with the exported model")
    adaptation_weight: float = _f(1.0, "weight of the adaptation loss against the source classification loss",
                                  valid=POSITIVE)
    selection_criterion: str = _f("source_im", "picks the exported epoch without target labels: source_im (source "
                                  "validation accuracy + information maximization on target predictions), source or im",
                                  SELECTION_CRITERIA)
    compare_source_only: Optional[bool] = _f(None, "also train without adaptation (same budget, same selection) and "
                                             "flag negative transfer (default: yes with --domain_adaptation)")
    domain_gap_samples: int = _f(1000, "examples per domain for the domain gap of the frozen backbone (0 = skip)",
                                 valid=NON_NEGATIVE)
    target_selection_samples: int = _f(2000, "unlabelled target examples scored each epoch by the selection criterion",
                                       valid=AT_LEAST_ONE)
    mcc_temperature: float = _f(2.5, "mcc: softmax temperature of the class confusion", valid=POSITIVE)

    def uses_target_data(self) -> bool:
        return any(getattr(self, name) for name in TARGET_SOURCE_FIELDS)

    @property
    def runs_source_only_twin(self) -> bool:
        return self.domain_adaptation != "none" and self.compare_source_only is not False

    def validate(self) -> "AdaptationOptions":
        super().validate()
        if self.domain_adaptation != "none" and not self.uses_target_data():
            raise HFTransferError(f"--domain_adaptation {self.domain_adaptation} needs unlabelled target data: pass "
                                  "--target_train_file, --target_train_dir or --target_dataset_name")
        if sum(bool(getattr(self, name)) for name in TARGET_SOURCE_FIELDS) > 1:
            raise HFTransferError("--target_dataset_name, --target_train_dir and --target_train_file each name the "
                                  "target training data: pass one of them")
        for flag in ("target_validation_dir", "target_validation_file", "target_test_dir", "target_test_file"):
            if getattr(self, flag) and not self.uses_target_data():
                raise HFTransferError(f"--{flag} is given without target training data: pass --target_train_file / "
                                      "--target_train_dir too")
        check_paths(self, ("target_train_dir", "target_validation_dir", "target_test_dir"),
                    ("target_train_file", "target_validation_file", "target_test_file"), "pass a folder of images",
                    "pass an existing data file")
        if self.compare_source_only and self.domain_adaptation == "none":
            raise HFTransferError("--compare_source_only compares adaptation with source-only training: pass "
                                  "--domain_adaptation dann, cdan or mcc too")
        return self


@dataclass
class RunOptions(Options):
    """Where the run lives on disk and how it checkpoints, resumes and picks the exported epoch."""

    output_dir: str = _f("outputs/run", "where the model, checkpoints and results go")
    overwrite_output_dir: bool = _f(False, "replace what output_dir holds from an earlier run (deleted only once the new "
                                    "run has loaded its data and model; ignored with --resume_from_checkpoint)")
    resume_from_checkpoint: Optional[str] = _f(None, "a checkpoint folder, or 'latest' in output_dir")
    checkpointing_steps: str = _f("epoch", "'epoch', a number of optimizer steps, or 'no'")
    save_total_limit: int = _f(2, "complete checkpoints kept (older ones are deleted; 0 = keep all)", valid=NON_NEGATIVE)
    metric_for_best_model: str = _f("accuracy", "picks the exported epoch: accuracy or f1 (higher is better) or loss "
                                    "(lower is better); an eval_ prefix is accepted", METRICS)
    ddp_timeout: int = _f(1800, "seconds a process waits for the others before failing", valid=AT_LEAST_ONE)
    do_predict: Optional[bool] = _f(None, "score the exported model once on the test split (default: yes when the data "
                                    "has one; the validation split still picks the epoch)")

    @property
    def best_metric(self) -> tuple[str, bool]:
        """(metric name without ``eval_``, whether higher is better) of ``metric_for_best_model``."""
        name = self.metric_for_best_model.removeprefix("eval_")
        return name, name != "loss"

    @property
    def checkpoint_every(self) -> int:
        """Optimizer steps between step checkpoints (0: only at epoch ends, or never)."""
        return int(self.checkpointing_steps) if str(self.checkpointing_steps).isdigit() else 0


@dataclass
class TrackingOptions(Options):
    """Experiment tracking through accelerate's trackers: which ones, the run's name, how often it logs."""

    report_to: list[str] = _f(["none"], "trackers that get the run's logs, one or more (all = every installed one)",
                              REPORT_TO)
    run_name: Optional[str] = _f(None, "the run's name in the trackers (default: output_dir's name)")
    project: str = _f("hftransfer", "the trackers' project (W&B / trackio / SwanLab / Comet project, MLflow experiment)")
    logging_dir: Optional[str] = _f(None, "TensorBoard (and Aim) logs go here (default: output_dir/runs/<run_name>)")
    logging_steps: int = _f(10, "optimizer steps between logs of the train loss (mean over those steps) and the "
                            "learning rates", valid=AT_LEAST_ONE)

    def validate(self) -> "TrackingOptions":
        super().validate()
        if "none" in self.report_to and len(self.report_to) > 1:
            raise HFTransferError(f"--report_to {' '.join(self.report_to)}: 'none' cannot be combined with trackers: "
                                  "pass none alone, or only the trackers")
        for name in self.report_to:
            if name not in ("none", "all") and not tracker_installed(name):
                package = TRACKER_PACKAGES.get(name, name)
                raise HFTransferError(f"--report_to {name}: the {package} package is not installed (or not in a version "
                                      f"accelerate supports): pip install {package}, or leave {name} out of --report_to")
        if "all" in self.report_to and not any(tracker_installed(t) for t in TRACKERS):
            raise HFTransferError("--report_to all: no tracker package is installed: pip install tensorboard (or wandb, "
                                  "mlflow, ...), or pass --report_to none")
        if self.logging_dir and Path(self.logging_dir).is_file():
            raise HFTransferError(f"--logging_dir '{self.logging_dir}' is a file: pass a folder (created if missing)")
        return self


@dataclass
class HubOptions(Options):
    """Publishing; the token comes from HF_TOKEN or `hf auth login`, never from a flag or a file we write."""

    push_to_hub: bool = _f(False, "push the exported model and its card to the Hub at the end")
    hub_model_id: Optional[str] = _f(None, "repo id to push to (default: output_dir's name under your user)")
    hub_private: bool = _f(False, "create the Hub repo as private")
    hub_revision: Optional[str] = _f(None, "branch to push to (created if missing)")
    hub_create_pr: bool = _f(False, "open a pull request instead of committing to the branch")


# --help lists the groups in this order: the dataclass fields of the last base come first
@dataclass
class TrainConfig(HubOptions, TrackingOptions, RunOptions, AdaptationOptions, ComparisonOptions, OptimizationOptions,
                  LoraOptions,
                  StrategyOptions, AugmentationOptions, DataOptions, ModelOptions, SessionOptions):
    """Everything a recipe run takes."""

    def validate(self, modality: str | None = None) -> "TrainConfig":
        """Every value and combination, before the run reads, writes or deletes anything.

        ``modality`` (the recipe's, when known) completes the checks that depend on it: which bundled
        checkpoints ``--model_name_or_path auto`` adds to the candidates."""
        super().validate()
        steps = str(self.checkpointing_steps)
        if steps not in ("epoch", "no") and not (steps.isdigit() and int(steps) > 0):
            raise HFTransferError(f"--checkpointing_steps '{steps}' is not valid: use epoch, no or a number of steps")
        if not self.model_name_or_path:
            raise HFTransferError("no model: pass --model_name_or_path (a timm name or a transformers model id / folder)")
        self._validate_auto(modality)
        if self.weights not in ("pretrained", "random") and not Path(self.weights).is_file():
            raise HFTransferError(f"--weights '{self.weights}' is not pretrained, random or an existing state-dict file")
        if self.compare_scratch and self.weights == "random":
            raise HFTransferError("--compare_scratch compares pretrained weights with random init, but --weights is already random")
        if self.crop_scale and (len(self.crop_scale) != 2 or self.crop_scale[0] > self.crop_scale[1]):
            raise HFTransferError(f"--crop_scale {' '.join(map(str, self.crop_scale))}: pass two numbers, low high, "
                                  "with 0 < low <= high <= 1")
        out = Path(self.output_dir)
        if out.exists() and not out.is_dir():
            raise HFTransferError(f"--output_dir '{out}' is a file: pass a folder (created if missing)")
        if self.lora_target_modules and self.strategy not in LORA_STRATEGIES:
            raise HFTransferError(f"--lora_target_modules applies to --strategy lora / lp_lora, not {self.strategy}: "
                                  "pass --strategy lora, or drop --lora_target_modules")
        if self.uses_target_data() and self.compare_scratch:
            raise HFTransferError("--compare_scratch and target-domain data: the from-scratch comparison is of "
                                  "single-domain runs; drop --compare_scratch (--compare_source_only is the "
                                  "adaptation's comparison)")
        resume = self.resume_from_checkpoint
        if resume and resume != "latest" and not Path(resume).is_dir():
            raise HFTransferError(f"--resume_from_checkpoint '{resume}' is not a folder: pass a checkpoint folder "
                                  f"(e.g. {out}/checkpoints/step_N) or latest")
        return self

    def _validate_auto(self, modality: str | None) -> None:
        """``--model_name_or_path auto`` needs two candidates to choose between; its options mean nothing without it."""
        if self.model_name_or_path != AUTO_MODEL:
            if self.candidates:
                raise HFTransferError(f"--candidates is only read with --model_name_or_path auto: pass auto, or drop "
                                      f"--candidates to fine-tune {self.model_name_or_path}")
            return
        if self.weights != "pretrained":
            raise HFTransferError(f"--weights {self.weights} names one backbone's weights, but auto chooses among "
                                  "several: give a candidate its weights as NAME=FILE or random:NAME in --candidates")
        if modality is None and self.bundled_candidates:
            return  # the bundled candidates depend on the recipe's modality: checked again by trainer.train
        specs = self.auto_candidates(modality) if modality else list(dict.fromkeys(self.candidates))
        choosable = [s for s in specs if not s.startswith(RANDOM_PREFIX)]
        if len(choosable) < 2:
            named = f" ({', '.join(specs)})" if specs else ""
            raise HFTransferError(f"--model_name_or_path auto needs at least two candidates to choose from (random:NAME "
                                  f"floors do not count), got {len(choosable)}{named}: add backbones with --candidates "
                                  "NAME [NAME ...], or pass one --model_name_or_path")


# the data settings of a recipe's embedded default job, dropped when the user names data of their own
JOB_FIELDS = tuple(f.name for f in fields(DataOptions) if f.name not in (
    "validation_fraction", "max_seq_length", "decode_size", "per_device_eval_batch_size", "feature_cache_dir",
    "feature_cache_dtype")) + ("output_dir", "overwrite_output_dir")


@dataclass
class RankConfig(DataOptions, SessionOptions):
    """Options of ``hftransfer rank``: candidates, output_dir, pooling and the recipes' data options."""

    candidates: list[str] = _f([], "backbones to score: timm names / transformers ids / local folders (one modality); "
                               "random:NAME = random init (a sanity floor), NAME=FILE = weights from a state-dict file")
    output_dir: str = _f("outputs/rank", "where rank.csv, rank.json and rank.png go")
    pooling: str = _pooling()

    def validate(self) -> "RankConfig":
        super().validate()
        if not self.candidates:
            raise HFTransferError("no candidates: pass --candidates NAME [NAME ...] (timm names or text encoder ids)")
        if Path(self.output_dir).exists() and not Path(self.output_dir).is_dir():
            raise HFTransferError(f"--output_dir '{self.output_dir}' is a file: pass a folder (created if missing)")
        return self

    def train_config(self, model_name_or_path: str, weights: str) -> TrainConfig:
        """The recipe config that reads the same data the same way (so the feature cache keys match)."""
        # candidates: the ranked list, which TrainConfig reads only with auto (a ranked run names one model)
        shared = {f.name for f in fields(TrainConfig)} - {"output_dir", "config", "candidates"}
        values = {k: v for k, v in self.to_dict().items() if k in shared}
        return TrainConfig(model_name_or_path=model_name_or_path, weights=weights, **values)
