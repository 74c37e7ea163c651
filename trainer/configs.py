"""What the config dataclasses share: a JSON round trip that refuses unknown keys, and value checks."""

from __future__ import annotations

import math
from dataclasses import asdict, fields
from typing import Any, Self


class DictConfig:
    """Mixin for config dataclasses: `to_dict` / `from_dict`, unknown keys being an error that names them."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        """Inverse of `to_dict`; unknown keys are an error."""
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown {cls.__name__} fields {unknown}; known: {sorted(known)}.")
        return cls(**data)


def is_int(value: Any) -> bool:
    """A whole number (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
