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


COMMANDS = {
    "rank": "score candidate backbones on a dataset by LogME and H-score before fine-tuning",
}


def main(argv: list[str] | None = None) -> None:
    """``hftransfer <command> [options]``; training itself runs through ``accelerate launch recipes/*.py``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        asked = bool(argv) and argv[0] in ("-h", "--help")
        usage = "\n".join(f"  {name:8s} {text}" for name, text in COMMANDS.items())
        print(f"usage: hftransfer <command> [options]\n\ncommands:\n{usage}\n\n"
              "Fine-tuning runs through the recipes: accelerate launch recipes/image_cls.py (or text_cls.py).",
              file=sys.stdout if asked else sys.stderr)
        sys.exit(0 if asked else 2)
    command, rest = argv[0], argv[1:]
    try:
        if command == "rank":
            from .config import RankConfig
            from .rank import rank_backbones

            rank_backbones(load_config(rest, description=COMMANDS["rank"], config_cls=RankConfig, prog="hftransfer rank"))
    except HFTransferError as e:
        if os.environ.get("LOCAL_RANK", "0") == "0":
            print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
