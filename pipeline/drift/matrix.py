"""Coding and counting a whole (n, F) batch against F references: the hot path.

``MatrixCounter.codes`` gives every value a one-byte code (its bin and flags) in a
fixed number of numpy calls whatever F is; ``tally`` adds codes up into counts that
agree exactly with ``counting.count`` on every column. ``MatrixCounts`` keep all
features' bins in one flat array, so that merging two panes is one addition per array.

Measured on the 2-core development machine, coding a 64-row float32 batch of 32
features costs about 70 us (``count`` column by column: about 430 us); tallying it
about 90 us; merging two ``MatrixCounts`` about 6 us.
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


# A row's code per feature (uint8): its bin, with the high bit set when the value lies
# outside the reference range; NaN and +-inf get codes of their own (they enter no bin).
MISSING_CODE = 0xFF
NON_FINITE_CODE = 0xFE
_OUT_OF_RANGE_BIT = 0x80
MAX_BINS = _OUT_OF_RANGE_BIT - 2  # bins 0..125 stay clear of the codes above


class _Plan:
    """How ``MatrixCounter`` codes batches of one dtype without a per-column loop.

    A numeric column's bin is ``#(x >= e)`` over its interior edges (``searchsorted``
    with ``side="right"``); a categorical column's is the position of the vocabulary
    value it equals, else ``__OTHER__``. Edges and vocabularies are padded to one
    length (with +inf, which no binned value reaches, and NaN, which equals nothing),
    so each is one broadcast comparison and one sum over all columns.
    """

    def __init__(self, references: Sequence[FeatureReference], dtype: np.dtype) -> None:
        lookups = [r.lookup(dtype) for r in references]
        self.numeric = np.asarray([j for j, r in enumerate(references) if r.kind == "numeric"], np.intp)
        self.categorical = np.asarray([j for j, r in enumerate(references) if r.kind == "categorical"],
                                      np.intp)
        self.edges = _padded([lookups[j].interior for j in self.numeric], np.inf, dtype)
        vocabularies = []
        for j in self.categorical:
            vocab = lookups[j].vocabulary.copy()
            vocab[1:][vocab[1:] == vocab[:-1]] = np.nan  # values that collide in float32 match once
            vocabularies.append(vocab)
        self.vocabulary = _padded(vocabularies, np.nan, dtype)
        self.position = np.arange(1, self.vocabulary.shape[0] + 1, dtype=np.uint8)[:, None, None]  # + 1
        self.other = np.asarray([lookups[j].vocabulary.size for j in self.categorical], np.uint8)
        self.minimum = np.asarray([lk.minimum for lk in lookups], dtype)
        self.maximum = np.asarray([lk.maximum for lk in lookups], dtype)


def _padded(rows: list[np.ndarray], fill: float, dtype: np.dtype) -> np.ndarray:
    """(longest, len(rows)): row i as column i, short ones filled with ``fill``. Laid out
    so that comparisons sum over the first axis (numpy is slow summing short last axes)."""
    out = np.full((max((r.size for r in rows), default=0), len(rows)), fill, dtype)
    for i, r in enumerate(rows):
        out[:r.size, i] = r
    return out


class MatrixCounter:
    """Codes and counts (n, F) batches against F references (one per column, in order).

    Build one per model version and keep it. ``codes`` turns a batch into one uint8 code
    per value (a fixed number of numpy operations whatever F is); ``tally`` adds codes
    up into ``MatrixCounts``. Codes are what a worker ships: they keep each row apart,
    so rows counted once already can be told apart when a batch is served again.
    ``counter(batch)`` is ``tally(codes(batch))`` and agrees exactly with ``count`` on
    each column.
    """

    def __init__(self, references: Sequence[FeatureReference]) -> None:
        if not references:
            raise DriftError("a MatrixCounter needs at least one feature reference")
        for r in references:
            if r.n_bins > MAX_BINS:
                raise DriftError(f"feature {r.name!r} has {r.n_bins} bins; drift codes allow at "
                                 f"most {MAX_BINS}: keep fewer categories in its reference")
        self.references = tuple(references)
        self.offsets = tuple(np.cumsum([0, *(r.n_bins for r in self.references)]).tolist())
        self._bin_base = np.asarray(self.offsets[:-1], np.intp)
        self._other_bin = np.asarray([self.offsets[j + 1] - 1 for j, r in enumerate(self.references)
                                      if r.kind == "categorical"], np.intp)
        self._categorical = np.asarray([j for j, r in enumerate(self.references)
                                        if r.kind == "categorical"], np.intp)
        self._plans = {dtype: _Plan(self.references, dtype) for dtype in (_FLOAT32, _FLOAT64)}

    def __call__(self, matrix: np.ndarray) -> MatrixCounts:
        return self.tally(self.codes(matrix))

    def codes(self, matrix: np.ndarray) -> np.ndarray:
        """uint8 (n, F): each value's bin, ``| 0x80`` when out of range; NaN and +-inf
        are ``MISSING_CODE`` and ``NON_FINITE_CODE``."""
        x = _as_float(matrix)
        f = len(self.references)
        if x.ndim != 2 or x.shape[1] != f:
            raise DriftError(f"expected a batch of shape (n, {f}) with columns "
                             f"{[r.name for r in self.references]}, got {x.shape}")
        plan = self._plans[x.dtype]
        codes = np.empty(x.shape, np.uint8)
        if plan.numeric.size:
            codes[:, plan.numeric] = (x[None, :, plan.numeric] >= plan.edges[:, None]).sum(
                0, dtype=np.uint8)
        if plan.categorical.size:
            at = np.where(x[None, :, plan.categorical] == plan.vocabulary[:, None], plan.position,
                          np.uint8(0))
            found = at.sum(0, dtype=np.uint8)
            codes[:, plan.categorical] = np.where(found > 0, found - 1, plan.other)
        codes |= ((x < plan.minimum) | (x > plan.maximum)).view(np.uint8) << 7
        finite = np.isfinite(x)
        if not finite.all():
            nan = np.isnan(x)
            codes[nan] = MISSING_CODE
            codes[~finite & ~nan] = NON_FINITE_CODE
        return codes

    def tally(self, codes: np.ndarray) -> MatrixCounts:
        """The counts of a (n, F) block of codes (``codes``' output, or rows of it)."""
        f = len(self.references)
        if codes.ndim != 2 or codes.shape[1] != f or codes.dtype != np.uint8:
            raise DriftError(f"expected uint8 drift codes of shape (n, {f}), got {codes.dtype} {codes.shape}")
        missing = np.count_nonzero(codes == MISSING_CODE, axis=0).astype(np.int64)
        non_finite = np.count_nonzero(codes == NON_FINITE_CODE, axis=0).astype(np.int64)
        binned = codes < NON_FINITE_CODE
        out_of_range = np.count_nonzero((codes >= _OUT_OF_RANGE_BIT) & binned, axis=0).astype(np.int64)
        flat = (codes & (_OUT_OF_RANGE_BIT - 1)).astype(np.intp) + self._bin_base
        bins = np.bincount(flat[binned], minlength=self.offsets[-1]).astype(np.int64)
        unseen = np.zeros(f, np.int64)
        unseen[self._categorical] = bins[self._other_bin]
        return MatrixCounts._trusted(bins, self.offsets, missing, non_finite, out_of_range, unseen,
                                     codes.shape[0])


def count_matrix(references: Sequence[FeatureReference], matrix: np.ndarray) -> list[Counts]:
    """Each column's ``Counts``; for repeated batches build one ``MatrixCounter`` and keep it."""
    return MatrixCounter(references)(matrix).features()
