"""Injected faults, for the chaos tests (``tests/chaos``) and for rehearsing incidents.

Off unless ``STREAMSERVE_FAULTS`` is set; a worker with faults says so loudly at start.
The value is a comma-separated list of:

* ``crash_at=POINT[:N]``: the worker kills itself (SIGKILL: no clean-up, like a lost
  machine) the Nth time (default 1) it reaches POINT, one of ``CRASH_POINTS``;
* ``poison=VALUE``: the model raises on every call whose batch holds a feature equal
  to VALUE, as a model does on inputs it cannot handle;
* ``slow_ms=MS``: every model call takes MS milliseconds longer.

Kafka tests its own delivery guarantees the same way: seed records, inject faults at
named points, then check the input and output sets (here: ``streamserve verify``).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from pipeline.errors import StreamserveError

Predict = Callable[[np.ndarray], np.ndarray]

CRASH_POINTS = {
    "before_produce": "a batch is served, none of its outputs has been sent",
    "after_produce": "a flush's outputs are acknowledged, its offsets not yet committed",
    "after_commit": "a flush's offsets are committed",
}


class FaultSpecError(StreamserveError, ValueError):
    """STREAMSERVE_FAULTS cannot be read; the message says what is wrong."""


class InjectedFault(StreamserveError, RuntimeError):
    """What the faulty model raises."""


@dataclass(frozen=True, slots=True)
class FaultPlan:
    crash_at: tuple[str, int] | None = None
    poison: float | None = None
    slow_ms: float = 0.0

    @property
    def active(self) -> bool:
        return self.crash_at is not None or self.poison is not None or self.slow_ms > 0

    @classmethod
    def parse(cls, spec: str) -> FaultPlan:
        values: dict = {}
        for item in filter(None, (part.strip() for part in spec.split(","))):
            name, sep, value = item.partition("=")
            if not sep or name in values:
                raise FaultSpecError(f"{item!r}: give each of crash_at=POINT[:N], poison=VALUE, "
                                     "slow_ms=MS at most once, comma-separated")
            try:
                if name == "crash_at":
                    point, _, nth = value.partition(":")
                    if point not in CRASH_POINTS:
                        raise FaultSpecError(f"crash point {point!r} is not one of "
                                             f"{', '.join(CRASH_POINTS)}")
                    values[name] = (point, int(nth or 1))
                    if values[name][1] < 1:
                        raise FaultSpecError(f"{item!r}: N counts from 1")
                elif name in ("poison", "slow_ms"):
                    values[name] = float(value)
                else:
                    raise FaultSpecError(f"{name!r} is not a fault; use crash_at, poison or slow_ms")
            except ValueError as e:
                if isinstance(e, FaultSpecError):
                    raise
                raise FaultSpecError(f"{item!r}: {value!r} is not a number") from None
        return cls(**values)

    def model(self, predict: Predict) -> Predict:
        """``predict`` with the plan's model faults (itself when there are none)."""
        if self.poison is None and not self.slow_ms:
            return predict
        poison, delay = self.poison, self.slow_ms / 1000

        def faulty(rows: np.ndarray) -> np.ndarray:
            time.sleep(delay)
            if poison is not None and (rows == poison).any():
                raise InjectedFault(f"injected fault: a feature is {poison:g}")
            return predict(rows)
        return faulty

    def describe(self) -> str:
        parts = []
        if self.crash_at is not None:
            parts.append(f"crash at {self.crash_at[0]} (time {self.crash_at[1]}: "
                         f"{CRASH_POINTS[self.crash_at[0]]})")
        if self.poison is not None:
            parts.append(f"the model raises on feature value {self.poison:g}")
        if self.slow_ms:
            parts.append(f"model calls {self.slow_ms:g} ms slower")
        return "; ".join(parts)


@dataclass
class CrashCounter:
    """Counts arrivals at crash points; says when the plan's crash is due."""

    plan: FaultPlan
    _reached: Counter[str] = field(default_factory=Counter)

    def due(self, point: str) -> bool:
        if self.plan.crash_at is None or self.plan.crash_at[0] != point:
            return False
        self._reached[point] += 1
        return self._reached[point] == self.plan.crash_at[1]
