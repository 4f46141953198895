"""What a user sees from an entry point: one-line errors that name the fix, and progress messages."""
from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Iterator

USAGE_EXIT_CODE = 2  # argparse's status for bad usage: scripts and schedulers can tell it from a crash


class HFTransferError(Exception):
    """An input or configuration problem the user can fix.

    Entry points print ``error: <message>`` and exit with status 2 instead of a traceback, so the
    message must say what is wrong *and* what to do about it.
    """


@contextlib.contextmanager
def exit_on_user_error() -> Iterator[None]:
    """Turn an ``HFTransferError`` into one ``error:`` line on stderr (first process only) and exit 2;
    an interrupted run (an exception with ``exit_code``, e.g. ``runtime.RunInterrupted``) into its
    one line and 128 + signal."""
    first = os.environ.get("LOCAL_RANK", "0") == "0"  # every rank fails alike: say it once
    try:
        yield
    except HFTransferError as e:
        if first:
            print(f"error: {e}", file=sys.stderr)
        sys.exit(USAGE_EXIT_CODE)
    except Exception as e:
        if not hasattr(e, "exit_code"):
            raise
        if first:
            print(str(e), file=sys.stderr, flush=True)
        sys.exit(e.exit_code)


class ConsoleHandler(logging.StreamHandler):
    """Plain message lines on whatever ``sys.stdout`` (or ``sys.stderr``: ``target``) is when each is logged.

    Looking the stream up per message, instead of binding the one current at setup, keeps messages
    going to the right place when a caller swaps the streams (``hftransfer predict`` moves them to
    stderr while predictions own stdout; pytest replaces stdout for each test).
    """

    def __init__(self, target: str = "stdout"):
        super().__init__()
        self.target = target
        self.setFormatter(logging.Formatter("%(message)s"))

    @property
    def stream(self):
        return getattr(sys, self.target)

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ assigns one; the stream is always looked up instead
        pass


def show_progress_messages() -> None:
    """Print hftransfer's INFO log messages (e.g. where a push went) as plain lines on stdout.

    Entry points call this; as a library hftransfer only logs, and the application decides.
    """
    logger = logging.getLogger("hftransfer")
    if not any(isinstance(h, ConsoleHandler) for h in logger.handlers):
        logger.addHandler(ConsoleHandler())
    logger.setLevel(logging.INFO)
