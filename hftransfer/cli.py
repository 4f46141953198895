"""Entry points shared by the recipes: config parsing, one-line errors, exit codes."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from .config import _read_yaml, load_config
from .errors import HFTransferError


def run_recipe(modality: str, default_config: str | Path, argv: list[str] | None = None, description: str = "") -> dict:
    """Parse flags over the recipe's embedded default job, train, and turn user errors into one line.

    The default job's data (e.g. the bundled ants/bees images) is used only when the user names no
    data of their own; its model and hyper-parameters stay the defaults either way.
    """
    from .trainer import train

    try:
        cfg = load_config(argv, _read_yaml(str(default_config)), description=description)
        return train(cfg, modality)
    except HFTransferError as e:
        if os.environ.get("LOCAL_RANK", "0") == "0":
            print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
