"""Experiment tracking through accelerate's trackers (``--report_to``): what a tracked run logs, and where.

accelerate does the tracking: ``Accelerator(log_with=...)``, ``init_trackers``, ``log`` (main process
only) and ``end_training``, all called visibly by ``runtime``, ``training`` and ``trainer``. This module
holds what they are given:

* ``log_with`` / ``logging_dir`` / ``init_kwargs``: the trackers of ``--report_to`` (``all`` = every
  installed one), TensorBoard writing into exactly ``--logging_dir`` (default
  ``output_dir/runs/<run_name>``, transformers' layout) while the others get ``--project`` as their
  project and ``--run_name`` as the run's name;
* ``hparams``: the run config and the transfer recipe (``RunDescription``) flattened to the scalars
  and strings trackers accept;
* ``RunLog``: the tag names and values of each log, and the loss window between two step logs.

Tags: every ``--logging_steps`` optimizer steps ``train/loss`` (the mean micro-batch loss since the
previous log, over every process), ``train/learning_rate/<layer group>`` and ``train/epoch``
(fractional); at each phase change (the first epoch, LP-FT's switch to fine-tuning, each gradual
unfreezing) ``train/phase``, ``train/trainable_groups`` and ``train/trainable_params`` at the first
optimizer step trained that way; at each epoch end ``train/epoch_loss``, ``eval/loss``,
``eval/accuracy``, ``eval/f1``; after training ``test/*`` when the test split is scored. Steps are the
global optimizer step of ``RunState``, restored by a resume, so a resumed run continues its curves;
TensorBoard then drops what the interrupted run logged after its checkpoint (``purge_step``), and
the first ``train/loss`` after a mid-window resume averages the steps since the resume only
(transformers does the same).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import TrainConfig
from ..config.options import TRACKERS, tracker_installed
from ..files import LOGGING_DIR
from ..models.devices import numel
from ..tuning.strategies import Strategy

# the init_trackers keyword that names the run, for trackers that take one (accelerate passes the
# project as their first argument; TensorBoard is named by its folder)
RUN_NAME_KWARGS = {"wandb": "name", "trackio": "name", "mlflow": "run_name", "swanlab": "experiment_name"}


# ---- which trackers, where, under which names ----------------------------------------------------------------
def tracker_names(cfg: TrainConfig) -> list[str]:
    """The trackers of ``--report_to``: ``all`` = every one installed here, ``none`` = [] (no tracking)."""
    if "all" in cfg.report_to:
        return [name for name in TRACKERS if tracker_installed(name)]
    return [name for name in cfg.report_to if name != "none"]


def run_name(cfg: TrainConfig) -> str:
    return cfg.run_name or Path(cfg.output_dir).resolve().name


def logging_dir(cfg: TrainConfig) -> Path:
    return Path(cfg.logging_dir) if cfg.logging_dir else Path(cfg.output_dir) / LOGGING_DIR / run_name(cfg)


def log_with(cfg: TrainConfig) -> list:
    """``Accelerator(log_with=...)``: tracker names, TensorBoard as a tracker instance.

    accelerate's own TensorBoard tracker writes into ``logging_dir/<project_name>``, and the project
    name is also W&B's project: an instance named after ``logging_dir``'s last folder writes exactly
    there, and leaves ``--project`` to the trackers that have projects.
    """
    from accelerate.tracking import TensorBoardTracker

    folder = logging_dir(cfg)
    return [TensorBoardTracker(folder.name, str(folder.parent)) if name == "tensorboard" else name
            for name in tracker_names(cfg)]


def init_kwargs(cfg: TrainConfig) -> dict:
    """``init_trackers(init_kwargs=...)``: the run's name for the trackers that take one."""
    return {name: {RUN_NAME_KWARGS[name]: run_name(cfg)} for name in tracker_names(cfg) if name in RUN_NAME_KWARGS}


def continue_tensorboard_after(accelerator, global_step: int) -> None:
    """A resumed run's TensorBoard writer hides what the interrupted run logged after its checkpoint.

    ``purge_step`` makes TensorBoard drop events at or after that step from earlier event files in the
    folder, so the curves show the resumed run's values there instead of both. It must be set before
    ``init_trackers`` creates the writer; the instance is ours (``log_with``), its ``init_kwargs`` go
    to ``SummaryWriter``.
    """
    from accelerate.tracking import TensorBoardTracker

    for tracker in accelerator.log_with:
        if isinstance(tracker, TensorBoardTracker) and global_step > 0:
            tracker.init_kwargs["purge_step"] = global_step + 1


