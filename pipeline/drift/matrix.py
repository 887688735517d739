"""Counting a whole (n, F) batch against F references: the hot path, once per batch of rows.

``MatrixCounter`` costs a fixed number of numpy calls whatever F is, and agrees exactly
with ``counting.count`` on every column. Its ``MatrixCounts`` keep all features' bins
in one flat array, so that merging two panes is one addition per array.

Measured on the 2-core development machine, a 64-row float32 batch of 32 features
costs about 60 us (``count`` column by column: about 430 us); merging two
``MatrixCounts`` about 6 us.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.drift.counting import _FLOAT32, _FLOAT64, Counts, _as_float, _frozen
from pipeline.drift.errors import DriftError
from pipeline.drift.reference import FeatureReference

_ZERO = np.zeros(1, np.int64)


@dataclass(frozen=True, slots=True, eq=False)
class MatrixCounts:
    """Counts for every feature of a batch, kept flat so that panes merge in one addition.

    ``bins``: int64, all features' bins end to end; feature j owns
    ``bins[offsets[j]:offsets[j+1]]``. The other arrays are int64 (F,). ``rows``: rows counted.
    """

    bins: np.ndarray
    offsets: tuple[int, ...]
    missing: np.ndarray
    non_finite: np.ndarray
    out_of_range: np.ndarray
    unseen: np.ndarray
    rows: int

    def __post_init__(self) -> None:
        for name in ("bins", "missing", "non_finite", "out_of_range", "unseen"):
            object.__setattr__(self, name, _frozen(getattr(self, name)))
        object.__setattr__(self, "offsets", tuple(int(o) for o in self.offsets))
        object.__setattr__(self, "rows", int(self.rows))
        f = len(self.offsets) - 1
        if self.bins.size != self.offsets[-1] or any(
                getattr(self, a).shape != (f,) for a in ("missing", "non_finite", "out_of_range", "unseen")):
            raise DriftError(f"matrix counts are inconsistent: {self.bins.size} bins for offsets "
                             f"ending at {self.offsets[-1]}, {f} features")

    @classmethod
    def _trusted(cls, bins: np.ndarray, offsets: tuple[int, ...], missing: np.ndarray,
                 non_finite: np.ndarray, out_of_range: np.ndarray, unseen: np.ndarray,
                 rows: int) -> MatrixCounts:
        """Skips the checks: for ``MatrixCounter``, whose arrays are right by construction."""
        counts = object.__new__(cls)
        for name, value in (("bins", bins), ("missing", missing), ("non_finite", non_finite),
                            ("out_of_range", out_of_range), ("unseen", unseen)):
            value.setflags(write=False)
            object.__setattr__(counts, name, value)
        object.__setattr__(counts, "offsets", offsets)
        object.__setattr__(counts, "rows", rows)
        return counts

    @property
    def total(self) -> int:
        return self.rows

    def feature(self, j: int) -> Counts:
        """Feature j's counts."""
        return Counts(self.bins[self.offsets[j]:self.offsets[j + 1]], self.missing[j],
                      self.non_finite[j], self.out_of_range[j], self.unseen[j])

    def features(self) -> list[Counts]:
        return [self.feature(j) for j in range(len(self.offsets) - 1)]

    def __add__(self, other: MatrixCounts) -> MatrixCounts:
        if not isinstance(other, MatrixCounts):
            return NotImplemented
        if other.offsets != self.offsets:
            raise DriftError("cannot add matrix counts made against different references")
        return MatrixCounts._trusted(self.bins + other.bins, self.offsets, self.missing + other.missing,
                            self.non_finite + other.non_finite, self.out_of_range + other.out_of_range,
                            self.unseen + other.unseen, self.rows + other.rows)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MatrixCounts):
            return NotImplemented
        return (self.offsets == other.offsets and self.rows == other.rows
                and all(np.array_equal(getattr(self, a), getattr(other, a))
                        for a in ("bins", "missing", "non_finite", "out_of_range", "unseen")))

    __hash__ = None  # type: ignore[assignment]

    def to_json(self) -> dict[str, Any]:
        return {"bins": self.bins.tolist(), "offsets": list(self.offsets), "missing": self.missing.tolist(),
                "non_finite": self.non_finite.tolist(), "out_of_range": self.out_of_range.tolist(),
                "unseen": self.unseen.tolist(), "rows": self.rows}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> MatrixCounts:
        return cls(np.asarray(d["bins"], np.int64), tuple(d["offsets"]),
                   *(np.asarray(d[a], np.int64) for a in ("missing", "non_finite", "out_of_range", "unseen")),
                   rows=d["rows"])


