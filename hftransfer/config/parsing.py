"""Run configuration from defaults < YAML ``--config`` < command-line flags, into the option groups of ``options``.

Flag names follow transformers' example scripts where the concept is the same
(``--model_name_or_path``, ``--train_dir``, ``--per_device_train_batch_size``, ...). Relative data
paths inside a YAML file are resolved against that file's folder, so a config travels with its
data; ``output_dir`` stays relative to the working directory. ``load_config`` validates the result.
Usage mistakes (an unknown or misspelled flag: abbreviations are not accepted, a value of the wrong
type) are ``HFTransferError`` lines like every other error.
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import fields
from pathlib import Path

from ..errors import HFTransferError
from ..files import read_yaml, write_yaml
from .options import DATA_SOURCE_FIELDS, JOB_FIELDS, PATH_FIELDS, Options, TrainConfig

__all__ = ["UsageErrorParser", "build_parser", "load_config", "read_config_file", "save_config"]


# ---- parsing ---------------------------------------------------------------------------------------
def _arg_type(tp) -> tuple[type, bool]:
    """(item type, is_list) of a resolved field annotation such as ``Optional[list[int]]``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    if tp is list or typing.get_origin(tp) is list:
        args = typing.get_args(tp)
        return (args[0] if args else str), True
    return tp, False


def _bool(value: str) -> bool:
    v = value.lower()
    if v in ("1", "true", "yes", "y", "on"):
        return True
    if v in ("0", "false", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got '{value}'")


class UsageErrorParser(argparse.ArgumentParser):
    """argparse whose usage errors are one ``error:`` line (via ``HFTransferError``), like every other error."""

    def error(self, message: str):
        raise HFTransferError(f"{message}: see --help for the valid options")


def build_parser(description: str, config_cls=TrainConfig, prog: str | None = None) -> argparse.ArgumentParser:
    # allow_abbrev=False: argparse would otherwise take a mistyped --learning_rat as --learning_rate
    parser = UsageErrorParser(prog=prog, description=description, argument_default=argparse.SUPPRESS, allow_abbrev=False,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    hints = typing.get_type_hints(config_cls)
    groups = {}
    for f in fields(config_cls):
        # --help lists the options under the group (ModelOptions, DataOptions, ...) that declares them
        owner = next(c for c in reversed(config_cls.__mro__) if f.name in getattr(c, "__annotations__", {}))
        title = owner.__name__.removesuffix("Options").lower() if owner is not config_cls else "options"
        if title not in groups:
            doc = (owner.__doc__ or "").strip().split("\n")[0]
            groups[title] = parser.add_argument_group(title, None if doc.startswith(owner.__name__ + "(") else doc)
        group = groups[title]
        tp, is_list = _arg_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        choices = f.metadata.get("choices")
        allowed = f"one of {{{','.join(choices)}}}, " if choices else ""
        shown = "" if "default:" in f.metadata["help"] else f"default: {default}"
        kwargs = {"help": f"{f.metadata['help']} ({allowed}{shown})" if allowed or shown else f.metadata["help"]}
        if tp is bool:
            group.add_argument(f"--{f.name}", type=_bool, nargs="?", const=True, **kwargs)
        elif is_list:
            group.add_argument(f"--{f.name}", nargs="+", **kwargs)
        else:
            group.add_argument(f"--{f.name}", type=tp, **kwargs)
    return parser


def _coerce(name: str, value, hints: dict):
    """Convert YAML / CLI values to the field's type, with a one-line error naming the option."""
    tp, is_list = _arg_type(hints[name])
    if value is None:
        return None
    try:
        if is_list:
            values = value if isinstance(value, list) else str(value).replace(",", " ").split()
            return [tp(v) for v in values]
        if tp is bool:
            return value if isinstance(value, bool) else _bool(str(value))
        return tp(value)
    except (TypeError, ValueError, argparse.ArgumentTypeError):
        raise HFTransferError(f"option '{name}' got {value!r}, which is not a valid {tp.__name__}") from None


def load_config(argv: list[str] | None, defaults: dict | None = None, description: str = "", config_cls=TrainConfig,
                prog: str | None = None, validate: bool = True):
    """Merge dataclass defaults < recipe ``defaults`` < ``--config`` YAML < explicit flags, then ``validate()``
    (``validate=False``: only parse and type-check, e.g. to inspect a config whose data is elsewhere)."""
    parser = build_parser(description, config_cls, prog)
    cli = vars(parser.parse_args(argv))
    user = {**read_config_file(cli.get("config")), **cli}
    defaults = dict(defaults or {})
    if any(k in user for k in DATA_SOURCE_FIELDS):  # the user's own data: none of the default job's data/output settings apply
        defaults = {k: v for k, v in defaults.items() if k not in JOB_FIELDS}
    values = {**defaults, **user}
    unknown = sorted(set(values) - {f.name for f in fields(config_cls)})
    if unknown:
        raise HFTransferError(f"unknown option(s) {', '.join(unknown)} in the config: see --help for the valid names")
    hints = typing.get_type_hints(config_cls)
    cfg = config_cls(**{k: _coerce(k, v, hints) for k, v in values.items()})
    return cfg.validate() if validate else cfg


def read_config_file(path: str | None) -> dict:
    """A ``--config`` YAML file, its relative data paths resolved against the file's folder."""
    if not path:
        return {}
    p = Path(path)
    if not p.is_file():
        raise HFTransferError(f"config file '{path}' not found: pass an existing YAML file to --config")
    data = read_yaml(p)
    for key in PATH_FIELDS:
        if isinstance(data.get(key), str) and not Path(data[key]).is_absolute():
            data[key] = str((p.parent / data[key]).resolve())
    return data


def save_config(config: Options, path: Path) -> None:
    write_yaml(path, config.to_dict())
