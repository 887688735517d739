"""Event-time windows built from tumbling panes: pure state, snapshot-able, no clock.

Panes are tumbling and ``hop_s`` seconds long; an event at time t (seconds) belongs to
pane ``floor(t / hop_s)``. The window ending with pane e covers panes
``e - size_s/hop_s + 1 .. e``, i.e. the seconds ``[(e + 1) * hop_s - size_s, (e + 1) * hop_s)``,
and its counts are the sum of those panes' counts. A window closes when an event
arrives more than ``grace_s`` seconds past its end (stream time, as Kafka Streams
keeps it: the latest pane seen); our code emits it then (Faust's own
``on_window_close`` is wall-clock driven and late: docs/design.md, "Faust and Kafka
pitfalls"). The grace is for rows that arrive out of order: a topic's partitions are
read side by side, so after a restart one partition's backlog may run ahead of another's.

Counts arriving for a pane whose every window has already closed are dropped and
tallied in ``late_rows``; counts for an older pane that still has an open window are
added to it (the windows already emitted never see them).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, Self, TypeVar


class Mergeable(Protocol):
    """What a pane holds: ``Counts`` or ``MatrixCounts``."""

    @property
    def total(self) -> int: ...

    def __add__(self, other: Self) -> Self: ...

    def to_json(self) -> dict[str, Any]: ...


C = TypeVar("C", bound=Mergeable)


def pane_index(timestamp_s: float, hop_s: int) -> int:
    """The tumbling pane holding an event at ``timestamp_s`` (seconds since the epoch)."""
    return math.floor(timestamp_s / hop_s)


@dataclass(frozen=True, slots=True)
class ClosedWindow(Generic[C]):
    """A window's merged counts. ``start_s``/``end_s``: event-time seconds, end exclusive."""

    start_s: int
    end_s: int
    counts: C


class PaneWindow(Generic[C]):
    """Hopping windows of ``size_s`` seconds every ``hop_s`` seconds, summed from panes.

    Stateful in the Bytewax manner: ``on_counts`` takes a pane's counts and returns the
    windows that closed; ``on_eof`` closes whatever is left; ``snapshot``/``restore``
    carry the state through a table or a restart.
    """

    def __init__(self, size_s: int, hop_s: int, grace_s: int = 0) -> None:
        if not all(isinstance(v, int) for v in (size_s, hop_s, grace_s)) or hop_s < 1 \
                or size_s < hop_s or size_s % hop_s or grace_s < 0 or grace_s % hop_s:
            raise ValueError(f"window size, hop and grace must be whole seconds with the size and "
                             f"grace multiples of the hop (e.g. size_s=300, hop_s=60, grace_s=60), "
                             f"got size_s={size_s!r}, hop_s={hop_s!r}, grace_s={grace_s!r}")
        self.size_s = size_s
        self.hop_s = hop_s
        self.grace_s = grace_s
        self.panes_per_window = size_s // hop_s
        self.grace_panes = grace_s // hop_s
        self.panes: dict[int, C] = {}
        self.latest: int | None = None  # the latest pane that received counts
        self.late_rows = 0

    def pane_of(self, timestamp_s: float) -> int:
        return pane_index(timestamp_s, self.hop_s)

    def on_counts(self, pane: int, counts: C) -> list[ClosedWindow[C]]:
        """Add ``counts`` to ``pane``; return the windows this event time closed, oldest first."""
        if self.latest is not None and pane <= self.latest - self.grace_panes - self.panes_per_window:
            self.late_rows += counts.total
            return []
        held = self.panes.get(pane)
        self.panes[pane] = counts if held is None else held + counts
        if self.latest is not None and pane <= self.latest:
            return []
        closed = [] if self.latest is None else self._close(
            self.latest - self.grace_panes, pane - self.grace_panes)
        self.latest = pane
        for old in [p for p in self.panes if p <= pane - self.grace_panes - self.panes_per_window]:
            del self.panes[old]
        return closed

    def on_eof(self) -> list[ClosedWindow[C]]:
        """The stream ended: close every window still holding counts, and forget them."""
        if self.latest is None:
            return []
        closed = self._close(self.latest - self.grace_panes, self.latest + self.panes_per_window)
        self.panes.clear()
        return closed

    def _close(self, first_end: int, stop_end: int) -> list[ClosedWindow[C]]:
        """Windows ending with panes ``first_end .. stop_end - 1`` that hold counts (windows
        ending past the latest pane's last window are empty)."""
        assert self.latest is not None
        closed = []
        for end in range(first_end, min(stop_end, self.latest + self.panes_per_window)):
            held = [self.panes[p] for p in range(end - self.panes_per_window + 1, end + 1) if p in self.panes]
            if held:
                total = held[0]
                for counts in held[1:]:
                    total = total + counts
                closed.append(ClosedWindow((end + 1) * self.hop_s - self.size_s, (end + 1) * self.hop_s, total))
        return closed

    def snapshot(self) -> dict[str, Any]:
        """Strict-JSON state; ``restore`` rebuilds an equal window from it."""
        return {"size_s": self.size_s, "hop_s": self.hop_s, "grace_s": self.grace_s,
                "latest": self.latest, "late_rows": self.late_rows,
                "panes": [[p, self.panes[p].to_json()] for p in sorted(self.panes)]}

    @classmethod
    def restore(cls, snapshot: dict[str, Any], counts_from_json: Callable[[dict[str, Any]], C]) -> PaneWindow[C]:
        """E.g. ``PaneWindow.restore(state, MatrixCounts.from_json)``."""
        window: PaneWindow[C] = cls(snapshot["size_s"], snapshot["hop_s"], snapshot["grace_s"])
        window.latest = snapshot["latest"]
        window.late_rows = snapshot["late_rows"]
        window.panes = {int(p): counts_from_json(c) for p, c in snapshot["panes"]}
        return window
