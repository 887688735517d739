"""The serving hot path: batches of request records in, outputs out, offsets committed.

Why not a Faust agent: Faust's stream machinery costs 60-90 µs per event before any
model work (codecs, sensors, per-event acks), and an exception escaping ``take()``
still commits the batch. This service runs inside the Faust worker (its lifecycle,
signals and logging) but consumes and produces with librdkafka clients of its own
(``agents.kafka.librdkafka`` says why and how they meet the event loop), batch by
batch, with raw bytes and no per-event Python beyond decoding.

Batching is adaptive (``pipeline.adaptive.BatchPolicy``): records queue up until a
full bucket is there or waiting longer would break the queueing budget
(STREAMSERVE_BATCH_TIMEOUT_MS) given the measured cost of a batch; heavy traffic
fills the largest bucket, light traffic goes out early.

Per batch, in this order:
  1. take the batch the policy chose from the head of the queue (per partition, a
     prefix of what was fetched; librdkafka fetches the next records meanwhile);
  2. decode, serve and encode it (``InferenceService.handle``): exactly one output per
     record, a prediction or a dead letter, whatever the input or the model does;
  3. hand every output to the producer (``Checkpoint.hand_off``) and go on with the next
     batch while the broker acknowledges them (``Checkpoint.keep_up`` bounds the
     hand-offs in flight);
  4. every ``FLUSH_SECONDS`` (and when idle), commit: ``Checkpoint.commit`` sends the
     drift codes of the rows served meanwhile and commits those batches' offsets once
     they, the codes and every batch before are acknowledged (exactly-once: all in one
     Kafka transaction). Its docstring lists the commit's steps, in order, and
     ``agents/worker/checkpoint.py`` what each delivery mode guarantees. Offsets never
     pass rows whose drift codes are not yet sent, so a crash loses no drift counts;
     the rows it makes the worker serve again are counted once by the drift agent
     (``SourceWatermarks``).
A rebalance drops what is queued from the partitions it takes, and waits for the
batches in flight to commit before they are given up (librdkafka calls it inside the
fetch the serving loop waits for, so no batch is being served then). SIGTERM stops the loop between
batches and waits for the batches in flight.
"""


from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence

import mode
from confluent_kafka import Message

from agents.kafka.librdkafka import Consumer
from agents.worker.checkpoint import FLUSH_SECONDS, Checkpoint
from agents.worker.inference import InferenceService
from agents.worker.metrics import Metrics
from pipeline.adaptive import BatchPolicy, CostModel
from pipeline.batching import buckets_for, choose_bucket
from pipeline.config import Settings
from pipeline.offsets import Partition, unrevoked
from pipeline.outputs import Incoming, Outgoing
from pipeline.replay import REPLAY_HEADER

log = logging.getLogger(__name__)

_IDLE_POLL_SECONDS = 0.5
# Lag and the queue are reported as often as offsets are committed.
_REPORT_SECONDS = FLUSH_SECONDS
# A pessimistic first guess at a batch's cost (1 ms + 50 µs a row); measurements replace it.
_PRIOR_SECONDS_PER_ROW = 50e-6
_PRIOR_SECONDS_PER_BATCH = 1e-3


