"""Automatic canary analysis: is the canary as good as stable, on the same live traffic?

Each arm (STABLE, CANARY) keeps its last ``policy.window`` outcomes in fixed arrays:
whether the request failed, its latency and its prediction (a classifier's predicted
class; a regressor's first target value). The verdict, once
both arms hold ``min_requests`` outcomes, is "rollback" when the canary

- fails more: canary error rate - stable error rate > ``max_error_rate_increase``;
- is slower: canary p99 > ``max_p99_ratio`` x stable p99 + ``p99_slack_ms``, in at least
  ``min_slow_calls`` of its model calls: every request of a batch takes its call's time,
  so one slow call (a pause, a busy neighbour) is one event, however many requests it
  carried (as Flagger rolls back only after a number of failed checks);
- predicts differently: PSI(stable classes -> canary classes) > ``max_output_psi``
  (``pipeline.drift.compare``: the same smoothing as drift); for a regressor, PSI over
  four bins cut at the quartiles of stable's values (ten bins would make the noise of
  PSI at 200 requests per arm reach the default bound; four keep it under 0.22, while
  a shift of one standard deviation gives about 1);

then "promote" once the canary has served ``promote_after`` requests (when set), and
"healthy" otherwise. A rollback verdict is sticky: once breached, the judge keeps
answering rollback with the first breach's reason, so a shell that acts late still
acts on it. Use one judge per canary run.

The PSI check uses no noise allowance: with many classes and few requests, the
sampling noise of PSI, about chi2_{K-1} x (1/N + 1/M), can approach 0.25 (K=10,
N=M=200: its 99.9th percentile is 0.28), so raise ``min_requests`` for such models.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from pipeline.drift.compare import compare
from pipeline.routing import Route

Action = Literal["wait", "healthy", "rollback", "promote"]


@dataclass(frozen=True, slots=True)
class CanaryPolicy:
    """Thresholds of the canary analysis (see the module docstring)."""

    window: int = 1000
    min_requests: int = 200
    max_error_rate_increase: float = 0.05
    max_p99_ratio: float = 2.0
    p99_slack_ms: float = 5.0
    min_slow_calls: int = 3
    max_output_psi: float = 0.25
    promote_after: int | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.min_requests <= self.window:
            raise ValueError(f"need 1 <= min_requests <= window (outcomes kept per arm), got "
                             f"min_requests={self.min_requests}, window={self.window}")
        if not 0 <= self.max_error_rate_increase < 1:
            raise ValueError(f"max_error_rate_increase is a share in [0, 1), e.g. 0.05 for 5 points, "
                             f"got {self.max_error_rate_increase}")
        if self.min_slow_calls < 1:
            raise ValueError(f"need min_slow_calls >= 1, got {self.min_slow_calls}")
        if not 1 <= self.max_p99_ratio < math.inf or not 0 <= self.p99_slack_ms < math.inf:
            raise ValueError(f"need max_p99_ratio >= 1 and p99_slack_ms >= 0 (finite), got "
                             f"{self.max_p99_ratio} and {self.p99_slack_ms}")
        if not 0 < self.max_output_psi < math.inf:
            raise ValueError(f"max_output_psi must be a positive PSI, e.g. 0.25, got {self.max_output_psi}")
        if self.promote_after is not None and self.promote_after < self.min_requests:
            raise ValueError(f"promote_after must be at least min_requests ({self.min_requests}) or "
                             f"None to never promote automatically, got {self.promote_after}")


@dataclass(frozen=True, slots=True)
class CanaryVerdict:
    """What to do with the canary, and why, as a sentence with the figures."""

    action: Action
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"action": self.action, "reason": self.reason}


class _Arm:
    """One arm's last ``window`` outcomes in ring arrays: a NaN latency marks an error;
    ``call`` numbers the model call (the batch) each came from."""

    __slots__ = ("call", "calls", "filled", "latency", "output", "pos", "total")

    def __init__(self, window: int) -> None:
        self.latency = np.full(window, np.nan)
        self.output = np.full(window, np.nan)
        self.call = np.zeros(window, np.int64)
        self.calls = 0
        self.pos = 0
        self.filled = 0
        self.total = 0

    def add(self, latency: np.ndarray, output: np.ndarray) -> None:
        """One call's outcomes."""
        window = self.latency.size
        n = latency.size
        self.total += n
        self.calls += 1
        if n > window:
            latency, output, n = latency[-window:], output[-window:], window
        idx = (self.pos + np.arange(n)) % window
        self.latency[idx] = latency
        self.output[idx] = output
        self.call[idx] = self.calls
        self.pos = (self.pos + n) % window
        self.filled = min(self.filled + n, window)

    def slow_calls(self, bound_ms: float) -> int:
        """The calls with an outcome slower than ``bound_ms``."""
        slow = self.latency[:self.filled] * 1000 > bound_ms  # an error's NaN is not slow
        return int(np.unique(self.call[:self.filled][slow]).size)

    def errors(self) -> int:
        return int(np.count_nonzero(np.isnan(self.latency[:self.filled])))

    def p99_ms(self) -> float | None:
        """p99 of the successes' latencies in ms (numpy's linear percentile); None without any."""
        ok = self.latency[:self.filled]
        ok = ok[~np.isnan(ok)]
        return float(np.percentile(ok, 99)) * 1000 if ok.size else None

    def served(self) -> np.ndarray:
        """The predictions of the successes."""
        return self.output[:self.filled][~np.isnan(self.latency[:self.filled])]


