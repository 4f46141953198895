"""Run state on disk: the output folder and its lock, crash-safe checkpoints, and resuming from them.

A checkpoint is accelerate's ``save_state`` (model, optimizer, RNG, loaders' samplers, plus the
objects registered with ``register_for_checkpointing``: the LR scheduler and ``RunState``) under
``output_dir/checkpoints/step_<global step>``. It is written into ``step_<N>.tmp`` with a manifest
of its files and sizes, then renamed into place, so a crash mid-write leaves nothing that looks
complete; ``latest`` picks the newest checkpoint whose files match its manifest. Strategies and all
randomness are functions of (seed, epoch, batch), so restoring these continues a run exactly.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import HFTransferError
from ..files import (
    BEST_DIR,
    CHECKPOINT_DIR,
    CONTRASTIVE_DIR,
    DAPT_DIR,
    EPISODIC_DIR,
    FEATURE_CACHE_DIR,
    TMP_SUFFIX,
    TUNE_DIR,
    read_json,
    write_json,
)
from . import crash_tests

logger = logging.getLogger(__name__)
MANIFEST_NAME = "hftransfer_checkpoint.json"
LOCK_NAME = "hftransfer.lock"
STEP_DIR = re.compile(r"step_(\d+)")


@dataclass
class RunState:
    """Progress that a checkpoint must restore besides model/optimizer/scheduler/RNG."""

    epoch: int = 0
    batches_done: int = 0  # within ``epoch``
    global_step: int = 0
    best_metric: float | None = None  # of metric_for_best_model; None until an evaluation finished
    best_epoch: int = -1
    best_step: int = -1  # the optimizer step of the exported evaluation
    best_weights: str = "raw"  # raw or ema (--model_ema): which weights the exported evaluation scored
    history: list = field(default_factory=list)
    evaluations: int = 0
    # early stopping: evaluations in a row without an improvement, and why training ended before its budget
    # (kept in the checkpoint, so a resumed run stops where the uninterrupted one would)
    evals_without_improvement: int = 0
    stop_reason: str | None = None
    # the running train loss of ``epoch`` on this process, so a mid-epoch resume reports the whole epoch's mean
    epoch_loss_sum: float = 0.0
    epoch_loss_batches: int = 0
    # [sum, batches] of every process at the last checkpoint: accelerate saves this object from the main
    # process only, so each process takes its own running loss back from here
    loss_by_process: list = field(default_factory=list)
    # target-domain runs: the pretrained backbone's domain gap, measured before the first step, so a
    # resumed run (whose backbone has moved) reports the same one
    domain_gap: dict = field(default_factory=dict)
    # --streaming: every process's position in its training stream at the last checkpoint (saved from the main
    # process, like the losses); ``stream`` is this process's loader, never saved itself
    stream_by_process: list = field(default_factory=list)
    stream: object = field(default=None, repr=False, compare=False)

    def collect_losses(self, accelerator) -> None:
        """Before a save: every process's running loss into ``loss_by_process``, and its stream position into
        ``stream_by_process`` (collective calls)."""
        import torch
        from accelerate.utils import gather_object

        mine = torch.tensor([[self.epoch_loss_sum, float(self.epoch_loss_batches)]], dtype=torch.float64,
                            device=accelerator.device)
        gathered = accelerator.gather(mine) if accelerator.num_processes > 1 else mine
        self.loss_by_process = gathered.cpu().tolist()
        if self.stream is not None:
            positions = [self.stream.state_dict()]
            self.stream_by_process = gather_object(positions) if accelerator.num_processes > 1 else positions

    def restore_losses(self, process_index: int, num_processes: int = 1) -> None:
        """After a load: this process's running loss (unchanged if the checkpoint had another world size) and stream
        position (which must come from as many processes: each read its own shards)."""
        if process_index < len(self.loss_by_process):
            total, batches = self.loss_by_process[process_index]
            self.epoch_loss_sum, self.epoch_loss_batches = total, int(batches)
        if self.stream is None:
            return
        if len(self.stream_by_process) != num_processes:
            written = len(self.stream_by_process) or "no"
            raise HFTransferError(f"this checkpoint was written by {written} streaming process(es) and this run has "
                                  f"{num_processes}: resume a --streaming run with as many processes (each reads its "
                                  "own shards)")
        self.stream.load_state_dict(self.stream_by_process[process_index])

    def state_dict(self) -> dict:
        return {name: value for name, value in self.__dict__.items() if name != "stream"}

    def load_state_dict(self, state: dict) -> None:
        self.__dict__.update({name: value for name, value in state.items() if name != "stream"})


# ---- the output folder ---------------------------------------------------------------------------
# kept when a run is replaced: the lock, and auto's feature cache, whose files are named by a hash of the
# weights, data and preprocessing they came from, so what an earlier run stored there is still correct; and
# --tune's study (tune/: study.db, trials, best_recipe.yaml), which the tuned run's final fit must keep; and the
# phases before a fine-tune (dapt/, contrastive/), whose backbone the fine-tune starts from
KEPT_FILES = (LOCK_NAME, FEATURE_CACHE_DIR, TUNE_DIR, DAPT_DIR, CONTRASTIVE_DIR, EPISODIC_DIR)


def holds_earlier_run(output_dir: Path) -> bool:
    return output_dir.is_dir() and any(p.name not in KEPT_FILES for p in output_dir.iterdir())


def check_output_dir(output_dir: str | Path, overwrite: bool, resume: bool) -> Path:
    """Refuse to mix two runs in one folder (nothing is deleted here: see ``clear_earlier_run``)."""
    out = Path(output_dir)
    if holds_earlier_run(out) and not overwrite and not resume:
        raise HFTransferError(
            f"output_dir '{out}' already holds a run: pass --resume_from_checkpoint latest to continue it, "
            "--overwrite_output_dir to replace it, or another --output_dir"
        )
    return out


def clear_earlier_run(output_dir: Path) -> None:
    """Delete what an earlier run left (the lock and the feature cache stay): called once the new run has
    loaded data and model."""
    for item in output_dir.iterdir() if output_dir.is_dir() else []:
        if item.name in KEPT_FILES:
            continue
        shutil.rmtree(item) if item.is_dir() and not item.is_symlink() else item.unlink()


class RunLock:
    """``output_dir/hftransfer.lock``: one live run per folder.

    The lock is an ``flock`` on the file, which the operating system releases when the process dies,
    so a lock left by a killed run never blocks; the file names the holder for the error message.
    """

    def __init__(self, output_dir: Path):
        self.path, self.fd = Path(output_dir) / LOCK_NAME, None
        self.created_dir = False

    def acquire(self) -> "RunLock":
        import fcntl

        self.created_dir = not self.path.parent.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise HFTransferError(f"output_dir '{self.path.parent}' is in use by a live run ({holder}): wait for it, "
                                  "stop it, or pass another --output_dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        self.path.unlink(missing_ok=True)
        os.close(self.fd)  # closing drops the flock
        self.fd = None
        if self.created_dir and self.path.parent.is_dir() and not any(self.path.parent.iterdir()):
            self.path.parent.rmdir()  # a run that failed before writing anything leaves no empty folder


# ---- checkpoints ---------------------------------------------------------------------------------
def checkpoint_problem(ckpt: Path) -> str | None:
    """Why ``ckpt`` cannot be resumed from (incomplete, truncated, unreadable), or None if it can."""
    if not ckpt.is_dir():
        return "not a folder"
    manifest = read_json(ckpt / MANIFEST_NAME)
    if manifest is None:
        files = {p.name for p in ckpt.iterdir()}
        if not files & {"model.safetensors", "pytorch_model.bin"} or "optimizer.bin" not in files:
            return "no manifest and no model/optimizer files: the run stopped while writing it"
        expected = {}  # written by an hftransfer without manifests: check what can be checked
    else:
        expected = manifest.get("files", {})
    for name, size in expected.items():
        path = ckpt / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} is {path.stat().st_size} bytes, the manifest says {size}"
    for path in ckpt.glob("*.safetensors"):
        try:
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                f.keys()
        except Exception as e:  # noqa: BLE001 - any parse failure means unreadable
            return f"{path.name} is unreadable ({type(e).__name__})"
    return None


def list_checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    """``(global step, folder)`` of every ``step_N`` folder, newest first."""
    root = Path(output_dir) / CHECKPOINT_DIR
    found = [(int(m.group(1)), p) for p in root.glob("step_*") if (m := STEP_DIR.fullmatch(p.name))]
    return sorted(found, reverse=True)


def find_latest_checkpoint(output_dir: Path) -> tuple[Path | None, list[str]]:
    """The newest complete, readable checkpoint, and a note for each newer one that was skipped."""
    skipped = []
    for _, ckpt in list_checkpoints(output_dir):
        problem = checkpoint_problem(ckpt)
        if problem is None:
            return ckpt, skipped
        skipped.append(f"{ckpt.name} ({problem})")
    return None, skipped


def save_checkpoint(accelerator, output_dir: Path, state: RunState, keep: int) -> Path:
    """``save_state`` at the current global step, crash-safe; keep the newest ``keep`` complete ones (0 = all)."""
    root = output_dir / CHECKPOINT_DIR
    final = root / f"step_{state.global_step}"
    tmp = final.with_name(final.name + TMP_SUFFIX)
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    state.collect_losses(accelerator)
    accelerator.save_state(str(tmp))
    crash_tests.inside_save(state.global_step)
    accelerator.wait_for_everyone()  # every rank's RNG file is in before the folder counts as complete
    if accelerator.is_main_process:
        # with the folders FSDP's sharded model and optimizer states are written into (one file per process)
        files = {p.relative_to(tmp).as_posix(): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
        write_json(tmp / MANIFEST_NAME, {"global_step": state.global_step, "epoch": state.epoch,
                                          "batches_done": state.batches_done, "files": files})
        if final.exists():  # the epoch-end checkpoint of a step that also had a step checkpoint
            shutil.rmtree(final)
        os.replace(tmp, final)
        rotate_checkpoints(root, keep)
    accelerator.wait_for_everyone()
    return final


def rotate_checkpoints(root: Path, keep: int) -> None:
    """Delete complete checkpoints beyond the newest ``keep``, and leftovers of interrupted writes."""
    for leftover in root.glob(f"step_*{TMP_SUFFIX}"):
        shutil.rmtree(leftover, ignore_errors=True)
    if keep <= 0:
        return
    complete = [p for _, p in list_checkpoints(root.parent) if checkpoint_problem(p) is None]
    for old in complete[keep:]:
        shutil.rmtree(old, ignore_errors=True)


def resume(accelerator, resume_from: str, output_dir: Path, state: RunState) -> Path:
    """Load the checkpoint ``resume_from`` names (a folder, or ``latest`` in ``output_dir``)."""
    if resume_from == "latest":
        ckpt, skipped = find_latest_checkpoint(output_dir)
        if skipped:
            logger.warning(f"skipped incomplete checkpoint(s): {'; '.join(skipped)}")
        if ckpt is None:
            found = f" (none complete: {'; '.join(skipped)})" if skipped else ""
            raise HFTransferError(f"no checkpoint to resume from in '{output_dir / CHECKPOINT_DIR}'{found}: start "
                                  "afresh with --overwrite_output_dir, or pass --resume_from_checkpoint FOLDER")
    else:
        ckpt = Path(resume_from)
        problem = checkpoint_problem(ckpt)
        if problem is not None:
            raise HFTransferError(f"checkpoint '{ckpt}' cannot be resumed from ({problem}): pass an earlier one "
                                  f"from {ckpt.parent} or --resume_from_checkpoint latest")
    try:
        accelerator.load_state(str(ckpt))
    except Exception as e:  # noqa: BLE001 - a damaged file surfaces as many exception types
        raise HFTransferError(f"checkpoint '{ckpt}' cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:150]}): "
                              "resume from an earlier one, or start afresh with --overwrite_output_dir") from None
    state.restore_losses(accelerator.process_index, accelerator.num_processes)
    adopt_best_model(ckpt, output_dir, state, accelerator)
    return ckpt


def adopt_best_model(ckpt: Path, output_dir: Path, state: RunState, accelerator) -> None:
    """A run resumed into another output_dir brings the best model so far along with it.

    Without it the restored best score would block every later epoch from being exported; if the
    original run's best model is gone, the score is reset so the next epoch becomes the best.
    """
    source, target = ckpt.resolve().parent.parent / BEST_DIR, output_dir / BEST_DIR
    adopted = target.is_dir()
    # every rank looks before the main process copies: a rank that looked after the copy would skip the barrier below
    accelerator.wait_for_everyone()
    if adopted:
        return
    if source.is_dir():
        if accelerator.is_main_process:
            shutil.copytree(source, target)
    else:
        state.best_metric, state.best_epoch = None, -1
    accelerator.wait_for_everyone()
