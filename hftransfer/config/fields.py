"""What every option field carries, and the checks the option groups share.

``option(default, help, ...)`` declares a field with its help text, its fixed ``choices`` or its
numeric ``Range``, the recipe it belongs to (``modality``: image or text; None = both) and, where
the default is worked out at run time, the words ``--help`` shows for it (``default_text``).
``Options.validate()`` checks choices and ranges; the groups add their own checks on top.
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path

from ..errors import HFTransferError

MODALITIES = ("image", "text", "audio")


@dataclass(frozen=True)
class Range:
    """Allowed numbers of an option: ``lo < v`` (or ``<=`` when ``lo_inclusive``), likewise for ``hi``."""

    lo: float | None = None
    hi: float | None = None
    lo_inclusive: bool = True
    hi_inclusive: bool = True

    def __contains__(self, v) -> bool:
        ok_lo = self.lo is None or (v >= self.lo if self.lo_inclusive else v > self.lo)
        ok_hi = self.hi is None or (v <= self.hi if self.hi_inclusive else v < self.hi)
        return ok_lo and ok_hi

    def __str__(self) -> str:
        parts = []
        if self.lo is not None:
            parts.append(f"{'>=' if self.lo_inclusive else '>'} {self.lo:g}")
        if self.hi is not None:
            parts.append(f"{'<=' if self.hi_inclusive else '<'} {self.hi:g}")
        return "a number " + " and ".join(parts)


POSITIVE = Range(0, lo_inclusive=False)
AT_LEAST_ONE = Range(1)
NON_NEGATIVE = Range(0)
FRACTION = Range(0, 1, hi_inclusive=False)  # [0, 1)
OPEN_FRACTION = Range(0, 1, lo_inclusive=False, hi_inclusive=False)  # (0, 1)


def option(default, help: str, choices: tuple | None = None, valid: Range | None = None, *,
           modality: str | tuple[str, ...] | None = None, default_text: str | None = None):
    """A dataclass field with what ``--help`` and ``validate()`` need to know about it; ``modality``: the recipe(s)
    whose parser takes it (one name or a tuple; None = every recipe)."""
    metadata = {"help": help, "choices": choices, "valid": valid, "modality": modality, "default_text": default_text}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def applies_to(f: dataclasses.Field, modality: str | None) -> bool:
    """Whether option ``f`` belongs to ``modality``'s recipe (every option does when ``modality`` is None)."""
    owner = f.metadata.get("modality")
    return modality is None or owner is None or modality == owner or (isinstance(owner, tuple) and modality in owner)


def owner_recipes(f: dataclasses.Field) -> tuple[str, ...]:
    """The recipes whose parser takes option ``f`` (every one for a common option)."""
    owner = f.metadata.get("modality")
    return MODALITIES if owner is None else owner if isinstance(owner, tuple) else (owner,)


def to_bool(value: str) -> bool:
    """A flag's or YAML value's true / false, in the spellings argparse users expect."""
    v = value.lower()
    if v in ("1", "true", "yes", "y", "on"):
        return True
    if v in ("0", "false", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got '{value}'")


def arg_type(tp) -> tuple[type, bool]:
    """(item type, is_list) of a resolved field annotation such as ``Optional[list[int]]``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    if tp is list or typing.get_origin(tp) is list:
        args = typing.get_args(tp)
        return (args[0] if args else str), True
    return tp, False


def coerce_value(name: str, value, hints: dict):
    """A YAML / CLI value as the field's type (``hints``: the config's resolved annotations), with a
    one-line error naming the option."""
    tp, is_list = arg_type(hints[name])
    if value is None:
        return None
    try:
        if is_list:
            values = value if isinstance(value, list) else str(value).replace(",", " ").split()
            return [tp(v) for v in values]
        if tp is bool:
            return value if isinstance(value, bool) else to_bool(str(value))
        return tp(value)
    except (TypeError, ValueError, argparse.ArgumentTypeError):
        raise HFTransferError(f"option '{name}' got {value!r}, which is not a valid {tp.__name__}") from None


def default_of(f: dataclasses.Field):
    """The value a field takes when nothing sets it."""
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def check_paths(options: "Options", dir_flags: tuple[str, ...], file_flags: tuple[str, ...], dir_hint: str,
                file_hint: str) -> None:
    """One line naming the first ``--flag`` whose folder (``dir_flags``) or file (``file_flags``) is not there."""
    for flags, is_kind, other, hint in ((dir_flags, Path.is_dir, "is a file", dir_hint),
                                        (file_flags, Path.is_file, "is a folder", file_hint)):
        for flag in flags:
            path = getattr(options, flag)
            if path and not is_kind(Path(path)):
                what = other if Path(path).exists() else "does not exist"
                raise HFTransferError(f"--{flag} '{path}' {what}: {hint}")


class Options:
    """Shared behaviour of the option groups and of the configs built from them."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> "Options":
        """Check every value before the run touches anything; one ``HFTransferError`` line per problem."""
        for f in fields(self):
            value, choices, valid = getattr(self, f.name), f.metadata.get("choices"), f.metadata.get("valid")
            for v in (value if isinstance(value, list) else [value]):  # a list option: each of its values
                if choices and v is not None and v not in choices:
                    raise HFTransferError(f"unknown {f.name} '{v}' (--{f.name}): use one of {', '.join(map(str, choices))}")
                if valid is not None and v is not None and v not in valid:
                    raise HFTransferError(f"--{f.name} {v} is out of range: use {valid}")
        return self
