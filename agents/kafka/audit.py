"""The audit trail's I/O: entries (``pipeline.audit``) written to ``<prefix>.audit``, keyed
by their subject (a model's name for a model's entries), and read back.

``record`` is the one way to write an entry: it stamps who (``user@host`` and the Kafka
principal of the settings), when and from where (this host, process and command line).
A worker must not wait on the trail while it loads versions: its ``AuditTrail.note``
returns at once and the entry goes out in the background on the trail's producer; an
entry that cannot be written is logged whole, so it is never lost without a trace.
"""

from __future__ import annotations

import asyncio
import getpass
import logging
import os
import socket
import sys
import time
from collections.abc import Mapping
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from agents.kafka.connect import start_producer
from agents.kafka.read import read_topic
from agents.kafka.topics import ensure_topics
from pipeline.audit import AuditEntry, command_line
from pipeline.config import Settings
from pipeline.routing import ControlError

log = logging.getLogger(__name__)


def operator() -> str:
    """Who is changing things: the OS user, user@host."""
    return f"{getpass.getuser()}@{socket.gethostname()}"


async def record(settings: Settings, *, action: str, subject: str, source: str = "cli",
                 details: Mapping[str, Any] | None = None, reason: str = "",
                 before: Mapping[str, Any] | None = None, after: Mapping[str, Any] | None = None,
                 producer: AIOKafkaProducer | None = None) -> AuditEntry:
    """Write one audit entry of this process and return it. ``subject`` is a model's name or
    an area ("acl", "broker:HOST:PORT", "quota:user=alice"); ``before``/``after`` its state,
    ``details`` other facts (JSON values). With ``producer`` (the caller's, open) the entry
    goes out on it; without, on a producer of its own, after the topics are made sure of."""
    entry = _entry(settings, action=action, subject=subject, source=source, details=details,
                   reason=reason, before=before, after=after)
    if producer is not None:
        await _send(settings, producer, entry)
        return entry
    await ensure_topics(settings)
    own = await start_producer(settings)
    try:
        await _send(settings, own, entry)
    finally:
        await own.stop()
    return entry


async def read_entries(settings: Settings) -> list[AuditEntry]:
    """Every readable entry, in the order written; an unreadable one is logged and skipped."""
    entries = []
    async for message in read_topic(settings, settings.topics.audit, from_beginning=True,
                                    to_end=True):
        try:
            entries.append(AuditEntry.from_json(orjson.loads(message.value)))
        except (ControlError, orjson.JSONDecodeError, TypeError) as e:
            log.warning("audit record at offset %d unreadable, skipped: %s", message.offset, e)
    return entries


class AuditTrail:
    """Entries of a long-lived process (a worker), written without making it wait.

    The producer opens on the first entry and ``close`` stops it, after the entries under
    way (at most ``timeout`` seconds more): call it before the event loop ends; a later
    ``note`` opens a producer in the loop then running.
    """

    def __init__(self, settings: Settings, source: str) -> None:
        self._settings = settings
        self._source = source
        self._producer: asyncio.Task[AIOKafkaProducer] | None = None
        self._pending: set[asyncio.Task[None]] = set()

    def note(self, *, action: str, subject: str, details: Mapping[str, Any] | None = None,
             reason: str = "", before: Mapping[str, Any] | None = None,
             after: Mapping[str, Any] | None = None) -> None:
        """The entry ``record`` would write, stamped now, written in the background."""
        entry = _entry(self._settings, action=action, subject=subject, source=self._source,
                       details=details, reason=reason, before=before, after=after)
        task = asyncio.get_running_loop().create_task(self._write(entry))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def close(self, timeout: float = 10) -> None:
        if self._pending:
            _, late = await asyncio.wait(self._pending, timeout=timeout)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        if self._producer is not None:
            opening, self._producer = self._producer, None
            producer = await asyncio.gather(opening, return_exceptions=True)
            if isinstance(producer[0], AIOKafkaProducer):
                await producer[0].stop()

    async def _write(self, entry: AuditEntry) -> None:
        try:
            await _send(self._settings, await self._open(), entry)
        except asyncio.CancelledError:
            _lost(entry, "the trail was closed first")
            raise
        except Exception as e:  # noqa: BLE001 - whatever failed, the entry is logged, not lost
            _lost(entry, repr(e))

    async def _open(self) -> AIOKafkaProducer:
        """The trail's producer, started once however many entries wait for it; after a
        failed start, the next entry tries again."""
        opening = self._producer
        if opening is None or (opening.done() and (opening.cancelled() or opening.exception())):
            opening = self._producer = asyncio.get_running_loop().create_task(
                start_producer(self._settings))
        return await asyncio.shield(opening)


def _lost(entry: AuditEntry, why: str) -> None:
    log.error("audit entry not written (%s); it was: %s", why,
              orjson.dumps(entry.to_json()).decode())


def _entry(settings: Settings, *, action: str, subject: str, source: str,
           details: Mapping[str, Any] | None, reason: str, before: Mapping[str, Any] | None,
           after: Mapping[str, Any] | None) -> AuditEntry:
    return AuditEntry(action=action, subject=subject, who=operator(), when=time.time(),
                      source=source, principal=settings.kafka.security.principal,
                      host=socket.gethostname(), pid=os.getpid(), command=command_line(sys.argv),
                      before=None if before is None else dict(before),
                      after=None if after is None else dict(after),
                      details=dict(details or {}), reason=reason)


async def _send(settings: Settings, producer: AIOKafkaProducer, entry: AuditEntry) -> None:
    await producer.send_and_wait(settings.topics.audit, key=entry.subject.encode(),
                                 value=orjson.dumps(entry.to_json()))
