"""The diff of two runs' answers: the share with the same outcome (the same label, values
that agree for a regressor, or a dead letter with the same reason), score differences,
dead letters by reason, latency percentiles and the requests that differ most."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.replay.answers import Answer, Side


@dataclass(frozen=True, slots=True)
class Latency:
    count: int
    p50: float
    p95: float
    p99: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Latency | None:
        if not values:
            return None
        p50, p95, p99 = np.percentile(np.asarray(values, dtype=float), [50, 95, 99])
        return cls(len(values), float(p50), float(p95), float(p99))


@dataclass(frozen=True, slots=True)
class ReasonCount:
    reason: str
    baseline: int
    candidate: int


@dataclass(frozen=True, slots=True)
class Difference:
    """A request answered differently: its outcomes and largest score difference."""

    key: str
    baseline: str
    candidate: str
    max_abs_difference: float | None
    features: Mapping[str, Any] | None


@dataclass(frozen=True, slots=True)
class DiffReport:
    baseline: str
    candidate: str
    baseline_replies: int
    candidate_replies: int
    baseline_unanswered: int | None
    candidate_unanswered: int | None
    compared: int
    """Requests answered in both runs: what agreement is measured on."""
    only_baseline: int
    only_candidate: int
    agreeing: int
    both_predicted: int
    same_label: int
    score_differences: tuple[float, ...]
    """Per request predicted by both: the largest absolute difference of a score."""
    dead_letters: tuple[ReasonCount, ...]
    outcome_pairs: tuple[tuple[str, str, int], ...]
    """(baseline outcome, candidate outcome, requests), most frequent first."""
    baseline_latencies: tuple[float, ...]
    candidate_latencies: tuple[float, ...]
    differences: tuple[Difference, ...]
    """The requests that differ most: another outcome first, then by score difference."""

    @property
    def agreement(self) -> float | None:
        return self.agreeing / self.compared if self.compared else None

    @property
    def disagreement(self) -> float | None:
        return (self.compared - self.agreeing) / self.compared if self.compared else None

    @property
    def score_max(self) -> float | None:
        return max(self.score_differences) if self.score_differences else None

    @property
    def score_p99(self) -> float | None:
        if not self.score_differences:
            return None
        return float(np.percentile(np.asarray(self.score_differences), 99))

    @property
    def baseline_latency(self) -> Latency | None:
        return Latency.of(self.baseline_latencies)

    @property
    def candidate_latency(self) -> Latency | None:
        return Latency.of(self.candidate_latencies)


def max_abs_difference(a: Answer, b: Answer) -> float | None:
    """The largest absolute difference between the scores both replies hold (outputs of the
    same name and length); None when they share none."""
    worst = None
    for name, values in a.scores.items():
        other = b.scores.get(name)
        if other is not None and len(other) == len(values) and values:
            d = float(np.max(np.abs(np.asarray(values) - np.asarray(other))))
            worst = d if worst is None else max(worst, d)
    return worst


def diff(baseline: Side, candidate: Side, features: Mapping[str, Mapping[str, Any]] | None = None,
         top: int = 10) -> DiffReport:
    """Compare two runs' replies, keyed alike (``key_replies``). ``features``: requests'
    features by key, shown for the requests that differ most."""
    features = features or {}
    common = [k for k in baseline.replies if k in candidate.replies]
    agreeing = both_predicted = same_label = 0
    score_differences: list[float] = []
    pairs: Counter[tuple[str, str]] = Counter()
    ranked: list[tuple[bool, float, str, Answer, Answer, float | None]] = []
    for key in common:
        b, c = baseline.replies[key], candidate.replies[key]
        same = b.agrees(c)
        agreeing += same
        pairs[(b.outcome, c.outcome)] += 1
        d = None
        if b.reason is None and c.reason is None:
            both_predicted += 1
            same_label += b.label == c.label
            d = max_abs_difference(b, c)
            if d is not None:
                score_differences.append(d)
        if not same or (d is not None and d > 0):
            ranked.append((not same, d or 0.0, key, b, c, d))
    ranked.sort(key=lambda r: (not r[0], -r[1], r[2]))
    differences = tuple(Difference(key, b.outcome, c.outcome, d, features.get(key))
                        for _, _, key, b, c, d in ranked[:top])
    reasons_b = Counter(r.reason for r in baseline.replies.values() if r.reason is not None)
    reasons_c = Counter(r.reason for r in candidate.replies.values() if r.reason is not None)
    dead = tuple(ReasonCount(reason, reasons_b[reason], reasons_c[reason])
                 for reason in sorted(reasons_b.keys() | reasons_c.keys()))
    return DiffReport(
        baseline=baseline.name, candidate=candidate.name,
        baseline_replies=len(baseline.replies), candidate_replies=len(candidate.replies),
        baseline_unanswered=baseline.unanswered, candidate_unanswered=candidate.unanswered,
        compared=len(common), only_baseline=len(baseline.replies) - len(common),
        only_candidate=len(candidate.replies) - len(common), agreeing=agreeing,
        both_predicted=both_predicted, same_label=same_label,
        score_differences=tuple(score_differences), dead_letters=dead,
        outcome_pairs=tuple((b, c, n) for (b, c), n in
                            sorted(pairs.items(), key=lambda item: (-item[1], item[0]))),
        baseline_latencies=_latencies(baseline), candidate_latencies=_latencies(candidate),
        differences=differences)


def _latencies(side: Side) -> tuple[float, ...]:
    return tuple(r.latency_ms for r in side.replies.values() if r.latency_ms is not None)
