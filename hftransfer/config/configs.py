"""``TrainConfig`` (a recipe run) and ``RankConfig`` (``hftransfer rank``), built from the option groups.

``TrainConfig`` combines the groups (model, data, augmentation, strategy, optimization, comparison,
run, export, hub), so every option is still ``cfg.<flag name>``; ``RankConfig`` inherits the data group, so
ranking reads data with the recipes' names, defaults and checks. ``JOB_FIELDS`` are the settings of
a recipe's embedded default job that give way when the user names data of their own.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Optional

from ..errors import HFTransferError
from ..tuning.strategies import BACKBONE_PHASE_STRATEGIES, LORA_STRATEGIES
from .data_options import AdaptationOptions, DataOptions
from .export_options import ExportOptions
from .fewshot_options import FewShotOptions
from .fields import option
from .options import (
    AUTO_MODEL,
    RANDOM_PREFIX,
    AugmentationOptions,
    ComparisonOptions,
    HubOptions,
    LoraOptions,
    ModelOptions,
    OptimizationOptions,
    RunOptions,
    SessionOptions,
    StrategyOptions,
    TrackingOptions,
    audio_options,
    pooling_option,
)
from .practice_options import EmaOptions, EvaluationOptions, ImbalanceOptions, MixupOptions
from .streaming import check_streaming
from .tune_options import TuneOptions


# --help lists the groups in this order: the dataclass fields of the last base come first
@dataclass
class TrainConfig(HubOptions, ExportOptions, TrackingOptions, TuneOptions, RunOptions, EvaluationOptions,
                  AdaptationOptions, ComparisonOptions, EmaOptions, OptimizationOptions, LoraOptions, StrategyOptions,
                  ImbalanceOptions, MixupOptions, AugmentationOptions, FewShotOptions, DataOptions, ModelOptions,
                  SessionOptions):
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
        if self.strategy in BACKBONE_PHASE_STRATEGIES and self.uses_target_data():
            raise HFTransferError(f"--strategy {self.strategy} and target-domain data: its phase before the run knows "
                                  "no target domain, and the source-only twin would skip it; use another --strategy")
        if self.continued_pretraining and modality in ("image", "audio"):
            raise HFTransferError(f"--domain_adaptation {self.domain_adaptation}: dapt is masked-language-model "
                                  f"pretraining of a text encoder; for {modality} use mcc, self_training, dann or cdan")
        if self.sampler == "balanced" and self.adaptation_loss != "none":
            raise HFTransferError("--sampler balanced and --domain_adaptation: each source example is paired with a "
                                  "target example in order; use --class_weights balanced instead")
        resume = self.resume_from_checkpoint
        if resume and resume != "latest" and not Path(resume).is_dir():
            raise HFTransferError(f"--resume_from_checkpoint '{resume}' is not a folder: pass a checkpoint folder "
                                  f"(e.g. {out}/checkpoints/step_N) or latest")
        check_streaming(self, modality)
        return self

    @property
    def heavy_augmentation(self) -> bool:
        """Whether timm's augmentations are asked for (a linear probe then runs the backbone on augmented images)."""
        return bool(self.augment and (self.auto_augment or self.reprob > 0)) or self.mixing

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

    candidates: list[str] = option([], "backbones to score: timm names / transformers ids / local folders (one "
                                   "modality); random:NAME = random init (a sanity floor), NAME=FILE = weights from a "
                                   "state-dict file")
    output_dir: str = option("outputs/rank", "where rank.csv, rank.json and rank.png go")
    pooling: Optional[str] = pooling_option()
    sampling_rate: Optional[int] = audio_options()["sampling_rate"]
    max_duration: float = audio_options()["max_duration"]
    n_mels: Optional[int] = audio_options()["n_mels"]

    def validate(self) -> "RankConfig":
        super().validate()
        if not self.candidates:
            raise HFTransferError("no candidates: pass --candidates NAME [NAME ...] (timm names or text encoder ids)")
        if self.streaming:  # the scores are computed over the whole training split's features
            raise HFTransferError("--streaming does not apply to hftransfer rank, which scores the whole training "
                                  "split: rank on a file or a subset (--max_train_samples), then train with --streaming")
        if Path(self.output_dir).exists() and not Path(self.output_dir).is_dir():
            raise HFTransferError(f"--output_dir '{self.output_dir}' is a file: pass a folder (created if missing)")
        return self

    def train_config(self, model_name_or_path: str, weights: str) -> TrainConfig:
        """The recipe config that reads the same data the same way (so the feature cache keys match)."""
        # candidates: the ranked list, which TrainConfig reads only with auto (a ranked run names one model)
        shared = {f.name for f in fields(TrainConfig)} - {"output_dir", "config", "candidates"}
        values = {k: v for k, v in self.to_dict().items() if k in shared}
        return TrainConfig(model_name_or_path=model_name_or_path, weights=weights, **values)
