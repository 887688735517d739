"""Counting one feature's values into its reference's bins.

``count`` is the definition (``searchsorted`` per column); ``matrix.MatrixCounter``
counts a whole batch at once and must agree with it exactly. Counts on the same bins
merge by addition (``a + b``), which is what lets window panes be summed instead of
recomputed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.drift.errors import DriftError
from pipeline.drift.reference import FeatureReference

_FLOAT32 = np.dtype(np.float32)
_FLOAT64 = np.dtype(np.float64)


def _as_float(values: np.ndarray) -> np.ndarray:
    """float32 stays float32 (compared in float32), anything else is compared in float64."""
    x = np.asarray(values)
    return x if x.dtype == _FLOAT32 or x.dtype == _FLOAT64 else x.astype(_FLOAT64)


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a, np.int64)
    a.setflags(write=False)
    return a


@dataclass(frozen=True, slots=True, eq=False)
class Counts:
    """One feature's counts over its reference's K bins, plus what stayed out of them.

    ``bins``: int64 (K,), finite values per bin. ``missing``: NaN values. ``non_finite``:
    +-inf values (neither enters a bin). ``out_of_range``: finite values below the
    reference minimum or above its maximum (they are binned too, in the open outer bins
    or ``__OTHER__``). ``unseen``: categorical values outside the vocabulary (binned in
    ``__OTHER__``); always 0 for a numeric feature.
    """

    bins: np.ndarray
    missing: int = 0
    non_finite: int = 0
    out_of_range: int = 0
    unseen: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "bins", _frozen(self.bins))
        for name in ("missing", "non_finite", "out_of_range", "unseen"):
            object.__setattr__(self, name, int(getattr(self, name)))

    @classmethod
    def zeros(cls, n_bins: int) -> Counts:
        return cls(np.zeros(n_bins, np.int64))

    @property
    def n(self) -> int:
        """M: the values that fell in the bins (the window size PSI is computed from)."""
        return int(self.bins.sum())

    @property
    def total(self) -> int:
        """Every value counted, NaN and +-inf included."""
        return self.n + self.missing + self.non_finite

    def __add__(self, other: Counts) -> Counts:
        if not isinstance(other, Counts):
            return NotImplemented
        if other.bins.shape != self.bins.shape:
            raise DriftError(f"cannot add counts over {self.bins.size} bins to counts over "
                             f"{other.bins.size}: they come from different references")
        return Counts(self.bins + other.bins, self.missing + other.missing,
                      self.non_finite + other.non_finite, self.out_of_range + other.out_of_range,
                      self.unseen + other.unseen)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Counts):
            return NotImplemented
        return (np.array_equal(self.bins, other.bins) and self.missing == other.missing
                and self.non_finite == other.non_finite and self.out_of_range == other.out_of_range
                and self.unseen == other.unseen)

    __hash__ = None  # type: ignore[assignment]

    def to_json(self) -> dict[str, Any]:
        return {"bins": self.bins.tolist(), "missing": self.missing, "non_finite": self.non_finite,
                "out_of_range": self.out_of_range, "unseen": self.unseen}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Counts:
        return cls(np.asarray(d["bins"], np.int64), d["missing"], d["non_finite"],
                   d["out_of_range"], d["unseen"])


def count(reference: FeatureReference, values: np.ndarray) -> Counts:
    """Count one feature's values (shape (n,)) into ``reference``'s bins."""
    x = _as_float(values)
    if x.ndim != 1:
        raise DriftError(f"values for feature {reference.name!r} must be one column (n,), got {x.shape}")
    lookup = reference.lookup(x.dtype)
    nan = np.isnan(x)
    finite = np.isfinite(x)
    xf = x[finite]
    out_of_range = np.count_nonzero((xf < lookup.minimum) | (xf > lookup.maximum))
    if reference.kind == "numeric":
        bins = np.searchsorted(lookup.interior, xf, side="right")
        unseen = 0
    else:
        at = np.minimum(np.searchsorted(lookup.vocabulary, xf), lookup.vocabulary.size - 1)
        hit = lookup.vocabulary[at] == xf
        bins = np.where(hit, at, lookup.vocabulary.size)
        unseen = xf.size - np.count_nonzero(hit)
    missing = int(np.count_nonzero(nan))
    return Counts(np.bincount(bins, minlength=reference.n_bins), missing,
                  x.size - xf.size - missing, out_of_range, unseen)
