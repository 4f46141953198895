"""Crash-safe checkpoints on disk: manifests, which one ``latest`` picks, rotation, the run lock, stop signals."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from hftransfer import HFTransferError
from hftransfer.files import write_json
from hftransfer.training.checkpoint import (
    LOCK_NAME,
    MANIFEST_NAME,
    RunLock,
    checkpoint_problem,
    find_latest_checkpoint,
    rotate_checkpoints,
)
from hftransfer.training.runtime import RunInterrupted, StopSignals, step_seed


def make_checkpoint(root, step: int, manifest: bool = True):
    """A checkpoint folder as save_checkpoint leaves it: accelerate's files plus the manifest."""
    ckpt = root / "checkpoints" / f"step_{step}"
    ckpt.mkdir(parents=True)
    save_file({"w": torch.full((64,), float(step))}, ckpt / "model.safetensors")
    (ckpt / "optimizer.bin").write_bytes(b"o" * 100)
    (ckpt / "custom_checkpoint_1.pkl").write_bytes(b"s" * 10)
    if manifest:
        write_json(ckpt / MANIFEST_NAME, {"global_step": step, "files": {p.name: p.stat().st_size for p in ckpt.iterdir()}})
    return ckpt


def test_a_complete_checkpoint_has_no_problem(tmp_path):
    assert checkpoint_problem(make_checkpoint(tmp_path, 3)) is None


def test_an_empty_checkpoint_folder_is_incomplete(tmp_path):
    empty = tmp_path / "checkpoints" / "step_56"
    empty.mkdir(parents=True)
    assert "stopped while writing" in checkpoint_problem(empty)


def test_a_truncated_weights_file_is_named(tmp_path):
    ckpt = make_checkpoint(tmp_path, 4)
    data = (ckpt / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(data[: len(data) // 2])
    problem = checkpoint_problem(ckpt)
    assert "model.safetensors is" in problem
    assert "the manifest says" in problem


def test_an_unreadable_weights_file_without_manifest_is_named(tmp_path):
    ckpt = make_checkpoint(tmp_path, 4, manifest=False)
    (ckpt / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{broken")
    assert "model.safetensors is unreadable" in checkpoint_problem(ckpt)


def test_a_checkpoint_of_an_older_hftransfer_without_manifest_is_accepted(tmp_path):
    assert checkpoint_problem(make_checkpoint(tmp_path, 4, manifest=False)) is None


def test_latest_skips_newer_incomplete_checkpoints_and_says_which(tmp_path):
    make_checkpoint(tmp_path, 4)
    (tmp_path / "checkpoints" / "step_56").mkdir()
    bad = make_checkpoint(tmp_path, 10)
    (bad / "optimizer.bin").write_bytes(b"o")
    ckpt, skipped = find_latest_checkpoint(tmp_path)
    assert ckpt.name == "step_4"
    assert [s.split(" ")[0] for s in skipped] == ["step_56", "step_10"]


def test_latest_is_none_when_nothing_is_complete(tmp_path):
    (tmp_path / "checkpoints" / "step_5").mkdir(parents=True)
    ckpt, skipped = find_latest_checkpoint(tmp_path)
    assert ckpt is None
    assert len(skipped) == 1


def test_rotation_keeps_the_newest_complete_checkpoints_and_drops_leftovers(tmp_path):
    for step in (2, 4, 6, 8):
        make_checkpoint(tmp_path, step)
    (tmp_path / "checkpoints" / "step_10").mkdir()  # incomplete: never counts as one of the kept
    (tmp_path / "checkpoints" / "step_12.tmp").mkdir()  # an interrupted write
    rotate_checkpoints(tmp_path / "checkpoints", keep=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step_10", "step_6", "step_8"]


def test_rotation_with_keep_zero_keeps_all(tmp_path):
    for step in (2, 4, 6):
        make_checkpoint(tmp_path, step)
    rotate_checkpoints(tmp_path / "checkpoints", keep=0)
    assert len(list((tmp_path / "checkpoints").iterdir())) == 3


def test_the_lock_refuses_a_second_holder_and_names_the_first(tmp_path):
    first = RunLock(tmp_path).acquire()
    with pytest.raises(HFTransferError, match=rf"in use by a live run \(pid {os.getpid()} on "):
        RunLock(tmp_path).acquire()
    first.release()
    assert not (tmp_path / LOCK_NAME).exists()
    RunLock(tmp_path).acquire().release()


def test_a_stale_lock_of_a_dead_process_does_not_block(tmp_path):
    (tmp_path / LOCK_NAME).write_text("pid 999999 on a-dead-host, since 2026-01-01 00:00:00")
    lock = RunLock(tmp_path).acquire()
    assert f"pid {os.getpid()}" in (tmp_path / LOCK_NAME).read_text()
    lock.release()


def test_a_lock_that_created_the_folder_removes_it_when_nothing_was_written(tmp_path):
    RunLock(tmp_path / "new").acquire().release()
    assert not (tmp_path / "new").exists()


def test_step_seeds_depend_on_seed_epoch_batch_and_process_only():
    assert step_seed(42, 1, 5) == step_seed(42, 1, 5)
    assert len({step_seed(42, 1, 5), step_seed(42, 1, 6), step_seed(42, 2, 5), step_seed(43, 1, 5),
                step_seed(42, 1, 5, process=1)}) == 5


def test_a_signal_before_training_stops_at_once_and_inside_training_only_sets_the_flag():
    stop = StopSignals()
    with pytest.raises(RunInterrupted) as info:
        stop._handle(signal.SIGTERM, None)
    assert info.value.exit_code == 143
    assert "before training started" in str(info.value)
    stop = StopSignals()
    stop.in_training = True
    stop._handle(signal.SIGINT, None)
    assert stop.signum == signal.SIGINT


def test_interrupted_message_names_the_checkpoint_and_how_to_continue():
    message = str(RunInterrupted(signal.SIGTERM, epoch=1, step=7, checkpoint="out/checkpoints/step_7"))
    assert message == ("interrupted by SIGTERM at epoch 2, step 7: checkpoint saved to out/checkpoints/step_7; "
                       "continue with --resume_from_checkpoint latest")


def test_a_second_ctrl_c_aborts_at_once():
    code = ("import os, signal, time\n"
            "from hftransfer.training.runtime import StopSignals\n"
            "stop = StopSignals().install(); stop.in_training = True\n"
            "os.kill(os.getpid(), signal.SIGINT); time.sleep(0.2)\n"
            "print('still running after one', flush=True)\n"
            "os.kill(os.getpid(), signal.SIGINT); time.sleep(5)\n"
            "print('not aborted')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 130
    assert proc.stdout.strip() == "still running after one"
    assert "aborted by a second Ctrl-C" in proc.stderr


def test_the_epoch_train_loss_is_the_mean_over_every_process():
    from types import SimpleNamespace

    from hftransfer.training.runtime import mean_over_processes

    other_rank = torch.tensor([[9.0, 3.0]], dtype=torch.float64)  # rank 1: three batches summing to 9
    fake = SimpleNamespace(num_processes=2, device=torch.device("cpu"),
                           gather=lambda mine: torch.cat([mine, other_rank]))
    assert mean_over_processes(fake, 2.0, 2) == 11.0 / 5  # not rank 0's own 2.0 / 2
    assert mean_over_processes(SimpleNamespace(num_processes=1), 2.0, 2) == 1.0
