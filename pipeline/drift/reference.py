"""Reference statistics: the training data's bins, stored in a model's manifest.

A numeric feature gets K bins from the reference's deciles (``np.quantile``, linear
interpolation), the outer two open to -inf and +inf, bin i holding ``[e_i, e_i+1)``
(``np.searchsorted(edges, x, side="right")``). A feature with at most ``max_distinct``
distinct reference values, or whose decile edges tie, is categorical: its bins are the
reference's ``top_n`` most frequent values plus ``__OTHER__`` for everything else.
NaN and +-inf never enter the bins (numpy would put NaN in the top bin); they are
counted apart (see ``counting``).

Comparisons happen in the precision of the values being counted: a float32 batch is
compared with the edges, vocabulary and valid range rounded to float32 (so a float32
copy of a reference value is never "out of range" or "unseen"); anything else is
compared in float64.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import numpy as np

from pipeline.drift.errors import DriftError
from pipeline.schema import OutputSchema

OTHER = "__OTHER__"
Kind = Literal["numeric", "categorical"]


class _Lookup(NamedTuple):
    """A reference's bins as arrays of one float dtype, ready for searchsorted."""

    interior: np.ndarray  # numeric: the K-1 finite edges; categorical: empty
    vocabulary: np.ndarray  # categorical: the vocabulary (ascending, bin i is vocabulary[i]); numeric: empty
    minimum: float
    maximum: float


@dataclass(frozen=True, slots=True)
class FeatureReference:
    """One feature's reference distribution over fixed bins.

    ``edges``: numeric only, the K+1 bin edges, ``-inf`` first and ``+inf`` last, strictly
    increasing. ``vocabulary``: categorical only, the K-1 reference values that have a
    bin of their own (sorted); bin K-1 is ``__OTHER__``. ``counts``: the reference's
    count in each of the K bins. ``minimum``/``maximum``: the finite range training saw.
    """

    name: str
    kind: Kind
    counts: tuple[int, ...]
    minimum: float
    maximum: float
    edges: tuple[float, ...] = ()
    vocabulary: tuple[float, ...] = ()
    _lookups: dict[Any, _Lookup] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        counts = tuple(int(c) for c in self.counts)
        edges = tuple(float(e) for e in self.edges)
        vocabulary = tuple(float(v) for v in self.vocabulary)
        object.__setattr__(self, "counts", counts)
        object.__setattr__(self, "edges", edges)
        object.__setattr__(self, "vocabulary", vocabulary)
        object.__setattr__(self, "minimum", float(self.minimum))
        object.__setattr__(self, "maximum", float(self.maximum))
        where = f"reference for feature {self.name!r}"
        if any(c < 0 for c in counts) or sum(counts) == 0:
            raise DriftError(f"{where}: counts must be non-negative with a positive total, got {counts}")
        if not (math.isfinite(self.minimum) and math.isfinite(self.maximum) and self.minimum <= self.maximum):
            raise DriftError(f"{where}: the valid range must be finite with minimum <= maximum, "
                             f"got [{self.minimum}, {self.maximum}]")
        if self.kind == "numeric":
            interior = np.asarray(edges[1:-1])
            if (len(edges) < 2 or edges[0] != -math.inf or edges[-1] != math.inf
                    or not np.all(np.isfinite(interior)) or np.any(np.diff(interior) <= 0)):
                raise DriftError(f"{where}: numeric edges must run from -inf to +inf with strictly "
                                 f"increasing finite edges between, got {edges}")
            if vocabulary or len(counts) != len(edges) - 1:
                raise DriftError(f"{where}: a numeric reference has one count per bin "
                                 f"({len(edges) - 1}) and no vocabulary, got {len(counts)} counts")
        elif self.kind == "categorical":
            if (not vocabulary or not all(math.isfinite(v) for v in vocabulary)
                    or any(a >= b for a, b in itertools.pairwise(vocabulary))):
                raise DriftError(f"{where}: the vocabulary must be distinct finite values in "
                                 f"ascending order, got {vocabulary}")
            if edges or len(counts) != len(vocabulary) + 1:
                raise DriftError(f"{where}: a categorical reference has one count per vocabulary "
                                 f"value plus one for {OTHER} ({len(vocabulary) + 1}), got {len(counts)}")
        else:
            raise DriftError(f"{where}: kind must be 'numeric' or 'categorical', got {self.kind!r}")
        object.__setattr__(self, "_lookups", {})

    @property
    def n(self) -> int:
        """N: how many reference values fell in the bins."""
        return sum(self.counts)

    @property
    def n_bins(self) -> int:
        """K: the number of bins compared, ``__OTHER__`` included."""
        return len(self.counts)

    def lookup(self, dtype: np.dtype) -> _Lookup:
        """The bins as arrays of ``dtype`` (float32 or float64), built once per dtype."""
        lookup = self._lookups.get(dtype)
        if lookup is None:
            # Rounding to float32 keeps the order; values that collide then share the first bin,
            # and values beyond float32's range become +-inf, which no finite float32 passes.
            with np.errstate(over="ignore"):
                lookup = _Lookup(np.asarray(self.edges[1:-1], dtype), np.asarray(self.vocabulary, dtype),
                                 float(dtype.type(self.minimum)), float(dtype.type(self.maximum)))
            self._lookups[dtype] = lookup
        return lookup

    def to_json(self) -> dict[str, Any]:
        """Strict JSON: the infinite outer edges are the strings "-inf" and "inf"."""
        d: dict[str, Any] = {"name": self.name, "kind": self.kind}
        if self.kind == "numeric":
            d["edges"] = ["-inf", *self.edges[1:-1], "inf"]
        else:
            d["vocabulary"] = [*self.vocabulary, OTHER]
        d.update(counts=list(self.counts), n=self.n, min=self.minimum, max=self.maximum)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> FeatureReference:
        try:
            kind = d["kind"]
            if kind == "numeric":
                edges = d["edges"]
                if edges[:1] != ["-inf"] or edges[-1:] != ["inf"]:
                    raise DriftError(f"numeric edges must start with '-inf' and end with 'inf', got {edges}")
                ref = cls(d["name"], kind, d["counts"], d["min"], d["max"],
                          edges=(-math.inf, *edges[1:-1], math.inf))
            else:
                vocabulary = d["vocabulary"]
                if vocabulary[-1:] != [OTHER]:
                    raise DriftError(f"a categorical vocabulary must end with {OTHER!r}, got {vocabulary}")
                ref = cls(d["name"], kind, d["counts"], d["min"], d["max"], vocabulary=vocabulary[:-1])
        except (KeyError, TypeError) as e:
            raise DriftError(f"reference JSON lacks or mistypes {e}; write it with "
                             f"FeatureReference.to_json()") from None
        if "n" in d and d["n"] != ref.n:
            raise DriftError(f"reference {ref.name!r}: n={d['n']} disagrees with its counts (sum {ref.n})")
        return ref