class CanaryJudge:
    """Compares a canary with stable over their recent outcomes (see the module docstring).

    ``n_classes``: how many classes a classifier predicts (predicted classes are
    0..n-1); None for a regressor, whose first target values are observed instead.
    Memory is fixed: two arrays of ``policy.window`` per arm.
    """

    def __init__(self, policy: CanaryPolicy, n_classes: int | None) -> None:
        if n_classes is not None and n_classes < 1:
            raise ValueError(f"n_classes must be at least 1 (None for a regressor), got {n_classes}")
        self.policy = policy
        self.n_classes = n_classes
        self._arms = {Route.STABLE: _Arm(policy.window), Route.CANARY: _Arm(policy.window)}
        self._breach: CanaryVerdict | None = None

    def observe(self, route: Route, errors: int, latencies_s: Sequence[float],
                predicted: Sequence[float] | np.ndarray) -> None:
        """One batch of one arm: ``errors`` failed requests (dead letters for model_error or
        deadline_exceeded) and, per served request, its latency in seconds and prediction
        (its class, or a regressor's value)."""
        arm = self._arms.get(route)
        if arm is None:
            raise ValueError(f"canary analysis compares the stable and canary routes, got {route!r}")
        latency = np.asarray(latencies_s, np.float64)
        output = np.asarray(predicted)
        if latency.ndim != 1 or output.ndim != 1 or latency.size != output.size:
            raise ValueError(f"need one latency per prediction, got {latency.size} latencies "
                             f"and {output.size} predictions")
        if errors < 0:
            raise ValueError(f"errors must not be negative, got {errors}")
        if latency.size and (not np.all(np.isfinite(latency)) or latency.min() < 0):
            raise ValueError("latencies must be finite, non-negative seconds")
        if self.n_classes is None:
            if output.size and (not np.issubdtype(output.dtype, np.number)
                                or not np.all(np.isfinite(output))):
                raise ValueError(f"a regressor's predictions must be finite numbers, got "
                                 f"{output.tolist()[:10]}")
        elif output.size and (not np.issubdtype(output.dtype, np.integer) or output.min() < 0
                              or output.max() >= self.n_classes):
            raise ValueError(f"predicted classes must be integers in 0..{self.n_classes - 1}, "
                             f"got {output.tolist()[:10]}")
        arm.add(np.concatenate([np.full(errors, np.nan), latency]),
                np.concatenate([np.full(errors, np.nan), output.astype(np.float64)]))

    def _counts(self, stable: _Arm, canary: _Arm) -> tuple[np.ndarray, np.ndarray, str]:
        """Each arm's predictions counted in the same bins, and what the bins are."""
        s, c = stable.served(), canary.served()
        if self.n_classes is not None:
            return (np.bincount(s.astype(np.int64), minlength=self.n_classes),
                    np.bincount(c.astype(np.int64), minlength=self.n_classes), "predicted-class")
        edges = np.unique(np.quantile(s, [0.25, 0.5, 0.75])) if s.size else np.empty(0)
        return (np.bincount(np.searchsorted(edges, s, side="right"), minlength=edges.size + 1),
                np.bincount(np.searchsorted(edges, c, side="right"), minlength=edges.size + 1),
                "value (binned at stable's quartiles)")

    def verdict(self) -> CanaryVerdict:
        if self._breach is not None:
            return self._breach
        p = self.policy
        stable, canary = self._arms[Route.STABLE], self._arms[Route.CANARY]
        if stable.filled < p.min_requests or canary.filled < p.min_requests:
            return CanaryVerdict("wait", f"waiting for {p.min_requests} requests per arm: canary has "
                                         f"{canary.filled}, stable {stable.filled}")
        over = f"over the last {canary.filled} canary and {stable.filled} stable requests"
        s_err, c_err = stable.errors(), canary.errors()
        s_rate, c_rate = s_err / stable.filled, c_err / canary.filled
        if c_rate - s_rate > p.max_error_rate_increase:
            return self._rollback(
                f"canary error rate {c_rate:.1%} ({c_err} of {canary.filled}) exceeds stable's "
                f"{s_rate:.1%} ({s_err} of {stable.filled}) by {(c_rate - s_rate) * 100:.1f} points "
                f"> {p.max_error_rate_increase * 100:g} allowed")
        s_p99, c_p99 = stable.p99_ms(), canary.p99_ms()
        if s_p99 is not None and c_p99 is not None:
            bound = p.max_p99_ratio * s_p99 + p.p99_slack_ms
            if c_p99 > bound and (slow := canary.slow_calls(bound)) >= p.min_slow_calls:
                return self._rollback(f"canary p99 {c_p99:.1f} ms > {p.max_p99_ratio:g} x stable p99 "
                                      f"{s_p99:.1f} ms + {p.p99_slack_ms:g} ms, in {slow} of its "
                                      f"model calls {over}")
        s_counts, c_counts, binned = self._counts(stable, canary)
        psi = compare(s_counts, c_counts).psi if s_counts.sum() and c_counts.sum() else None
        if psi is not None and psi > p.max_output_psi:
            return self._rollback(f"canary {binned} distribution differs from stable's: PSI "
                                  f"{psi:.3f} > {p.max_output_psi:g} {over} (canary {c_counts.tolist()}, "
                                  f"stable {s_counts.tolist()})")
        figures = (f"errors {c_rate:.1%} vs {s_rate:.1%}, p99 {_ms(c_p99)} vs {_ms(s_p99)}, "
                   f"output PSI {'n/a' if psi is None else f'{psi:.3f}'} {over}")
        if p.promote_after is not None and canary.total >= p.promote_after:
            return CanaryVerdict("promote", f"canary served {canary.total} requests (>= "
                                            f"{p.promote_after}) with no breach: {figures}")
        return CanaryVerdict("healthy", f"canary within bounds: {figures}")

    def _rollback(self, reason: str) -> CanaryVerdict:
        self._breach = CanaryVerdict("rollback", reason)
        return self._breach

    def requests(self, route: Route) -> int:
        """Requests observed on ``route`` (STABLE or CANARY) since the judge was made."""
        return self._arms[route].total


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} ms"
