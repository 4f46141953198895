"""Run options grouped by concern, with their defaults, help, allowed values and ``validate()``.

The groups of what trains and how (model, augmentation, strategy, LoRA, optimization, comparison)
and of the run itself (session, output folder, tracking, hub); the data groups are in
``data_options``, the field helpers in ``fields``, ``TrainConfig`` / ``RankConfig`` in ``configs``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from accelerate.utils import LoggerType
from accelerate.utils import imports as accelerate_imports

from ..errors import HFTransferError
from ..models.bundled import bundled_backbones
from ..models.norms import BN_STATS
from ..tuning.strategies import STRATEGIES
from .fields import AT_LEAST_ONE, FRACTION, NON_NEGATIVE, POSITIVE, Options, Range, option

METRICS = ("accuracy", "f1", "loss", "eval_accuracy", "eval_f1", "eval_loss")
# --report_to: accelerate's trackers (whatever this accelerate supports), plus transformers' "all" and "none"
TRACKERS = tuple(t.value for t in LoggerType if t is not LoggerType.ALL)
REPORT_TO = ("none", "all", *TRACKERS)
TRACKER_PACKAGES = {"comet_ml": "comet-ml"}  # pip names that differ from accelerate's tracker names
AUTO_MODEL = "auto"  # --model_name_or_path auto: rank the candidates, fine-tune the best (see auto.py)
RANDOM_PREFIX = "random:"  # a candidate at random init: a sanity floor that is ranked but never chosen
AUTO_METRICS = ("h_score", "logme")


def tracker_installed(name: str) -> bool:
    """Whether accelerate can use tracker ``name`` here: its own check, which also refuses versions it
    does not support (e.g. aim >= 4), run now rather than when accelerate was imported."""
    check = getattr(accelerate_imports, f"is_{name}_available", None)
    if check is None:  # a tracker newer than the checks this accelerate has
        import importlib.util

        return importlib.util.find_spec(name) is not None
    return bool(check())


def pooling_option():  # one definition for the recipes and for ranking
    return option(None, "pooling of a transformers model's states: mean (mask-aware), cls, pooler (text) or last "
                  "(text: the last token holding text)", ("mean", "cls", "pooler", "last"), modality=("text", "audio"),
                  default_text="per model: last for decoder LLMs, mean otherwise")


def audio_options():  # the log-mel front end's settings: one definition for the recipe and for ranking
    return {
        "sampling_rate": option(None, "audio: the rate clips are resampled to (Hz), part of the model",
                                valid=Range(1000), modality="audio",
                                default_text="16000 for a timm backbone; a transformers encoder's own"),
        "max_duration": option(1.0, "audio: seconds per clip; longer clips are cropped (centre; random while "
                               "training), shorter ones padded with silence; part of the model", valid=POSITIVE,
                               modality="audio"),
        "n_mels": option(None, "audio, timm backbones: mel bands of the log-mel spectrogram the image model sees",
                         valid=Range(8), modality="audio", default_text="128"),
    }


@dataclass
class SessionOptions(Options):
    """How this process runs, whatever it runs."""

    config: Optional[str] = option(None, "YAML file with any of these options; flags override it")
    seed: int = option(42, "random seed")
    num_threads: Optional[int] = option(None, "torch threads per process on CPU", valid=AT_LEAST_ONE,
                                        default_text="cores / local processes")
    dataloader_num_workers: Optional[int] = option(None, "loader worker processes (not with --streaming: the "
                                                   "training stream is read in the training process, whose position a "
                                                   "checkpoint records)", valid=NON_NEGATIVE,
                                                   default_text="by core count")


@dataclass
class ModelOptions(Options):
    """The backbone, its weights, and the head put on it."""

    model_name_or_path: str = option("", "timm model name / hf-hub:repo (image; audio: on log-mel spectrograms) or "
                                     "transformers model id / folder (text; audio: wav2vec2, HuBERT, AST, ...)")
    weights: str = option("pretrained", "pretrained (bundled offline copy when installed, else the Hub), random, or a "
                          "state-dict file")
    head: str = option("linear", "classification head: linear, mlp, or cosine (cosine similarity of the normalized "
                       "features and class weights times a learned scale, no bias; --head_init prototypes turns linear "
                       "into cosine)", ("linear", "mlp", "cosine"))
    head_hidden_sizes: list[int] = option([512], "hidden sizes of the mlp head", valid=AT_LEAST_ONE)
    head_dropout: float = option(0.0, "dropout before the head's layers", valid=FRACTION)
    pooling: Optional[str] = pooling_option()
    sampling_rate: Optional[int] = audio_options()["sampling_rate"]
    max_duration: float = audio_options()["max_duration"]
    n_mels: Optional[int] = audio_options()["n_mels"]
    image_size: Optional[int] = option(None, "image: train and serve at this many pixels square instead of the model's "
                                       "default input size (e.g. 64 for small digit images; recorded in the export)",
                                       valid=Range(8), modality="image")
    label_smoothing: float = option(0.0, "cross-entropy label smoothing (single-label)", valid=FRACTION)
    candidates: list[str] = option([], "with --model_name_or_path auto: backbones to rank besides the bundled ones (timm "
                                   "names / transformers ids / folders; random:NAME = a random-init floor, never chosen; "
                                   "NAME=FILE = weights from a state-dict file)")
    bundled_candidates: bool = option(True, "with --model_name_or_path auto: also rank the installed bundled checkpoints "
                                      "of the modality (tf_efficientnet_lite0/1/2; all-MiniLM-L6-v2)")
    auto_metric: str = option("h_score", "with --model_name_or_path auto: the score that picks the backbone (h_score: "
                              "steadier across resampled splits in bench/RESULTS.md; logme)", AUTO_METRICS)

    def auto_candidates(self, modality: str) -> list[str]:
        """What ``--model_name_or_path auto`` ranks for ``modality``: the installed bundled checkpoints
        (unless ``--bundled_candidates false``), then ``--candidates``, each once, in that order."""
        bundled = bundled_backbones(modality) if self.bundled_candidates else []
        return list(dict.fromkeys([*bundled, *self.candidates]))


@dataclass
class AugmentationOptions(Options):
    """How training batches differ from evaluation ones."""

    augment: bool = option(True, "random crop/flip/jitter of images, random crop/gain/shift and SpecAugment masks of "
                           "audio, while training (false = eval transform)", modality=("image", "audio"))
    crop_scale: list[float] = option([0.08, 1.0], "image: RandomResizedCrop scale range for training",
                                     valid=Range(0, 1, lo_inclusive=False), modality="image")
    color_jitter: float = option(0.4, "image: color jitter strength for training (0 = off)", valid=NON_NEGATIVE,
                                 modality="image")
    auto_augment: Optional[str] = option(None, "image: timm's auto-augment policy, e.g. rand-m9-mstd0.5-inc1 "
                                         "(RandAugment), trivialaugment, augmix-m5-w4-d2, v0 (AutoAugment)",
                                         modality="image")
    reprob: float = option(0.0, "image: random erasing probability per training image (timm's RandomErasing, "
                           "per-pixel noise)", valid=FRACTION, modality="image")
    gain_db: float = option(6.0, "audio: random gain while training, up to this many dB either way", valid=NON_NEGATIVE,
                            modality="audio")
    time_shift: float = option(0.1, "audio: random circular shift while training, up to this fraction of the clip",
                               valid=FRACTION, modality="audio")
    speed_perturb: float = option(0.0, "audio: random speed change while training, by a factor within 1 ± this "
                                  "(tempo and pitch together, like another speaker's voice; 0 = off)",
                                  valid=Range(0, 0.5), modality="audio")
    time_masks: int = option(2, "audio: SpecAugment time masks per training clip (each up to 10% of the frames)",
                             valid=NON_NEGATIVE, modality="audio")
    freq_masks: int = option(2, "audio: SpecAugment frequency masks per training clip (each up to 15% of the mel "
                             "bands)", valid=NON_NEGATIVE, modality="audio")
    group_by_length: bool = option(True, "text: batch sentences of similar length together (less padding; "
                                   "not with --streaming, which batches in stream order)",
                                   modality="text")

    def validate(self) -> "AugmentationOptions":
        super().validate()
        if self.auto_augment:
            from ..data.augmentations import check_auto_augment

            check_auto_augment(self.auto_augment)
        return self


@dataclass
class StrategyOptions(Options):
    """Which layer groups train when, and what frozen layers do."""

    strategy: str = option("full", "full, linear_probe, partial, gradual, lp_ft, lora, lp_lora, contrastive "
                           "(SetFit-style: label-pair tuning of the backbone, then the head) or episodic (prototypical "
                           "episodes tune the backbone, then the head)", STRATEGIES)
    unfreeze_top_k: int = option(2, "partial: number of top backbone groups that train", valid=NON_NEGATIVE)
    unfreeze_every: int = option(1, "gradual: epochs between unfreezing one more group", valid=AT_LEAST_ONE)
    lp_epochs: int = option(1, "lp_ft: epochs of linear probing before fine-tuning everything", valid=NON_NEGATIVE)
    contrastive_iterations: int = option(20, "contrastive: positive (and as many negative) label pairs per training "
                                         "example, SetFit's num_iterations", valid=AT_LEAST_ONE)
    contrastive_epochs: int = option(1, "contrastive: epochs over the label pairs", valid=AT_LEAST_ONE)
    contrastive_learning_rate: float = option(2e-5, "contrastive: the backbone's learning rate on the label pairs "
                                              "(SetFit's body_learning_rate)", valid=POSITIVE)
    episodes: int = option(100, "episodic: episodes (one optimizer step each) tuning the backbone", valid=AT_LEAST_ONE)
    episode_ways: int = option(0, "episodic: classes per episode (0 = every class, at most 20)", valid=NON_NEGATIVE)
    episode_support: int = option(0, "episodic: support examples per class, whose mean is the class prototype (0 = "
                                  "half of the smallest class, at most 5)", valid=NON_NEGATIVE)
    episode_queries: int = option(0, "episodic: query examples per class, classified against the prototypes (0 = the "
                                  "rest of the smallest class, at most 10)", valid=NON_NEGATIVE)
    episodic_learning_rate: float = option(1e-4, "episodic: the backbone's learning rate on the episodes",
                                           valid=POSITIVE)
    train_norm: bool = option(False, "keep normalization layers trainable inside frozen groups")
    bn_stats: str = option("frozen", "BatchNorm layers kept in eval mode: frozen (those in frozen groups), all, or "
                           "none", BN_STATS)
    feature_cache: str = option("auto", "auto: compute frozen-backbone features once for epochs where the whole "
                                "backbone is frozen (trained without augmentation; a linear probe with "
                                "--auto_augment, --reprob, --mixup or --cutmix runs the backbone instead); off: run "
                                "the backbone every epoch",
                                ("auto", "off"))


@dataclass
class LoraOptions(Options):
    """LoRA adapters (peft) of --strategy lora / lp_lora."""

    lora_r: int = option(8, "LoRA rank r of every adapter", valid=AT_LEAST_ONE)
    lora_alpha: float = option(16.0, "LoRA scaling alpha: the update is (alpha / r) * B @ A", valid=POSITIVE)
    lora_dropout: float = option(0.0, "dropout on the adapters' inputs", valid=FRACTION)
    lora_target_modules: list[str] = option([], "layers that get adapters, by name or dotted suffix",
                                            default_text="per family: text encoders' query/key/value; timm Linear "
                                            "qkv/proj/fc1/fc2 and 1x1 convolutions")


@dataclass
class OptimizationOptions(Options):
    """Learning rates, schedule, regularization, batch and precision."""

    learning_rate: float = option(1e-4, "backbone learning rate (peak)", valid=POSITIVE)
    head_learning_rate: Optional[float] = option(None, "head learning rate", valid=POSITIVE,
                                                 default_text="10x learning_rate")
    layer_decay: float = option(1.0, "layer-wise LR decay: group i of n gets lr * decay^(n-1-i); 1 = off",
                                valid=Range(0, 1, lo_inclusive=False))
    l2sp_alpha: float = option(0.0, "L2-SP: pull of the backbone towards its pretrained weights, alpha/2*||w-w0||^2 "
                               "(0 = off)", valid=NON_NEGATIVE)
    l2sp_beta: float = option(0.0, "L2-SP: plain L2 on the new head, beta/2*||w_head||^2 (used when L2-SP is on)",
                              valid=NON_NEGATIVE)
    weight_decay: float = option(0.01, "AdamW weight decay (never on biases and norm weights)", valid=NON_NEGATIVE)
    lr_scheduler_type: str = option("cosine", "cosine, linear or constant, after linear warmup",
                                    ("cosine", "linear", "constant"))
    warmup_ratio: float = option(0.1, "fraction of each phase spent warming up", valid=FRACTION)
    warmup_steps: int = option(0, "optimizer steps of warmup at the start of each phase; overrides --warmup_ratio "
                               "when > 0", valid=NON_NEGATIVE)
    num_train_epochs: int = option(3, "training epochs (with --streaming: the parts --max_steps is cut into, each "
                                   "ending in an evaluation and a checkpoint, as a stream has no length)",
                                   valid=AT_LEAST_ONE)
    max_steps: int = option(-1, "optimizer steps to train in all; overrides --num_train_epochs when > 0 (the last "
                            "epoch stops part way); needed by --streaming", valid=Range(-1))
    per_device_train_batch_size: int = option(32, "batch size per process", valid=AT_LEAST_ONE)
    gradient_accumulation_steps: int = option(1, "batches per optimizer step", valid=AT_LEAST_ONE)
    max_grad_norm: float = option(1.0, "gradient clipping (0 = off)", valid=NON_NEGATIVE)
    mixed_precision: Optional[str] = option(None, "autocast precision: no, fp16 or bf16", ("no", "fp16", "bf16"),
                                            default_text="accelerate's setting, else bf16 on GPUs that support it and "
                                            "no on CPU")
    torch_compile: bool = option(False, "compile the model with torch.compile (inductor); pays off on GPUs and long "
                                 "runs")
    gradient_checkpointing: bool = option(False, "recompute the backbone's activations in the backward pass instead of "
                                          "storing them: less memory, slower steps (non-reentrant, so frozen lower "
                                          "layers and adapters still get their gradients)")

    def validate(self) -> "OptimizationOptions":
        super().validate()
        if self.max_steps == 0:
            raise HFTransferError("--max_steps 0 trains nothing: pass a number of optimizer steps, or -1 to let "
                                  "--num_train_epochs decide")
        return self

    @property
    def effective_head_lr(self) -> float:
        return self.head_learning_rate if self.head_learning_rate is not None else 10 * self.learning_rate

    @property
    def l2sp_active(self) -> bool:
        return self.l2sp_alpha > 0 or self.l2sp_beta > 0


@dataclass
class ComparisonOptions(Options):
    """Did transfer help? The same architecture from random init, same budget."""

    compare_scratch: bool = option(False, "also train the same architecture from random init with the same budget and "
                                   "report the transfer gain (all_results.json, model card)")
    scratch_learning_rate: float = option(1e-3, "peak learning rate of the from-scratch runs (backbone and head)",
                                          valid=POSITIVE)
    scratch_seeds: int = option(1, "from-scratch runs (seeds seed, seed+1, ...); 2+ measure seed noise for the verdict",
                                valid=AT_LEAST_ONE)


@dataclass
class RunOptions(Options):
    """Where the run lives on disk and how it checkpoints, resumes and picks the exported epoch."""

    output_dir: str = option("outputs/run", "where the model, checkpoints and results go")
    overwrite_output_dir: bool = option(False, "replace what output_dir holds from an earlier run (deleted only once "
                                        "the new run has loaded its data and model; ignored with "
                                        "--resume_from_checkpoint)")
    resume_from_checkpoint: Optional[str] = option(None, "a checkpoint folder, or 'latest' in output_dir")
    checkpointing_steps: str = option("epoch", "'epoch', a number of optimizer steps, or 'no'")
    save_total_limit: int = option(2, "complete checkpoints kept (older ones are deleted; 0 = keep all)",
                                   valid=NON_NEGATIVE)
    metric_for_best_model: str = option("accuracy", "picks the exported evaluation (and drives early stopping and "
                                        "--tune): accuracy or f1 (macro-F1: every class counts equally, the one to use "
                                        "on imbalanced data; higher is better) or loss (lower is better); an eval_ "
                                        "prefix is accepted", METRICS)
    ddp_timeout: int = option(1800, "seconds a process waits for the others before failing", valid=AT_LEAST_ONE)
    do_predict: Optional[bool] = option(None, "score the exported model once on the test split (the validation split "
                                        "still picks the epoch)", default_text="yes when the data has one")

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

    report_to: list[str] = option(["none"], "trackers that get the run's logs, one or more (all = every installed one)",
                                  REPORT_TO)
    run_name: Optional[str] = option(None, "the run's name in the trackers", default_text="output_dir's name")
    project: str = option("hftransfer", "the trackers' project (W&B / trackio / SwanLab / Comet project, MLflow "
                          "experiment)")
    logging_dir: Optional[str] = option(None, "TensorBoard (and Aim) logs go here",
                                        default_text="output_dir/runs/<run_name>")
    logging_steps: int = option(10, "optimizer steps between logs of the train loss (mean over those steps) and the "
                                "learning rates", valid=AT_LEAST_ONE)

    def validate(self) -> "TrackingOptions":
        super().validate()
        if "none" in self.report_to and len(self.report_to) > 1:
            raise HFTransferError(f"--report_to {' '.join(self.report_to)}: 'none' cannot be combined with trackers: "
                                  "pass none alone, or only the trackers")
        for name in self.report_to:
            if name not in ("none", "all") and not tracker_installed(name):
                package = TRACKER_PACKAGES.get(name, name)
                raise HFTransferError(f"--report_to {name}: the {package} package is not installed (or not in a "
                                      f"version accelerate supports): pip install {package}, or leave {name} out of "
                                      "--report_to")
        if "all" in self.report_to and not any(tracker_installed(t) for t in TRACKERS):
            raise HFTransferError("--report_to all: no tracker package is installed: pip install tensorboard (or wandb, "
                                  "mlflow, ...), or pass --report_to none")
        if self.logging_dir and Path(self.logging_dir).is_file():
            raise HFTransferError(f"--logging_dir '{self.logging_dir}' is a file: pass a folder (created if missing)")
        return self


@dataclass
class HubOptions(Options):
    """Publishing; the token comes from HF_TOKEN or `hf auth login`, never from a flag or a file we write."""

    push_to_hub: bool = option(False, "push the exported model and its card to the Hub at the end")
    hub_model_id: Optional[str] = option(None, "repo id to push to", default_text="output_dir's name under your user")
    hub_private: bool = option(False, "create the Hub repo as private")
    hub_revision: Optional[str] = option(None, "branch to push to (created if missing)")
    hub_create_pr: bool = option(False, "open a pull request instead of committing to the branch")


