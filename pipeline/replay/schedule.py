"""The schedule of a replay: which records to send again, rewritten and tagged, and when.

Each record is sent after the recording's inter-arrival time divided by the speed, with
the header ``streamserve-replay: <run id>`` and ``streamserve-replay-index: <its line
number among the records>``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.replay.errors import ReplayError
from pipeline.replay.recording import Recorded
from pipeline.replay.rewrite import Rewrite
from pipeline.replay.runs import INDEX_HEADER, REPLAY_HEADER, check_run_id

_MAX_SPEED = 1e6


@dataclass(frozen=True, slots=True)
class ScheduledRecord:
    """One recorded request to send again, rewritten: ``at_s`` seconds after the replay starts."""

    index: int
    at_s: float
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]


def schedule(timestamps_ms: Sequence[int], speed: float | None) -> list[float]:
    """When to send each record, in seconds from the start: the recording's inter-arrival
    times divided by ``speed`` (a negative gap, out of order, counts as 0); all 0 when
    ``speed`` is None (as fast as possible)."""
    if speed is not None and not (isinstance(speed, int | float) and 0 < speed <= _MAX_SPEED):
        raise ReplayError(f"--speed must be a number above 0 (2 replays twice as fast, 0.5 at "
                          f"half speed), got {speed!r}; use --max for as fast as possible")
    at, times = 0.0, []
    for i, stamp in enumerate(timestamps_ms):
        if speed is not None and i:
            at += max(0, stamp - timestamps_ms[i - 1]) / 1000 / speed
        times.append(at)
    return times


def plan(records: Sequence[Recorded], rewrite: Rewrite, run_id: str,
         speed: float | None) -> list[ScheduledRecord]:
    """The records to send, rewritten, tagged with the run id, on schedule."""
    check_run_id(run_id)
    times = schedule([r.timestamp_ms for r in records], speed)
    out = []
    for i, (record, at_s) in enumerate(zip(records, times, strict=True)):
        key, value = rewrite.apply(record.key, record.value)
        headers = tuple((n, v) for n, v in record.headers if n not in (REPLAY_HEADER, INDEX_HEADER))
        headers += ((REPLAY_HEADER, run_id.encode()), (INDEX_HEADER, b"%d" % i))
        out.append(ScheduledRecord(i, at_s, key, value, headers))
    return out


def recorded_pace(records: Sequence[Recorded]) -> float | None:
    """The recording's own rate in records per second (None for fewer than two records or
    no time between them)."""
    if len(records) < 2:
        return None
    span = (records[-1].timestamp_ms - records[0].timestamp_ms) / 1000
    return (len(records) - 1) / span if span > 0 else None
