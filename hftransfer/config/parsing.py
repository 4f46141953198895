"""Run configuration from defaults < recipe YAML < ``--config`` YAML < command-line flags, into the option groups.

Flag names follow transformers' example scripts where the concept is the same
(``--model_name_or_path``, ``--train_dir``, ``--per_device_train_batch_size``, ...), and a recipe
also takes transformers' own names where they mean one of its options (``aliases``). A recipe's
parser holds the common options and its modality's only (``modality``); its ``--help`` shows the
defaults that will run (``help``). Relative data paths inside a YAML file are resolved against that
file's folder, so a config travels with its data; ``output_dir`` stays relative to the working
directory. ``load_config`` validates the result. Usage mistakes (an unknown or misspelled flag:
abbreviations are not accepted, a value of the wrong type) are ``HFTransferError`` lines like every
other error.
"""
from __future__ import annotations

import argparse
import typing
from dataclasses import Field, fields
from pathlib import Path

from ..errors import HFTransferError
from ..files import read_yaml, write_yaml
from .aliases import add_refusal, add_transformers_names, resolve_aliases
from .configs import JOB_FIELDS, TrainConfig
from .data_options import DATA_SOURCE_FIELDS, PATH_FIELDS
from .fields import Options, applies_to, arg_type, coerce_value, owner_recipes, to_bool
from .help import modality_note, option_help, recipe_note

__all__ = ["UsageErrorParser", "build_parser", "load_config", "read_config_file", "save_config"]
RECIPE_DEFAULTS = "the recipe's defaults"  # where recipe defaults come from when the caller does not say
# a recipe YAML's mapping of settings that belong to its embedded default job only (its data, and the short
# budget that keeps the bundled job fast): dropped, like the job's data keys, once the user names data
DEFAULT_JOB_KEY = "default_job"


class UsageErrorParser(argparse.ArgumentParser):
    """argparse whose usage errors are one ``error:`` line (via ``HFTransferError``), like every other error."""

    def error(self, message: str):
        raise HFTransferError(f"{message}: see --help for the valid options")


def build_parser(description: str, config_cls=TrainConfig, prog: str | None = None, *, modality: str | None = None,
                 defaults: dict | None = None, defaults_source: str | None = None) -> argparse.ArgumentParser:
    """The parser of ``config_cls``'s options, each under its group's title.

    ``modality`` (a recipe's: image, text or audio; None = every option) leaves out the other modalities'
    options, which are then refused in one line naming their recipe. ``defaults`` (a recipe YAML's
    values, read from ``defaults_source``) are the defaults ``--help`` shows where they apply. A
    ``TrainConfig`` parser also takes transformers' names (``aliases``)."""
    # allow_abbrev=False: argparse would otherwise take a mistyped --learning_rat as --learning_rate
    parser = UsageErrorParser(prog=prog, description=description, argument_default=argparse.SUPPRESS,
                              allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter)
    hints = typing.get_type_hints(config_cls)
    recipe = {k: coerce_value(k, v, hints) for k, v in (defaults or {}).items() if k in hints}
    job = {k: coerce_value(k, v, hints) for k, v in ((defaults or {}).get(DEFAULT_JOB_KEY) or {}).items() if k in hints}
    source = defaults_source or RECIPE_DEFAULTS
    groups, refused = {}, []
    for f in fields(config_cls):
        if not applies_to(f, modality):
            refused.append(f)
            add_refusal(parser, f.name, _other_recipe(f.name, owner_recipes(f), modality))
            continue
        group = _group(parser, groups, config_cls, f.name)
        _add_option(group, f, hints[f.name], option_help(f, recipe, source, job))
    notes = []
    if recipe:
        refused_names = {f.name for f in refused}
        notes.append(recipe_note(source, [name for name in DATA_SOURCE_FIELDS if name not in refused_names]))
    for other in dict.fromkeys(m for f in refused for m in owner_recipes(f)):
        notes.append(modality_note(other, [f.name for f in refused if other in owner_recipes(f)]))
    if issubclass(config_cls, TrainConfig):
        notes.append(add_transformers_names(parser))
    parser.epilog = "\n\n".join(notes) or None
    return parser


