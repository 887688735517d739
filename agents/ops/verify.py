"""``streamserve verify``: does the ledger hold on the topics, for a run?

Reads the requests, predictions and dead-letter topics (read_committed) from the
beginning up to their ends as of the start, keeps the requests of the run (an id
prefix and/or a time range), and accounts each against the outputs that name it in
their source headers (``pipeline.ledger``).
"""

from __future__ import annotations

import datetime

import orjson
from aiokafka import ConsumerRecord

from agents.kafka.read import read_topic
from agents.kafka.topics import ensure_topics
from pipeline.catalog import Catalog
from pipeline.config import Settings
from pipeline.decode import decode
from pipeline.ledger import Fate, LedgerReport, ReplyRecord, reconcile
from pipeline.replies import SourcePosition, source_position

_SHOWN = 10


async def verify(settings: Settings, id_prefix: str | None, since: datetime.datetime | None,
                 until: datetime.datetime | None) -> LedgerReport:
    await ensure_topics(settings)
    topics = settings.topics
    # The id of each request, read by the worker's own decoder (with no model known: the
    # id is read before the model; no size limit: a worker's may be larger than ours),
    # which the request's answer must carry.
    nothing = Catalog({}, {})
    limits = 2**31, None
    ids: dict[SourcePosition, str] = {}
    requests = []
    async for r in read_topic(settings, topics.requests, from_beginning=True, to_end=True):
        if _in_run(r, id_prefix, since, until):
            requests.append(position := SourcePosition(r.topic, r.partition, r.offset))
            if (request_id := decode(r.value, nothing, *limits).id) is not None:
                ids[position] = request_id
    outputs = [output
               for topic, fate in ((topics.predictions, Fate.PREDICTION),
                                   (topics.deadletter, Fate.DEAD_LETTER))
               async for r in read_topic(settings, topic, from_beginning=True, to_end=True)
               if (output := _output(r, fate)) is not None]
    return reconcile(requests, outputs, ids)


def render(report: LedgerReport) -> str:
    lines = [f"{'requests':<16}{report.requests}", f"{'predictions':<16}{report.predictions}",
             f"{'dead letters':<16}{report.dead_letters}", f"{'lost':<16}{len(report.lost)}",
             f"{'both fates':<16}{len(report.both)}",
             f"{'duplicated':<16}{len(report.duplicated)} "
             f"({report.identical_duplicates} byte-identical repeats)",
             f"{'conflicting':<16}{len(report.conflicting)}",
             f"{'without its id':<16}{len(report.misnamed)}"]
    for name, positions in (("lost", report.lost), ("both fates", report.both),
                            ("conflicting", report.conflicting),
                            ("without its id", report.misnamed)):
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


def _output(record: ConsumerRecord, fate: Fate) -> ReplyRecord | None:
    source = source_position(record.headers)
    if source is None:
        return None  # not written by streamserve
    return ReplyRecord(source, fate, record.value or b"")
