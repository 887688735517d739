"""What a capture takes: its bounds (``--from``/``--to``, in time or in offsets), the
offsets of each partition they span, and which records of one replay run to keep.

Offsets answer for a partition as a whole; time bounds hold for each record too, since
producers set timestamps and an earlier offset may carry a later time.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import orjson

from pipeline.replay.errors import ReplayError
from pipeline.replay.recording import Recorded
from pipeline.replay.runs import REPLAY_HEADER


@dataclass(frozen=True, slots=True)
class TimeBound:
    """A capture bound in time: milliseconds since the epoch (record timestamps)."""

    ms: int


@dataclass(frozen=True, slots=True)
class OffsetBound:
    """A capture bound in offsets: ``every`` for all partitions, or one per partition
    (a partition not named starts at its beginning, or stops at its end)."""

    every: int | None = None
    partitions: Mapping[int, int] = field(default_factory=dict)

    def offset(self, partition: int) -> int | None:
        return self.every if self.every is not None else self.partitions.get(partition)


Bound = TimeBound | OffsetBound


def parse_bound(text: str) -> Bound:
    """``--from``/``--to``: an ISO 8601 time (UTC when no zone is given), an offset for
    every partition (``1200``) or offsets per partition (``0:1200,1:1187``)."""
    text = text.strip()
    if re.fullmatch(r"\d+", text):
        return OffsetBound(every=int(text))
    if re.fullmatch(r"\d+:\d+(,\d+:\d+)*", text):
        pairs = [tuple(map(int, part.split(":"))) for part in text.split(",")]
        partitions = dict(pairs)
        if len(partitions) != len(pairs):
            raise ReplayError(f"{text!r} names a partition twice; give each partition one offset")
        return OffsetBound(partitions=partitions)
    try:
        stamp = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ReplayError(f"{text!r} is neither a time (ISO 8601, e.g. 2026-01-31T10:00:00Z) nor an "
                          "offset (1200, or per partition 0:1200,1:1187)") from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=datetime.UTC)
    return TimeBound(round(stamp.timestamp() * 1000))


def describe_bound(bound: Bound | None) -> str | None:
    if bound is None:
        return None
    if isinstance(bound, TimeBound):
        return datetime.datetime.fromtimestamp(bound.ms / 1000, datetime.UTC).isoformat()
    if bound.every is not None:
        return f"offset {bound.every}"
    return "offsets " + ",".join(f"{p}:{o}" for p, o in sorted(bound.partitions.items()))


def capture_range(partition: int, beginning: int, end: int, start: Bound | None,
                  stop: Bound | None, start_at_time: int | None,
                  stop_at_time: int | None) -> tuple[int, int]:
    """The offsets ``[first, past)`` of one partition to capture.

    ``beginning``/``end``: the partition's first offset and its end (read_committed).
    ``start_at_time``/``stop_at_time``: for time bounds, the first offset whose timestamp
    is at or after the bound (None: no such record), as the broker answers them.
    """
    if start is None:
        first = beginning
    elif isinstance(start, TimeBound):
        first = end if start_at_time is None else start_at_time
    else:
        offset = start.offset(partition)
        first = beginning if offset is None else offset
    if stop is None:
        past = end
    elif isinstance(stop, TimeBound):
        past = end if stop_at_time is None else stop_at_time
    else:
        offset = stop.offset(partition)
        past = end if offset is None else offset
    first = min(max(first, beginning), end)
    return first, max(first, min(past, end))


def in_time_range(timestamp_ms: int, start: Bound | None, stop: Bound | None) -> bool:
    """Time bounds hold for each record too: a timestamp earlier than an earlier offset's
    (producers set them) stays out of ``[from, to)``."""
    if isinstance(start, TimeBound) and timestamp_ms < start.ms:
        return False
    return not (isinstance(stop, TimeBound) and timestamp_ms >= stop.ms)


def belongs_to_run(record: Recorded, run_id: str) -> bool:
    """A replayed request of run ``run_id`` (by its header), or a reply to one (by its id)."""
    if record.header(REPLAY_HEADER) is not None:
        return record.header(REPLAY_HEADER) == run_id.encode()
    request_id = _json_id(record.value)
    return request_id is not None and request_id.startswith(f"{run_id}/")


def _json_id(value: bytes | None) -> str | None:
    try:
        body = orjson.loads(value) if value else None
    except orjson.JSONDecodeError:
        return None
    request_id = body.get("id") if isinstance(body, dict) else None
    return request_id if isinstance(request_id, str) else None