def flatten(values: dict, prefix: str = "") -> dict:
    """Nested dicts and lists of records as ``a/b/0/c`` keys; values stay bool/int/float/str, anything
    else (None, lists of names, str subclasses) becomes its ``str``, as transformers' TensorBoard callback does."""
    flat = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}/"))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            flat.update(flatten({str(i): v for i, v in enumerate(value)}, f"{name}/"))
        elif type(value) in (bool, int, float, str):  # exactly: torch.__version__ is a str subclass YAML cannot load
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat


def hparams(cfg: TrainConfig, description) -> dict:
    """The run's hyper-parameters for ``init_trackers(config=...)``: every option under its flag name,
    and the transfer recipe (``RunDescription``: phases, frozen groups, LRs, sizes) under ``transfer/``."""
    resolved = {"run_name": run_name(cfg), "logging_dir": str(logging_dir(cfg))}  # the defaults, as they came out
    return {**flatten(cfg.to_dict()), **resolved, **flatten(description.to_dict(), "transfer/")}


# ---- what each log holds -----------------------------------------------------------------------------------------
@dataclass
class LossWindow:
    """This process's micro-batch losses since the last step log."""

    total: float = 0.0
    batches: int = 0

    def add(self, loss: float) -> None:
        self.total += loss
        self.batches += 1

    def take(self) -> tuple[float, int]:
        """(sum, count) of the window, which starts afresh."""
        taken = self.total, self.batches
        self.total, self.batches = 0.0, 0
        return taken


def learning_rates(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """``train/learning_rate/<layer group>`` of every optimizer group, named after its layer group
    (``strategies.param_groups``; a group and its no-decay twin share one rate, so one tag)."""
    rates = {}
    for i, group in enumerate(optimizer.param_groups):
        name = str(group.get("name", f"group_{i}")).removesuffix(".no_decay")
        rates.setdefault(f"train/learning_rate/{name}", group["lr"])
    return rates


def phase_index(strategy: Strategy, epoch: int) -> int:
    """0 for the strategy's first phase, +1 at every epoch where the frozen set changes or the LR
    schedule restarts (LP-FT's fine-tuning, each gradual unfreezing)."""
    return sum(1 for e in range(1, epoch + 1)
               if strategy.trainable_groups(e) != strategy.trainable_groups(e - 1) or e in strategy.phase_starts())


class RunLog:
    """The values a tracked run sends to ``accelerator.log``; ``training`` decides when, and gathers
    the loss window over processes itself (a collective call every process makes)."""

    def __init__(self, logging_steps: int, steps_per_epoch: int):
        self.logging_steps, self.steps_per_epoch = logging_steps, max(1, steps_per_epoch)
        self.window = LossWindow()

    def step_due(self, global_step: int) -> bool:
        return global_step % self.logging_steps == 0

    def step_values(self, mean_loss: float, optimizer, global_step: int) -> dict:
        return {"train/loss": mean_loss, **learning_rates(optimizer), "train/epoch": global_step / self.steps_per_epoch}

    @staticmethod
    def phase_changes(strategy: Strategy, epoch: int) -> bool:
        """Whether ``epoch`` starts a phase (the first epoch does)."""
        return epoch == 0 or phase_index(strategy, epoch) != phase_index(strategy, epoch - 1)

    @staticmethod
    def phase_values(strategy: Strategy, epoch: int, module: torch.nn.Module) -> dict:
        return {"train/phase": phase_index(strategy, epoch), "train/trainable_groups": strategy.trainable_groups(epoch),
                "train/trainable_params": sum(numel(p) for p in module.parameters() if p.requires_grad)}

    @staticmethod
    def epoch_values(train_loss: float, metrics: dict) -> dict:
        return {"train/epoch_loss": train_loss, "eval/loss": metrics["loss"], "eval/accuracy": metrics["accuracy"],
                "eval/f1": metrics["f1"]}

    @staticmethod
    def test_values(metrics: dict) -> dict:
        return {"test/loss": metrics["loss"], "test/accuracy": metrics["accuracy"], "test/f1": metrics["f1"]}