class RequestServer(mode.Service):
    """Consumes the requests topic in the workers' consumer group and serves it."""

    def __init__(self, settings: Settings, inference: InferenceService, metrics: Metrics,
                 **kwargs: object) -> None:
        super().__init__(**kwargs)
        self._settings = settings
        self._inference = inference
        self._metrics = metrics
        self._in_flight = asyncio.Lock()
        self._loop_done = asyncio.Event()
        self._buckets = buckets_for(settings.batching.max_batch)
        self._policy = BatchPolicy(self._buckets, settings.batching.batch_timeout_ms / 1000,
                                   CostModel(_PRIOR_SECONDS_PER_ROW, _PRIOR_SECONDS_PER_BATCH))
        self._queue: list[tuple[float, Incoming]] = []  # (local arrival, request)
        self._reported = 0.0  # when lag and queue were last reported
        self._consumer: Consumer | None = None
        self._checkpoint: Checkpoint | None = None  # the producer and the commit
        self._assigned: frozenset[int] | None = None  # None until the group is joined

    @property
    def assigned(self) -> frozenset[int] | None:
        """The partitions of the latest assignment, possibly none (more workers than
        partitions); None until the consumer first joined its group. Read by the readiness
        check (``agents.worker.health``)."""
        return self._assigned

    async def on_start(self) -> None:
        s = self._settings
        if s.faults.plan.active:
            log.warning("STREAMSERVE_FAULTS is set: injecting faults (%s)", s.faults.plan.describe())
        # The consumer joins its group in the first fetch, once the producer that answers
        # its records is running. The group's timing and assignor are aiokafka's, which the
        # workers used before: a rolling upgrade mixes both in one group.
        consumer = Consumer(
            s, s.topics.requests, on_assigned=self.partitions_assigned,
            on_revoked=self.partitions_revoked, **{
                "group.id": s.kafka.app_id, "enable.auto.commit": False,
                "enable.auto.offset.store": False, "auto.offset.reset": "earliest",
                "isolation.level": "read_committed", "partition.assignment.strategy": "roundrobin",
                "session.timeout.ms": 10_000, "heartbeat.interval.ms": 3_000})
        self._checkpoint = Checkpoint(s, self._inference, consumer,
                                      forget_queued=self._forget_queued,
                                      stopping=lambda: self.should_stop)
        await self._checkpoint.start()
        self._consumer = consumer

    async def on_stop(self) -> None:
        # Runs before mode cancels the serving task: let it finish its batch and commit.
        if self._consumer is not None and self._checkpoint is not None:
            try:
                await asyncio.wait_for(self._loop_done.wait(), timeout=30)
            except TimeoutError:
                log.warning("the serving loop did not finish its batch in 30 s; stopping anyway")
            async with self._in_flight:
                await self._checkpoint.commit(time.monotonic())
                await self._checkpoint.drain()
            await self._consumer.close()
        if self._checkpoint is not None:
            await self._checkpoint.stop()

    @mode.Service.task
    async def _serve(self) -> None:
        checkpoint = self._checkpoint
        assert checkpoint is not None
        try:
            while not self.should_stop:
                timeout = _IDLE_POLL_SECONDS
                if self._queue:
                    self._policy.budget = self._inference.queueing_budget_s  # specs may change it
                    decision = self._policy.decide(len(self._queue), self._queue[0][0],
                                                   time.monotonic())
                    if decision.take:
                        await self._serve_head(decision.take, decision.bucket)
                        # Under overload every batch tops the queue up: no fetch here.
                        await self._report_backlog(time.monotonic())
                        continue
                    timeout = decision.wait
                arrival = await self._fetched(timeout)
                await self._report_backlog(arrival)
                if not self._queue and checkpoint.due(arrival):
                    async with self._in_flight:
                        await checkpoint.commit(arrival)
        finally:
            self._loop_done.set()

    async def _serve_head(self, take: int, bucket: int) -> None:
        """Serve the ``take`` oldest queued records and hand their outputs to the producer.

        Waiting for the acks and committing happen in the checkpoint's completion tasks,
        so the next batch is computed while this one is in flight; commits keep order.
        """
        checkpoint = self._checkpoint
        assert checkpoint is not None
        async with self._in_flight:
            head, self._queue = self._queue[:take], self._queue[take:]
            records = [r for _, r in head]
            started = time.monotonic()
            self._metrics.queue_wait.observe(started - head[0][0])
            taken = time.time() - (started - head[0][0])  # the oldest's fetch, on the epoch clock
            outgoing = await self._compute(records, self._policy.cost.predict(bucket), taken)
            self._policy.cost.observe(choose_bucket(len(records), self._buckets),
                                      time.monotonic() - started)
            await checkpoint.hand_off(outgoing, records)
            if checkpoint.due(started):
                await checkpoint.commit(started)
        await checkpoint.keep_up()

    async def _fetched(self, timeout: float) -> float:
        """Queue what the consumer fetched; the time it was queued (monotonic). With an
        empty queue, up to one largest bucket, as soon as the first record comes (up to
        ``timeout`` seconds); else up to what fills the largest bucket, waiting up to
        ``timeout`` (the batch policy's wait) for it. The queue never holds more than one
        largest bucket."""
        assert self._consumer is not None
        room = self._buckets[-1] - len(self._queue)
        fetched = await self._consumer.fetch(timeout, room, first=not self._queue)
        arrival, now = time.monotonic(), time.time()
        self._queue.extend((arrival, self._incoming(r, now)) for r in fetched)
        return arrival

    def _incoming(self, record: Message, now: float) -> Incoming:
        # A request stamped in the future (a sender's clock, or any CreateTime the broker
        # took), or not stamped, is dated now: a future date would blind the drift windows
        # and its deadline.
        headers, stamp = record.headers(), record.timestamp()[1] / 1000
        tenant_header = self._settings.admission.tenant_header
        # topic, partition, offset, timestamp, value, replay, tenant: positional, per record
        return Incoming(record.topic(), record.partition(), record.offset(),
                        stamp if 0 < stamp < now else now, record.value(),
                        bool(headers) and any(k == REPLAY_HEADER for k, _ in headers),
                        _header(headers, tenant_header) if headers and tenant_header else None)

    async def _report_backlog(self, now: float) -> None:
        """Every ``_REPORT_SECONDS``: consumer lag per partition, and the worker's own
        queue. The queue is bounded (``_fetched``), so under overload the backlog stays in
        Kafka, and the lag says so."""
        if now - self._reported < _REPORT_SECONDS:
            return
        self._reported = now
        assert self._consumer is not None
        oldest: dict[int, int] = {}
        for _, request in self._queue:
            oldest.setdefault(request.partition, request.offset)
        for tp in self._consumer.assignment():
            end = self._consumer.highwater(tp)
            next_to_serve = oldest.get(tp[1], self._consumer.position(tp))
            if end is not None and next_to_serve is not None:
                self._metrics.lag.labels(str(tp[1])).set(max(0, end - next_to_serve))
        self._metrics.queued.set(len(self._queue))

    async def _compute(self, batch: list[Incoming], expected_seconds: float,
                       taken: float) -> list[Outgoing]:
        try:
            return await self._inference.handle(batch, expected_seconds, taken)
        except Exception as e:  # noqa: BLE001 - never lose a batch to an unexpected failure
            log.exception("serving a batch of %d failed; dead-lettering it", len(batch))
            return self._inference.fail_batch(batch, e)

    def _forget_queued(self) -> None:
        """A rewind (exactly-once): what is fetched and not served is read again."""
        self._queue = []

    async def partitions_revoked(self, revoked: frozenset[Partition]) -> None:
        """Finish the batches in flight (they commit), and drop what is queued from ``revoked``:
        its next owner reads it again from the committed offset."""
        assert self._checkpoint is not None
        for _, partition in revoked:  # their lag is their next owner's to report
            with contextlib.suppress(KeyError):
                self._metrics.lag.remove(str(partition))
        async with self._in_flight:
            self._queue = unrevoked(self._queue, revoked)
            await self._checkpoint.commit(time.monotonic())
            await self._checkpoint.drain()

    async def partitions_assigned(self, assigned: frozenset[Partition]) -> dict[Partition, int]:
        """Exactly-once: resume a partition this worker committed before from no earlier
        than its own last commit (``Checkpoint.resume``: where each starts); then serve."""
        assert self._checkpoint is not None
        starts = await self._checkpoint.resume(assigned)
        self._assigned = frozenset(partition for _, partition in assigned)
        log.info("serving partitions %s", sorted(self._assigned))
        self._metrics.ready.set(1)
        return starts


def _header(headers: Sequence[tuple[str, bytes]], name: str) -> str | None:
    """The first ``name`` header's value as text (None when absent, empty or not UTF-8)."""
    for key, value in headers or ():
        if key == name:
            try:
                return value.decode() or None
            except UnicodeDecodeError:
                return None
    return None
