"""Drift math: reference bins, counting, divergences, event-time windows and the verdict.

The flow, with the conventions of docs/design.md, "Drift conventions"::

    training:  reference_for(column, name) -> FeatureReference   (stored in the manifest)
    serving:   ServedRows(coder).add(watched_columns(...), ...)   (per batch of rows)
               ServedRows.coded() -> CodedRows                    (per flush: MatrixCounter.codes
                   once, shipped to the window owner with each row's partition, offset, time)
    windows:   DeliveryRuns.deliver(...) -> offsets to read again  (messages the stream skipped)
               SourceWatermarks.fresh(rows) -> mask               (each request counted once)
               MatrixCounter.tally(codes) -> MatrixCounts         (per pane)
               PaneWindow.on_counts(pane, counts) -> [ClosedWindow] (panes summed by addition)
    per window and feature:
               report(reference, counts) -> FeatureReport         (the score: PSI, KL, JS, rates)
               judge(report, n_features, config) -> Verdict       (the decision, kept apart)
               DriftTracker.on_verdict(verdict) -> DriftEvent | None (two drifting windows in a row)

Modules: ``reference`` (bins), ``counting`` (one column), ``matrix`` (a whole batch:
the hot path), ``rows`` (coded rows on the wire, counted once), ``compare`` (the
score), ``windows`` (panes and windows), ``verdict`` (thresholds and events).
"""

from pipeline.drift.compare import (
    SMOOTHING_FLOOR,
    Comparison,
    FeatureReport,
    compare,
    report,
    smoothed,
)
from pipeline.drift.counting import Counts, count
from pipeline.drift.errors import DriftError
from pipeline.drift.matrix import MatrixCounter, MatrixCounts, count_matrix
from pipeline.drift.monitor import (
    DriftMonitor,
    FeatureWindow,
    WindowReport,
    watched_columns,
    watched_references,
)
from pipeline.drift.reference import (
    OTHER,
    FeatureReference,
    reference_for,
    reference_for_labels,
    reference_for_predictions,
    references_for,
)
from pipeline.drift.rows import CodedRows, DeliveryRuns, ServedRows, SourceWatermarks
from pipeline.drift.verdict import DriftConfig, DriftEvent, DriftTracker, Verdict, judge
from pipeline.drift.windows import ClosedWindow, PaneWindow, pane_index

__all__ = [
    "DriftMonitor",
    "FeatureWindow",
    "WindowReport",
    "OTHER",
    "SMOOTHING_FLOOR",
    "ClosedWindow",
    "CodedRows",
    "Comparison",
    "Counts",
    "DriftConfig",
    "DriftError",
    "DriftEvent",
    "DriftTracker",
    "FeatureReference",
    "FeatureReport",
    "MatrixCounter",
    "MatrixCounts",
    "PaneWindow",
    "DeliveryRuns",
    "ServedRows",
    "SourceWatermarks",
    "Verdict",
    "compare",
    "count",
    "count_matrix",
    "judge",
    "pane_index",
    "reference_for",
    "reference_for_labels",
    "reference_for_predictions",
    "references_for",
    "report",
    "smoothed",
    "watched_columns",
    "watched_references",
]
