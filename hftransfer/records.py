"""The typed run records: what a run writes and the card, the report and later runs read back.

``RunDescription`` (the transfer recipe), ``RunResults`` (``all_results.json``) and the records
nested in them round-trip through JSON (``Record``): unknown keys are ignored and missing ones take
their defaults, so older run folders stay readable. Attributes instead of ``.get()`` chains.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from .files import BACKBONE_CHOICE_NAME, EXPORT_RESULTS_NAME, RESULTS_NAME, read_json, write_json


class Record:
    """A dataclass that round-trips through JSON: unknown keys are ignored, missing ones take defaults."""

    NESTED: dict[str, type] = {}  # field -> Record class (a list field holds a list of them)

    @classmethod
    def from_dict(cls, data: dict | None):
        if data is None:
            return None
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        for name, kind in cls.NESTED.items():
            if isinstance(values.get(name), list):
                values[name] = [kind.from_dict(v) for v in values[name]]
            elif isinstance(values.get(name), dict):
                values[name] = kind.from_dict(values[name])
        return cls(**values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


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
class SourceOnlyRun(Record):
    """The same run without adaptation (``--compare_source_only``), selected by the same target-only rule."""

    best_epoch: int | None = None
    source_accuracy: float | None = None
    selection_score: float | None = None
    target_im: float | None = None
    target_oracle_accuracy: float | None = None
    target_test_accuracy: float | None = None
    train_runtime: float | None = None
    selection_scores: dict = field(default_factory=dict)  # every criterion's score of its selected epoch


@dataclass
class DaptPhase(Record):
    """``--domain_adaptation dapt``: masked-language-model pretraining of the encoder on unlabelled text before
    the fine-tune. The masked-LM loss on held-out target text, before and after, says whether it learned the
    target's language."""

    target_texts: int = 0
    source_texts: int = 0
    held_out_texts: int = 0
    epochs: float = 0.0
    steps: int = 0
    learning_rate: float = 0.0
    mlm_probability: float = 0.15
    max_seq_length: int | None = None
    held_out_loss_before: float | None = None
    held_out_loss_after: float | None = None
    train_loss_last: float | None = None
    runtime: float | None = None
    reused: bool = False  # an earlier run's identical phase was reused (resume, or a re-run with --overwrite)


@dataclass
class DomainAdaptation(Record):
    """A target-domain run: the method, the domain gap, how the epoch was chosen, and whether adapting helped.

    ``target_*`` scores are of the exported (selected) epoch. ``target_oracle_*`` use target labels
    and are reported only; ``negative_transfer`` compares with ``source_only`` on them when they exist,
    else ``warning`` says what the label-free criterion suggests."""

    NESTED = {"source_only": SourceOnlyRun, "dapt": DaptPhase}

    method: str = "none"
    weight: float = 1.0
    selection_criterion: str = "source_im"
    selection_rule: str = ""
    target_train_samples: int = 0
    domain_gap: dict = field(default_factory=dict)  # proxy_a_distance, mmd, samples_per_domain
    selected_epoch: int | None = None
    source_accuracy: float | None = None
    selection_score: float | None = None
    target_im: float | None = None
    target_entropy: float | None = None
    target_diversity: float | None = None
    target_oracle_accuracy: float | None = None
    target_oracle_f1: float | None = None
    target_oracle_best_epoch: int | None = None  # the epoch target labels would have picked: how far selection was
    target_oracle_best_accuracy: float | None = None
    target_test_accuracy: float | None = None
    target_test_f1: float | None = None
    target_test_samples: int | None = None
    selection_scores: dict = field(default_factory=dict)  # every criterion's score of the selected epoch
    dapt: DaptPhase | None = None
    self_training_threshold: float | None = None
    adversary_warmup_steps: int | None = None
    source_only: SourceOnlyRun | None = None
    negative_transfer: bool | None = None
    verdict: str = ""
    warning: str | None = None
    exported: str = "adapted"  # with --compare_source_only: "adapted" or "source_only", the label-free choice
    exported_reason: str = ""


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
class Int8Check(Record):
    """``--quantize int8``: how it was quantized and what it costs on the validation split (accuracy in [0, 1])."""

    method: str = "dynamic"  # static (calibrated activations, CNNs) or dynamic (int8 weights, transformer encoders)
    settings: dict = field(default_factory=dict)
    eval_samples: int = 0
    fp32_accuracy: float | None = None  # the fp32 ONNX graph's, on the same examples
    int8_accuracy: float | None = None
    accuracy_drop_points: float | None = None  # (fp32 - int8) x 100
    max_accuracy_drop_points: float = 1.0
    agreement: float | None = None  # share of examples whose predicted label is the same as fp32's
    file: str | None = None  # onnx/model_int8.onnx; None when refused
    refused: str | None = None  # why the int8 graph was not kept (its accuracy fell too far)


@dataclass
class OnnxExport(Record):
    """``hftransfer export`` / ``--export_onnx``: the ONNX graph, the check against torch and the int8 version."""

    NESTED = {"int8": Int8Check}

    folder: str = "onnx"  # relative to the run folder when inside it
    file: str = "model.onnx"
    exporter: str = ""
    opset: int = 18
    input_names: list[str] = field(default_factory=list)
    checked_examples: int = 0  # examples whose onnxruntime logits were compared with torch's
    max_abs_logit_diff: float | None = None
    tolerance: float = 1e-4
    int8: Int8Check | None = None
    seconds: float | None = None

    def write(self, folder: str | Path) -> Path:
        return write_json(Path(folder) / EXPORT_RESULTS_NAME, self.to_dict())

    @classmethod
    def read(cls, folder: str | Path) -> "OnnxExport | None":
        path = Path(folder) / EXPORT_RESULTS_NAME
        return cls.from_dict(read_json(path)) if path.is_file() else None


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
        for optional in ("transfer_gain", "backbone_choice", "domain_adaptation", "onnx"):
            if out[optional] is None:
                del out[optional]
        return out

    @classmethod
    def read(cls, output_dir: str | Path) -> "RunResults | None":
        return cls.from_dict(read_json(Path(output_dir) / RESULTS_NAME))

    def write(self, output_dir: str | Path) -> Path:
        return write_json(Path(output_dir) / RESULTS_NAME, self.to_dict())
