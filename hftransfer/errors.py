"""User-facing errors: one line that names the problem and the fix."""


class HFTransferError(Exception):
    """An input or configuration problem the user can fix.

    Recipes print ``error: <message>`` and exit with status 2 instead of a traceback, so the
    message must say what is wrong *and* what to do about it.
    """
