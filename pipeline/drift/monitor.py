"""One model version's drift monitor: code batches, count them once, close windows, judge them.

The model's prediction (a classifier's class, a regressor's first value) is watched
like one more feature (the last column), so a
batch is coded in one ``MatrixCounter`` call and every window is judged over the
inputs and the prediction together (Bonferroni over all of them). Workers code their
batches (``codes``); the window owner takes the coded rows (``on_rows``), skips those
it counted before (a batch served again after a crash) and adds the rest to the panes
of their event time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.drift.compare import FeatureReport, report
from pipeline.drift.matrix import MatrixCounter, MatrixCounts
from pipeline.drift.reference import FeatureReference
from pipeline.drift.rows import CodedRows, SourceWatermarks
from pipeline.drift.verdict import DriftConfig, DriftEvent, DriftTracker, Verdict, judge
from pipeline.drift.windows import PaneWindow


def watched_references(reference: dict[str, Any]) -> list[FeatureReference]:
    """A manifest's ``reference``: its inputs' references, then the prediction's."""
    return [*(FeatureReference.from_json(r) for r in reference["features"]),
            FeatureReference.from_json(reference["prediction"])]


def watched_columns(rows: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """What is watched of a batch: (n, F) inputs beside their (n,) predictions
    (``OutputSchema.watched``: class indices, or a regressor's first values)."""
    return np.column_stack([rows, predicted.astype(rows.dtype)])


@dataclass(frozen=True, slots=True)
class FeatureWindow:
    report: FeatureReport
    verdict: Verdict
    event: DriftEvent | None


@dataclass(frozen=True, slots=True)
class WindowReport:
    start_s: int
    end_s: int
    features: tuple[FeatureWindow, ...]


class DriftMonitor:
    """Counts batches into panes and turns each closed window into a ``WindowReport``."""

    def __init__(self, references: Sequence[FeatureReference], window_s: int, hop_s: int,
                 config: DriftConfig = DriftConfig(), grace_s: int = 0) -> None:
        self.references = tuple(references)
        self.config = config
        self.counter = MatrixCounter(self.references)
        self.window: PaneWindow[MatrixCounts] = PaneWindow(window_s, hop_s, grace_s)
        self.trackers = [DriftTracker(config) for _ in self.references]
        self.watermarks = SourceWatermarks()

    @classmethod
    def from_manifest_reference(cls, reference: dict[str, Any], window_s: int, hop_s: int,
                                config: DriftConfig = DriftConfig(), grace_s: int = 0) -> DriftMonitor:
        return cls(watched_references(reference), window_s, hop_s, config, grace_s)

    def on_rows(self, rows: CodedRows) -> list[WindowReport]:
        """Count the rows not counted before into their panes; return the windows that closed."""
        rows = rows.select(self.watermarks.fresh(rows))
        panes = rows.timestamps_ms // (1000 * self.window.hop_s)
        closed = []
        for pane in np.unique(panes).tolist():
            counts = self.counter.tally(rows.codes[panes == pane])
            closed += [self._judge(w.start_s, w.end_s, w.counts)
                       for w in self.window.on_counts(pane, counts)]
        return closed

    def _judge(self, start_s: int, end_s: int, counts: MatrixCounts) -> WindowReport:
        features = []
        for reference, tracker, feature_counts in zip(self.references, self.trackers,
                                                      counts.features(), strict=True):
            scored = report(reference, feature_counts)
            verdict = judge(scored, len(self.references), self.config)
            features.append(FeatureWindow(scored, verdict, tracker.on_verdict(verdict)))
        return WindowReport(start_s, end_s, tuple(features))

    def snapshot(self) -> dict[str, Any]:
        return {"window": self.window.snapshot(), "counted": self.watermarks.snapshot(),
                "trackers": [t.snapshot() for t in self.trackers]}

    def restore(self, snapshot: dict[str, Any]) -> None:
        self.window = PaneWindow.restore(snapshot["window"], MatrixCounts.from_json)
        self.watermarks = SourceWatermarks.restore(snapshot["counted"])
        self.trackers = [DriftTracker.restore(s, self.config) for s in snapshot["trackers"]]
