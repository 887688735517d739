"""``streamserve replay capture``: read a topic range (read_committed) into a recording file.

Replayed requests are left out unless one run is asked for; then only that run's
requests and the replies to them are kept.
"""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from aiokafka import ConsumerRecord

from agents.kafka.read import partition_offsets, read_partitions
from agents.kafka.topics import ensure_topics
from agents.ops.replay.files import write_recording
from pipeline.config import Settings
from pipeline.replay import (
    REPLAY_HEADER,
    Bound,
    Recorded,
    RecordingHeader,
    ReplayError,
    TimeBound,
    belongs_to_run,
    capture_range,
    check_run_id,
    describe_bound,
    in_time_range,
    replay_order,
)


@dataclass(frozen=True, slots=True)
class CaptureResult:
    path: Path
    records: int
    per_topic: dict[str, int]


async def capture(settings: Settings, topics: Sequence[str], start: Bound | None,
                  stop: Bound | None, out: Path, run_id: str | None = None) -> CaptureResult:
    """Record ``topics`` between ``start`` and ``stop`` into ``out``.

    Replayed requests (those with the ``streamserve-replay`` header) are left out unless
    ``run_id`` is given: then only that run's requests and the replies to them are kept.
    """
    if not out.parent.is_dir():
        raise ReplayError(f"cannot write {out}: folder {out.parent} does not exist; create it "
                          "(mkdir -p) or choose another --out path")
    if run_id is not None:
        check_run_id(run_id)
    await ensure_topics(settings)
    records: list[Recorded] = []
    per_topic: dict[str, int] = {}
    for topic in topics:
        found = [r async for r in _read_range(settings, topic, start, stop)
                 if (belongs_to_run(r, run_id) if run_id is not None
                     else r.header(REPLAY_HEADER) is None)]
        per_topic[topic] = len(found)
        records += found
    records = replay_order(records)
    header = RecordingHeader(tuple(topics), describe_bound(start), describe_bound(stop),
                             datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                             run_id, len(records))
    write_recording(out, header, records)
    return CaptureResult(out, len(records), per_topic)


async def _read_range(settings: Settings, topic: str, start: Bound | None,
                      stop: Bound | None) -> AsyncIterator[Recorded]:
    times = tuple(b.ms for b in (start, stop) if isinstance(b, TimeBound))
    offsets = await partition_offsets(settings, topic, times)
    ranges = {}
    for partition, (beginning, end, at_times) in offsets.items():
        at = iter(at_times)
        start_at = next(at) if isinstance(start, TimeBound) else None
        stop_at = next(at) if isinstance(stop, TimeBound) else None
        ranges[partition] = capture_range(partition, beginning, end, start, stop, start_at, stop_at)
    async for record in read_partitions(settings, topic, ranges):
        if in_time_range(record.timestamp, start, stop):
            yield as_recorded(record)


def as_recorded(record: ConsumerRecord) -> Recorded:
    """A consumed record as a recording keeps it (the diff reads requests this way too)."""
    return Recorded(record.topic, record.partition, record.offset, record.timestamp, record.key,
                    record.value, tuple((name, value) for name, value in record.headers))
