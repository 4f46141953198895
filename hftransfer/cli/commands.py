"""Entry points: the recipes' ``run_recipe`` and the ``hftransfer`` command (``hftransfer rank ...``).

Each parses its options (defaults < YAML ``--config`` < flags, validated before anything runs),
then calls the library; a problem the user can fix ends as one ``error:`` line and exit status 2.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from ..config import RankConfig, load_config, read_config_file
from ..config.parsing import DEFAULT_JOB_KEY
from ..errors import USAGE_EXIT_CODE, exit_on_user_error, show_progress_messages


def run_recipe(modality: str, default_config: str | Path, argv: list[str] | None = None, description: str = "") -> dict:
    """Parse flags over the recipe's embedded default job, train, and turn user errors into one line.

    The default job's data (e.g. the bundled ants/bees images) is used only when the user names no
    data of their own; its model and hyper-parameters stay the defaults either way. The parser takes
    the common options and ``modality``'s, and its --help shows these defaults as the YAML's.
    """
    from ..runs.train import train

    show_progress_messages()
    default_config = Path(default_config)
    with exit_on_user_error():
        cfg = load_config(argv, read_config_file(str(default_config)), description=description, modality=modality,
                          defaults_source=f"{default_config.parent.name}/{default_config.name}")
        return train(cfg, modality)


COMMANDS = {
    "rank": "score candidate backbones on a dataset by LogME and H-score before fine-tuning",
    "predict": "label image files / folders or text files with a trained model (output folder or Hub repo id)",
    "export": "export a trained model as an ONNX graph (--quantize int8: also int8), checked against torch",
    "federate": "federated fine-tuning on Flower (FedAvg / FedProx; simulation, or server and client processes)",
}
RECIPE_CONFIGS = Path(__file__).resolve().parents[2] / "recipes" / "configs"  # a source checkout's recipe YAMLs


def main(argv: list[str] | None = None) -> None:
    """``hftransfer <command> [options]``; training itself runs through ``accelerate launch recipes/*.py``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        asked = bool(argv) and argv[0] in ("-h", "--help")
        usage = "\n".join(f"  {name:8s} {text}" for name, text in COMMANDS.items())
        print(f"usage: hftransfer <command> [options]\n\ncommands:\n{usage}\n\n"
              "Fine-tuning runs through the recipes: accelerate launch recipes/image_cls.py (or text_cls.py).",
              file=sys.stdout if asked else sys.stderr)
        sys.exit(0 if asked else USAGE_EXIT_CODE)
    command, rest = argv[0], argv[1:]
    show_progress_messages()
    with exit_on_user_error():
        if command == "rank":
            from ..runs.rank import rank_backbones

            rank_backbones(load_config(rest, description=COMMANDS["rank"], config_cls=RankConfig, prog="hftransfer rank"))
        elif command == "predict":
            from .predict import run

            run(rest)
        elif command == "export":
            from .export import run as export

            export(rest)
        elif command == "federate":
            federate_command(rest)


def client_data_given(argv: list[str]) -> bool:
    """Whether ``--client_data`` is set, by a flag or in the ``--config`` YAML."""
    import argparse

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--config")
    known, _ = parser.parse_known_args(argv)
    return "--client_data" in argv or bool(read_config_file(known.config).get("client_data"))


def federate_command(argv: list[str]) -> dict:
    """``hftransfer federate``: the recipe of ``--modality`` (its YAML's defaults and bundled data) per client,
    plus the federation's options."""
    from ..config.federated_options import FEDERATED_DEFAULT_STRATEGY, FEDERATED_STRATEGIES, FederatedConfig
    from ..federated.run import federate
    from ..federated.run_help import FEDERATE_DESCRIPTION, modality_of

    modality = modality_of(argv)
    recipe = RECIPE_CONFIGS / f"{modality}_cls.yaml"
    defaults = read_config_file(str(recipe)) if recipe.is_file() else {}
    if client_data_given(argv):  # the clients' own data: the recipe's bundled job (data, output folder) gives way
        defaults.pop(DEFAULT_JOB_KEY, None)
    if defaults.get("strategy") not in (None, *FEDERATED_STRATEGIES):  # the image recipe's lp_ft switches phases
        defaults["strategy"] = FEDERATED_DEFAULT_STRATEGY
    cfg = load_config(argv, defaults, description=FEDERATE_DESCRIPTION, config_cls=FederatedConfig,
                      prog="hftransfer federate", modality=modality, validate=False,
                      defaults_source=f"recipes/configs/{recipe.name}" if defaults else None)
    return federate(dataclasses.replace(cfg, modality=modality))
