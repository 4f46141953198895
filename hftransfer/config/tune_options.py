"""``--tune``: the recipe searches its own hyper-parameters with Optuna, within a budget of trials and seconds."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..errors import HFTransferError
from .fields import AT_LEAST_ONE, Options, option

TUNE_STRATEGIES = ("linear_probe", "lp_ft", "full", "partial", "lora")


@dataclass
class TuneOptions(Options):
    """A hyper-parameter search (Optuna, seeded TPE, Hyperband pruning, SQLite study under output_dir)."""

    tune: bool = option(False, "search strategy, learning rates, epochs, layer decay, label smoothing, class weights and "
                        "augmentation with Optuna (validation split only), then train and export the best recipe; "
                        "a study interrupted by a crash continues with --resume_from_checkpoint latest")
    tune_trials: Optional[int] = option(None, "with --tune: most trials to run (counting those of an interrupted study)",
                                        valid=AT_LEAST_ONE, default_text="20 without --tune_timeout, else unlimited")
    tune_timeout: Optional[int] = option(None, "with --tune: seconds the search may take in all (across restarts); the "
                                         "final training of the best recipe comes on top", valid=AT_LEAST_ONE)
    tune_strategies: list[str] = option(list(TUNE_STRATEGIES), "with --tune: the strategies searched",
                                        TUNE_STRATEGIES)

    def validate(self) -> "TuneOptions":
        super().validate()
        if not self.tune and (self.tune_trials or self.tune_timeout):
            raise HFTransferError("--tune_trials / --tune_timeout are read only with --tune: pass --tune, or drop them")
        if not self.tune_strategies:
            raise HFTransferError("--tune_strategies: name at least one strategy")
        return self

    @property
    def trial_budget(self) -> int | None:
        """Most trials; None = until the timeout."""
        if self.tune_trials:
            return self.tune_trials
        return None if self.tune_timeout else 20
