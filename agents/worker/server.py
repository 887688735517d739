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

Delivery (at-least-once), per batch, in this order:
  1. take the batch the policy chose from the head of the queue (per partition, a
     prefix of what was fetched);
  2. decode, serve and encode it (``InferenceService.handle``): exactly one output per
     record, a prediction or a dead letter, whatever the input or the model does;
  3. hand every output to the producer, then go on with the next batch while a
     completion task waits until the broker acknowledges each output (sending again
     what failed);
  4. every ``_FLUSH_SECONDS`` (and when idle), send the drift codes of the rows served
     meanwhile and commit those batches' offsets, once they, the codes and every
     batch before are acknowledged (at most ``_MAX_BATCHES_IN_FLIGHT`` batches are
     between 3 and 4). Offsets never pass rows whose drift codes are not yet sent, so
     a crash loses no drift counts; the rows it makes the worker serve again are
     counted once by the drift agent (``SourceWatermarks``).
A crash before 4 replays the batch (duplicates, never losses). A rebalance waits for
the batches in flight to finish step 4 before the partitions are given up, so a
rebalance alone causes no duplicates. SIGTERM stops the loop between batches and
waits for the batches in flight.

Exactly-once (STREAMSERVE_DELIVERY=exactly-once): steps 3 and 4 become one Kafka
transaction per flush: the outputs, the drift codes and the offsets (sent to the
transaction, not committed by the consumer) commit together, so read_committed readers
see each output once. A failed transaction is aborted and its requests are read again
from the committed offsets. The producer's transactional id is the worker's
(STREAMSERVE_WORKER_ID): a restarted worker fences its predecessor's open transaction.
"""


from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections import deque
from collections.abc import Callable, Sequence

import mode
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.structs import OffsetAndMetadata

from agents.kafka.io import connection
from agents.worker.inference import Incoming, InferenceService, Outgoing
from agents.worker.metrics import Metrics
from pipeline.adaptive import BatchPolicy, CostModel
from pipeline.batching import buckets_for, choose_bucket
from pipeline.config import Settings
from pipeline.faults import CrashCounter
from pipeline.replay import REPLAY_HEADER

log = logging.getLogger(__name__)

_SEND_RETRY_SECONDS = 1.0
_IDLE_POLL_SECONDS = 0.5
_MAX_BATCHES_IN_FLIGHT = 4
# Drift codes leave, and offsets are committed, at most this often (and when idle).
_FLUSH_SECONDS = 0.5
# A pessimistic first guess at a batch's cost (1 ms + 50 µs a row); measurements replace it.
_PRIOR_SECONDS_PER_ROW = 50e-6
_PRIOR_SECONDS_PER_BATCH = 1e-3
# An open transaction of a worker that died blocks read_committed readers of its
# partitions until the broker aborts it; a flush commits every half second, so ten
# seconds is generous.
_TRANSACTION_TIMEOUT_MS = 10_000


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
        self._buckets = buckets_for(settings.max_batch)
        self._policy = BatchPolicy(self._buckets, settings.batch_timeout_ms / 1000,
                                   CostModel(_PRIOR_SECONDS_PER_ROW, _PRIOR_SECONDS_PER_BATCH))
        self._queue: list[tuple[float, ConsumerRecord]] = []  # (local arrival, record)
        self._completions: deque[asyncio.Task] = deque()  # batches awaiting acks and commit
        self._partitions: dict[str, list[int]] = {}  # output topic -> its partitions
        self._to_commit: dict[TopicPartition, OffsetAndMetadata] = {}  # acknowledged, flushed
        self._unflushed: dict[TopicPartition, OffsetAndMetadata] = {}  # served since the flush
        self._committer: asyncio.Task | None = None
        self._flushed = 0.0
        self._reported = 0.0  # when lag and queue were last reported
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._transaction: _Transaction | None = None  # exactly-once: the open transaction's sends
        self._committed: dict[TopicPartition, int] = {}  # exactly-once: offsets this worker committed
        self._crashes = CrashCounter(settings.fault_plan)
        self._assigned: frozenset[TopicPartition] | None = None  # None until the group is joined

    @property
    def assigned(self) -> frozenset[TopicPartition] | None:
        """The latest assignment, possibly empty (more workers than partitions); None until
        the consumer first joined its group. Read by the readiness check (``agents.worker.health``)."""
        return self._assigned

    async def on_start(self) -> None:
        s = self._settings
        if s.fault_plan.active:
            log.warning("STREAMSERVE_FAULTS is set: injecting faults (%s)", s.fault_plan.describe())
        await self._start_producer()
        self._consumer = AIOKafkaConsumer(
            **connection(s), group_id=s.app_id, enable_auto_commit=False,
            auto_offset_reset="earliest", isolation_level="read_committed",
            max_poll_records=s.max_batch)
        self._consumer.subscribe([s.topics.requests], listener=_Rebalance(self))
        await self._consumer.start()

    async def _start_producer(self) -> None:
        """The producer; exactly-once: a transactional one (its start fences, and aborts the
        open transaction of, any earlier producer with this worker's transactional id)."""
        s = self._settings
        transactional = {"transactional_id": transactional_id(s),
                         "transaction_timeout_ms": _TRANSACTION_TIMEOUT_MS} if s.exactly_once else {}
        self._producer = AIOKafkaProducer(**connection(s), acks="all",
                                          enable_idempotence=True, linger_ms=1, **transactional)
        await self._producer.start()
        if s.exactly_once:
            self._transaction = _Transaction(self._producer)

    async def on_stop(self) -> None:
        # Runs before mode cancels the serving task: let it finish its batch and commit.
        if self._consumer is not None:
            try:
                await asyncio.wait_for(self._loop_done.wait(), timeout=30)
            except TimeoutError:
                log.warning("the serving loop did not finish its batch in 30 s; stopping anyway")
            async with self._in_flight:
                await self._flush(time.monotonic())
                await self._drain()
            await self._consumer.stop()
        if self._producer is not None:
            await self._producer.stop()

    @mode.Service.task
    async def _serve(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        try:
            while not self.should_stop:
                timeout = _IDLE_POLL_SECONDS
                if self._queue:
                    self._policy.budget = self._inference.queueing_budget_s  # specs may change it
                    decision = self._policy.decide(len(self._queue), self._queue[0][0],
                                                   time.monotonic())
                    if decision.take:
                        await self._serve_head(decision.take, decision.bucket)
                        continue
                    timeout = decision.wait
                fetched = await consumer.getmany(timeout_ms=max(0, round(timeout * 1000)),
                                                 max_records=self._buckets[-1])
                arrival = time.monotonic()
                self._queue.extend((arrival, r) for records in fetched.values() for r in records)
                if arrival - self._reported >= _FLUSH_SECONDS:
                    self._reported = arrival
                    await self._report_backlog()
                if not self._queue and arrival - self._flushed >= _FLUSH_SECONDS:
                    async with self._in_flight:
                        await self._flush(arrival)
        finally:
            self._loop_done.set()

    async def _serve_head(self, take: int, bucket: int) -> None:
        """Serve the ``take`` oldest queued records and hand their outputs to the producer.

        Waiting for the acks and committing happen in a completion task, so the next
        batch is computed while this one is in flight; completions commit in order.
        """
        async with self._in_flight:
            head, self._queue = self._queue[:take], self._queue[take:]
            records = [r for _, r in head]
            started = time.monotonic()
            self._metrics.queue_wait.observe(started - head[0][0])
            outgoing = await self._compute(records, self._policy.cost.predict(bucket))
            self._policy.cost.observe(choose_bucket(len(records), self._buckets),
                                      time.monotonic() - started)
            self._crash_point("before_produce")
            await self._hand_off(outgoing, {})
            self._unflushed.update(_next_offsets(records))
            if started - self._flushed >= _FLUSH_SECONDS:
                await self._flush(started)
        # Bound the batches in flight; a failed completion surfaces here and stops the
        # worker (its batch was not committed, so it is served again: at-least-once).
        while self._completions and (len(self._completions) > _MAX_BATCHES_IN_FLIGHT
                                     or self._completions[0].done()):
            await self._completions.popleft()
        if self._committer is not None and self._committer.done():
            self._committer.result()  # a failed commit stops the worker, as above

    async def _flush(self, now: float) -> None:
        """Send the drift codes of the rows served since the last flush, and commit their
        offsets once all is acknowledged. Without traffic too: the codes close windows."""
        self._flushed = now
        drift, offsets = self._inference.drift_rows(), self._unflushed
        self._unflushed = {}
        if not (drift or offsets):
            return
        if self._transaction is None:
            await self._hand_off(drift, offsets)
            return
        await self._hand_off(drift, {})
        try:
            delivered = await self._transaction.commit(offsets, self._settings.app_id,
                                                       lambda: self._crash_point("after_produce"))
        except Exception as e:  # noqa: BLE001 - whatever failed, the transaction is undone
            await self._rewind(e)
            return
        self._committed.update({tp: o.offset for tp, o in offsets.items()})
        self._inference.delivered(delivered)
        self._crash_point("after_commit")

    async def _report_backlog(self) -> None:
        """Consumer lag per partition, and the worker's own queue. The queue is bounded (a
        fetch happens only when the policy does not serve, and takes at most one largest
        bucket), so under overload the backlog stays in Kafka, and the lag says so."""
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

    async def _rewind(self, error: Exception) -> None:
        """Abort the failed transaction and read its requests again from the committed
        offsets; what was queued or served meanwhile is dropped with it."""
        assert self._transaction is not None and self._consumer is not None
        log.warning("a transaction failed (%r); aborting it and reading its requests again", error)
        try:
            await self._transaction.abort()
        except Exception as e:  # noqa: BLE001 - fenced or fatal: only a new producer can go on
            log.warning("the producer cannot abort (%r); starting a new one", e)
            await self._producer.stop()
            while True:  # the broker may be away for a while: wait for it
                try:
                    await self._start_producer()
                    break
                except KafkaError as e:
                    log.warning("a new producer cannot start yet (%r); trying again", e)
                    await self._producer.stop()
                    await asyncio.sleep(_SEND_RETRY_SECONDS)
        self._queue, self._unflushed = [], {}
        self._inference.drift_rows()  # their rows are served, and coded, again
        self._inference.abandoned()  # and admitted again
        for tp in self._consumer.assignment():
            committed = await self._consumer.committed(tp)
            if committed is None:
                await self._consumer.seek_to_beginning(tp)
            else:
                self._consumer.seek(tp, committed)

    def _crash_point(self, point: str) -> None:
        """Die here, without any clean-up, when the fault plan says so (chaos tests)."""
        if self._crashes.due(point):
            log.warning("injected fault: crashing at %s", point)
            os.kill(os.getpid(), signal.SIGKILL)

    async def _hand_off(self, outgoing: Sequence[Outgoing],
                        offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        """Queue ``outgoing`` in the producer; a completion task awaits the acks, then
        commits ``offsets`` after the completion before it. Exactly-once: the outputs
        join the open transaction instead, which the next flush commits."""
        if self._transaction is not None:
            await self._transaction.begin()
            self._transaction.sent.extend(await self._send(outgoing))
            return
        sent = await self._send(outgoing)
        previous = self._completions[-1] if self._completions else None
        self._completions.append(asyncio.create_task(self._complete(sent, offsets, previous)))

    async def _compute(self, records: Sequence[ConsumerRecord],
                       expected_seconds: float) -> list[Outgoing]:
        batch = [Incoming(topic=r.topic, partition=r.partition, offset=r.offset,
                          timestamp=r.timestamp / 1000, value=r.value,
                          replay=bool(r.headers) and any(k == REPLAY_HEADER for k, _ in r.headers))
                 for r in records]
        try:
            return await self._inference.handle(batch, expected_seconds)
        except Exception as e:  # noqa: BLE001 - never lose a batch to an unexpected failure
            log.exception("serving a batch of %d failed; dead-lettering it", len(batch))
            return self._inference.fail_batch(batch, e)

    async def _send(self, outgoing: Sequence[Outgoing]) -> list[tuple[list[Outgoing], asyncio.Future]]:
        """Queue every output in the producer, one record batch per partition rather than
        a call per record (aiokafka's per-record path costs more than serving the row).
        An output goes to its request's partition number (hashing every key in Python
        cost a tenth of the worker's time), so a client that reads only the partitions
        it produced to finds its replies there. Returns each batch's outputs with the
        future its broker ack resolves."""
        producer = self._producer
        assert producer is not None
        by_partition: dict[tuple[str, int], list[Outgoing]] = {}
        for o in outgoing:
            partitions = self._partitions.get(o.topic)
            if partitions is None:
                partitions = self._partitions[o.topic] = sorted(await producer.partitions_for(o.topic))
            by_partition.setdefault((o.topic, partitions[o.partition % len(partitions)]), []).append(o)
        sent = []
        for (topic, partition), outputs in by_partition.items():
            batch, members = producer.create_batch(), []
            for o in outputs:
                if batch.append(key=o.key, value=o.value, timestamp=None, headers=o.headers) is None:
                    sent.append((members, await producer.send_batch(batch, topic, partition=partition)))
                    batch, members = producer.create_batch(), []
                    batch.append(key=o.key, value=o.value, timestamp=None, headers=o.headers)
                members.append(o)
            sent.append((members, await producer.send_batch(batch, topic, partition=partition)))
        return sent

    async def _complete(self, sent: list[tuple[list[Outgoing], asyncio.Future]],
                        offsets: dict[TopicPartition, OffsetAndMetadata],
                        previous: asyncio.Task | None) -> None:
        """Wait for every ack (sending again what failed), then commit after ``previous``."""
        while sent:
            results = await asyncio.gather(*(future for _, future in sent), return_exceptions=True)
            failed = [o for (outputs, _), r in zip(sent, results, strict=True)
                      if isinstance(r, BaseException) for o in outputs]
            self._inference.delivered([o for (outputs, _), r in zip(sent, results, strict=True)
                                       if not isinstance(r, BaseException) for o in outputs])
            sent = []
            if failed:
                error = next(r for r in results if isinstance(r, BaseException))
                log.warning("%d outputs were not acknowledged (%r); sending them again",
                            len(failed), error)
                await asyncio.sleep(_SEND_RETRY_SECONDS)
                sent = await self._send(failed)
        if previous is not None:
            await previous
        if offsets:
            self._crash_point("after_produce")
        # Commits coalesce: one commit request in flight carries every flush completed
        # meanwhile, so a commit round trip never throttles serving.
        if offsets:
            self._to_commit.update(offsets)
            if self._committer is None or self._committer.done():
                self._committer = asyncio.create_task(self._commit_pending())

    async def _commit_pending(self) -> None:
        assert self._consumer is not None
        while self._to_commit:
            offsets, self._to_commit = self._to_commit, {}
            try:
                await self._consumer.commit(offsets)
            except CommitFailedError as e:
                # The group moved on (a rebalance, or the broker lost this member): the
                # partitions' next owner serves these requests again (at-least-once).
                log.warning("offsets %s not committed (%s); their requests will be served again",
                            {tp.partition: o.offset for tp, o in offsets.items()}, e)
                continue
            except KafkaError as e:  # the coordinator is away for a while: keep the offsets
                if self.should_stop:  # stopping: their requests are served again after
                    log.warning("committing offsets failed (%r) while stopping", e)
                    continue
                log.warning("committing offsets failed (%r); trying again", e)
                self._to_commit = {**offsets, **self._to_commit}
                await asyncio.sleep(_SEND_RETRY_SECONDS)
                continue
            self._crash_point("after_commit")

    async def _drain(self) -> None:
        """Wait until every batch handed to the producer is acknowledged and committed."""
        while self._completions:
            await self._completions.popleft()
        if self._committer is not None:
            await self._committer

    async def partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        """Finish the batches in flight (they commit), and drop what is queued from ``revoked``:
        its next owner reads it again from the committed offset."""
        for tp in revoked:  # their lag is their next owner's to report
            with contextlib.suppress(KeyError):
                self._metrics.lag.remove(str(tp.partition))
        async with self._in_flight:
            self._queue = [(t, r) for t, r in self._queue
                           if TopicPartition(r.topic, r.partition) not in revoked]
            await self._flush(time.monotonic())
            await self._drain()

    async def partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        """Exactly-once: resume a partition this worker committed before from no earlier
        than its own last commit. Kafka writes a transaction's offsets to the group after
        the commit returns, and aiokafka fetches committed offsets without KIP-447's
        require_stable, so right after a rebalance (a broker restart makes one) the group
        can still answer with an older offset: its requests would be served twice."""
        assert self._consumer is not None
        for tp in assigned & self._committed.keys():
            committed = await self._consumer.committed(tp)
            if committed is None or committed < self._committed[tp]:
                log.info("partition %d resumes from this worker's own commit %d (the group "
                         "answered %s)", tp.partition, self._committed[tp], committed)
                self._consumer.seek(tp, self._committed[tp])
        log.info("serving partitions %s", sorted(tp.partition for tp in assigned))
        self._assigned = frozenset(assigned)
        self._metrics.ready.set(1)


class _Transaction:
    """Exactly-once: the outputs sent in the open transaction, and its commit."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self._producer = producer
        self.sent: list[tuple[list[Outgoing], asyncio.Future]] = []
        self._open = False

    async def begin(self) -> None:
        if not self._open:
            await self._producer.begin_transaction()
            self._open = True

    async def commit(self, offsets: dict[TopicPartition, OffsetAndMetadata], group_id: str,
                     before_commit: Callable[[], None]) -> list[Outgoing]:
        """Wait for the outputs' acks, add ``offsets`` and commit; the outputs delivered.
        Raises when any of it failed: the caller aborts."""
        await self.begin()  # offsets alone (every record dead-lettered elsewhere) need one too
        sent, self.sent = self.sent, []
        await asyncio.gather(*(future for _, future in sent))
        if offsets:
            await self._producer.send_offsets_to_transaction(offsets, group_id)
        before_commit()
        await self._producer.commit_transaction()
        self._open = False
        return [o for outputs, _ in sent for o in outputs]

    async def abort(self) -> None:
        self.sent = []
        if self._open:
            self._open = False
            await self._producer.abort_transaction()


def transactional_id(settings: Settings) -> str:
    """The exactly-once producer's id: stable across restarts when the worker has a name."""
    return f"{settings.app_id}-{settings.worker_id or f'{socket.gethostname()}-{os.getpid()}'}"


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, server: RequestServer) -> None:
        self._server = server

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._server.partitions_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._server.partitions_assigned(assigned)


def _next_offsets(records: Sequence[ConsumerRecord]) -> dict[TopicPartition, OffsetAndMetadata]:
    """The offset to resume from, per partition: one past the last record served."""
    offsets: dict[TopicPartition, int] = {}
    for r in records:
        tp = TopicPartition(r.topic, r.partition)
        offsets[tp] = max(offsets.get(tp, -1), r.offset + 1)
    return {tp: OffsetAndMetadata(offset, "") for tp, offset in offsets.items()}
