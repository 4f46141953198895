"""Hooks for the crash and preemption tests, read from the environment; no-ops in a user's run.

``HFTRANSFER_TEST_KILL_AT_STEP=N`` SIGKILLs every process after optimizer step N;
``HFTRANSFER_TEST_SIGNAL_AT_STEP=N:TERM`` sends the main process SIGTERM (or INT) there;
``HFTRANSFER_TEST_KILL_IN_SAVE=N`` kills the process inside the checkpoint save of step N.
"""
from __future__ import annotations

import os
import signal


def after_step(step: int, is_main_process: bool) -> None:
    """Called after every optimizer step."""
    if os.environ.get("HFTRANSFER_TEST_KILL_AT_STEP") == str(step):
        os.kill(os.getpid(), signal.SIGKILL)
    at, _, name = os.environ.get("HFTRANSFER_TEST_SIGNAL_AT_STEP", "").partition(":")
    if at == str(step) and is_main_process:
        os.kill(os.getpid(), getattr(signal, f"SIG{name or 'TERM'}"))


def inside_save(step: int) -> None:
    """Called between writing a checkpoint's state and marking it complete."""
    if os.environ.get("HFTRANSFER_TEST_KILL_IN_SAVE") == str(step):
        os.kill(os.getpid(), signal.SIGKILL)
