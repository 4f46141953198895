"""The run's own records: the recipe (``RunDescription``), each evaluation (``EpochRecord``), the
from-scratch comparison, the backbone choice and ``all_results.json`` (``RunResults``)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from ..files import BACKBONE_CHOICE_NAME, RESULTS_NAME, read_json, write_json
from .adaptation import DomainAdaptation
from .base import Record
from .export import OnnxExport


@dataclass
class Phase(Record):
    """A stretch of epochs with one frozen set (``epochs`` = first and last, 0-based)."""

    epochs: list[int] = field(default_factory=lambda: [0, 0])
    trainable_backbone_groups: list[str] = field(default_factory=list)
    frozen_backbone_groups: list[str] = field(default_factory=list)
    trainable_fraction: float = 0.0
    head_learning_rate: float | None = None
    note: str | None = None


@dataclass
class RunDescription(Record):
    """The transfer recipe of a run, as the card and ``all_results.json["transfer"]`` record it."""

    NESTED = {"phases": Phase}

    modality: str = ""
    base_model: str = ""
    weights: str = "pretrained"
    strategy: str = ""
    strategy_description: str = ""
    phases: list[Phase] = field(default_factory=list)
    learning_rate: float | None = None
    head_learning_rate: float | None = None
    layer_decay: float = 1.0
    weight_decay: float | None = None
    lr_scheduler: str | None = None
    regularizer: dict | None = None  # {"name": "L2-SP", "alpha", "beta", "note"} when L2-SP is on
    lora: dict | None = None  # LoRA runs: r, alpha, dropout, target_modules, trainable_fraction, ... (lora.record)
    contrastive: dict | None = None  # --strategy contrastive: the label-pair phase (pairs, steps, losses, runtime)
    episodic: dict | None = None  # --strategy episodic: the episodes' phase (episodes, their shape, losses, runtime)
    label_smoothing: float = 0.0
    head_dropout: float = 0.0
    train_norm: bool = False
    norm_policy: str | None = None  # what happens to BatchNorm statistics, for models that have BatchNorm
    max_grad_norm: float | None = None
    mixed_precision: str | None = None
    gradient_checkpointing: bool = False
    seed: int | None = None
    metric_for_best_model: str = "accuracy"
    epochs: int | None = None
    max_steps: int | None = None  # --max_steps: the run's optimizer steps when they end it before its last epoch
    batch_size: int | None = None
    # the practitioner's tools (issue 21): None / empty when off
    class_weights: dict | None = None  # {"mode": balanced | given, "weights": {label: weight}, "pos_weight": bool}
    sampler: str = "random"
    augmentation: dict = field(default_factory=dict)  # image: crop_scale, color_jitter, auto_augment, reprob, mixup...
    model_ema: dict | None = None  # {"decay": d, "warmup": True}
    evaluation: dict = field(default_factory=dict)  # eval_strategy, eval_steps, early_stopping_patience / threshold
    dataset: str | None = None  # a datasets name, or the training folder / file
    dataset_name: str | None = None  # set when the data came from --dataset_name
    dataset_config: str | None = None
    validation_data: str | None = None  # the validation folder / file, when one was given
    train_samples: int | None = None
    eval_samples: int | None = None
    label_names: list[str] = field(default_factory=list)
    multi_label: bool = False
    parameters: int | None = None
    framework_versions: dict = field(default_factory=dict)


@dataclass
class EpochRecord(Record):
    epoch: int = 0
    train_loss: float | None = None
    eval_loss: float | None = None
    eval_accuracy: float | None = None
    eval_f1: float | None = None
    step: int | None = None  # the optimizer step evaluated (several per epoch with --eval_strategy steps)
    # target-domain runs: the label-free scores of the target predictions, the criterion that picks the
    # epoch, and the target validation accuracy when labels were given (reported, never used to select)
    target_im: float | None = None
    selection_score: float | None = None
    target_oracle_accuracy: float | None = None
    selection_scores: dict | None = None  # every label-free criterion's score (the run selects by one of them)
    # --model_ema: the averaged weights' scores at the same evaluation
    ema_eval_loss: float | None = None
    ema_eval_accuracy: float | None = None
    ema_eval_f1: float | None = None

    OPTIONAL = ("target_im", "selection_score", "target_oracle_accuracy", "selection_scores", "ema_eval_loss",
                "ema_eval_accuracy", "ema_eval_f1")

    def to_dict(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None or k not in self.OPTIONAL}


@dataclass
class ScratchRun(Record):
    seed: int | None = None
    accuracy: float | None = None
    best_epoch: int | None = None
    train_runtime: float | None = None
    history: list[EpochRecord] = field(default_factory=list)

    NESTED = {"history": EpochRecord}


@dataclass
class TransferGain(Record):
    """Pretrained init against same-budget random init on the same eval examples (``--compare_scratch``)."""

    NESTED = {"scratch_runs": ScratchRun}
    LABELS = {  # card rows, in this order
        "pretrained_accuracy": "accuracy, pretrained init", "scratch_accuracy": "accuracy, random init (mean)",
        "gain": "transfer gain", "noise_margin": "noise margin (2 standard errors)",
        "se_examples": "standard error over eval examples (paired)", "sd_scratch_seeds": "std over from-scratch seeds",
        "negative_transfer": "negative transfer", "scratch_seeds": "from-scratch seeds",
    }

    summary: str = ""
    pretrained_accuracy: float = 0.0
    scratch_accuracy: float = 0.0
    gain: float = 0.0
    noise_margin: float = 0.0
    se_examples: float = 0.0
    sd_scratch_seeds: float = 0.0
    negative_transfer: bool = False
    scratch_seeds: int = 0
    scratch_runs: list[ScratchRun] = field(default_factory=list)
    extra: dict = field(default_factory=dict)  # further scalars a caller recorded, shown on the card as they are

    @classmethod
    def from_dict(cls, data: dict | None):
        if data is None:
            return None
        names = {f.name for f in dataclasses.fields(cls)}
        extra = {k: v for k, v in data.items() if k not in names}
        return super().from_dict({**data, "extra": {**data.get("extra", {}), **extra}})

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        return {**out, **out.pop("extra")}


@dataclass
class BackboneChoice(Record):
    """How ``--model_name_or_path auto`` chose the backbone: every candidate's scores on the training split
    (``ranking``: rows as ``hftransfer rank`` writes them, best first by ``metric``) and the pick.

    ``name`` / ``weights`` are what the backbone factory got for the chosen candidate ``chosen``;
    ``agrees`` says whether the other score ranks the same candidate first among the choosable ones."""

    metric: str = "h_score"
    candidates: list[str] = field(default_factory=list)  # as ranked, in the order they were given
    ranking: list[dict] = field(default_factory=list)
    chosen: str = ""
    name: str = ""
    weights: str = "pretrained"
    agrees: bool = True
    reason: str = ""
    warning: str | None = None  # e.g. a random-init floor scoring as high as the chosen backbone
    train_samples: int | None = None

    def write(self, output_dir: str | Path) -> Path:
        return write_json(Path(output_dir) / BACKBONE_CHOICE_NAME, self.to_dict())

    @classmethod
    def read(cls, output_dir: str | Path) -> "BackboneChoice | None":
        return cls.from_dict(read_json(Path(output_dir) / BACKBONE_CHOICE_NAME))


@dataclass
class RunResults(Record):
    """``all_results.json``: the exported epoch's eval metrics, the history and the recipe.

    ``metrics`` holds every ``eval_*`` scalar (accuracy, f1, loss, samples) and is written flat at
    the top of the file, as transformers' example scripts do.
    """

    NESTED = {"history": EpochRecord, "transfer": RunDescription, "transfer_gain": TransferGain,
              "backbone_choice": BackboneChoice, "domain_adaptation": DomainAdaptation, "onnx": OnnxExport}

    metrics: dict = field(default_factory=dict)
    eval_per_class: dict = field(default_factory=dict)  # label name -> precision, recall, f1, support
    test_metrics: dict = field(default_factory=dict)  # test_* scalars of the exported model (its epoch chosen on eval)
    test_per_class: dict = field(default_factory=dict)
    best_epoch: int | None = None
    epochs: int | None = None
    train_samples: int | None = None
    train_runtime: float | None = None
    total_runtime: float | None = None
    train_samples_per_second: float | None = None
    train_loss: float | None = None
    world_size: int = 1
    sharding: str | None = None  # FSDP / DeepSpeed ZeRO-N when each process held a shard of the model; None: whole
    history: list[EpochRecord] = field(default_factory=list)
    transfer: RunDescription | None = None
    transfer_gain: TransferGain | None = None
    backbone_choice: BackboneChoice | None = None  # --model_name_or_path auto: the ranking and the pick
    domain_adaptation: DomainAdaptation | None = None  # target-domain runs
    best_step: int | None = None  # the optimizer step of the exported evaluation
    exported_weights: str = "raw"  # raw, or ema when --model_ema's average scored better
    stop_reason: str | None = None  # early_stopping / max_steps / stopped_by_caller; None: the run used its budget
    tune: dict | None = None  # --tune: the study (trials, best trial, importances), as tune_results.json holds it
    onnx: OnnxExport | None = None  # --export_onnx / hftransfer export: the ONNX graph and its checks
    few_shot: dict | None = None  # --shots: the draws' metrics, mean, std and 95% interval (few_shot_results.json)

    @classmethod
    def from_dict(cls, data: dict | None):
        if data is None:
            return None
        metrics = {k: v for k, v in data.items() if k.startswith("eval_") and k != "eval_per_class"}
        test = {k: v for k, v in data.items() if k.startswith("test_") and k != "test_per_class"}
        return super().from_dict({**data, "metrics": metrics, "test_metrics": test})

    def to_dict(self) -> dict:
        out = {**self.metrics, **self.test_metrics, **dataclasses.asdict(self)}
        del out["metrics"], out["test_metrics"]
        if not self.test_per_class:
            del out["test_per_class"]
        if self.history:  # each epoch as EpochRecord writes it (target scores only in target-domain runs)
            out["history"] = [h.to_dict() for h in self.history]
        for optional in ("transfer_gain", "backbone_choice", "domain_adaptation", "onnx", "few_shot"):
            if out[optional] is None:
                del out[optional]
        return out

    @classmethod
    def read(cls, output_dir: str | Path) -> "RunResults | None":
        return cls.from_dict(read_json(Path(output_dir) / RESULTS_NAME))

    def write(self, output_dir: str | Path) -> Path:
        return write_json(Path(output_dir) / RESULTS_NAME, self.to_dict())
