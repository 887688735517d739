"""A consumer group's lag on the requests topic, per partition, from offsets read by the shell."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PartitionLag:
    """One partition of the requests topic: offsets kept (``first`` up to ``end``, the
    last stable offset) and the consumer group's committed offset (None: never committed)."""

    partition: int
    first: int
    end: int
    committed: int | None

    @property
    def lag(self) -> int:
        """Requests not yet served. Without a commit, or one below the records kept, the
        group starts at the first record kept (the workers' ``auto_offset_reset``)."""
        start = self.first if self.committed is None else max(self.committed, self.first)
        return max(0, self.end - start)


@dataclass(frozen=True, slots=True)
class GroupLag:
    group: str
    topic: str
    partitions: tuple[PartitionLag, ...]

    @property
    def total(self) -> int:
        return sum(p.lag for p in self.partitions)


def group_lag(group: str, topic: str, offsets: Mapping[int, tuple[int, int]],
              committed: Mapping[int, int]) -> GroupLag:
    """``offsets[partition] = (first, end)``; ``committed[partition]`` where the group
    committed (a negative offset, Kafka's "none", counts as no commit)."""
    return GroupLag(group, topic, tuple(
        PartitionLag(p, first, end, committed[p] if committed.get(p, -1) >= 0 else None)
        for p, (first, end) in sorted(offsets.items())))
