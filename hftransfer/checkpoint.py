"""Run state on disk: the output folder of an earlier run, checkpoints, and resuming from them.

A checkpoint is accelerate's ``save_state`` (model, optimizer, RNG, loaders' samplers, plus the
objects registered with ``register_for_checkpointing``: the LR scheduler and ``RunState``) under
``output_dir/checkpoints/step_<global step>``. Strategies are functions of the epoch, so restoring
these is enough to continue with the same frozen set, learning rates and shuffle order.
"""
from __future__ import annotations

import math
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .errors import HFTransferError
from .run_files import BEST_DIR, CHECKPOINT_DIR


@dataclass
class RunState:
    """Progress that a checkpoint must restore besides model/optimizer/scheduler/RNG."""

    epoch: int = 0
    batches_done: int = 0  # within ``epoch``
    global_step: int = 0
    best_metric: float = -math.inf
    best_epoch: int = -1
    history: list = field(default_factory=list)
    # the running train loss of ``epoch``, so a mid-epoch resume reports the whole epoch's mean
    epoch_loss_sum: float = 0.0
    epoch_loss_batches: int = 0

    def state_dict(self) -> dict:
        return dict(self.__dict__)

    def load_state_dict(self, state: dict) -> None:
        self.__dict__.update(state)


def prepare_output_dir(output_dir: str | Path, overwrite: bool, resume: bool, is_main_process: bool) -> Path:
    """Refuse to mix two runs in one folder; with ``overwrite`` clear the earlier run (main process)."""
    out = Path(output_dir)
    earlier = out.is_dir() and any(out.iterdir())
    if earlier and not overwrite and not resume:
        raise HFTransferError(
            f"output_dir '{out}' already holds a run: pass --resume_from_checkpoint latest to continue it, "
            "--overwrite_output_dir to replace it, or another --output_dir"
        )
    if earlier and overwrite and not resume and is_main_process:
        shutil.rmtree(out)  # stale files of the earlier run must not be exported or pushed with this one
    return out


def find_latest_checkpoint(output_dir: Path) -> Path | None:
    root = Path(output_dir) / CHECKPOINT_DIR
    found = [(int(m.group(1)), p) for p in root.glob("step_*") if (m := re.fullmatch(r"step_(\d+)", p.name))]
    return max(found)[1] if found else None


def save_checkpoint(accelerator, output_dir: Path, state: RunState, keep: int) -> None:
    """``save_state`` at the current global step; keep the newest ``keep`` checkpoints (0 = all)."""
    root = output_dir / CHECKPOINT_DIR
    accelerator.save_state(str(root / f"step_{state.global_step}"))
    if accelerator.is_main_process and keep > 0:
        done = sorted((int(p.name.split("_")[1]), p) for p in root.glob("step_*"))
        for _, old in done[:-keep]:
            shutil.rmtree(old, ignore_errors=True)


def resume(accelerator, resume_from: str, output_dir: Path, state: RunState) -> Path:
    """Load the checkpoint ``resume_from`` names (a folder, or ``latest`` in ``output_dir``)."""
    ckpt = find_latest_checkpoint(output_dir) if resume_from == "latest" else Path(resume_from)
    if ckpt is None or not ckpt.is_dir():
        raise HFTransferError(f"no checkpoint at '{resume_from}': pass a checkpoint folder or 'latest' with the "
                              "run's --output_dir")
    accelerator.load_state(str(ckpt))
    adopt_best_model(ckpt, output_dir, state, accelerator)
    return ckpt


def adopt_best_model(ckpt: Path, output_dir: Path, state: RunState, accelerator) -> None:
    """A run resumed into another output_dir brings the best model so far along with it.

    Without it the restored best score would block every later epoch from being exported; if the
    original run's best model is gone, the score is reset so the next epoch becomes the best.
    """
    source, target = ckpt.resolve().parent.parent / BEST_DIR, output_dir / BEST_DIR
    if target.is_dir():
        return
    if source.is_dir():
        if accelerator.is_main_process:
            shutil.copytree(source, target)
    else:
        state.best_metric, state.best_epoch = -math.inf, -1
    accelerator.wait_for_everyone()
