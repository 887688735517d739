"""``streamserve verify``: does the ledger hold on the topics, for a run?

Reads the requests, predictions and dead-letter topics (read_committed) from the
beginning up to their ends as of the start, keeps the requests of the run (an id
prefix and/or a time range), and accounts each against the outputs that name it in
their source headers (``pipeline.ledger``).
"""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator

import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRecord

from agents.kafka_io import KafkaAccessError, ensure_topics
from pipeline.config import Settings
from pipeline.ledger import Fate, LedgerReport, Output, Position, reconcile
from pipeline.messages import SOURCE_OFFSET_HEADER, SOURCE_PARTITION_HEADER, SOURCE_TOPIC_HEADER

_SHOWN = 10


async def verify(settings: Settings, id_prefix: str | None, since: datetime.datetime | None,
                 until: datetime.datetime | None) -> LedgerReport:
    await ensure_topics(settings)
    topics = settings.topics
    requests = [(r.topic, r.partition, r.offset)
                async for r in _read_all(settings, topics.requests)
                if _in_run(r, id_prefix, since, until)]
    outputs = [output
               for topic, fate in ((topics.predictions, Fate.PREDICTION),
                                   (topics.deadletter, Fate.DEAD_LETTER))
               async for r in _read_all(settings, topic)
               if (output := _output(r, fate)) is not None]
    return reconcile(requests, outputs)


def render(report: LedgerReport) -> str:
    lines = [f"{'requests':<16}{report.requests}", f"{'predictions':<16}{report.predictions}",
             f"{'dead letters':<16}{report.dead_letters}", f"{'lost':<16}{len(report.lost)}",
             f"{'both fates':<16}{len(report.both)}",
             f"{'duplicated':<16}{len(report.duplicated)}"
             + ("" if report.duplicates_identical else " (NOT byte-identical)")]
    for name, positions in (("lost", report.lost), ("both fates", report.both)):
        lines += [f"  {name}: {t}:{p}:{o}" for t, p, o in positions[:_SHOWN]]
    verdict = ("holds, exactly once" if report.exactly_once
               else "holds, at least once" if report.holds else "DOES NOT HOLD")
    return "\n".join([*lines, f"{'ledger':<16}{verdict}"])


def _in_run(record: ConsumerRecord, id_prefix: str | None, since: datetime.datetime | None,
            until: datetime.datetime | None) -> bool:
    stamp = datetime.datetime.fromtimestamp(record.timestamp / 1000, datetime.UTC)
    if (since is not None and stamp < since) or (until is not None and stamp >= until):
        return False
    if id_prefix is None:
        return True
    try:
        request_id = orjson.loads(record.value).get("id")
    except (orjson.JSONDecodeError, AttributeError, TypeError):
        return False  # no readable id: not attributable to the run
    return isinstance(request_id, str) and request_id.startswith(id_prefix)


def _output(record: ConsumerRecord, fate: Fate) -> Output | None:
    headers = dict(record.headers)
    try:
        source: Position = (headers[SOURCE_TOPIC_HEADER].decode(),
                            int(headers[SOURCE_PARTITION_HEADER]),
                            int(headers[SOURCE_OFFSET_HEADER]))
    except (KeyError, ValueError):
        return None  # not written by streamserve
    return Output(source, fate, record.value or b"")


async def _read_all(settings: Settings, topic: str) -> AsyncIterator[ConsumerRecord]:
    """Every record of ``topic`` up to its end as of now."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=settings.bootstrap, group_id=None,
                                enable_auto_commit=False, isolation_level="read_committed",
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        partitions = consumer.assignment()
        if not partitions:
            raise KafkaAccessError(f"topic {topic!r} has no partitions on {settings.bootstrap}")
        ends = await consumer.end_offsets(list(partitions))
        remaining = {tp for tp in partitions if ends[tp] > 0}
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=1000)
            for tp, records in batch.items():
                for r in records:
                    if r.offset < ends[tp]:
                        yield r
                if records and records[-1].offset >= ends[tp] - 1:
                    remaining.discard(tp)
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()
