"""The client library's Kafka I/O: ``StreamClient`` (asyncio), one module because its start,
request paths, sender and reply reader all work the same producer, consumer and registry of
pending replies (its blocking twin, ``SyncStreamClient``, is ``agents.client.sync``).

One client is one idempotent producer of requests and one consumer of the replies
(predictions and dead letters, ``read_committed``), shared by every request it sends. The
consumer is positioned (partitions assigned, positions at the end fixed) before the first
request goes out, so no reply can slip past it; it reads without a consumer group, so two
clients each see every reply and each settles only its own (``PendingReplies``).

Both are librdkafka's (``agents.kafka.librdkafka``), as the worker's serving clients are:
on aiokafka, a client's own Python cost per request (its producer and its reader took
25 to 45 µs a record in a pass-through) made one client fall seconds behind at 6,000 to
8,000 requests a second beside a worker and a broker on two cores (``streamserve bench``,
case 6 through the client). Their threads are librdkafka's and one that reads.

A request costs the client a future and a timer, not a task: it queues for the client's one
sender task, which hands requests to the producer in order, and the reader settles the
future its caller awaits (or the timer fails it with ``PredictionTimeout``).

Which partitions it reads: all of both reply topics by default (requests then go where
Kafka's keyed partitioner puts their ids, like any other producer's). A fleet of many
clients can give each a few request partitions (``partitions=[...]``): a client then writes
only there and reads only the same partition numbers of the reply topics, where the worker
answers (README, "Requests and replies"), instead of every client reading every reply.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Self, TypeVar

from confluent_kafka import KafkaException, Message

from agents.kafka.connect import KafkaAccessError, unreachable
from agents.kafka.librdkafka import Producer, Reader
from pipeline.client import (
    ClientClosed,
    Outcome,
    PendingReplies,
    PredictionTimeout,
    PredictRequest,
    RequestIds,
    RequestNotSent,
    StreamClientError,
    check_request_id,
    choose_partition,
    raw_request_key,
    reply_partitions,
    requested_partitions,
)
from pipeline.config import Settings
from pipeline.quality.labels import encode_label
from pipeline.replies import (
    MalformedReply,
    Prediction,
    SourcePosition,
    parse_reply,
    source_position,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
# A reader's wait for the first reply of a read (a close waits for it at most once), and
# the most replies a read hands over.
_READ_WAIT_S = 0.1
_READ_RECORDS = 10_000
# How long the client's start waits for a broker to answer before it says none does.
_CONNECT_S = 10.0


class StreamClient:
    """Send requests, await their replies: ``async with StreamClient(settings) as client``.

    ``settings``: the same ``pipeline.config.Settings`` the worker reads (bootstrap servers,
    topic prefix); None reads them from the environment. ``timeout``: seconds a request
    waits for its reply unless a call says otherwise. ``id_prefix``: the start of every
    generated request id (default ``client-<8 hex>``, one per client). ``partitions``: the
    request partitions to write to, and so the only reply partitions to read (default: all).
    """

    def __init__(self, settings: Settings | None = None, *, timeout: float = 30.0,
                 id_prefix: str | None = None, partitions: Collection[int] | None = None) -> None:
        if not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.settings = settings if settings is not None else Settings.from_env()
        self.timeout = timeout
        self._ids = RequestIds(id_prefix)
        self._chosen_partitions = None if partitions is None else sorted(set(partitions))
        self._partitions: list[int] | None = None  # explicit request partitions, once started
        self._pending = PendingReplies()
        self._producer: Producer | None = None
        self._consumer: Reader | None = None
        self._reader: asyncio.Task[None] | None = None
        self._sender: asyncio.Task[None] | None = None
        self._queue: deque[_Queued] = deque()  # requests for the sender, oldest first
        self._queued = asyncio.Event()
        self._failure: ClientClosed | None = None

    @classmethod
    def from_env(cls, **options: Any) -> StreamClient:
        """A client on the settings of the environment (STREAMSERVE_BROKER, ...)."""
        return cls(Settings.from_env(), **options)

    @property
    def id_prefix(self) -> str:
        return self._ids.prefix

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def start(self) -> Self:
        """Connect, and position the reply consumer at the end of its partitions."""
        if self._consumer is not None:
            return self
        if self._failure is not None:
            raise self._failure
        topics = self.settings.topics
        # Requests go where Kafka's keyed partitioner puts their ids, as Java clients and
        # aiokafka put them (librdkafka's own default hashes keys differently). A caller
        # awaits each reply: linger 1 ms, not librdkafka's 5, halved the demo's median
        # (4.6 against 9.5 ms at 500 requests/s) and cost no client CPU at 4,000/s.
        producer = Producer(self.settings, **{"acks": "all", "enable.idempotence": True, "linger.ms": 1,
                                              "partitioner": "murmur2_random",
                                              "client.id": f"streamserve-{self.id_prefix}"})
        consumer = None
        try:
            try:
                existing = await producer.topics(_CONNECT_S)
            except KafkaException as e:
                raise await unreachable(self.settings, e) from e
            missing = [t for t in (topics.requests, topics.predictions, topics.deadletter)
                       if t not in existing]
            if missing:
                raise KafkaAccessError(
                    f"topic {missing[0]} does not exist on {self.settings.bootstrap}; a worker "
                    f"(`streamserve worker`) creates the serving topics of prefix "
                    f"{self.settings.kafka.topic_prefix!r}: start one, or check STREAMSERVE_TOPIC_PREFIX")
            try:
                wanted = requested_partitions(self._chosen_partitions, existing[topics.requests])
            except ValueError as e:
                raise ValueError(f"{e} (of {topics.requests})") from None
            assignment = []
            for topic in (topics.predictions, topics.deadletter):
                count = len(existing[topic])
                assignment += [(topic, p) for p in
                               (range(count) if self._chosen_partitions is None
                                else reply_partitions(wanted, count))]
            consumer = Reader(self.settings, f"streamserve-{self.id_prefix}")
            await consumer.start(assignment)
        except BaseException:
            await producer.stop()
            if consumer is not None:
                await consumer.close()
            raise
        self._partitions = None if self._chosen_partitions is None else wanted
        self._producer, self._consumer = producer, consumer
        self._reader = asyncio.create_task(self._read_replies(consumer),
                                           name=f"streamserve-client-{self.id_prefix}")
        self._sender = asyncio.create_task(self._send_queued(producer),
                                           name=f"streamserve-client-{self.id_prefix}-sender")
        log.debug("client %s reads %s", self.id_prefix, sorted(assignment))
        return self

    async def close(self) -> None:
        """Fail whatever is still awaited with ``ClientClosed``, then disconnect."""
        if self._failure is None:
            self._failure = ClientClosed("the client is closed; start a new one")
        closed = ClientClosed("the client was closed before the reply came")
        self._pending.fail_all(closed)
        tasks = [t for t in (self._reader, self._sender) if t is not None]
        producer, consumer = self._producer, self._consumer
        self._reader = self._sender = self._producer = self._consumer = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        while self._queue:  # raw requests not sent yet (the others failed above)
            if not (owner := self._queue.popleft().owner).done():
                owner.set_exception(closed)
        if producer is not None:
            await producer.stop()
        if consumer is not None:
            await consumer.close()

    # -- requests -------------------------------------------------------------------------

    async def predict(self, model: str, features: Mapping[str, float], *,
                      version: str | None = None, request_id: str | None = None,
                      deadline_ms: int | None = None, tenant: str | None = None,
                      timeout: float | None = None) -> Prediction:
        """Serve one row. Raises ``DeadLetterError`` (with its reason) when the worker refuses
        it, ``PredictionTimeout`` when no reply comes within ``timeout`` seconds."""
        request = PredictRequest(model, features, version=version, id=request_id,
                                 deadline_ms=deadline_ms, tenant=tenant)
        return await self.predict_request(request, timeout=timeout)

    async def predict_request(self, request: PredictRequest, *,
                              timeout: float | None = None) -> Prediction:
        """``predict`` for a ``PredictRequest`` (an id is made up when it has none)."""
        return await self._submit(self._identified(request), self._limit(timeout))

    async def predict_many(self, model: str, rows: Iterable[Mapping[str, float]], *,
                           version: str | None = None, timeout: float | None = None,
                           return_exceptions: bool = False) -> list[Any]:
        """Serve many rows of one model at once; predictions in the order of ``rows``.

        Every row is checked before any is sent. A failed request raises its error once all
        are settled, unless ``return_exceptions``: its ``StreamClientError`` then takes its
        place in the list.
        """
        requests = [self._identified(PredictRequest(model, row, version=version)) for row in rows]
        limit = self._limit(timeout)
        results = await asyncio.gather(*(self._submit(r, limit) for r in requests),
                                       return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException) and not (
                    return_exceptions and isinstance(result, StreamClientError)):
                raise result
        return results

    async def stream(self, requests: Iterable[PredictRequest] | AsyncIterable[PredictRequest], *,
                     timeout: float | None = None,
                     max_in_flight: int = 1000) -> AsyncIterator[Outcome]:
        """Send ``requests`` as they come and yield each one's ``Outcome`` as it settles (in
        the order replies arrive, not the order sent). At most ``max_in_flight`` requests are
        sent and not yet yielded: a slow reader slows the sending. Errors of a request are
        values (``Outcome.error``); an error of the source, or a programming error, stops
        the stream."""
        self._check_open()
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
        limit = self._limit(timeout)
        settled: asyncio.Queue[Outcome | _End] = asyncio.Queue()
        slots = asyncio.Semaphore(max_in_flight)
        replies: set[asyncio.Future[Prediction]] = set()  # sent, not yet settled
        launched = 0

        def on_settled(request: PredictRequest, reply: asyncio.Future[Prediction]) -> None:
            replies.discard(reply)
            if reply.cancelled():
                return
            if (error := reply.exception()) is None:
                settled.put_nowait(Outcome(request, prediction=reply.result()))
            elif isinstance(error, StreamClientError):
                settled.put_nowait(Outcome(request, error=error))
            else:  # handed to the reader, who raises it
                settled.put_nowait(_End(error))

        async def feed() -> None:
            nonlocal launched
            try:
                async for request in _aiter(requests):
                    if not isinstance(request, PredictRequest):
                        raise TypeError(f"stream() takes PredictRequest items, got {request!r}")
                    request = self._identified(request)
                    await slots.acquire()
                    reply = self._submit(request, limit)
                    replies.add(reply)
                    reply.add_done_callback(functools.partial(on_settled, request))
                    launched += 1
                settled.put_nowait(_End(None))
            except Exception as e:  # noqa: BLE001 - handed to the reader, who raises it
                settled.put_nowait(_End(e))

        feeder = asyncio.create_task(feed())
        yielded, fed = 0, False
        try:
            while not (fed and yielded == launched):
                item = await settled.get()
                if isinstance(item, _End):
                    if item.error is not None:
                        raise item.error
                    fed = True
                    continue
                slots.release()
                yielded += 1
                yield item
        finally:
            feeder.cancel()
            await asyncio.gather(feeder, return_exceptions=True)
            for reply in list(replies):  # stops awaiting them; one still queued is never sent
                reply.cancel()

    async def send_raw(self, value: bytes, *, key: bytes | None = None,
                       timeout: float | None = None) -> Prediction:
        """Send ``value`` exactly as given (broken requests included, to test a worker) and
        await its reply, found by where Kafka wrote the request since its id may be
        unreadable. ``key``: by default the request's id when it has a readable one."""
        self._check_open()
        key = key if key is not None else raw_request_key(value)
        partition = (None if self._partitions is None
                     else choose_partition(key if key is not None else value, self._partitions))
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Prediction] = loop.create_future()
        delivered: asyncio.Future[Message] = loop.create_future()
        topic = self.settings.topics.requests
        limit = self._limit(timeout)
        sent_at = self._pending.raw_sending()
        source: SourcePosition | None = None
        try:
            async with asyncio.timeout(_delay(limit)) as scope:
                self._enqueue(_Queued(value, key, partition, delivered,
                                      functools.partial(_pass_on, delivered)))
                try:
                    written = await delivered
                except KafkaException as e:
                    raise RequestNotSent(f"Kafka did not take the request: {e}") from e
                source = SourcePosition(topic, written.partition(), written.offset())
                self._pending.expect_at(source, waiter, sent_at)
                return await waiter
        except TimeoutError:
            if scope.expired():
                where = f"{topic}:{source.partition}:{source.offset}" if source else "a raw request"
                raise PredictionTimeout(where, limit, topic) from None
            raise
        finally:
            if source is None:
                self._pending.raw_failed()
            else:
                self._pending.forget_at(source)

    async def send_label(self, request_id: str, truth: str | float, *,
                         time: float | None = None) -> None:
        """Send the true outcome of request ``request_id`` to the labels topic (a class name
        for a classifier, a number for a regressor; ``time``: when it happened, epoch
        seconds), once Kafka has it. Workers running with STREAMSERVE_LABELS=on join it
        with their answer (`streamserve quality report`). Raises ValueError for a label a
        worker would refuse, RequestNotSent when Kafka does not take it."""
        self._check_open()
        assert self._producer is not None
        label = _Record(encode_label(request_id, truth, time), request_id.encode())
        try:
            await (await self._producer.send(self.settings.topics.labels, None, [label]))
        except KafkaException as e:
            raise RequestNotSent(f"Kafka did not take the label of {request_id}: {e}") from e

    # -- inside ---------------------------------------------------------------------------

    def _identified(self, request: PredictRequest) -> PredictRequest:
        return request if request.id is not None else request.with_id(self._ids.next())

    def _submit(self, request: PredictRequest, limit: float) -> asyncio.Future[Prediction]:
        """Queue ``request`` for the sender; the future its reply settles. Every failure of
        the request (not sent, no reply within ``limit`` seconds, a dead letter, the client
        closed) fails the future; only a programming error raises."""
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[Prediction] = loop.create_future()
        if self._failure is not None:
            reply.set_exception(self._failure)
            return reply
        self._check_open()
        request_id = check_request_id(request.id)
        self._pending.expect(request_id, reply)  # before sending: the reply may come quickly
        timer = (None if math.isinf(limit) else
                 loop.call_later(limit, _time_out, reply, request_id, limit, self.settings.topics.requests))
        reply.add_done_callback(functools.partial(self._settled, request_id, timer))
        key = request_id.encode()
        partition = None if self._partitions is None else choose_partition(key, self._partitions)
        self._enqueue(_Queued(request.encode(), key, partition, reply,
                              functools.partial(_fail_undelivered, reply, request_id)))
        return reply

    def _settled(self, request_id: str, timer: asyncio.TimerHandle | None,
                 _: asyncio.Future[Prediction]) -> None:
        self._pending.forget(request_id)
        if timer is not None:
            timer.cancel()

    def _enqueue(self, queued: _Queued) -> None:
        self._queue.append(queued)
        self._queued.set()

    async def _send_queued(self, producer: Producer) -> None:
        """Hand the queued requests to the producer, oldest first, and each one's delivery
        to its callback.

        One sender rather than every request awaiting the producer itself: the producer's
        send waits while its queue is full, and every waiting send would then wake at each
        drain, most only to wait again, a herd that grows with the backlog (a client a few
        thousand requests behind collapsed). A request already settled when its turn comes
        (timed out, abandoned) is not sent.
        """
        topic = self.settings.topics.requests
        while True:
            await self._queued.wait()
            self._queued.clear()
            while self._queue:
                queued = self._queue[0]  # left queued while it is sent: close() fails it
                if not queued.owner.done():
                    try:
                        delivery = await producer.send(topic, queued.partition, [queued])
                    except Exception as e:  # noqa: BLE001 - that request's failure, not the sender's
                        delivery = asyncio.get_running_loop().create_future()
                        delivery.set_exception(e)
                    delivery.add_done_callback(queued.delivered)
                self._queue.popleft()

    def _limit(self, timeout: float | None) -> float:
        limit = self.timeout if timeout is None else timeout
        if not limit > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        return limit

    def _check_open(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self._producer is None:
            raise RuntimeError("the client is not started: use `async with StreamClient(settings) "
                               "as client:` or `await client.start()` first")

    async def _read_replies(self, consumer: Reader) -> None:
        deadletter = self.settings.topics.deadletter
        try:
            while True:
                for record in await consumer.read(_READ_WAIT_S, _READ_RECORDS):
                    headers = record.headers() or ()
                    if not self._pending.wants(record.key(), source_position(headers)):
                        continue
                    try:
                        reply = parse_reply(record.value(), dead_letter=record.topic() == deadletter,
                                            headers=headers)
                    except MalformedReply as e:
                        log.warning("skipping %s:%d:%d: %s", record.topic(), record.partition(),
                                    record.offset(), e)
                        continue
                    self._pending.settle(reply)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.exception("the reply reader of client %s failed", self.id_prefix)
            self._failure = ClientClosed(f"the client's reply reader failed ({type(e).__name__}: "
                                         f"{e}); close this client and start a new one")
            self._pending.fail_all(self._failure)


@dataclass(slots=True)
class _Queued:
    """A request for the sender: what to send, whose future stops it being sent once done,
    and who hears of its delivery."""

    value: bytes
    key: bytes | None
    partition: int | None
    owner: asyncio.Future[Any]
    delivered: Callable[[asyncio.Future[Message]], None]
    headers: None = None  # a request has none


@dataclass(frozen=True, slots=True)
class _Record:
    """A label to send."""

    value: bytes
    key: bytes
    headers: None = None


@dataclass(frozen=True, slots=True)
class _End:
    """The end of a stream's source (``error`` None), or why the stream stops."""

    error: BaseException | None


async def _aiter(items: Iterable[T] | AsyncIterable[T]) -> AsyncIterator[T]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item


def _time_out(reply: asyncio.Future[Prediction], request_id: str, limit: float, topic: str) -> None:
    if not reply.done():
        reply.set_exception(PredictionTimeout(request_id, limit, topic))


def _fail_undelivered(reply: asyncio.Future[Prediction], request_id: str,
                      delivery: asyncio.Future[Message]) -> None:
    # No reply comes before its request's delivery, so only the reply is awaited; a failed
    # delivery fails it instead.
    if delivery.cancelled() or (error := delivery.exception()) is None or reply.done():
        return
    if isinstance(error, KafkaException):
        failure = RequestNotSent(f"Kafka did not take request {request_id}: {error}")
        failure.__cause__ = error
        error = failure
    reply.set_exception(error)


def _pass_on(target: asyncio.Future[Message], delivery: asyncio.Future[Message]) -> None:
    if delivery.cancelled():
        target.cancel()
        return
    error = delivery.exception()  # read even when no one waits: else asyncio logs it
    if target.done():
        return
    if error is not None:
        target.set_exception(error)
    else:
        target.set_result(delivery.result())


def _delay(seconds: float) -> float | None:
    """``seconds`` for ``asyncio.timeout``: None (never) for infinity."""
    return None if math.isinf(seconds) else seconds

