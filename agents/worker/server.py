"""The serving hot path: batches of request records in, outputs out, offsets committed.

Why not a Faust agent: Faust's stream machinery costs 60-90 µs per event before any
model work (codecs, sensors, per-event acks), and an exception escaping ``take()``
still commits the batch. This service runs inside the Faust worker (its lifecycle,
signals and logging) but consumes with its own aiokafka consumer, batch by batch,
with raw bytes and no per-event Python beyond decoding.

Batching is adaptive (``pipeline.adaptive.BatchPolicy``): records queue up until a
full bucket is there or waiting longer would break the queueing budget
(STREAMSERVE_BATCH_TIMEOUT_MS) given the measured cost of a batch; heavy traffic
fills the largest bucket, light traffic goes out early.

Per batch, in this order:
  1. take the batch the policy chose from the head of the queue (per partition, a
     prefix of what was fetched), and queue what the consumer fetched meanwhile, so
     that its next fetch runs while the batch is served (``_fetched``);
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
batches in flight to commit before they are given up. SIGTERM stops the loop between
batches and waits for the batches in flight.
"""


from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence

import mode
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener

from agents.kafka.connect import connection
from agents.worker.checkpoint import FLUSH_SECONDS, Checkpoint
from agents.worker.inference import InferenceService
from agents.worker.metrics import Metrics
from pipeline.adaptive import BatchPolicy, CostModel
from pipeline.batching import buckets_for, choose_bucket
from pipeline.config import Settings
from pipeline.offsets import unrevoked
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
        self._queue: list[tuple[float, ConsumerRecord]] = []  # (local arrival, record)
        self._reported = 0.0  # when lag and queue were last reported
        self._consumer: AIOKafkaConsumer | None = None
        self._checkpoint: Checkpoint | None = None  # the producer and the commit
        self._assigned: frozenset[TopicPartition] | None = None  # None until the group is joined

    @property
    def assigned(self) -> frozenset[TopicPartition] | None:
        """The latest assignment, possibly empty (more workers than partitions); None until
        the consumer first joined its group. Read by the readiness check (``agents.worker.health``)."""
        return self._assigned

    async def on_start(self) -> None:
        s = self._settings
        if s.faults.plan.active:
            log.warning("STREAMSERVE_FAULTS is set: injecting faults (%s)", s.faults.plan.describe())
        # The consumer is built first (no I/O) so the checkpoint commits through it, and
        # started last: the producer that answers its records is running by then.
        consumer = AIOKafkaConsumer(
            **connection(s), group_id=s.kafka.app_id, enable_auto_commit=False,
            auto_offset_reset="earliest", isolation_level="read_committed",
            max_poll_records=s.batching.max_batch)
        self._checkpoint = Checkpoint(s, self._inference, consumer,
                                      forget_queued=self._forget_queued,
                                      stopping=lambda: self.should_stop)
        await self._checkpoint.start()
        self._consumer = consumer
        consumer.subscribe([s.topics.requests], listener=_Rebalance(self))
        await consumer.start()

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
            await self._consumer.stop()
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
            await self._fetched()
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

    async def _fetched(self, timeout: float = 0.0) -> float:
        """Queue what the consumer fetched (at most one largest bucket), waiting up to
        ``timeout`` seconds for it; the time it was queued (monotonic).

        Called with no wait as a batch starts too: aiokafka sends no next fetch while
        fetched records wait in its buffer, so taking them lets the broker's next records
        come in while the batch is served (at 25 % load they waited about 10 ms more).
        The queue stays under two largest buckets: it holds less than one when a batch
        starts or the policy waits."""
        assert self._consumer is not None
        fetched = await self._consumer.getmany(timeout_ms=max(0, round(timeout * 1000)),
                                               max_records=self._buckets[-1])
        arrival = time.monotonic()
        self._queue.extend((arrival, r) for records in fetched.values() for r in records)
        return arrival

    async def _report_backlog(self, now: float) -> None:
        """Every ``_REPORT_SECONDS``: consumer lag per partition, and the worker's own
        queue. The queue is bounded (``_fetched``), so under overload the backlog stays in
        Kafka, and the lag says so."""
        if now - self._reported < _REPORT_SECONDS:
            return
        self._reported = now
        assert self._consumer is not None
        oldest: dict[int, int] = {}
        for _, record in self._queue:
            oldest.setdefault(record.partition, record.offset)
        for tp in self._consumer.assignment():
            end = self._consumer.highwater(tp)
            if end is not None:
                next_to_serve = oldest.get(tp.partition, await self._consumer.position(tp))
                self._metrics.lag.labels(str(tp.partition)).set(max(0, end - next_to_serve))
        self._metrics.queued.set(len(self._queue))

    async def _compute(self, records: Sequence[ConsumerRecord], expected_seconds: float,
                       taken: float) -> list[Outgoing]:
        # A request stamped in the future (a sender's clock, or any CreateTime the broker
        # took) is dated now: a future date would blind the drift windows and its deadline.
        now, tenant_header = time.time(), self._settings.admission.tenant_header
        batch = [Incoming(topic=r.topic, partition=r.partition, offset=r.offset,
                          timestamp=min(r.timestamp / 1000, now), value=r.value,
                          replay=bool(r.headers) and any(k == REPLAY_HEADER for k, _ in r.headers),
                          tenant=_header(r.headers, tenant_header) if tenant_header else None)
                 for r in records]
        try:
            return await self._inference.handle(batch, expected_seconds, taken)
        except Exception as e:  # noqa: BLE001 - never lose a batch to an unexpected failure
            log.exception("serving a batch of %d failed; dead-lettering it", len(batch))
            return self._inference.fail_batch(batch, e)

    def _forget_queued(self) -> None:
        """A rewind (exactly-once): what is fetched and not served is read again."""
        self._queue = []

    async def partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        """Finish the batches in flight (they commit), and drop what is queued from ``revoked``:
        its next owner reads it again from the committed offset."""
        assert self._checkpoint is not None
        for tp in revoked:  # their lag is their next owner's to report
            with contextlib.suppress(KeyError):
                self._metrics.lag.remove(str(tp.partition))
        async with self._in_flight:
            self._queue = unrevoked(self._queue, revoked)
            await self._checkpoint.commit(time.monotonic())
            await self._checkpoint.drain()

    async def partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        """Exactly-once: resume a partition this worker committed before from no earlier
        than its own last commit (``Checkpoint.resume``); then serve."""
        assert self._checkpoint is not None
        await self._checkpoint.resume(assigned)
        log.info("serving partitions %s", sorted(tp.partition for tp in assigned))
        self._assigned = frozenset(assigned)
        self._metrics.ready.set(1)


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, server: RequestServer) -> None:
        self._server = server

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._server.partitions_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._server.partitions_assigned(assigned)


def _header(headers: Sequence[tuple[str, bytes]], name: str) -> str | None:
    """The first ``name`` header's value as text (None when absent, empty or not UTF-8)."""
    for key, value in headers or ():
        if key == name:
            try:
                return value.decode() or None
            except UnicodeDecodeError:
                return None
    return None
