"""``Record``: a dataclass that round-trips through JSON."""
from __future__ import annotations

import dataclasses


class Record:
    """A dataclass that round-trips through JSON: unknown keys are ignored, missing ones take defaults."""

    NESTED: dict[str, type] = {}  # field -> Record class (a list field holds a list of them)

    @classmethod
    def from_dict(cls, data: dict | None):
        if data is None:
            return None
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        for name, kind in cls.NESTED.items():
            if isinstance(values.get(name), list):
                values[name] = [kind.from_dict(v) for v in values[name]]
            elif isinstance(values.get(name), dict):
                values[name] = kind.from_dict(values[name])
        return cls(**values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