def reference_for(values: np.ndarray, name: str, *, n_bins: int = 10, max_distinct: int = 20,
                  top_n: int = 20) -> FeatureReference:
    """The reference statistics of one feature's training values (shape (n,)).

    Numeric when the finite values have more than ``max_distinct`` distinct values and
    ``n_bins`` untied quantile edges; categorical (``top_n`` values + ``__OTHER__``) otherwise.
    """
    if n_bins < 2 or max_distinct < 1 or top_n < 1:
        raise DriftError(f"need n_bins >= 2, max_distinct >= 1 and top_n >= 1, "
                         f"got {n_bins}, {max_distinct}, {top_n}")
    x = np.asarray(values, np.float64)
    if x.ndim != 1:
        raise DriftError(f"reference values for {name!r} must be one column (n,), got shape {x.shape}")
    x = x[np.isfinite(x)]
    if x.size == 0:
        raise DriftError(f"feature {name!r} has no finite reference values; drop it from drift monitoring")
    lo, hi = float(x.min()), float(x.max())
    distinct, freq = np.unique(x, return_counts=True)
    if distinct.size > max_distinct:
        interior = np.quantile(x, np.arange(1, n_bins) / n_bins, method="linear")
        if np.all(np.diff(interior) > 0):
            counts = np.bincount(np.searchsorted(interior, x, side="right"), minlength=n_bins)
            return FeatureReference(name, "numeric", tuple(counts.tolist()), lo, hi,
                                    edges=(-math.inf, *interior.tolist(), math.inf))
    # Most frequent first, ties to the smaller value; the bins themselves are in value order.
    keep = np.sort(np.lexsort((distinct, -freq))[:top_n])
    counts = [*freq[keep].tolist(), int(x.size - freq[keep].sum())]
    return FeatureReference(name, "categorical", tuple(counts), lo, hi, vocabulary=tuple(distinct[keep].tolist()))


def references_for(matrix: np.ndarray, names: list[str] | tuple[str, ...], **options: int) -> list[FeatureReference]:
    """``reference_for`` for each column of a training matrix (n, F), in column order."""
    matrix = np.asarray(matrix)
    if matrix.ndim != 2 or matrix.shape[1] != len(names):
        raise DriftError(f"expected a matrix of shape (n, {len(names)}) for features {list(names)}, "
                         f"got {matrix.shape}")
    return [reference_for(matrix[:, j], name, **options) for j, name in enumerate(names)]


def reference_for_labels(labels: np.ndarray, n_classes: int, *, name: str = "label") -> FeatureReference:
    """The distribution of a classifier's predicted class indices (0..n_classes-1) as a reference.

    Every class has a bin, even one the reference never predicted; ``__OTHER__`` stays
    empty in the reference and catches indices outside the classes.
    """
    if n_classes < 1:
        raise DriftError(f"n_classes must be at least 1, got {n_classes}")
    y = np.asarray(labels)
    if y.ndim != 1 or y.size == 0:
        raise DriftError(f"labels must be a non-empty column (n,) of class indices, got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
            raise DriftError("labels must be whole class indices, e.g. argmax of the probabilities")
        y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= n_classes:
        raise DriftError(f"labels must lie in 0..{n_classes - 1}, got {int(y.min())}..{int(y.max())}")
    counts = [*np.bincount(y, minlength=n_classes).tolist(), 0]
    return FeatureReference(name, "categorical", tuple(counts), 0.0, float(n_classes - 1),
                            vocabulary=tuple(float(c) for c in range(n_classes)))


def reference_for_predictions(answers: np.ndarray, outputs: OutputSchema) -> FeatureReference:
    """The reference of what a model predicts for its reference rows, from its (n, width)
    ``answers``: a classifier's predicted classes, or a regressor's first target value
    (``OutputSchema.watched``), as drift and the canary analysis watch them."""
    predicted = outputs.watched(np.asarray(answers))
    if outputs.is_regressor:
        return reference_for(predicted, "value")
    return reference_for_labels(predicted, len(outputs.labels))
