"""Reading topics without joining a consumer group: every partition of a topic (up to
its end, or until idle), given offset ranges, each partition's offsets, and ``ClusterView``,
the admin client and consumer ``streamserve status`` keeps open to read offsets and tail
topics again and again.

Read committed throughout: aborted transactions never show.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Self

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from agents.kafka.connect import KafkaAccessError, connection, start_consumer, unreachable
from agents.kafka.topics import require_topic
from pipeline.config import Settings


async def read_topic(settings: Settings, topic: str, *, from_beginning: bool,
                     idle_timeout: float | None = None, to_end: bool = False,
                     ready: asyncio.Event | None = None) -> AsyncIterator[ConsumerRecord]:
    """Records of every partition of ``topic``, without joining a consumer group.

    Stops after ``idle_timeout`` seconds with no record (never, when None), or with
    ``to_end`` once every partition is read up to its end as of the start. ``ready`` is
    set once the start positions are fixed, so a caller can produce after it without
    missing its own replies.
    """
    await require_topic(settings, topic)
    consumer = await start_consumer(settings, topic, isolation_level="read_committed",
                                    auto_offset_reset="earliest" if from_beginning else "latest")
    try:
        for tp in consumer.assignment():
            await consumer.position(tp)  # fix the start positions now, before ``ready``
        if ready is not None:
            ready.set()
        ends = await consumer.end_offsets(list(consumer.assignment())) if to_end else {}
        last = time.monotonic()
        while True:
            if to_end and all([await consumer.position(tp) >= end for tp, end in ends.items()]):
                return
            batch = await consumer.getmany(timeout_ms=200, max_records=1000)
            records = [r for tp, rs in batch.items() for r in rs
                       if not to_end or r.offset < ends[tp]]
            for record in records:
                yield record
            if records:
                last = time.monotonic()
            elif idle_timeout is not None and time.monotonic() - last > idle_timeout:
                return
    finally:
        await consumer.stop()


async def partition_offsets(
        settings: Settings, topic: str, timestamps_ms: tuple[int, ...] = (),
) -> dict[int, tuple[int, int, tuple[int | None, ...]]]:
    """Per partition of ``topic``: its first offset, its end (read_committed: the last
    stable offset) and, for each of ``timestamps_ms``, the first offset whose timestamp is
    at or after it (None when no record is that late)."""
    await require_topic(settings, topic)
    # Subscribed without a group: every partition is assigned once it has started.
    consumer = await start_consumer(settings, topic, isolation_level="read_committed")
    try:
        partitions = sorted(consumer.assignment())
        beginnings = await consumer.beginning_offsets(partitions)
        ends = await consumer.end_offsets(partitions)
        at_times = []
        for stamp in timestamps_ms:
            found = await consumer.offsets_for_times({tp: stamp for tp in partitions})
            at_times.append({tp: None if hit is None else hit.offset for tp, hit in found.items()})
        return {tp.partition: (beginnings[tp], ends[tp], tuple(at[tp] for at in at_times))
                for tp in partitions}
    finally:
        await consumer.stop()


async def read_partitions(settings: Settings, topic: str,
                          ranges: dict[int, tuple[int, int]]) -> AsyncIterator[ConsumerRecord]:
    """The records of ``topic`` (read_committed) from ``ranges[partition] = (first, past)``:
    offsets ``first`` up to, not including, ``past``; in offset order within a partition."""
    wanted = {TopicPartition(topic, p): (first, past)
              for p, (first, past) in ranges.items() if first < past}
    if not wanted:
        return
    consumer = await start_consumer(settings, isolation_level="read_committed",
                                    auto_offset_reset="earliest")
    try:
        consumer.assign(list(wanted))
        for tp, (first, _) in wanted.items():
            consumer.seek(tp, first)
        while True:
            # Transaction markers take offsets too: stop on the position, not a count.
            open_ = [tp for tp, (_, past) in wanted.items() if await consumer.position(tp) < past]
            if not open_:
                return
            batch = await consumer.getmany(*open_, timeout_ms=500)
            for tp, records in batch.items():
                for record in records:
                    if record.offset < wanted[tp][1]:
                        yield record
    finally:
        await consumer.stop()


class ClusterView:
    """An admin client and a group-less consumer (read_committed), kept open for reading
    offsets again and again, and for tailing topics from their beginning
    (``streamserve status``, refreshed by ``--watch``).

    ``tail(topic)`` returns the records written since its last call, up to the end
    offsets as of this call; the first call starts at the beginning. The topics to tail
    are given up front: the consumer's assignment is set once they all exist.
    """

    def __init__(self, settings: Settings, tailed: tuple[str, ...] = ()) -> None:
        self._settings = settings
        self._tailed = tailed
        self._admin = AIOKafkaAdminClient(**connection(settings))
        self._consumer = AIOKafkaConsumer(**connection(settings), group_id=None,
                                          enable_auto_commit=False,
                                          isolation_level="read_committed",
                                          auto_offset_reset="earliest")
        self._assigned: set[TopicPartition] = set()

    async def __aenter__(self) -> Self:
        try:
            await self._admin.start()
            await self._consumer.start()
        except KafkaError as e:
            await self.close()
            raise await unreachable(self._settings, e) from e
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._consumer.stop()
        await self._admin.close()

    async def topics(self) -> set[str]:
        return set(await self._admin.list_topics())

    async def partitions(self, topic: str) -> list[int]:
        """``topic``'s partition numbers, sorted; empty when it does not exist."""
        described = await self._admin.describe_topics([topic])
        return sorted(p["partition"] for d in described
                      if d["topic"] == topic and not d["error_code"] for p in d["partitions"])

    async def offsets(self, topic: str) -> dict[int, tuple[int, int]]:
        """Per partition of ``topic``: its first offset kept and its end (the last stable
        offset); empty when the topic does not exist."""
        tps = [TopicPartition(topic, p) for p in await self.partitions(topic)]
        if not tps:
            return {}
        firsts = await self._consumer.beginning_offsets(tps)
        ends = await self._consumer.end_offsets(tps)
        return {tp.partition: (firsts[tp], ends[tp]) for tp in tps}

    async def committed(self, group: str, topic: str) -> dict[int, int]:
        """The offsets consumer group ``group`` committed on ``topic``, by partition (those
        it never committed on are absent)."""
        offsets = await self._admin.list_consumer_group_offsets(group)
        return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic}

    async def tail(self, topic: str, timeout: float = 30) -> list[ConsumerRecord]:
        """``topic``'s records since the last call (the first: from the beginning), at
        least up to its end as of this call; empty while a tailed topic does not exist yet.
        ``KafkaAccessError`` when they cannot all be read within ``timeout`` seconds."""
        if topic not in self._tailed:
            raise ValueError(f"{topic!r} is not tailed; pass it to ClusterView(tailed=...)")
        if not self._assigned:
            wanted = {TopicPartition(t, p) for t in self._tailed for p in await self.partitions(t)}
            if {tp.topic for tp in wanted} != set(self._tailed):
                return []
            self._consumer.assign(sorted(wanted))
            self._assigned = wanted
        mine = [tp for tp in self._assigned if tp.topic == topic]
        ends = await self._consumer.end_offsets(mine)
        records: list[ConsumerRecord] = []
        deadline = time.monotonic() + timeout
        # Transaction markers take offsets too: stop on the position, not a count. Records
        # past the ends are kept: the position has moved past them.
        while open_ := [tp for tp in mine if await self._consumer.position(tp) < ends[tp]]:
            if time.monotonic() > deadline:
                raise KafkaAccessError(f"could not read {topic} up to its end within "
                                       f"{timeout:.0f} s from {self._settings.bootstrap}")
            batch = await self._consumer.getmany(*open_, timeout_ms=500, max_records=5000)
            records += [r for rs in batch.values() for r in rs]
        return records
