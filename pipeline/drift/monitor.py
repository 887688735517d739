"""One model version's drift monitor: count batches, close windows, judge them.

The model's predicted class is watched like one more feature (the last column), so a
batch is counted in one ``MatrixCounter`` call and every window is judged over the
inputs and the prediction together (Bonferroni over all of them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.drift.compare import FeatureReport, report
from pipeline.drift.matrix import MatrixCounter, MatrixCounts
from pipeline.drift.reference import FeatureReference
from pipeline.drift.verdict import DriftConfig, DriftEvent, DriftTracker, Verdict, judge
from pipeline.drift.windows import PaneWindow


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
                 config: DriftConfig = DriftConfig()) -> None:
        self.references = tuple(references)
        self.config = config
        self.counter = MatrixCounter(self.references)
        self.window: PaneWindow[MatrixCounts] = PaneWindow(window_s, hop_s)
        self.trackers = [DriftTracker(config) for _ in self.references]

    @classmethod
    def from_manifest_reference(cls, reference: dict[str, Any], window_s: int, hop_s: int,
                                config: DriftConfig = DriftConfig()) -> DriftMonitor:
        """From a manifest's ``reference`` (its inputs' references, then the prediction's)."""
        references = [FeatureReference.from_json(r) for r in reference["features"]]
        references.append(FeatureReference.from_json(reference["prediction"]))
        return cls(references, window_s, hop_s, config)

    def count(self, rows: np.ndarray, predicted_classes: np.ndarray) -> MatrixCounts:
        """Counts of a batch: (n, F) inputs beside their (n,) predicted class indices."""
        return self.counter(np.column_stack([rows, predicted_classes.astype(rows.dtype)]))

    def on_counts(self, timestamp_s: float, counts: MatrixCounts) -> list[WindowReport]:
        closed = self.window.on_counts(self.window.pane_of(timestamp_s), counts)
        return [self._judge(w.start_s, w.end_s, w.counts) for w in closed]

    def _judge(self, start_s: int, end_s: int, counts: MatrixCounts) -> WindowReport:
        features = []
        for reference, tracker, feature_counts in zip(self.references, self.trackers,
                                                      counts.features(), strict=True):
            scored = report(reference, feature_counts)
            verdict = judge(scored, len(self.references), self.config)
            features.append(FeatureWindow(scored, verdict, tracker.on_verdict(verdict)))
        return WindowReport(start_s, end_s, tuple(features))

    def snapshot(self) -> dict[str, Any]:
        return {"window": self.window.snapshot(),
                "trackers": [t.snapshot() for t in self.trackers]}

    def restore(self, snapshot: dict[str, Any]) -> None:
        self.window = PaneWindow.restore(snapshot["window"], MatrixCounts.from_json)
        self.trackers = [DriftTracker.restore(s, self.config) for s in snapshot["trackers"]]
