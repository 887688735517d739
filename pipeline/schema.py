"""A model's input and output schemas: what a request must carry, what a prediction holds."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Feature:
    """One numeric input feature. ``minimum``/``maximum`` bound what training saw."""

    name: str
    dtype: str = "float32"
    minimum: float = -math.inf
    maximum: float = math.inf

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype,
                "minimum": _finite_or_none(self.minimum), "maximum": _finite_or_none(self.maximum)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Feature:
        return cls(d["name"], d.get("dtype", "float32"),
                   _none_to(d.get("minimum"), -math.inf), _none_to(d.get("maximum"), math.inf))


@dataclass(frozen=True, slots=True)
class InputSchema:
    """The ordered features a model reads; order is the column order of its input matrix."""

    features: tuple[Feature, ...]
    # Derived once: decoding reads them for every request.
    names: tuple[str, ...] = field(init=False, repr=False, compare=False)
    index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = tuple(f.name for f in self.features)
        if not names:
            raise ValueError("an input schema needs at least one feature")
        if len(set(names)) != len(names):
            raise ValueError(f"feature names must be unique, got {list(names)}")
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "index", {n: i for i, n in enumerate(names)})

    def __len__(self) -> int:
        return len(self.features)

    def to_json(self) -> dict[str, Any]:
        return {"features": [f.to_json() for f in self.features]}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> InputSchema:
        return cls(tuple(Feature.from_json(f) for f in d["features"]))


@dataclass(frozen=True, slots=True)
class OutputSchema:
    """A classifier's outputs: class probabilities in ``labels`` order, and the top label."""

    labels: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.labels) < 2:
            raise ValueError("a classifier needs at least two labels")

    def to_json(self) -> dict[str, Any]:
        return {"labels": list(self.labels)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> OutputSchema:
        return cls(tuple(d["labels"]))


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _none_to(x: float | None, default: float) -> float:
    return default if x is None else float(x)
