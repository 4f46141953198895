"""Run a command and, when it ends or this guard is stopped, end every process it left behind.

Flower's SuperLink and SuperNode start helpers: a SuperExec, then one app process per message; the SuperLink's
SuperExec even in a session of its own. When a SuperNode stops while an app process is still pulling its
message, that app process retries forever. Started as ``python process_guard.py COMMAND...`` the guard becomes
the subreaper of everything COMMAND starts, so orphans stay its descendants whatever their session; when COMMAND
exits, or the guard gets SIGTERM / SIGINT (also sent when its parent dies, see ``deployment.die_with_parent``),
every descendant gets SIGTERM, then SIGKILL after ``GRACE_SECONDS``.

The subreaper and the process tree need Linux (``prctl``, ``/proc``); elsewhere the guard only passes the stop on
to COMMAND itself. Run by path, this file imports only the standard library, so the guard starts in milliseconds
without loading hftransfer.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time

PR_SET_CHILD_SUBREAPER = 36
GRACE_SECONDS = 8.0


class Stop(Exception):
    """Raised by the signal handler to leave ``child.wait()``."""


def state_and_parent(pid: int) -> tuple[str, int] | None:
    """A process's state letter (``Z``: zombie) and parent pid from ``/proc/PID/stat``; None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    state, ppid = stat[stat.rindex(")") + 2:].split()[:2]  # after "(name)", which may hold spaces
    return state, int(ppid)


def descendants(root: int) -> list[int]:
    """Every live (not zombie) process below ``root``, read from ``/proc`` (none where there is no ``/proc``)."""
    if not os.path.isdir("/proc"):
        return []
    children: dict[int, list[int]] = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        found = state_and_parent(int(entry))
        if found is not None and found[0] != "Z":
            children.setdefault(found[1], []).append(int(entry))
    found, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def reap() -> None:
    """Collect the exit status of every finished child (orphans re-parented to us included)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def end_descendants(child: subprocess.Popen | None, grace: float = GRACE_SECONDS) -> None:
    """SIGTERM to every descendant (at least ``child``), SIGKILL to those still there after ``grace`` seconds."""

    def remaining() -> list[int]:
        found = descendants(os.getpid())
        return found or ([child.pid] if child is not None and child.poll() is None else [])

    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        for pid in remaining():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            reap()
            if not remaining():
                return
            time.sleep(0.1)


def main(command: list[str]) -> int:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1)
    except (OSError, AttributeError):  # not Linux: no subreaper, orphans go to init as usual
        pass

    def stop(signum, frame):
        raise Stop

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    code, child = 128 + signal.SIGTERM, None
    try:
        child = subprocess.Popen(command)
        code = child.wait()
    except Stop:
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the clean-up short
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        end_descendants(child)
    return code if code >= 0 else 128 - code  # killed by signal N: the shell's 128 + N


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