def _other_recipe(name: str, others: tuple[str, ...], modality: str) -> str:
    recipes = " and ".join(f"the {other} recipe (recipes/{other}_cls.py)" for other in others)
    return f"--{name} is an option of {recipes}: drop it from this {modality} run"


def _group(parser: argparse.ArgumentParser, groups: dict, config_cls, name: str):
    """The argument group of the option group class (ModelOptions, DataOptions, ...) that declares ``name``."""
    owner = next(c for c in reversed(config_cls.__mro__) if name in getattr(c, "__annotations__", {}))
    title = owner.__name__.removesuffix("Options").lower() if owner is not config_cls else "options"
    if title not in groups:
        doc = (owner.__doc__ or "").strip().split("\n")[0]
        groups[title] = parser.add_argument_group(title, None if doc.startswith(owner.__name__ + "(") else doc)
    return groups[title]


def _add_option(group, f: Field, hint, help: str) -> None:
    tp, is_list = arg_type(hint)
    if tp is bool:
        group.add_argument(f"--{f.name}", type=to_bool, nargs="?", const=True, help=help)
    elif is_list:
        group.add_argument(f"--{f.name}", nargs="+", help=help)
    else:
        group.add_argument(f"--{f.name}", type=tp, help=help)


def load_config(argv: list[str] | None, defaults: dict | None = None, description: str = "", config_cls=TrainConfig,
                prog: str | None = None, validate: bool = True, *, modality: str | None = None,
                defaults_source: str | None = None):
    """Merge dataclass defaults < recipe ``defaults`` < ``--config`` YAML < explicit flags, then ``validate()``
    (``validate=False``: only parse and type-check, e.g. to inspect a config whose data is elsewhere).

    ``modality``: the recipe's (image or text), whose parser refuses the other modality's flags;
    None takes every option. ``defaults_source`` names the file ``defaults`` came from, for --help."""
    defaults = dict(defaults or {})
    job = defaults.pop(DEFAULT_JOB_KEY, None) or {}
    parser = build_parser(description, config_cls, prog, modality=modality,
                          defaults={**defaults, DEFAULT_JOB_KEY: job}, defaults_source=defaults_source)
    hints = typing.get_type_hints(config_cls)
    cli = vars(parser.parse_args(argv))
    user = {**_hftransfer_names(read_config_file(cli.get("config")), config_cls, hints), **_hftransfer_names(cli, config_cls, hints)}
    if any(k in user for k in DATA_SOURCE_FIELDS):  # the user's own data: none of the default job's data/output settings apply
        defaults = {k: v for k, v in defaults.items() if k not in JOB_FIELDS}
    else:
        defaults = {**defaults, **job}
    values = {**defaults, **user}
    unknown = sorted(set(values) - {f.name for f in fields(config_cls)})
    if unknown:
        raise HFTransferError(f"unknown option(s) {', '.join(unknown)} in the config: see --help for the valid names")
    cfg = config_cls(**{k: coerce_value(k, v, hints) for k, v in values.items()})
    return cfg.validate() if validate else cfg


def _hftransfer_names(values: dict, config_cls, hints: dict) -> dict:
    """One source's values with transformers' names replaced (recipe configs only: ranking has no Trainer twin)."""
    if not issubclass(config_cls, TrainConfig):
        return values
    return resolve_aliases(values, lambda name, value: coerce_value(name, value, hints))


def read_config_file(path: str | None) -> dict:
    """A ``--config`` YAML file, its relative data paths resolved against the file's folder."""
    if not path:
        return {}
    p = Path(path)
    if not p.is_file():
        raise HFTransferError(f"config file '{path}' not found: pass an existing YAML file to --config")
    data = read_yaml(p)
    for section in (data, data.get(DEFAULT_JOB_KEY) if isinstance(data.get(DEFAULT_JOB_KEY), dict) else {}):
        for key in PATH_FIELDS:
            if isinstance(section.get(key), str) and not Path(section[key]).is_absolute():
                section[key] = str((p.parent / section[key]).resolve())
    return data


def save_config(config: Options, path: Path) -> None:
    write_yaml(path, config.to_dict())
