"""Which consumed offsets a worker may commit, and where it resumes: its offset bookkeeping.

A request's offset may be committed once its output, and the output of every request
before it on its partition, is acknowledged: a commit is a promise that nothing below it
needs serving again. The worker hands outputs to the producer in order, a batch at a
time, and acknowledgements come back in any order, so the ledger numbers each hand-off
(a ticket), keeps the offsets each one carries, and releases them only once every
ticket up to it is acknowledged: per partition, the highest offset below which every
request is answered. Offsets ride on flushes (a few a second), not on every batch:
the batches served since the last flush carry none, the flush after them carries all.

Pure, like the rest of ``pipeline``: a partition is a ``(topic, partition)`` tuple
(aiokafka's ``TopicPartition`` is one), no I/O, and no clock read inside: the caller
passes its monotonic clock reading as ``now``.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol, TypeVar

Partition = tuple[str, int]  # (topic, partition number)


class Positioned(Protocol):
    """Where a consumed record was read (aiokafka's ``ConsumerRecord`` is one)."""

    @property
    def topic(self) -> str: ...

    @property
    def partition(self) -> int: ...

    @property
    def offset(self) -> int: ...


R = TypeVar("R", bound=Positioned)
P = TypeVar("P", bound=Partition)  # the caller's partition type (aiokafka: TopicPartition)


def next_offsets(records: Iterable[Positioned]) -> dict[Partition, int]:
    """The offset to resume from, per partition: one past the last record served."""
    offsets: dict[Partition, int] = {}
    for r in records:
        tp = (r.topic, r.partition)
        offsets[tp] = max(offsets.get(tp, -1), r.offset + 1)
    return offsets


def unrevoked(queued: Iterable[tuple[float, R]],
              revoked: Collection[Partition]) -> list[tuple[float, R]]:
    """What a rebalance keeps of the records fetched and not yet served: those of the
    partitions still held. The rest is dropped; its next owner reads it again from the
    committed offset (the records already served are committed before the partitions go)."""
    return [(t, r) for t, r in queued if (r.topic, r.partition) not in revoked]


@dataclass(frozen=True, slots=True)
class Release:
    """A flush's offsets, safe to commit: it and every hand-off before it are acknowledged."""

    ticket: int
    offsets: Mapping[Partition, int]


class OffsetLedger:
    """Served, in flight, acknowledged, committed: the offsets of one worker's requests.

    ``flush_every`` (seconds) is how often the served offsets leave for a commit.
    """

    __slots__ = ("_acknowledged", "_committed", "_flushed", "_in_flight", "_next_ticket",
                 "_releasable", "_unflushed", "flush_every")

    def __init__(self, flush_every: float) -> None:
        self.flush_every = flush_every
        self._flushed = 0.0  # the clock reading at the last flush
        self._unflushed: dict[Partition, int] = {}  # served since the last flush
        self._next_ticket = 0
        self._in_flight: dict[int, dict[Partition, int]] = {}  # ticket -> its offsets, in order
        self._acknowledged: set[int] = set()  # in flight, but acknowledged (out of order)
        self._releasable: dict[Partition, int] = {}  # released, not yet committed
        self._committed: dict[Partition, int] = {}  # this worker's own commits

    def served(self, offsets: Mapping[Partition, int]) -> None:
        """A batch's outputs are handed to the producer; its offsets go with the next flush.
        A partition is served in order, so a later batch's offset replaces an earlier one."""
        self._unflushed.update(offsets)

    def due(self, now: float) -> bool:
        """Whether a flush is due: ``flush_every`` has passed since the last one."""
        return now - self._flushed >= self.flush_every

    def flush(self, now: float) -> dict[Partition, int]:
        """The offsets served since the last flush; from here on they are the flush's."""
        self._flushed = now
        offsets, self._unflushed = self._unflushed, {}
        return offsets

    def sent(self, offsets: Mapping[Partition, int] | None = None) -> int:
        """A hand-off (a batch's outputs, or a flush's with its ``offsets``) is in flight;
        its ticket, for ``acknowledged``. Tickets count up in hand-off order."""
        ticket, self._next_ticket = self._next_ticket, self._next_ticket + 1
        self._in_flight[ticket] = dict(offsets or {})
        return ticket

    @property
    def in_flight(self) -> int:
        """Hand-offs not yet released: unacknowledged, or behind one that is."""
        return len(self._in_flight)

    def acknowledged(self, ticket: int) -> tuple[Release, ...]:
        """Every output of ``ticket`` is acknowledged. Returns the flushes this releases, in
        order: those whose every earlier hand-off is acknowledged too (none while an earlier
        one is still out). Their offsets wait in ``to_commit``."""
        if ticket not in self._in_flight:
            raise ValueError(f"ticket {ticket} is not in flight")
        self._acknowledged.add(ticket)
        released = []
        # The in-flight dict keeps ticket order: release from its head while acknowledged.
        while self._in_flight and (oldest := next(iter(self._in_flight))) in self._acknowledged:
            self._acknowledged.discard(oldest)
            offsets = self._in_flight.pop(oldest)
            if offsets:
                self._releasable.update(offsets)
                released.append(Release(oldest, offsets))
        return tuple(released)

    def to_commit(self) -> dict[Partition, int]:
        """Take every released offset not yet committed (one commit carries them all)."""
        offsets, self._releasable = self._releasable, {}
        return offsets

    def commit_failed(self, offsets: Mapping[Partition, int]) -> None:
        """A commit of ``offsets`` failed and will be tried again: take them back, under any
        released since (those are later)."""
        self._releasable = {**offsets, **self._releasable}

    def committed(self, offsets: Mapping[Partition, int]) -> None:
        """This worker committed ``offsets`` (exactly-once: its transaction committed)."""
        self._committed.update(offsets)

    def resumable(self, partitions: Iterable[P]) -> list[P]:
        """Those of ``partitions`` this worker committed itself: ``resume_from`` may move them."""
        return [tp for tp in partitions if tp in self._committed]

    def resume_from(self, partition: Partition, group_answer: int | None) -> int | None:
        """Where to resume ``partition`` on assignment, when not where the group says: from
        no earlier than this worker's own last commit. Kafka writes a transaction's offsets
        to the group just after the commit returns, so right after a rebalance the group
        can answer an older offset (or none), and its requests would be served twice.
        None: the group's answer stands."""
        own = self._committed.get(partition)
        if own is None or (group_answer is not None and group_answer >= own):
            return None
        return own

    def rewind(self) -> None:
        """A failed transaction: the offsets served since the flush will not be committed;
        their records are read again from the committed offsets."""
        self._unflushed = {}
