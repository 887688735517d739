"""Repeated request ids: one prediction per id within a window, a dead letter for a repeat.

A producer that retries blindly, or a client that reuses ids, would otherwise get two
predictions keyed by one id, and a reader of the predictions topic could not tell which
answers which request. ``RecentIds`` remembers the ids a worker has served, within a
window bounded by count (always: memory is bounded) and optionally by time, with the
clock passed in (use ``time.monotonic()``; tests advance it by hand)::

    recent = RecentIds(max_ids=100_000, window_s=600)
    if recent.seen_before(request.id, time.monotonic(), (topic, partition, offset)):
        dead_letter(recent.rejection(request.id, request.model))

Requests are keyed by id, so all repeats of an id reach the same partition, and so the
same worker. The memory is the worker's own: a restart or a rebalance starts it empty.

A redelivery is not a repeat: Kafka may hand the same record (same topic, partition and
offset) to a worker twice, and the ledger wants the same output for it again, so a
sighting from the position first recorded for an id is not counted as a repeat.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

from pipeline.rejections import Reason, Rejection


class RecentIds:
    """The request ids first seen within the last ``max_ids`` ids and ``window_s`` seconds.

    Args:
        max_ids: how many ids to remember, at least 1; the oldest is forgotten first.
            Memory is about 300 bytes per id plus the id's length (CPython 3.11).
        window_s: forget an id this many seconds after it was first seen; None to
            bound the window by count only.
    """

    def __init__(self, max_ids: int, window_s: float | None = None) -> None:
        if isinstance(max_ids, bool) or not isinstance(max_ids, int) or max_ids < 1:
            raise ValueError(f"max_ids must be a whole number of at least 1, got {max_ids!r}")
        if window_s is not None and not window_s > 0:
            raise ValueError(
                f"window_s must be a positive number of seconds or None, got {window_s!r}")
        self.max_ids, self.window_s = max_ids, window_s
        # id -> (first seen, where it was read); in order of first sighting, oldest first.
        self._seen: OrderedDict[str, tuple[float, Hashable | None]] = OrderedDict()
        # A batch's ids are checked at one clock reading: the expired are swept once.
        self._swept_at: float | None = None

    def __len__(self) -> int:
        return len(self._seen)

    def seen_before(self, request_id: str, now: float, position: Hashable | None = None) -> bool:
        """True when ``request_id`` was first seen within the window, from another position.

        The first sighting is remembered and returns False; so does a redelivery (the
        same ``position``, e.g. ``(topic, partition, offset)``, as the first sighting).
        A repeat does not renew the window: an id is served again once the window has
        passed since it was first served. Costs O(1) amortised.
        """
        self._forget_expired(now)
        first = self._seen.get(request_id)
        if first is not None:
            return position is None or position != first[1]
        self._seen[request_id] = (now, position)
        if len(self._seen) > self.max_ids:
            self._seen.popitem(last=False)
        return False

    def forget(self, request_id: str) -> None:
        """Forget ``request_id``, so that it may be served again: for a request refused for
        now (``pipeline.admission.RETRYABLE``), which its sender may retry."""
        self._seen.pop(request_id, None)

    def rejection(self, request_id: str, model: str | None = None) -> Rejection:
        """The dead letter's reason and sentence for a repeat of ``request_id``."""
        return Rejection(Reason.DUPLICATE_REQUEST,
                         f"request id {request_id!r} was already served within {self.window()}, "
                         "so this repeat gets no second prediction; to send a request again on "
                         "purpose, give it a new id",
                         id=request_id, model=model)

    def window(self) -> str:
        """The window in words, e.g. "the last 600 s (and the last 100000 ids)"."""
        count = f"the last {self.max_ids} ids this worker read"
        if self.window_s is None:
            return count
        return f"the last {self.window_s:g} s (and {count})"

    def _forget_expired(self, now: float) -> None:
        if self.window_s is None or now == self._swept_at:
            return
        self._swept_at = now
        # Oldest first: stop at the first id still in the window. With a clock that
        # steps back, ids are kept longer, never forgotten early.
        horizon = now - self.window_s
        while self._seen:
            request_id, (first_seen, _) = next(iter(self._seen.items()))
            if first_seen > horizon:
                break
            del self._seen[request_id]
