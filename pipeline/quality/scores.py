"""How good a version's answers were, on the requests labelled so far: sums that add up.

``Scores`` holds sums only (counts, losses, calibration bins, per-class counts, a label
delay histogram), so scores of windows, partitions and workers add up by addition, a
correction is a subtraction (``add(..., weight=-1)``), and a table or a topic carries them
as plain JSON. ``report()`` turns the sums into the figures people read:

* classifiers: accuracy, log loss (probabilities clipped to [1e-15, 1], as scikit-learn's
  ``log_loss``), Brier score (the multi-class form: the squared distance of the
  probabilities from the one-hot truth, summed over classes, as Brier 1950), expected
  calibration error (10 equal-width bins of the top probability, Guo et al. 2017), and
  per class precision and recall;
* regressors: MAE, RMSE and bias (mean of prediction minus truth);
* both: the label delay's median and 95th percentile, read from a histogram of fixed
  bounds (an upper bound: the bound of the bucket that holds the quantile).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Any

from pipeline.quality.join import Kept

CLIP = 1e-15
CALIBRATION_BINS = 10
# Label delay bucket upper bounds, seconds: sub-second to a week (the default horizon);
# a longer delay (a label's own "time" may say anything) counts in the last bucket.
DELAY_BOUNDS = (0.1, 0.5, 1, 5, 10, 30, 60, 300, 600, 1800, 3600, 4 * 3600, 12 * 3600,
                86400, 2 * 86400, 7 * 86400)


@dataclass(slots=True)
class Scores:
    labelled: int = 0
    correct: int = 0
    log_loss: float = 0.0
    brier: float = 0.0
    # Per calibration bin: [labelled, sum of top probabilities, correct].
    calibration: list[list[float]] = field(default_factory=lambda: [[0, 0.0, 0] for _ in range(CALIBRATION_BINS)])
    # Per class name: [predicted, true, both].
    classes: dict[str, list[int]] = field(default_factory=dict)
    absolute_error: float = 0.0
    squared_error: float = 0.0
    error: float = 0.0
    delays: list[int] = field(default_factory=lambda: [0] * len(DELAY_BOUNDS))

    def add(self, kept: Kept, truth: str | float, class_names: tuple[str, ...] | None,
            delay_s: float | None = None, weight: int = 1) -> None:
        """Score one answer against its truth; ``weight=-1`` takes a score back out."""
        self.labelled += weight
        if delay_s is not None:
            self.delays[min(len(DELAY_BOUNDS) - 1, bisect.bisect_left(DELAY_BOUNDS, delay_s))] += weight
        if kept.probabilities is None:
            assert kept.value is not None and isinstance(truth, float | int)
            difference = kept.value - truth
            self.absolute_error += weight * abs(difference)
            self.squared_error += weight * difference * difference
            self.error += weight * difference
            return
        assert class_names is not None and kept.predicted is not None
        probabilities = kept.probabilities
        predicted = class_names[kept.predicted]
        hit = predicted == truth
        self.correct += weight * hit
        true_index = class_names.index(truth) if truth in class_names else None  # type: ignore[arg-type]
        p_true = probabilities[true_index] if true_index is not None else 0.0
        self.log_loss += weight * -math.log(min(1.0, max(CLIP, p_true)))
        self.brier += weight * sum((p - (i == true_index)) ** 2 for i, p in enumerate(probabilities))
        top = probabilities[kept.predicted]
        bin_ = self.calibration[min(CALIBRATION_BINS - 1, int(top * CALIBRATION_BINS))]
        bin_[0] += weight
        bin_[1] += weight * top
        bin_[2] += weight * hit
        for name, column in ((predicted, 0), (truth, 1)):
            self.classes.setdefault(name, [0, 0, 0])[column] += weight  # type: ignore[index]
        if hit:
            self.classes[predicted][2] += weight

    def merge(self, other: Scores) -> None:
        self.labelled += other.labelled
        self.correct += other.correct
        self.log_loss += other.log_loss
        self.brier += other.brier
        for mine, theirs in zip(self.calibration, other.calibration, strict=True):
            for i, v in enumerate(theirs):
                mine[i] += v
        for name, counts in other.classes.items():
            mine = self.classes.setdefault(name, [0, 0, 0])
            for i, v in enumerate(counts):
                mine[i] += v
        self.absolute_error += other.absolute_error
        self.squared_error += other.squared_error
        self.error += other.error
        self.delays = [a + b for a, b in zip(self.delays, other.delays, strict=True)]

    def report(self, regressor: bool) -> dict[str, Any]:
        """The figures, None where no label is there to compute them from."""
        n = self.labelled
        figures: dict[str, Any] = {"labelled": n,
                                   "label_delay_p50_s": self._delay(0.5),
                                   "label_delay_p95_s": self._delay(0.95)}
        if regressor:
            figures.update(mae=self.absolute_error / n if n else None,
                           rmse=math.sqrt(max(0.0, self.squared_error) / n) if n else None,
                           bias=self.error / n if n else None)
            return figures
        figures.update(
            correct=self.correct, accuracy=self.correct / n if n else None,
            log_loss=self.log_loss / n if n else None, brier=self.brier / n if n else None,
            expected_calibration_error=sum(abs(b[2] - b[1]) for b in self.calibration) / n if n else None,
            classes={name: {"precision": both / predicted if predicted else None,
                            "recall": both / true if true else None, "support": true}
                     for name, (predicted, true, both) in sorted(self.classes.items())})
        return figures

    def _delay(self, quantile: float) -> float | None:
        total = sum(self.delays)
        if total <= 0:
            return None
        seen = 0
        for bound, count in zip(DELAY_BOUNDS, self.delays, strict=True):
            seen += count
            if seen >= quantile * total:
                return bound
        return DELAY_BOUNDS[-1]

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}  # type: ignore[attr-defined]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scores:
        return cls(**data)
