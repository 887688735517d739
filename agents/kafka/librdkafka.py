"""The serving path's Kafka clients, and the client library's: librdkafka (confluent-kafka)
behind an asyncio face.

Why librdkafka for serving: on the same cores a pass-through costs aiokafka six to nine
times librdkafka's CPU per record (`streamserve bench`, its two Kafka ceilings), and
aiokafka's fetcher sends no fetch while fetched records wait in its buffer, so each
batch waited for the one before. librdkafka fetches and sends from threads of its own,
in C. Faust, the drift and label agents, the control plane and the CLI stay on aiokafka.
The client library's requests and replies (``agents.client.stream``) go through the
``Producer`` and a ``Reader`` here: on aiokafka a client fell seconds behind a worker.

librdkafka's calls block, and its rebalance callbacks run inside ``consume()``. So:

* ``consume()`` runs in a thread of its own, and so does every seek, after it: records a
  seek makes stale are never handed out after it (librdkafka drops those it holds);
* a rebalance callback hands its work to the event loop and waits for it there: the
  serving loop is then waiting for that same ``consume()``, so no batch is being served,
  and the callback returns only once the revoked partitions' batches are committed;
* commits, committed offsets and transactions run in other threads, so that a callback's
  work may commit while the consume thread waits; a transactional call that outlasts its
  own timeout gives its producer up (librdkafka does not always keep that timeout);
* the producer's delivery reports are served on the event loop (``poll(0)`` every
  millisecond while sends are outstanding): one Python callback per record, which on a
  thread of their own took the GIL from the serving loop a thousand times a second
  (the demo's p50 was three times longer). A send's future resolves with its last ack.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer as _Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer as _Producer,
    TopicPartition,
)

from pipeline.config import Settings
from pipeline.offsets import Partition

log = logging.getLogger(__name__)

T = TypeVar("T")
_UNASSIGNED = -1  # produce()'s partition for "the partitioner's choice" (RD_KAFKA_PARTITION_UA)
_CALL_TIMEOUT_S = 30.0  # a blocking call the broker does not answer fails after this
# librdkafka's transactional calls can block past their own timeout: send_offsets_to_transaction
# waited for a group coordinator that had moved, for minutes (librdkafka issues 5456 and 5511;
# a chaos run's exactly-once worker served nothing more). This much later, the producer is
# given up as broken, and a new one fences it.
_HUNG_AFTER_S = _CALL_TIMEOUT_S + 10

# Send errors that no retry mends: the output is replaced or given up.
_REFUSED_FOR_GOOD = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE,
                               KafkaError.INVALID_MSG, KafkaError.INVALID_RECORD,
                               KafkaError.INVALID_MSG_SIZE, KafkaError.TOPIC_AUTHORIZATION_FAILED})
# Commit answers that mean the group moved on (a rebalance, or this member was dropped):
# the partitions' next owner serves those requests again.
_GROUP_MOVED_ON = frozenset({KafkaError.REBALANCE_IN_PROGRESS, KafkaError.ILLEGAL_GENERATION,
                             KafkaError.UNKNOWN_MEMBER_ID, KafkaError._ASSIGNMENT_LOST,
                             KafkaError.FENCED_INSTANCE_ID, KafkaError.STALE_MEMBER_EPOCH})


def config(settings: Settings) -> dict[str, Any]:
    """The properties every librdkafka client of ``settings`` is made with: the bootstrap
    servers and the security of STREAMSERVE_SECURITY_* (the same as aiokafka's)."""
    return {"bootstrap.servers": settings.bootstrap, **settings.kafka.security.librdkafka_options(),
            # librdkafka leaves Nagle's algorithm on: a small produce or fetch request then
            # waits for the broker's delayed ACK (answers took 30 ms more at 25 % load).
            "socket.nagle.disable": True,
            "logger": logging.getLogger("librdkafka"), "error_cb": _client_error}


def _code(error: BaseException) -> int | None:
    if isinstance(error, KafkaException) and isinstance(error.args[0], KafkaError):
        return error.args[0].code()
    return None


def refused_for_good(error: BaseException) -> bool:
    """Whether the broker will refuse these records however often they are sent."""
    return _code(error) in _REFUSED_FOR_GOOD


def group_moved_on(error: BaseException) -> bool:
    """Whether a commit failed because the partitions are no longer this member's."""
    return _code(error) in _GROUP_MOVED_ON


def breaks_the_producer(error: BaseException) -> bool:
    """Whether only a new producer can go on (librdkafka's fatal errors: fenced, or its
    sequence numbers lost)."""
    return (isinstance(error, KafkaException) and isinstance(error.args[0], KafkaError)
            and error.args[0].fatal())


# Said already: librdkafka logs each failed connection itself, and the worker's watch on
# the cluster says once that no broker answers (logged twice, a lost cluster filled the log).
_SAID_ELSEWHERE = frozenset({KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN})


def _client_error(error: KafkaError) -> None:
    if error.fatal():
        log.error("the Kafka client failed for good: %s", error)
    elif error.code() not in _SAID_ELSEWHERE:  # librdkafka retries by itself
        log.warning("Kafka client: %s", error)


class Record(Protocol):
    """What a producer sends: an output's key, value and headers."""

    key: bytes
    value: bytes
    headers: Sequence[tuple[str, bytes]] | None


Rebalance = Callable[[frozenset[Partition]], Awaitable[Mapping[Partition, int] | None]]


class Consumer:
    """A consumer in a group, subscribed to one topic; ``on_assigned`` may answer where
    partitions start, ``on_revoked`` commits what was served of them (both coroutines)."""

    def __init__(self, settings: Settings, topic: str, *, on_assigned: Rebalance,
                 on_revoked: Rebalance, **properties: object) -> None:
        self._loop = asyncio.get_running_loop()
        self._on_assigned, self._on_revoked = on_assigned, on_revoked
        self._reads = ThreadPoolExecutor(1, thread_name_prefix="kafka-consume")
        self._calls = ThreadPoolExecutor(1, thread_name_prefix="kafka-commit")
        self._assignment: frozenset[Partition] = frozenset()
        self._consumer = _Consumer({**config(settings), **properties})
        self._consumer.subscribe([topic], on_assign=self._assign, on_revoke=self._revoke)

    def assignment(self) -> frozenset[Partition]:
        """The partitions held; empty while a revocation is under way."""
        return self._assignment

    async def fetch(self, timeout: float, max_records: int, *, first: bool = False) -> list[Message]:
        """Up to ``max_records`` records, waiting up to ``timeout`` seconds for them all;
        with ``first``, only for the first (and with it, what else is there)."""
        return await self._loop.run_in_executor(self._reads, _consume, self._consumer, timeout,
                                                max_records, first)

    async def commit(self, offsets: Mapping[Partition, int]) -> None:
        """Commit ``offsets`` (the next to read, per partition) and wait for the answer."""
        answer = await self._call(self._consumer.commit, offsets=_partitions(offsets),
                                  asynchronous=False)
        for tp in answer or ():
            if tp.error is not None:
                raise KafkaException(tp.error)

    async def committed(self, partitions: Collection[Partition]) -> dict[Partition, int | None]:
        """The group's committed offsets (None: none committed)."""
        answer = await self._call(self._consumer.committed, [TopicPartition(t, p) for t, p in partitions],
                                  timeout=_CALL_TIMEOUT_S)
        for tp in answer:
            if tp.error is not None:
                raise KafkaException(tp.error)
        return {(tp.topic, tp.partition): tp.offset if tp.offset >= 0 else None for tp in answer}

    async def seek(self, offsets: Mapping[Partition, int | None]) -> None:
        """Read each partition again from its offset (None: from the beginning), after
        the ``fetch`` in flight, whose stale records librdkafka then drops."""
        def seek() -> None:
            for (topic, partition), offset in offsets.items():
                self._consumer.seek(TopicPartition(topic, partition,
                                                   OFFSET_BEGINNING if offset is None else offset))
        await self._loop.run_in_executor(self._reads, seek)

    def highwater(self, tp: Partition) -> int | None:
        """The partition's end as last fetched (no request)."""
        _, high = self._consumer.get_watermark_offsets(TopicPartition(*tp), cached=True)
        return high if high >= 0 else None

    def position(self, tp: Partition) -> int | None:
        """The next offset ``fetch`` hands out of ``tp`` (None before the first)."""
        [answer] = self._consumer.position([TopicPartition(*tp)])
        return answer.offset if answer.offset >= 0 else None

    def group_metadata(self) -> object:
        """What a transaction's offsets are sent with (exactly-once)."""
        return self._consumer.consumer_group_metadata()

    async def close(self) -> None:
        """Leave the group (revoking, and so committing, what is held)."""
        await self._loop.run_in_executor(self._reads, self._consumer.close)
        self._reads.shutdown()
        self._calls.shutdown()

    async def _call(self, blocking: Callable[..., T], *args: object, **kwargs: object) -> T:
        return await self._loop.run_in_executor(self._calls, lambda: blocking(*args, **kwargs))

    # Rebalance callbacks: they run in the consume thread, inside ``consume()``.

    def _assign(self, consumer: _Consumer, partitions: list[TopicPartition]) -> None:
        assigned = frozenset((tp.topic, tp.partition) for tp in partitions)
        starts = self._on_loop(self._on_assigned(assigned)) or {}
        for tp in partitions:
            tp.offset = starts.get((tp.topic, tp.partition), tp.offset)
        consumer.assign(partitions)
        self._assignment = assigned

    def _revoke(self, consumer: _Consumer, partitions: list[TopicPartition]) -> None:
        revoked = frozenset((tp.topic, tp.partition) for tp in partitions)
        self._assignment -= revoked
        self._on_loop(self._on_revoked(revoked))

    def _on_loop(self, work: Awaitable[T]) -> T | None:
        try:
            return asyncio.run_coroutine_threadsafe(work, self._loop).result()  # type: ignore[arg-type]
        except Exception:  # noqa: BLE001 - a rebalance goes on; the next commit tells
            log.exception("handling a rebalance failed")
            return None


class Reader:
    """A consumer outside any group: reads the partitions it is given from their ends as
    they are when it starts (``start``), ``read_committed``; ``read`` waits only for the
    first record. Its reads and its close run in a thread of its own."""

    def __init__(self, settings: Settings, name: str, **properties: object) -> None:
        self._loop = asyncio.get_running_loop()
        self._reads = ThreadPoolExecutor(1, thread_name_prefix="kafka-read")
        # librdkafka wants a group id for any consumer; one that only assigns partitions and
        # commits nothing never names it to the cluster.
        self._consumer = _Consumer({**config(settings), "client.id": name, "group.id": name,
                                    "enable.auto.commit": False, "enable.auto.offset.store": False,
                                    "isolation.level": "read_committed", **properties})

    async def start(self, partitions: Collection[Partition]) -> None:
        """Read ``partitions`` from their ends: fixed now, so that nothing written after
        this returns is missed ("the end", resolved later, could pass the first records)."""
        def assign() -> None:
            self._consumer.assign([TopicPartition(topic, partition, end_offset(self._consumer, topic, partition))
                                   for topic, partition in partitions])
        await self._loop.run_in_executor(self._reads, assign)

    async def read(self, timeout: float, max_records: int) -> list[Message]:
        """What has come, up to ``max_records``, waiting up to ``timeout`` seconds for the first."""
        return await self._loop.run_in_executor(self._reads, _consume, self._consumer, timeout,
                                                max_records, True)

    async def close(self) -> None:
        await self._loop.run_in_executor(self._reads, self._consumer.close)
        self._reads.shutdown()


# What a partition's leader answers until a new topic is ready there.
_NOT_READY = frozenset({KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
                        KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_PARTITION})


def end_offset(consumer: _Consumer, topic: str, partition: int, wait_s: float = 10.0) -> int:
    """The partition's end offset (blocking). Right after a topic is made, its partitions'
    leaders may not answer yet: that is asked again for up to ``wait_s`` seconds."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=wait_s)[1]
        except KafkaException as e:
            if _code(e) not in _NOT_READY or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _consume(consumer: _Consumer, timeout: float, max_records: int, first: bool) -> list[Message]:
    """Up to ``max_records`` records, waiting up to ``timeout`` seconds for them all; with
    ``first``, only for the first (and with it, what else is there). Errors are logged and
    left out."""
    if first:
        fetched = consumer.consume(1, timeout)
        if fetched and max_records > 1:
            fetched += consumer.consume(max_records - 1, 0)
    else:
        fetched = consumer.consume(max_records, timeout)
    records = [m for m in fetched if m.error() is None]
    if len(records) != len(fetched):
        for m in fetched:
            if m.error() is not None:
                log.warning("reading %s [%s]: %s", m.topic(), m.partition(), m.error())
    return records


class Producer:
    """An idempotent producer (``transactional.id`` in ``properties``: transactional).

    After a fatal error (fenced; sequence numbers lost) librdkafka sends nothing more and
    reports nothing more for the records it holds (its ``poll`` raises the error instead):
    ``failed`` says so, and every send outstanding fails with it, so that its owner takes a
    new producer rather than wait for acks that never come."""

    def __init__(self, settings: Settings, **properties: object) -> None:
        self._loop = asyncio.get_running_loop()
        self.transactional = "transactional.id" in properties
        self.failed: KafkaError | None = None
        self.hung = False  # a transactional call did not return: it takes no more calls
        self._producer = _Producer({**config(settings), **properties})
        self._outstanding: set[asyncio.Future] = set()
        self._sent = asyncio.Event()  # a send is outstanding: serve delivery reports
        self._deliveries = asyncio.create_task(self._serve_deliveries())

    async def start(self) -> None:
        """Transactional: fence, and abort the open transaction of, any earlier producer
        with the same transactional id."""
        if self.transactional:
            await self._call(self._producer.init_transactions, _CALL_TIMEOUT_S)

    async def stop(self) -> None:
        """Send what is queued (10 s at most), then stop serving delivery reports. A producer
        that failed for good (fenced, or hung: the one a rewind replaces) has nothing it may
        still send: it stops all the same."""
        try:
            if self.failed is None:
                await self._call(self._producer.flush, 10)
        except KafkaException as e:
            log.warning("the producer stops with its queue unsent (%s)", e)
        finally:
            self._deliveries.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._deliveries

    async def topics(self, timeout: float = _CALL_TIMEOUT_S) -> dict[str, list[int]]:
        """Every topic the cluster lists, with its partitions (a ``KafkaException`` when no
        broker answers within ``timeout`` seconds)."""
        metadata = await self._call(self._producer.list_topics, None, timeout)
        return {name: sorted(about.partitions) for name, about in metadata.topics.items()
                if about.error is None}

    async def partitions_for(self, topic: str) -> list[int]:
        metadata = await self._call(self._producer.list_topics, topic, _CALL_TIMEOUT_S)
        about = metadata.topics[topic]
        if about.error is not None:
            raise KafkaException(about.error)
        return sorted(about.partitions)

    async def send(self, topic: str, partition: int | None, records: Sequence[Record]) -> asyncio.Future:
        """Queue ``records`` for one partition (None: where the producer's partitioner puts
        each key); the future resolves once every one is acknowledged, with the last one's
        ``Message`` (its partition and offset), or fails with the first error (a
        ``KafkaException``)."""
        acks = _Acks(len(records), self._loop)
        produce = self._producer.produce
        partition = _UNASSIGNED if partition is None else partition
        for r in records:
            while True:
                try:
                    produce(topic, r.value, r.key, partition, on_delivery=acks.delivered,
                            headers=r.headers)
                    break
                except BufferError:  # librdkafka's queue is full: let it send
                    await asyncio.sleep(0.01)
                except KafkaException as e:  # refused before sending (e.g. too large)
                    acks.delivered(e.args[0], None)
                    break
        acks.delivered(None, None)  # the guard: every record is queued
        if self.failed is not None and not acks.future.done():
            acks.future.set_exception(KafkaException(self.failed))
        self._outstanding.add(acks.future)
        acks.future.add_done_callback(self._outstanding.discard)
        self._sent.set()
        return acks.future

    def begin_transaction(self) -> None:
        self._producer.begin_transaction()

    async def send_offsets_to_transaction(self, offsets: Mapping[Partition, int],
                                          group_metadata: object) -> None:
        await self._call(self._producer.send_offsets_to_transaction, _partitions(offsets),
                         group_metadata, _CALL_TIMEOUT_S)

    async def commit_transaction(self) -> None:
        await self._call(self._producer.commit_transaction, _CALL_TIMEOUT_S)

    async def abort_transaction(self) -> None:
        await self._call(self._producer.abort_transaction, _CALL_TIMEOUT_S)

    async def _call(self, blocking: Callable[..., T], *args: object) -> T:
        """``blocking(*args)`` in a thread of its own, one call at a time (the owner awaits
        each): a daemon thread, so that a call that never returns (``_HUNG_AFTER_S``) holds
        up neither the next producer's calls nor the process's exit."""
        done: asyncio.Future[T] = self._loop.create_future()

        def run() -> None:
            try:
                result = blocking(*args)
            except BaseException as e:  # noqa: BLE001 - handed to the awaiting coroutine
                self._loop.call_soon_threadsafe(_settle, done, None, e)
            else:
                self._loop.call_soon_threadsafe(_settle, done, result, None)
        threading.Thread(target=run, name="kafka-transactions", daemon=True).start()
        try:
            return await asyncio.wait_for(done, _HUNG_AFTER_S)  # cancels ``done`` when late
        except TimeoutError:
            error = KafkaError(KafkaError._TIMED_OUT, f"{getattr(blocking, '__name__', blocking)} did "
                               f"not return in {_HUNG_AFTER_S:.0f} s", fatal=True)
            log.error("the Kafka producer is given up: %s", error.str())
            self.hung = True
            self._fail_outstanding(error)
            raise KafkaException(error) from None

    async def _serve_deliveries(self) -> None:
        while True:
            await self._sent.wait()
            while self._outstanding:
                try:
                    self._producer.poll(0)
                except KafkaException as e:  # a fatal error is raised by poll, not reported
                    log.error("the Kafka producer failed for good: %s", e)
                    self._fail_outstanding(e.args[0])
                await asyncio.sleep(0.001)
            self._sent.clear()

    def _fail_outstanding(self, error: KafkaError) -> None:
        self.failed = error
        for future in list(self._outstanding):
            if not future.done():
                future.set_exception(KafkaException(error))


class _Acks:
    """One send's records: the future resolves when the last is acknowledged. Delivery
    reports arrive on the event loop, or on the thread of a blocking call that serves
    them too (a transaction's commit flushes): ``next`` on a counter is atomic."""

    __slots__ = ("_error", "_last", "_loop", "_loop_thread", "_seen", "_total", "future")

    def __init__(self, records: int, loop: asyncio.AbstractEventLoop) -> None:
        self._total = records + 1  # and the guard, given when every record is queued
        self._seen = itertools.count(1)
        self._error: KafkaError | None = None
        self._last: Message | None = None
        self._loop = loop
        self._loop_thread = threading.get_ident()  # made on the event loop
        self.future: asyncio.Future = loop.create_future()

    def delivered(self, error: KafkaError | None, message: Message | None) -> None:
        if error is not None and self._error is None:
            self._error = error
        if message is not None:
            self._last = message
        if next(self._seen) == self._total:
            if threading.get_ident() == self._loop_thread:
                self._resolve()
            else:
                self._loop.call_soon_threadsafe(self._resolve)

    def _resolve(self) -> None:
        if self.future.done():
            return
        if self._error is None:
            self.future.set_result(self._last)
        else:
            self.future.set_exception(KafkaException(self._error))


def _settle(future: asyncio.Future, result: object, error: BaseException | None) -> None:
    if future.done():  # given up on (``Producer._call``)
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


def _partitions(offsets: Mapping[Partition, int]) -> list[TopicPartition]:
    return [TopicPartition(topic, partition, offset) for (topic, partition), offset in offsets.items()]
