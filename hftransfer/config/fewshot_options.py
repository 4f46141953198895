"""Few-shot transfer: K training examples per class (``--shots``), repeated over seeded draws (``--shot_draws``),
and a head that starts from the class means of the frozen features (``--head_init prototypes``, a cosine head).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..errors import HFTransferError
from .fields import AT_LEAST_ONE, Options, option
from .options import AUTO_MODEL

HEAD_INITS = ("random", "prototypes")
DEFAULT_DRAWS = 5  # --shots without --shot_draws: the field reports few-shot results over several draws
FEW_SHOT_METRICS = ("eval_accuracy", "eval_f1", "test_accuracy", "test_f1")  # summarized over the draws


@dataclass
class FewShotOptions(Options):
    """Few-shot transfer: K examples per class, over seeded draws; a prototype-initialized cosine head."""

    shots: Optional[int] = option(None, "train on K examples per class: a seeded, stratified draw from the training "
                                  "split, made after the validation split is settled (so the two never overlap); the "
                                  "other training examples go unused; single-label data only (None = all examples)",
                                  valid=AT_LEAST_ONE)
    shot_draws: Optional[int] = option(None, "with --shots: run N draws (default 5), draw d with --seed + d for "
                                       "both the examples and the "
                             "training; draw 0 is the exported run in output_dir, the others train into "
                             "output_dir/draws/draw_<d>; few_shot_results.json and all_results.json['few_shot'] "
                             "get each draw's metrics with their mean, std and 95% t-interval", valid=AT_LEAST_ONE)
    head_init: str = option("random", "the head's starting point: random, or prototypes (before training, the frozen "
                            "backbone in eval mode embeds the training examples without augmentation and each class's "
                            "normalized mean feature becomes its row of a cosine head; --head linear becomes cosine, "
                            "--head mlp is refused); any --strategy", HEAD_INITS)

    @property
    def num_draws(self) -> int:
        """The draws a run makes: ``--shot_draws``, else 5 with ``--shots`` and 1 without."""
        if self.shot_draws is not None:
            return self.shot_draws
        return DEFAULT_DRAWS if self.shots else 1

    @property
    def head_type(self) -> str:
        """The head the run builds: ``--head``, except that ``--head_init prototypes`` turns linear into cosine."""
        return "cosine" if self.head_init == "prototypes" and self.head == "linear" else self.head

    def validate(self) -> "FewShotOptions":
        super().validate()
        if self.shot_draws is not None and self.shot_draws > 1 and self.shots is None:
            raise HFTransferError(f"--shot_draws {self.shot_draws} repeats a few-shot run over draws of K examples per "
                                  "class: pass --shots K, or drop --shot_draws")
        if self.head_init == "prototypes" and self.head == "mlp":
            raise HFTransferError("--head_init prototypes sets the class weights of a cosine head, and --head mlp has "
                                  "none to set: pass --head cosine (or linear, which becomes cosine) or --head_init "
                                  "random")
        if self.shots is not None and getattr(self, "model_name_or_path", None) == AUTO_MODEL:
            raise HFTransferError(f"--shots {self.shots} and --model_name_or_path auto: the ranking reads every "
                                  "training label, not K per class; name one backbone (hftransfer rank compares them)")
        if self.num_draws > 1 and getattr(self, "continued_pretraining", False):
            raise HFTransferError(f"--shot_draws {self.num_draws} with --domain_adaptation dapt would repeat the "
                                  "masked-LM phase for every draw: run the draws as separate runs (--seed S), or "
                                  "pass --shot_draws 1")
        return self
