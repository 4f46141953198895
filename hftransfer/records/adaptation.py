"""A target-domain run's records: the source-only twin, the continued-pretraining phase, and the adaptation."""
from __future__ import annotations

from dataclasses import dataclass, field

from .base import Record


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
