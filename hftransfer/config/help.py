"""What ``--help`` says about each option: its help, its choices and the default that will actually run.

A recipe's YAML sets some options for every run of that recipe (``strategy: lp_ft``): ``--help``
shows that value and the file it comes from, not the dataclass default the run never sees. The
default job's settings (its ``default_job`` section, and the data and output keys ``JOB_FIELDS``)
apply only while the user names no data of their own, so both are shown: the default, and the
default job's value.
"""
from __future__ import annotations

import textwrap
from dataclasses import Field
from pathlib import Path

from .configs import JOB_FIELDS
from .data_options import PATH_FIELDS
from .fields import default_of

WIDTH = 100  # the epilog is printed as written (RawDescriptionHelpFormatter), so it is wrapped here


def option_help(f: Field, recipe: dict, source: str, job: dict | None = None) -> str:
    """``f``'s help line: its text, then its choices and its default (argparse's ``%`` escaped); ``job``: the
    settings of the recipe's ``default_job`` section."""
    choices = f.metadata.get("choices")
    allowed = f"one of {{{','.join(map(str, choices))}}}, " if choices else ""
    return f"{f.metadata['help']} ({allowed}{_default_words(f, recipe, source, job or {})})".replace("%", "%%")


def _default_words(f: Field, recipe: dict, source: str, job: dict) -> str:
    own = f.metadata.get("default_text") or _shown(f.name, default_of(f))
    if f.name in job:  # the default job's own setting: the default that applies to the user's data beside it
        if f.name in recipe:
            return f"default: {_shown(f.name, recipe[f.name])}; default job: {_shown(f.name, job[f.name])}; both from {source}"
        return f"default: {own}; default job: {_shown(f.name, job[f.name])}, from {source}"
    if f.name not in recipe:
        return f"default: {own}"
    value = _shown(f.name, recipe[f.name])
    if f.name in JOB_FIELDS:
        return f"default: {own}; default job: {value}, from {source}"
    return f"default: {value}, from {source}"


def _shown(name: str, value) -> str:
    """A default as the user would type it; a recipe's data path relative to the working folder when inside it."""
    if name in PATH_FIELDS and isinstance(value, str) and Path(value).is_absolute():
        try:
            return str(Path(value).relative_to(Path.cwd()))
        except ValueError:  # outside the working folder: the absolute path is the one that works
            return value
    return str(value)


def recipe_note(source: str, data_flags: list[str]) -> str:
    """The epilog line that says whose defaults 'from <source>' and 'default job' are."""
    flags = ", ".join(f"--{name}" for name in data_flags)
    return textwrap.fill(f"Defaults 'from {source}' are this recipe's own. A 'default job' value belongs to the "
                         f"recipe's embedded default job and applies only while you name no data of your own "
                         f"({flags}); then the default before it applies.", width=WIDTH)


def modality_note(other: str, names: list[str]) -> str:
    """The epilog line naming the other recipe's options, which this parser refuses."""
    flags = ", ".join(f"--{name}" for name in names)
    return textwrap.fill(f"Options of the {other} recipe (recipes/{other}_cls.py), refused here: {flags}.", width=WIDTH)
