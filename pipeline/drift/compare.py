"""The drift score: divergences between reference and current counts over the same bins.

Both sides are turned into proportions, each floored at ``SMOOTHING_FLOOR`` and
renormalised (every bin, both sides), then

    PSI          = sum((q - p) * ln(q / p))        p: reference, q: current, natural log
    KL(ref||cur) = sum(p * ln(p / q))
    KL(cur||ref) = sum(q * ln(q / p))              so PSI = KL(ref||cur) + KL(cur||ref)

and the Jensen-Shannon distance (base 2, in [0, 1]) on the unsmoothed proportions.
PSI is a property of counts, not of panes: merge the panes' counts first, then compare
(the PSI of a sum is not the mean of the PSIs).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.special import rel_entr

from pipeline.drift.counting import Counts
from pipeline.drift.errors import DriftError
from pipeline.drift.reference import FeatureReference, Kind

SMOOTHING_FLOOR = 1e-4


@dataclass(frozen=True, slots=True)
class Comparison:
    """Divergences of the current distribution from the reference (see the module docstring)."""

    psi: float
    kl_ref_cur: float
    kl_cur_ref: float
    js_distance: float
    psi_by_bin: tuple[float, ...]  # each bin's term of the PSI sum: which bins moved

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "psi_by_bin": list(self.psi_by_bin)}


def smoothed(counts: np.ndarray) -> np.ndarray:
    """Proportions floored at ``SMOOTHING_FLOOR`` in every bin, then renormalised."""
    p = np.maximum(counts / counts.sum(), SMOOTHING_FLOOR)
    return p / p.sum()


def _counts(values: Sequence[float] | np.ndarray, side: str) -> np.ndarray:
    c = np.asarray(values, np.float64)
    if c.ndim != 1 or c.size == 0 or not np.all(np.isfinite(c)) or np.any(c < 0):
        raise DriftError(f"{side} counts must be a non-empty list of finite, non-negative "
                         f"numbers (one per bin), got {values!r}")
    if c.sum() == 0:
        raise DriftError(f"{side} counts are all zero: there is nothing to compare yet")
    return c


def compare(reference_counts: Sequence[float] | np.ndarray,
            current_counts: Sequence[float] | np.ndarray) -> Comparison:
    """Compare two count vectors over the same bins (plain lists are fine)."""
    ref = _counts(reference_counts, "reference")
    cur = _counts(current_counts, "current")
    if ref.size != cur.size:
        raise DriftError(f"reference has {ref.size} bins and current {cur.size}: count both "
                         f"against the same FeatureReference")
    p, q = smoothed(ref), smoothed(cur)
    log_ratio = np.log(q) - np.log(p)
    terms = (q - p) * log_ratio
    # Jensen-Shannon on the raw proportions; rel_entr(0, m) is 0, so empty bins are fine.
    p0, q0 = ref / ref.sum(), cur / cur.sum()
    m = (p0 + q0) / 2
    js = (rel_entr(p0, m).sum() + rel_entr(q0, m).sum()) / (2 * math.log(2))
    return Comparison(psi=float(terms.sum()), kl_ref_cur=float(-(p * log_ratio).sum()),
                      kl_cur_ref=float((q * log_ratio).sum()), js_distance=math.sqrt(max(float(js), 0.0)),
                      psi_by_bin=tuple(terms.tolist()))


@dataclass(frozen=True, slots=True)
class FeatureReport:
    """One feature's drift score over one window, with the data-quality rates beside it.

    ``window_size`` (M): values in the bins. ``rows``: all values seen, NaN and +-inf
    included. ``missing_rate``: NaN / rows. ``non_finite``: how many +-inf.
    ``out_of_range_share``: finite values outside the reference range / M.
    ``unseen_share``: categorical values outside the vocabulary / M. ``comparison`` is
    None when the window holds no binned value.
    """

    feature: str
    kind: Kind
    comparison: Comparison | None
    n_reference: int
    n_bins: int
    window_size: int
    rows: int
    missing_rate: float
    non_finite: int
    out_of_range_share: float
    unseen_share: float

    def to_json(self) -> dict[str, Any]:
        d = {name: getattr(self, name) for name in self.__dataclass_fields__}
        d["comparison"] = None if self.comparison is None else self.comparison.to_json()
        return d


def report(reference: FeatureReference, counts: Counts) -> FeatureReport:
    """Score ``counts`` (made with ``count`` against ``reference``) against the reference."""
    if counts.bins.size != reference.n_bins:
        raise DriftError(f"counts over {counts.bins.size} bins do not belong to reference "
                         f"{reference.name!r} ({reference.n_bins} bins)")
    m, rows = counts.n, counts.total
    return FeatureReport(
        feature=reference.name, kind=reference.kind,
        comparison=compare(reference.counts, counts.bins) if m else None,
        n_reference=reference.n, n_bins=reference.n_bins, window_size=m, rows=rows,
        missing_rate=counts.missing / rows if rows else 0.0, non_finite=counts.non_finite,
        out_of_range_share=counts.out_of_range / m if m else 0.0,
        unseen_share=counts.unseen / m if m else 0.0,
    )
