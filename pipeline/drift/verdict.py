"""The drift verdict, kept apart from the score (``compare``), as Alibi Detect does.

For a feature with K bins, N reference values, a window of M values, F monitored
features and significance ``alpha``:

- no verdict ("insufficient") while M < max(min_window, min_per_bin * K);
- "drift" when PSI >= max(psi_floor, chi2_{K-1}.ppf(1 - alpha / F) * (1/N + 1/M));
  under no drift, PSI ~ chi2_{K-1} * (1/N + 1/M), and alpha / F is Bonferroni's
  correction for testing F features at once;
- "alert", the higher tier, when it drifts and PSI >= alert_psi;
- "stable" otherwise.

A drift *event* needs ``consecutive`` drifting windows in a row (``DriftTracker``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

# chdtri(v, p): the chi2_v quantile at 1 - p; scipy.special's, since scipy.stats costs
# most of a second to import in every worker and CLI command.
from scipy.special import chdtri

from pipeline.drift.compare import FeatureReport

Status = Literal["insufficient", "stable", "drift", "alert"]


@dataclass(frozen=True, slots=True)
class DriftConfig:
    """Verdict thresholds; the defaults are the project's conventions (docs/design.md,
    "Drift conventions")."""

    alpha: float = 0.05
    psi_floor: float = 0.1
    alert_psi: float = 0.25
    min_window: int = 200
    min_per_bin: int = 20
    consecutive: int = 2

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must lie in (0, 1), e.g. 0.05, got {self.alpha}")
        if not 0 <= self.psi_floor <= self.alert_psi:
            raise ValueError(f"need 0 <= psi_floor <= alert_psi, got {self.psi_floor} and {self.alert_psi}")
        if self.min_window < 1 or self.min_per_bin < 0 or self.consecutive < 1:
            raise ValueError(f"need min_window >= 1, min_per_bin >= 0 and consecutive >= 1, got "
                             f"{self.min_window}, {self.min_per_bin}, {self.consecutive}")

    def min_window_size(self, n_bins: int) -> int:
        """The fewest window values that get a verdict: max(min_window, min_per_bin * K)."""
        return max(self.min_window, self.min_per_bin * n_bins)

    def psi_threshold(self, n_bins: int, n_features: int, n_reference: int, window_size: int) -> float:
        """max(psi_floor, chi2_{K-1}.ppf(1 - alpha/F) * (1/N + 1/M))."""
        if n_bins < 2 or n_features < 1 or n_reference < 1 or window_size < 1:
            raise ValueError(f"need K >= 2 bins, F >= 1 features, N >= 1 and M >= 1 values, got "
                             f"K={n_bins}, F={n_features}, N={n_reference}, M={window_size}")
        critical = float(chdtri(n_bins - 1, self.alpha / n_features))
        return max(self.psi_floor, critical * (1 / n_reference + 1 / window_size))


@dataclass(frozen=True, slots=True)
class Verdict:
    """The verdict on one feature's window. ``psi``/``threshold`` are None when insufficient."""

    feature: str
    status: Status
    psi: float | None
    threshold: float | None
    window_size: int
    min_window_size: int

    @property
    def drifting(self) -> bool:
        return self.status in ("drift", "alert")

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def judge(report: FeatureReport, n_features: int, config: DriftConfig = DriftConfig()) -> Verdict:
    """The verdict on ``report`` when ``n_features`` features are monitored together."""
    needed = config.min_window_size(report.n_bins)
    m = report.window_size
    if m < needed or report.comparison is None:
        return Verdict(report.feature, "insufficient", None, None, m, needed)
    psi = report.comparison.psi
    threshold = config.psi_threshold(report.n_bins, n_features, report.n_reference, m)
    if psi < threshold:
        status: Status = "stable"
    else:
        status = "alert" if psi >= config.alert_psi else "drift"
    return Verdict(report.feature, status, psi, threshold, m, needed)


@dataclass(frozen=True, slots=True)
class DriftEvent:
    """A feature has drifted for ``windows`` windows in a row (the event fires once per run)."""

    feature: str
    status: Literal["drift", "alert"]
    psi: float
    threshold: float
    windows: int

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


class DriftTracker:
    """One feature's run of drifting windows; snapshot-able so it can live in a table.

    A drifting verdict extends the run, any other verdict (stable or insufficient)
    ends it. ``on_verdict`` returns a ``DriftEvent`` when the run reaches
    ``config.consecutive`` windows, and None otherwise (also while the run goes on).
    """

    def __init__(self, config: DriftConfig = DriftConfig()) -> None:
        self.config = config
        self.run = 0

    def on_verdict(self, verdict: Verdict) -> DriftEvent | None:
        if not verdict.drifting:
            self.run = 0
            return None
        self.run += 1
        if self.run != self.config.consecutive:
            return None
        assert verdict.psi is not None and verdict.threshold is not None
        status: Literal["drift", "alert"] = "alert" if verdict.status == "alert" else "drift"
        return DriftEvent(verdict.feature, status, verdict.psi, verdict.threshold, self.run)

    @property
    def drifting(self) -> bool:
        """True while a drift event has fired and no window has ended the run since."""
        return self.run >= self.config.consecutive

    def snapshot(self) -> dict[str, Any]:
        return {"run": self.run}

    @classmethod
    def restore(cls, snapshot: dict[str, Any], config: DriftConfig = DriftConfig()) -> DriftTracker:
        tracker = cls(config)
        tracker.run = int(snapshot["run"])
        return tracker
