"""A circuit breaker per model version: stop sending batches to a version that keeps failing.

    CLOSED --(consecutive failures, or failure share over the window)--> OPEN
    OPEN --(open_seconds passed, at the next allow())--> HALF_OPEN
    HALF_OPEN --(any failure)--> OPEN
    HALF_OPEN --(half_open_probes successes)--> CLOSED, with a fresh window

The shell asks ``allow(now)`` before it serves a batch with the version (when it
answers False, the batch goes to the fallback or is dead-lettered), and reports the
batch's outcomes with ``record(successes, failures, now)``. ``now`` is a monotonic
clock in seconds, passed in: the breaker reads no clock.

State changes are counted in ``transitions`` and described by ``last_transition``,
so the shell detects one by comparing a remembered count (one integer compare), then
logs it and sets its gauge. ``record`` also returns the ``Transition`` it made, or
None; ``allow`` returns the admission only (its one transition is OPEN -> HALF_OPEN).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import StrEnum


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    """When a breaker opens and how it recovers.

    Opens on ``consecutive_failures`` failures in a row, or once ``min_requests`` of the
    last ``window`` outcomes are in and their failure share is >= ``failure_rate``.
    Stays open ``open_seconds``, then lets traffic through as probes; closes after
    ``half_open_probes`` successes, reopens on any failure.
    """

    consecutive_failures: int = 5
    failure_rate: float = 0.5
    min_requests: int = 20
    window: int = 100
    open_seconds: float = 5.0
    half_open_probes: int = 10

    def __post_init__(self) -> None:
        if self.consecutive_failures < 1 or self.half_open_probes < 1:
            raise ValueError(f"consecutive_failures and half_open_probes must be at least 1, got "
                             f"{self.consecutive_failures} and {self.half_open_probes}")
        if not 0 < self.failure_rate <= 1:
            raise ValueError(f"failure_rate must lie in (0, 1], e.g. 0.5, got {self.failure_rate}")
        if not 1 <= self.min_requests <= self.window:
            raise ValueError(f"need 1 <= min_requests <= window (outcomes kept), got "
                             f"min_requests={self.min_requests}, window={self.window}")
        if not 0 <= self.open_seconds < float("inf"):
            raise ValueError(f"open_seconds must be a finite number >= 0, got {self.open_seconds}")


@dataclass(frozen=True, slots=True)
class Transition:
    """One state change: from, to, when (the caller's clock) and why, as a sentence."""

    before: BreakerState
    after: BreakerState
    at: float
    reason: str


def _spread(successes: int, failures: int) -> list[bool]:
    """``failures`` True among ``successes`` False, evenly spaced (the order in a batch is unknown)."""
    n = successes + failures
    return [(i + 1) * failures // n > i * failures // n for i in range(n)]


class CircuitBreaker:
    """One version's breaker (see the module docstring). Not thread-safe: one caller at a time.

    Counting, in detail: the window holds the last ``window`` outcomes; a batch larger
    than that is scaled down to ``window`` outcomes with its failure share. A batch
    with any success ends a run of consecutive failures (inside a batch the order is
    unknown, and a version that served some rows is not down; the share rule catches
    mostly-failing batches). Outcomes recorded while OPEN belong to batches admitted
    before it opened and are ignored.
    """

    __slots__ = (
        "_opened_at",
        "_outcomes",
        "_probes",
        "_run",
        "_state",
        "config",
        "last_transition",
        "transitions",
    )

    def __init__(self, config: BreakerConfig = BreakerConfig()) -> None:
        self.config = config
        self._state = BreakerState.CLOSED
        self._outcomes: deque[bool] = deque(maxlen=config.window)  # True: a failure
        self._run = 0
        self._opened_at = 0.0
        self._probes = 0
        self.transitions = 0
        self.last_transition: Transition | None = None

    @property
    def state(self) -> BreakerState:
        """The state as of the last call; OPEN turns HALF_OPEN only at an ``allow`` call."""
        return self._state

    def allow(self, now: float) -> bool:
        """May a batch go to this version now? False only while OPEN and open_seconds have not passed."""
        if self._state is BreakerState.OPEN:
            if now - self._opened_at < self.config.open_seconds:
                return False
            self._probes = 0
            self._move(BreakerState.HALF_OPEN, now,
                       f"open for {now - self._opened_at:.1f} s: letting probes through")
        return True

    def record(self, successes: int, failures: int, now: float) -> Transition | None:
        """Report a served batch's outcomes; returns the transition it caused, or None."""
        if successes < 0 or failures < 0:
            raise ValueError(f"outcome counts must not be negative, got {successes} successes "
                             f"and {failures} failures")
        if self._state is BreakerState.OPEN:
            return None
        if self._state is BreakerState.HALF_OPEN:
            if failures:
                self._opened_at = now
                return self._move(BreakerState.OPEN, now,
                                  f"{failures} of {successes + failures} probes failed")
            self._probes += successes
            if self._probes >= self.config.half_open_probes:
                self._outcomes.clear()
                self._run = 0
                return self._move(BreakerState.CLOSED, now, f"{self._probes} probes succeeded")
            return None
        return self._record_closed(successes, failures, now)

    def _record_closed(self, successes: int, failures: int, now: float) -> Transition | None:
        if successes + failures == 0:
            return None
        self._run = self._run + failures if successes == 0 else 0
        c = self.config
        n = successes + failures
        if n > c.window:  # keep the batch's share, at the window's size
            failures = round(failures * c.window / n)
            successes = c.window - failures
        self._outcomes.extend(_spread(successes, failures))
        if self._run >= c.consecutive_failures:
            return self._open(now, f"{self._run} failures in a row")
        seen = len(self._outcomes)
        if seen >= c.min_requests:
            failed = sum(self._outcomes)
            if failed >= c.failure_rate * seen:
                return self._open(now, f"{failed} of the last {seen} requests failed "
                                       f"({failed / seen:.0%} >= {c.failure_rate:.0%})")
        return None

    def _open(self, now: float, reason: str) -> Transition:
        self._opened_at = now
        self._run = 0
        return self._move(BreakerState.OPEN, now, f"{reason}; open for {self.config.open_seconds:g} s")

    def _move(self, state: BreakerState, now: float, reason: str) -> Transition:
        transition = Transition(self._state, state, now, reason)
        self._state = state
        self.transitions += 1
        self.last_transition = transition
        return transition