class _Plan:
    """How ``MatrixCounter`` counts batches of one dtype without a per-column loop.

    Each column gets "planes": values v for which a batch's count of ``x >= v`` (numeric
    edges, the valid range) or ``x == v`` (a categorical vocabulary) is taken, all
    columns at once, from one gather, one comparison and one sum over the rows. Bins
    are then differences of those counts: bin k of a numeric column holds
    ``#(x >= e_k) - #(x >= e_k+1)``, which is ``searchsorted(side="right")`` binning.
    Out of range is ``#(x < min) + #(x >= nextafter(max))``.
    """

    def __init__(self, references: Sequence[FeatureReference], dtype: np.dtype) -> None:
        ge_col: list[int] = []
        ge_val: list[float] = []
        eq_col: list[int] = []
        eq_val: list[float] = []
        lookups = [r.lookup(dtype) for r in references]
        for j, (r, lk) in enumerate(zip(references, lookups)):
            above = np.nextafter(dtype.type(lk.maximum), dtype.type(np.inf))
            planes = [lk.minimum, *lk.interior.tolist(), float(above)]
            ge_col += [j] * len(planes)
            ge_val += planes
            if r.kind == "categorical":
                vocab = lk.vocabulary.copy()
                vocab[1:][vocab[1:] == vocab[:-1]] = np.nan  # values that collide in float32 match once
                eq_col += [j] * vocab.size
                eq_val += vocab.tolist()
        n_ge, n_eq, f = len(ge_val), len(eq_val), len(references)
        self.ge_col = np.asarray(ge_col, np.intp)
        self.ge_val = np.asarray(ge_val, dtype)
        self.eq_col = np.asarray(eq_col, np.intp)
        self.eq_val = np.asarray(eq_val, dtype)
        # Indexes into A = [#(x >= ge planes), #(x == eq planes), finite values per column, 0].
        fin, zero = n_ge + n_eq, n_ge + n_eq + f
        plus: list[int] = []
        minus: list[int] = []
        other_bin: list[int] = []
        low, high = [], []
        ge_at = eq_at = flat = 0
        for j, (r, lk) in enumerate(zip(references, lookups)):
            k = r.n_bins
            low.append(ge_at)
            if r.kind == "numeric":
                cut = [fin + j, *range(ge_at + 1, ge_at + k), zero]  # n, #(x >= e_1) .. #(x >= e_K-1), 0
                plus += cut[:-1]
                minus += cut[1:]
                ge_at += k + 1
            else:
                plus += [n_ge + eq_at + i for i in range(k - 1)] + [fin + j]  # OTHER: set below
                minus += [zero] * k
                other_bin.append(flat + k - 1)
                eq_at += k - 1
                ge_at += 2
            high.append(ge_at - 1)
            flat += k
        self.plus = np.asarray(plus, np.intp)
        self.minus = np.asarray(minus, np.intp)
        self.low = np.asarray(low, np.intp)
        self.high = np.asarray(high, np.intp)
        self.categorical = np.asarray([j for j, r in enumerate(references) if r.kind == "categorical"], np.intp)
        self.other_bin = np.asarray(other_bin, np.intp)
        sizes = [r.n_bins - 1 for r in references if r.kind == "categorical"]
        self.eq_start = np.asarray(np.cumsum([0, *sizes[:-1]]), np.intp)


class MatrixCounter:
    """Counts (n, F) batches against F references (one per column, in column order).

    Build one per model version and keep it; a call costs a fixed number of numpy
    operations whatever F is (see ``_Plan``), and agrees exactly with ``count`` on
    each column.
    """

    def __init__(self, references: Sequence[FeatureReference]) -> None:
        if not references:
            raise DriftError("a MatrixCounter needs at least one feature reference")
        self.references = tuple(references)
        self.offsets = tuple(np.cumsum([0, *(r.n_bins for r in self.references)]).tolist())
        self._plans = {dtype: _Plan(self.references, dtype) for dtype in (_FLOAT32, _FLOAT64)}

    def __call__(self, matrix: np.ndarray) -> MatrixCounts:
        x = _as_float(matrix)
        f = len(self.references)
        if x.ndim != 2 or x.shape[1] != f:
            raise DriftError(f"expected a batch of shape (n, {f}) with columns "
                             f"{[r.name for r in self.references]}, got {x.shape}")
        plan = self._plans[x.dtype]
        n = x.shape[0]
        finite = np.isfinite(x)
        clean = bool(finite.all())
        if clean:
            missing = bad = np.zeros(f, np.int64)
        else:  # +inf is >= every plane and equal to none, so its count is taken off below
            missing = np.count_nonzero(np.isnan(x), axis=0)
            bad = n - np.count_nonzero(finite, axis=0)
            x = np.where(finite, x, np.inf)
        ge = np.add.reduce((x[:, plan.ge_col] >= plan.ge_val).view(np.uint8), axis=0, dtype=np.int64)
        if not clean:
            ge -= bad[plan.ge_col]
        valid = n - bad
        unseen = np.zeros(f, np.int64)
        if plan.categorical.size:
            eq = np.add.reduce((x[:, plan.eq_col] == plan.eq_val).view(np.uint8), axis=0, dtype=np.int64)
            a = np.concatenate([ge, eq, valid, _ZERO])
            bins = a[plan.plus] - a[plan.minus]
            other = valid[plan.categorical] - np.add.reduceat(eq, plan.eq_start)
            bins[plan.other_bin] = other
            unseen[plan.categorical] = other
        else:
            a = np.concatenate([ge, valid, _ZERO])
            bins = a[plan.plus] - a[plan.minus]
        out_of_range = valid - ge[plan.low] + ge[plan.high]
        return MatrixCounts._trusted(bins, self.offsets, missing, bad - missing, out_of_range, unseen, n)


def count_matrix(references: Sequence[FeatureReference], matrix: np.ndarray) -> list[Counts]:
    """Each column's ``Counts``; for repeated batches build one ``MatrixCounter`` and keep it."""
    return MatrixCounter(references)(matrix).features()
