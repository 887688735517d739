"""A model's input and output schemas: what a request must carry, what a prediction holds."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from pipeline.errors import StreamserveError


KINDS = ("classifier", "regressor")  # what a model answers: OutputSchema.kind


class SchemaError(StreamserveError, ValueError):
    """A schema that cannot work; the message says what to change."""


@dataclass(frozen=True, slots=True)
class Feature:
    """One numeric input feature. ``minimum``/``maximum`` bound what training saw.

    ``sensitive``: the feature's values must never leave a worker in clear (samples, dead
    letters, logs); ``pipeline.redaction`` hashes them unless a rule asks for more.
    ``shape``: a tensor input's shape per row (an image: ``(28, 28)``), its values in
    row-major order; ``()`` for one number.
    """

    name: str
    dtype: str = "float32"
    minimum: float = -math.inf
    maximum: float = math.inf
    sensitive: bool = False
    shape: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not all(type(d) is int and d >= 1 for d in self.shape):
            raise SchemaError(f"input {self.name!r}: a tensor's shape is whole numbers of at "
                              f"least 1, got {list(self.shape)}")

    @property
    def size(self) -> int:
        """How many numbers the feature holds per row."""
        return math.prod(self.shape)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "dtype": self.dtype,
                             "minimum": _finite_or_none(self.minimum),
                             "maximum": _finite_or_none(self.maximum)}
        if self.sensitive:  # written only when set: unmarked manifests keep their bytes
            d["sensitive"] = True
        if self.shape:  # likewise
            d["shape"] = list(self.shape)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Feature:
        sensitive = d.get("sensitive", False)
        if not isinstance(sensitive, bool):
            raise SchemaError(f"feature {d['name']!r}: 'sensitive' must be true or false, "
                              f"got {sensitive!r}")
        return cls(d["name"], d.get("dtype", "float32"),
                   _none_to(d.get("minimum"), -math.inf), _none_to(d.get("maximum"), math.inf),
                   sensitive, tuple(d.get("shape", ())))


@dataclass(frozen=True, slots=True)
class InputSchema:
    """The ordered features a model reads; order is the column order of its input matrix.

    Either named numbers (tabular), or one tensor (``Feature.shape``): then a row is the
    tensor's numbers, row-major, and ``shape`` is what the model takes per row.
    """

    features: tuple[Feature, ...]
    # Derived once: decoding reads them for every request.
    names: tuple[str, ...] = field(init=False, repr=False, compare=False)
    index: dict[str, int] = field(init=False, repr=False, compare=False)
    tensor: Feature | None = field(init=False, repr=False, compare=False)
    """The one tensor input, or None for named numbers."""
    _width: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = tuple(f.name for f in self.features)
        if not names:
            raise SchemaError("an input schema needs at least one feature")
        if len(set(names)) != len(names):
            raise SchemaError(f"feature names must be unique, got {list(names)}")
        if any(f.shape for f in self.features) and len(names) > 1:
            raise SchemaError(f"a model reads one tensor or named numbers, not both: "
                              f"{', '.join(names)}")
        tensor = self.features[0] if self.features[0].shape else None
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "index", {n: i for i, n in enumerate(names)})
        object.__setattr__(self, "tensor", tensor)
        object.__setattr__(self, "_width", tensor.size if tensor is not None else len(names))

    def __len__(self) -> int:
        """The numbers in a row: the features, or the tensor's size."""
        return self._width

    @property
    def shape(self) -> tuple[int, ...]:
        """What the model takes per row: the tensor's shape, or ``(features,)``."""
        return self.tensor.shape if self.tensor is not None else (len(self.features),)

    def describe(self) -> str:
        """What a person reads: "4 features", or "one tensor 'pixels' of shape [8, 8]"."""
        if self.tensor is not None:
            return f"one tensor {self.tensor.name!r} of shape {list(self.tensor.shape)}"
        return f"{len(self.features)} features"

    def fields(self, row: Iterable[float]) -> dict[str, Any]:
        """A row by name, as samples show it: each feature's number, or the tensor's list."""
        if self.tensor is not None:
            return {self.tensor.name: list(row)}
        return dict(zip(self.names, row, strict=True))

    @property
    def sensitive(self) -> tuple[str, ...]:
        """The names of the features marked sensitive, in schema order."""
        return tuple(f.name for f in self.features if f.sensitive)

    def marked(self, names: Iterable[str]) -> InputSchema:
        """This schema with ``names`` marked sensitive as well (marks are never removed)."""
        names = set(names)
        unknown = sorted(names - self.index.keys())
        if unknown:
            raise SchemaError(f"cannot mark {', '.join(map(repr, unknown))} sensitive: the model "
                              f"has no such feature; its features are {', '.join(self.names)}")
        return InputSchema(tuple(replace(f, sensitive=True) if f.name in names else f
                                 for f in self.features))

    def to_json(self) -> dict[str, Any]:
        return {"features": [f.to_json() for f in self.features]}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> InputSchema:
        return cls(tuple(Feature.from_json(f) for f in d["features"]))


@dataclass(frozen=True, slots=True)
class OutputSchema:
    """What a model answers: a classifier's class probabilities in ``labels`` order and its
    top label, or a regressor's ``targets`` values (one output, ``value``). Either way the
    model gives one float32 row of ``width`` columns per request."""

    labels: tuple[str, ...] = ()
    targets: int = 0

    def __post_init__(self) -> None:
        if self.labels and self.targets:
            raise SchemaError("a model answers with class labels or with target values, not "
                              "both: give labels for a classifier, targets for a regressor")
        if not self.targets and len(self.labels) < 2:
            raise SchemaError("a classifier needs at least two labels (a regressor: targets >= 1)")
        if self.targets < 0:
            raise SchemaError(f"a regressor has at least one target, got {self.targets}")

    @property
    def is_regressor(self) -> bool:
        return self.targets > 0

    @property
    def width(self) -> int:
        """The columns of the model's output: one per class, or one per target."""
        return self.targets or len(self.labels)

    @property
    def kind(self) -> str:
        return "regressor" if self.is_regressor else "classifier"

    def describe(self) -> str:
        """What a person reads in ``models show``: the labels, or the values."""
        return (f"value ({self.targets} target{'s' if self.targets > 1 else ''})"
                if self.is_regressor else ", ".join(self.labels))

    def watched(self, answers: np.ndarray) -> np.ndarray:
        """What drift and the canary analysis watch of (n, width) answers: each row's
        predicted class index, or a regressor's first target value."""
        return answers[:, 0].astype(np.float64) if self.is_regressor else answers.argmax(axis=1)

    def to_json(self) -> dict[str, Any]:
        # A classifier's manifest keeps the bytes it had before regressors existed.
        return {"targets": self.targets} if self.is_regressor else {"labels": list(self.labels)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> OutputSchema:
        return cls(tuple(d.get("labels", ())), int(d.get("targets", 0)))


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _none_to(x: float | None, default: float) -> float:
    return default if x is None else float(x)
