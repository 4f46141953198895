"""The practitioner's options: class imbalance, when to evaluate and stop, mixup / cutmix, weight EMA.

Names follow transformers (``--eval_strategy``, ``--eval_steps``, ``--early_stopping_patience``) and
timm's ``train.py`` (``--mixup``, ``--cutmix``, ``--mixup_prob``, ``--mixup_switch_prob``,
``--model_ema``, ``--model_ema_decay``), so a flag copied from either means the same here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..errors import HFTransferError
from .fields import AT_LEAST_ONE, NON_NEGATIVE, OPEN_FRACTION, Options, Range, option

CLASS_WEIGHTS = ("none", "balanced")
SAMPLERS = ("random", "balanced")
EVAL_STRATEGIES = ("epoch", "steps")


@dataclass
class ImbalanceOptions(Options):
    """What a run does about classes of very different sizes."""

    class_weights: list[str] = option(["none"], "loss weights per class: none, balanced (n / (classes x count), "
                                      "scikit-learn's rule; multi-label: pos_weight = negatives / positives per label), "
                                      "or one positive number per label in label order")
    sampler: str = option("random", "training order: random (each example once per epoch) or balanced (examples "
                          "drawn with replacement, each class equally often on average; single-label)", SAMPLERS)

    def validate(self) -> "ImbalanceOptions":
        super().validate()
        words = [w for w in self.class_weights if w in CLASS_WEIGHTS]
        if words and len(self.class_weights) > 1:
            raise HFTransferError(f"--class_weights {' '.join(self.class_weights)}: pass none, balanced, or one "
                                  "positive number per label, not a mix")
        if not words:
            for w in self.class_weights:
                try:
                    ok = float(w) > 0
                except ValueError:
                    ok = False
                if not ok:
                    raise HFTransferError(f"--class_weights: '{w}' is not none, balanced or a positive number")
        return self

    @property
    def class_weight_values(self) -> list[float] | None:
        """The explicit per-label weights, or None for none / balanced."""
        if self.class_weights and self.class_weights[0] not in CLASS_WEIGHTS:
            return [float(w) for w in self.class_weights]
        return None

    @property
    def class_weight_mode(self) -> str:
        """none, balanced or given."""
        return self.class_weights[0] if self.class_weights[0] in CLASS_WEIGHTS else "given"


@dataclass
class EvaluationOptions(Options):
    """When the validation split is scored, and when a run stops before its budget."""

    eval_strategy: str = option("epoch", "evaluate (and maybe keep the model) at each epoch end, or every "
                                "--eval_steps optimizer steps and at the end", EVAL_STRATEGIES)
    eval_steps: Optional[int] = option(None, "with --eval_strategy steps: optimizer steps between evaluations",
                                       valid=AT_LEAST_ONE)
    early_stopping_patience: Optional[int] = option(None, "stop after this many evaluations in a row without an "
                                                    "improvement of --metric_for_best_model (None = never)",
                                                    valid=AT_LEAST_ONE)
    early_stopping_threshold: float = option(0.0, "smallest change of --metric_for_best_model that counts as an "
                                             "improvement for early stopping", valid=NON_NEGATIVE)

    def validate(self) -> "EvaluationOptions":
        super().validate()
        if self.eval_strategy == "steps" and not self.eval_steps:
            raise HFTransferError("--eval_strategy steps needs --eval_steps N (optimizer steps between evaluations)")
        if self.eval_steps and self.eval_strategy != "steps":
            raise HFTransferError(f"--eval_steps {self.eval_steps} is read only with --eval_strategy steps: pass "
                                  "--eval_strategy steps, or drop --eval_steps")
        return self


@dataclass
class MixupOptions(Options):
    """timm's Mixup / CutMix on training batches (soft targets; label smoothing folded in as timm does)."""

    mixup: float = option(0.0, "image: mixup alpha (> 0 turns mixup on; timm's usual 0.8)", valid=NON_NEGATIVE,
                          modality="image")
    cutmix: float = option(0.0, "image: cutmix alpha (> 0 turns cutmix on; timm's usual 1.0)", valid=NON_NEGATIVE,
                           modality="image")
    mixup_prob: float = option(1.0, "image: probability of mixing a batch when mixup or cutmix is on",
                               valid=Range(0, 1), modality="image")
    mixup_switch_prob: float = option(0.5, "image: probability of cutmix instead of mixup when both are on",
                                      valid=Range(0, 1), modality="image")

    @property
    def mixing(self) -> bool:
        return (self.mixup > 0 or self.cutmix > 0) and self.mixup_prob > 0


@dataclass
class EmaOptions(Options):
    """An exponential moving average of the weights, evaluated beside them; the better one is exported."""

    model_ema: bool = option(False, "keep an EMA of the weights (timm's ModelEmaV3, with warmup), evaluate it beside the "
                             "raw weights and export whichever scores better")
    model_ema_decay: float = option(0.999, "EMA decay per optimizer step (warmed up from 0: short runs still average "
                                    "their recent steps)", valid=OPEN_FRACTION)
