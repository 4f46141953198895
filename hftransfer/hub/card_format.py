"""How the card writes single values: numbers, learning rates, markdown table cells, local paths and layer groups.

Shared by every section module (``card_model_data``, ``card_recipe``, ``card_results``), so that a
value reads the same wherever the card shows it.
"""
from __future__ import annotations

import re
from pathlib import Path

MAX_GROUPS_NAMED = 3  # a longer run of layer groups is named by its two ends


def format_value(value, digits: int = 4) -> str:
    """A metric or setting as table text: ``n/a`` when missing, ``true`` / ``false``, floats to ``digits`` places."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):  # before int: bool is an int subclass
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return markdown_escape(str(value))


def format_learning_rate(value) -> str:
    """``1.00e-4`` rather than Python's ``1.00e-04``; ``n/a`` when missing."""
    return "n/a" if value is None else f"{value:.2e}".replace("e-0", "e-")


def markdown_escape(text) -> str:
    """Safe inside a markdown table cell: pipes escaped, newlines folded into spaces."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def public_path_name(path: str) -> str:
    """The last two parts of a local path: enough to recognize it, no home directories in public cards."""
    parts = Path(path).parts
    return "/".join(parts[-2:]) if len(parts) > 1 else path


def looks_like_local_path(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or Path(name).exists()


def looks_like_hub_repo_id(name: str) -> bool:
    """``owner/name`` that is not also a local folder (a local folder of that name would have been loaded)."""
    return bool(re.fullmatch(r"[\w.-]+/[\w.-]+", name)) and not looks_like_local_path(name)


def group_display_name(group: str) -> str:
    """A layer group without the ``backbone.`` prefix every backbone group shares."""
    return group.removeprefix("backbone.")


def group_span_display(groups: list[str]) -> str:
    """Frozen groups are a prefix and trainable ones a suffix of the ordered list: name its ends."""
    if not groups:
        return "none"
    names = [f"`{group_display_name(group)}`" for group in groups]
    if len(names) <= MAX_GROUPS_NAMED:
        return ", ".join(names)
    return f"{names[0]} ... {names[-1]} ({len(names)} groups)"


def insert_section(text: str, section: str | None, before: str) -> str:
    """``text`` with ``section`` placed before the heading ``before`` (at the end when there is none; unchanged for
    no section)."""
    if section is None:
        return text
    if before in text:
        head, _, tail = text.partition(before)
        return f"{head}{section}\n{before}{tail}"
    return f"{text.rstrip()}\n\n{section}"
