"""The commit, in one place: a worker's outputs acknowledged, then its offsets committed.

``Checkpoint.commit`` lists the order, step by step, and follows it, in both delivery
modes (STREAMSERVE_DELIVERY):

* at-least-once: offsets are committed only once every output of their batches, and of
  every batch before, is acknowledged. A crash before the commit serves those batches
  again (duplicates, never losses); a rebalance finishes the batches in flight (they
  commit) before the partitions are given up, so a rebalance alone causes no duplicates.
* exactly-once: the outputs, the drift codes and the offsets (sent to the transaction,
  not committed by the consumer) are one Kafka transaction per commit, so read_committed
  readers see each output once. A failed transaction is aborted and its requests are
  read again from the committed offsets. The producer's transactional id is the worker's
  (STREAMSERVE_WORKER_ID): a restarted worker fences its predecessor's open transaction.

Which offsets are safe to commit, and where a partition resumes, is the pure
``pipeline.offsets.OffsetLedger``; this module does the I/O: it owns the producer (every
output leaves through it) and commits through the request consumer. The chaos tests'
crash points (``pipeline.faults``) fire here: ``before_produce`` as a batch's outputs are
handed off, ``after_produce`` and ``after_commit`` inside the commit.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import signal
import socket
from collections import deque
from collections.abc import Callable, Collection, Mapping, Sequence

from confluent_kafka import KafkaException

from agents.kafka.librdkafka import (
    Consumer,
    Producer,
    breaks_the_producer,
    group_moved_on,
    refused_for_good,
)
from agents.worker.inference import InferenceService
from pipeline.config import Settings
from pipeline.faults import CrashCounter
from pipeline.offsets import OffsetLedger, Partition, Positioned, next_offsets
from pipeline.outputs import Kind, Outgoing, stand_in

log = logging.getLogger(__name__)

# Drift codes leave, and offsets are committed, at most this often (and when idle).
FLUSH_SECONDS = 0.5
_SEND_RETRY_SECONDS = 1.0
_MAX_BATCHES_IN_FLIGHT = 4
_MAX_REMEMBERED = 10_000  # exactly-once: outputs refused for good, remembered at most
# An open transaction of a worker that died blocks read_committed readers of its
# partitions until the broker aborts it; a commit happens every half second, so ten
# seconds is generous.
_TRANSACTION_TIMEOUT_MS = 10_000
# At-least-once: an output not acknowledged in this time is sent again (``_complete``).
_DELIVERY_TIMEOUT_MS = 30_000

Sent = list[tuple[list[Outgoing], asyncio.Future]]  # outputs, and the future their ack resolves


class Checkpoint:
    """A worker's producer, and the commit of what it served."""

    def __init__(self, settings: Settings, inference: InferenceService,
                 consumer: Consumer, *, forget_queued: Callable[[], None],
                 stopping: Callable[[], bool]) -> None:
        self._settings = settings
        self._inference = inference
        self._consumer = consumer
        self._forget_queued = forget_queued  # a rewind drops what is fetched and not served
        self._stopping = stopping
        self._ledger = OffsetLedger(FLUSH_SECONDS)
        self._crashes = CrashCounter(settings.faults.plan)
        self._producer: Producer | None = None
        self._partitions: dict[str, list[int]] = {}  # output topic -> its partitions
        self._completions: deque[asyncio.Task] = deque()  # at-least-once: awaiting acks
        self._committer: asyncio.Task | None = None  # at-least-once: the commit in flight
        self._open = False  # exactly-once: a transaction is open
        self._in_transaction: Sent = []  # exactly-once: the open transaction's sends
        # Exactly-once: outputs the broker refused for good abort their transaction, and
        # are made again when their requests are served again: the next time, a stand-in
        # goes instead (a second refusal: given up); and the members of a refused record
        # batch go alone, to find the one refused. Keyed by ``_identity``.
        self._refusals: dict[tuple, tuple[int, str]] = {}
        self._alone: set[tuple] = set()
        self._renewing = asyncio.Lock()  # one producer replaces a failed one at a time

    async def start(self) -> None:
        """Start the producer; exactly-once: a transactional one (its start fences, and
        aborts the open transaction of, any earlier producer with this worker's id)."""
        s = self._settings
        delivery = {"transactional.id": transactional_id(s),
                    "transaction.timeout.ms": _TRANSACTION_TIMEOUT_MS,
                    "message.timeout.ms": _TRANSACTION_TIMEOUT_MS} if s.exactly_once else {
                    "message.timeout.ms": _DELIVERY_TIMEOUT_MS}
        self._producer = Producer(s, **{"acks": "all", "enable.idempotence": True,
                                        "linger.ms": 1}, **delivery)
        await self._producer.start()
        self._open, self._in_transaction = False, []

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()

    def due(self, now: float) -> bool:
        """Whether a commit is due (``now``: a monotonic clock reading)."""
        return self._ledger.due(now)

    async def hand_off(self, outgoing: Sequence[Outgoing], records: Sequence[Positioned]) -> None:
        """A served batch: its outputs go to the producer, its ``records``' offsets with
        the next commit. At-least-once: a completion task awaits the acks, so the next
        batch is computed while this one is in flight. Exactly-once: the outputs join
        the open transaction, which the next commit commits."""
        self._crash_point("before_produce")
        if not self._settings.exactly_once:
            await self._produce(outgoing, {})
        else:
            try:
                await self._begin()
                await self._send_in_transaction(outgoing)
            except Exception as e:  # noqa: BLE001 - e.g. fenced after the broker aborted it
                await self._rewind(e)  # the batch is read again with the transaction's
                return
        self._ledger.served(next_offsets(records))

    async def commit(self, now: float) -> None:
        """Commit what was served since the last commit (without traffic too: the drift
        codes close windows), in this order:

        1. take the offsets served since the last commit (per partition, one past the
           last record handed off) and the drift codes of those rows (and the answers
           kept for the label join); without either, there is nothing to do;
        2. produce: the drift codes go to the producer, after those rows' outputs
           (exactly-once: into the open transaction, beside the outputs);
        3. wait until the codes, those outputs and everything handed off before them
           are acknowledged. At-least-once, a completion task waits (sending again what
           failed, counting what arrives as delivered) while the next batch is served:
           steps 3 to 5 happen there, and commits stay in hand-off order;
        4. exactly-once: send the offsets to the transaction;
           -- crash point ``after_produce``: acknowledged, not yet committed;
        5. commit: at-least-once, the consumer commits the offsets (one commit request
           in flight carries every commit released meanwhile; one the group refuses,
           after a rebalance, leaves those requests to their next owner); exactly-once,
           the transaction commits;
           -- crash point ``after_commit``;
        6. exactly-once: remember the commit (a partition this worker gets again resumes
           from no earlier, ``resume``) and count the outputs delivered.

        Exactly-once, a failure in 2 to 5 (or in a hand-off: the broker aborts a transaction
        it lost track of in a restart, and fences its producer) aborts the transaction, and
        the requests since the last commit are read again (``_rewind``).
        """
        # 1.
        offsets, rows = self._ledger.flush(now), self._inference.flush_rows()
        if not (rows or offsets):
            return
        if not self._settings.exactly_once:
            await self._produce(rows, offsets)  # 2.; 3 to 5 follow in ``_complete``
            return
        try:
            # 2.
            await self._begin()
            await self._send_in_transaction(rows)
            producer = self._producer
            assert producer is not None
            # 3.
            sent, self._in_transaction = self._in_transaction, []
            results = await asyncio.gather(*(future for _, future in sent), return_exceptions=True)
            if failures := [r for r in results if isinstance(r, BaseException)]:
                self._note_refusals(sent, results)
                raise failures[0]
            # 4.
            if offsets:
                await producer.send_offsets_to_transaction(offsets, self._consumer.group_metadata())
            self._crash_point("after_produce")
            # 5.
            await producer.commit_transaction()
            self._open = False
        except Exception as e:  # noqa: BLE001 - whatever failed, the transaction is undone
            await self._rewind(e)
            return
        # 6.
        self._ledger.committed(offsets)
        self._inference.delivered([o for outputs, _ in sent for o in outputs])
        self._crash_point("after_commit")

    async def keep_up(self) -> None:
        """Bound the hand-offs in flight. A failed completion or commit surfaces here and
        stops the worker (its batch was not committed, so it is served again)."""
        while self._completions and (len(self._completions) > _MAX_BATCHES_IN_FLIGHT
                                     or self._completions[0].done()):
            await self._completions.popleft()
        if self._committer is not None and self._committer.done():
            self._committer.result()

    async def drain(self) -> None:
        """Wait until every hand-off is acknowledged and its offsets committed."""
        while self._completions:
            await self._completions.popleft()
        if self._committer is not None:
            await self._committer

    async def resume(self, assigned: Collection[Partition]) -> dict[Partition, int]:
        """Where a partition this worker committed before starts: no earlier than its own
        last commit (``OffsetLedger.resume_from`` says why). Only exactly-once records
        its commits: a consumer's own commit is in the group when it returns."""
        resumable = self._ledger.resumable(assigned)
        if not resumable:
            return {}
        starts = {}
        for tp, committed in (await self._consumer.committed(resumable)).items():
            offset = self._ledger.resume_from(tp, committed)
            if offset is not None:
                log.info("partition %d resumes from this worker's own commit %d (the group "
                         "answered %s)", tp[1], offset, committed)
                starts[tp] = offset
        return starts

    # At-least-once: steps 2 to 5 of the commit, for a batch's outputs too (no offsets).

    async def _produce(self, outgoing: Sequence[Outgoing], offsets: Mapping[Partition, int]) -> None:
        sent = await self._send(outgoing)
        ticket = self._ledger.sent(offsets)
        self._completions.append(asyncio.create_task(self._complete(ticket, sent)))

    async def _complete(self, ticket: int, sent: Sent) -> None:
        """3. Wait for every ack (sending again what failed); then the commits this
        releases (it and every hand-off before it acknowledged) go to the committer."""
        standing_in: set[int] = set()  # the stand-ins sent (by id): refused too, given up
        while sent:
            results = await asyncio.gather(*(future for _, future in sent), return_exceptions=True)
            self._inference.delivered([o for (outputs, _), r in zip(sent, results, strict=True)
                                       if not isinstance(r, BaseException) for o in outputs])
            again, refused, alone = [], [], []
            for (outputs, _), r in zip(sent, results, strict=True):
                if not isinstance(r, BaseException):
                    continue
                if not refused_for_good(r):
                    again.extend((o, r) for o in outputs)
                elif len(outputs) == 1:
                    refused.append((outputs[0], r))
                else:  # the broker refuses a record batch whole: find its culprit alone
                    alone.extend(outputs)
            sent = await self._send(alone, alone=True)
            if refused:  # sending them again would fail again, and stall every commit after
                sent += await self._send(self._stand_ins(refused, standing_in))
            if again:
                error = again[0][1]
                log.warning("%d outputs were not acknowledged (%r); sending them again",
                            len(again), error)
                if self._producer is not None and self._producer.failed is not None:
                    await self._renew(self._producer)  # it sends nothing more
                await asyncio.sleep(_SEND_RETRY_SECONDS)
                sent += await self._send([o for o, _ in again])
        released = self._ledger.acknowledged(ticket)
        for _ in released:
            self._crash_point("after_produce")
        # Commits coalesce: one commit request in flight carries every commit released
        # meanwhile, so a commit round trip never throttles serving.
        if released and (self._committer is None or self._committer.done()):
            self._committer = asyncio.create_task(self._commit_released())

    def _stand_ins(self, refused: Sequence[tuple[Outgoing, BaseException]],
                   standing_in: set[int]) -> list[Outgoing]:
        """Minimal dead letters for the answers the broker refused for good. A side output,
        or a stand-in refused too, is given up: logged and counted, never sent again."""
        replacements = []
        for out, error in refused:
            replacement = None if id(out) in standing_in else stand_in(
                out, repr(error), self._settings.topics.deadletter)
            whose = out.key.decode(errors="replace")
            if replacement is None:
                log.error("the broker refused the %s output for %s for good (%r): given up",
                          out.kind, whose, error)
                self._inference.undeliverable(out)
            else:
                log.warning("the broker refused the %s output for %s for good (%r): a minimal "
                            "dead letter stands in", out.kind, whose, error)
                standing_in.add(id(replacement))
                replacements.append(replacement)
        return replacements

    async def _send_in_transaction(self, outgoing: Sequence[Outgoing]) -> None:
        """Exactly-once: ``outgoing`` into the open transaction, those refused for good
        before replaced (``_refusals``), those of a refused batch alone."""
        if not (self._refusals or self._alone):  # the usual case: nothing to look up
            self._in_transaction += await self._send(outgoing)
            return
        kept = []
        for out in outgoing:
            refusals, error = self._refusals.get(_identity(out), (0, ""))
            if refusals == 1 and (replacement := stand_in(
                    out, error, self._settings.topics.deadletter)) is not None:
                kept.append(replacement)
            elif refusals:
                log.error("the broker refused the %s output for %s for good (%s): given up",
                          out.kind, out.key.decode(errors="replace"), error)
                self._inference.undeliverable(out)
            else:
                kept.append(out)
        self._in_transaction += await self._send(
            [o for o in kept if _identity(o) not in self._alone])
        self._in_transaction += await self._send(
            [o for o in kept if _identity(o) in self._alone], alone=True)

    def _note_refusals(self, sent: Sent, results: Sequence[object]) -> None:
        if len(self._refusals) + len(self._alone) > _MAX_REMEMBERED:
            self._refusals.clear()  # a flood of refusals: start over rather than grow
            self._alone.clear()
        for (outputs, _), result in zip(sent, results, strict=True):
            if not refused_for_good(result):
                continue
            if len(outputs) > 1:
                self._alone.update(map(_identity, outputs))
                continue
            key = _identity(outputs[0])
            self._refusals[key] = (self._refusals.get(key, (0, ""))[0] + 1, repr(result))

    async def _commit_released(self) -> None:
        """5. Commit the released offsets through the consumer."""
        while offsets := self._ledger.to_commit():
            try:
                await self._consumer.commit(offsets)
            except KafkaException as e:
                if group_moved_on(e):
                    # The group moved on (a rebalance, or the broker lost this member): the
                    # partitions' next owner serves these requests again (at-least-once).
                    log.warning("offsets %s not committed (%s); their requests will be served "
                                "again", {p: o for (_, p), o in offsets.items()}, e)
                    continue
                # The coordinator is away for a while: keep the offsets.
                if self._stopping():  # stopping: their requests are served again after
                    log.warning("committing offsets failed (%r) while stopping", e)
                    continue
                log.warning("committing offsets failed (%r); trying again", e)
                self._ledger.commit_failed(offsets)
                await asyncio.sleep(_SEND_RETRY_SECONDS)
                continue
            self._crash_point("after_commit")

    # Exactly-once: the open transaction.

    async def _begin(self) -> None:
        if not self._open:
            assert self._producer is not None
            self._producer.begin_transaction()
            self._open = True

    async def _rewind(self, error: Exception) -> None:
        """Abort the failed transaction and read its requests again from the committed
        offsets; what was queued or served meanwhile is dropped with it."""
        assert self._producer is not None
        log.warning("a transaction failed (%r); aborting it and reading its requests again", error)
        failed, renew = self._producer, breaks_the_producer(error)
        try:
            self._in_transaction = []
            if self._open:
                self._open = False
                if not self._producer.hung:  # else its successor's start aborts the transaction
                    await self._producer.abort_transaction()
        except Exception as e:  # noqa: BLE001 - fenced or fatal: only a new producer can go on
            log.warning("the producer cannot abort (%r); starting a new one", e)
            renew = True
        if renew:
            await self._renew(failed)
        self._forget_queued()
        self._ledger.rewind()
        self._inference.flush_rows()  # their rows are served, and coded, again
        self._inference.abandoned()  # and admitted again
        if self._stopping():  # the partitions' next owner reads them from the group's offsets
            return
        assigned = self._consumer.assignment()
        if not assigned:  # none, or a revocation: the next owner reads from the group's offsets
            return
        committed = await self._committed(assigned)
        # The failures that cause a rewind (a broker or coordinator restart, a commit that
        # timed out but went through) are those in which the group may answer an offset
        # older than this worker's own last commit: resume from the later (None: from the
        # beginning, as auto.offset.reset says).
        resumed = {tp: self._ledger.resume_from(tp, offset) for tp, offset in committed.items()}
        await self._consumer.seek({tp: offset if resumed[tp] is None else resumed[tp]
                                   for tp, offset in committed.items()})

    async def _committed(self, partitions: Collection[Partition]) -> dict[Partition, int | None]:
        """The group's committed offsets of ``partitions``, once the coordinator answers
        (after a broker restart it may be away for a while)."""
        while True:
            try:
                return await self._consumer.committed(partitions)
            except KafkaException as e:
                if self._stopping():
                    raise
                log.warning("the group's committed offsets of partitions %s are not known yet "
                            "(%r); asking again", sorted(p for _, p in partitions), e)
                await asyncio.sleep(_SEND_RETRY_SECONDS)

    # Both modes.

    async def _renew(self, failed: Producer) -> None:
        """A new producer in place of ``failed`` (a new epoch, sequences from zero), once:
        the completions that saw it fail renew it together. Waits for the broker."""
        async with self._renewing:
            if self._producer is not failed:
                return
            await failed.stop()
            while True:  # the broker may be away for a while: wait for it
                try:
                    await self.start()
                    return
                except KafkaException as e:
                    log.warning("a new producer cannot start yet (%r); trying again", e)
                    await self._producer.stop()
                    await asyncio.sleep(_SEND_RETRY_SECONDS)

    async def _send(self, outgoing: Sequence[Outgoing], alone: bool = False) -> Sent:
        """Queue every output in the producer, one send per partition; with ``alone``, one
        output at a time, each acknowledged (or refused) before the next is queued, so that
        librdkafka sends it in a record batch of its own (to find which one the broker
        refuses). An output goes to its request's partition number (hashing every key in
        Python cost a tenth of the worker's time), so a client that reads only the
        partitions it produced to finds its replies there. Returns each send's outputs with
        the future its broker acks resolve."""
        producer = self._producer
        assert producer is not None
        by_partition: dict[tuple[str, int], list[Outgoing]] = {}
        for o in outgoing:
            partitions = self._partitions.get(o.topic)
            if partitions is None:
                partitions = self._partitions[o.topic] = await producer.partitions_for(o.topic)
            by_partition.setdefault((o.topic, partitions[o.partition % len(partitions)]), []).append(o)
        sent: Sent = []
        for (topic, partition), outputs in by_partition.items():
            if not alone:
                sent.append((outputs, await producer.send(topic, partition, outputs)))
                continue
            for o in outputs:
                future = await producer.send(topic, partition, [o])
                await asyncio.wait([future])
                sent.append(([o], future))
        return sent

    def _crash_point(self, point: str) -> None:
        """Die here, without any clean-up, when the fault plan says so (chaos tests)."""
        if self._crashes.due(point):
            log.warning("injected fault: crashing at %s", point)
            os.kill(os.getpid(), signal.SIGKILL)


def _identity(out: Outgoing) -> tuple:
    """What makes an output the same when its request is served again: its request's
    position (a stand-in takes its answer's place), or for drift rows their bytes."""
    answer = out.kind in (Kind.PREDICTION, Kind.DEAD_LETTER)
    if out.headers:
        return answer, out.kind if not answer else "", tuple(out.headers)
    return answer, out.kind, out.key, hashlib.sha256(out.value).digest()


def transactional_id(settings: Settings) -> str:
    """The exactly-once producer's id: stable across restarts when the worker has a name."""
    return f"{settings.kafka.app_id}-{settings.kafka.worker_id or f'{socket.gethostname()}-{os.getpid()}'}"
