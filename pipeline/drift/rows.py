"""Served rows as drift codes, with where each request was read: what a worker ships.

A worker does not ship aggregated counts: after a crash, the requests it had served but
not committed are served again, and counts cannot tell which rows they already hold.
``CodedRows`` keep each row apart (one uint8 code per feature, see
``MatrixCounter.codes``) with its request's partition, offset and event time, so the
window owner counts every (partition, offset) once however often it is served.

Wire format (little-endian): a 7-byte header ``<B I H`` (format version, rows n,
columns F), then the codes (n*F uint8, row-major), partitions (n int32), offsets
(n int64) and timestamps (n int64, milliseconds). About F + 20 bytes a row.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.drift.errors import DriftError
from pipeline.drift.matrix import MatrixCounter

_FORMAT = 1
_HEADER = struct.Struct("<BIH")


@dataclass(frozen=True, slots=True, eq=False)
class CodedRows:
    codes: np.ndarray  # uint8 (n, F): the inputs' codes, then the predicted class's
    partitions: np.ndarray  # int32 (n,): each request's partition
    offsets: np.ndarray  # int64 (n,): each request's offset in its partition
    timestamps_ms: np.ndarray  # int64 (n,): each request's event time

    def __post_init__(self) -> None:
        n = self.codes.shape[0]
        if (self.codes.ndim != 2 or self.codes.dtype != np.uint8
                or any(a.shape != (n,) for a in (self.partitions, self.offsets, self.timestamps_ms))):
            raise DriftError(f"coded rows need uint8 codes (n, F) and n partitions, offsets and "
                             f"timestamps, got codes {self.codes.dtype} {self.codes.shape}, "
                             f"{self.partitions.shape}, {self.offsets.shape}, {self.timestamps_ms.shape}")

    def __len__(self) -> int:
        return self.codes.shape[0]

    def select(self, mask: np.ndarray) -> CodedRows:
        return CodedRows(self.codes[mask], self.partitions[mask], self.offsets[mask],
                         self.timestamps_ms[mask])

    @classmethod
    def concatenate(cls, parts: Sequence[CodedRows]) -> CodedRows:
        return cls(np.concatenate([p.codes for p in parts]),
                   np.concatenate([p.partitions for p in parts]),
                   np.concatenate([p.offsets for p in parts]),
                   np.concatenate([p.timestamps_ms for p in parts]))

    def to_bytes(self) -> bytes:
        n, f = self.codes.shape
        return b"".join((_HEADER.pack(_FORMAT, n, f), np.ascontiguousarray(self.codes).tobytes(),
                         self.partitions.astype("<i4").tobytes(), self.offsets.astype("<i8").tobytes(),
                         self.timestamps_ms.astype("<i8").tobytes()))

    @classmethod
    def from_bytes(cls, data: bytes) -> CodedRows:
        if len(data) < _HEADER.size:
            raise DriftError(f"coded rows of {len(data)} bytes are shorter than their header")
        version, n, f = _HEADER.unpack_from(data)
        if version != _FORMAT:
            raise DriftError(f"coded rows in format {version}, but this worker reads format "
                             f"{_FORMAT}: run one streamserve version across the fleet")
        if len(data) != _HEADER.size + n * (f + 20):
            raise DriftError(f"{n} coded rows of {f} codes cannot be {len(data)} bytes: the "
                             "message was cut or is not drift codes")
        at = _HEADER.size

        def take(dtype: str, count: int) -> np.ndarray:
            nonlocal at
            a = np.frombuffer(data, dtype, count, at)
            at += a.nbytes
            return a

        codes = take("u1", n * f).reshape(n, f)
        return cls(codes, take("<i4", n), take("<i8", n), take("<i8", n))


class ServedRows:
    """A version's served rows since the last flush, kept uncoded: ``MatrixCounter.codes``
    costs about 35 µs a call whatever its rows (32 features), so a worker codes them once
    per flush instead of once per batch (under light load, a batch is a request or two)."""

    __slots__ = ("_coder", "_parts")

    def __init__(self, coder: MatrixCounter) -> None:
        self._coder = coder
        self._parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []

    def add(self, watched: np.ndarray, partitions: np.ndarray, offsets: np.ndarray,
            timestamps_ms: np.ndarray) -> None:
        """Rows' watched columns (``watched_columns``), and each one's partition, offset
        and event time, as ``CodedRows`` holds them."""
        self._parts.append((watched, partitions, offsets, timestamps_ms))

    def coded(self) -> CodedRows:
        """Every row added, coded in one call."""
        watched, partitions, offsets, stamps = (np.concatenate(column) for column in zip(*self._parts))
        return CodedRows(self._coder.codes(watched), partitions, offsets, stamps)


class SourceWatermarks:
    """The highest offset counted per source partition: rows at or below it are repeats.

    A partition's rows reach the window owner in offset order (one worker serves a
    partition at a time, in order, and ships its rows in order), so one number per
    partition tells a row served again after a crash from a new one.
    """

    def __init__(self, counted: dict[int, int] | None = None) -> None:
        self.counted = dict(counted or {})

    def fresh(self, rows: CodedRows) -> np.ndarray:
        """A mask of the rows not counted before; then remembers them as counted."""
        keep = np.ones(len(rows), bool)
        for partition in np.unique(rows.partitions).tolist():
            mine = rows.partitions == partition
            seen = self.counted.get(partition)
            if seen is not None:
                keep[mine] = rows.offsets[mine] > seen
            self.counted[partition] = max(int(rows.offsets[mine].max()), -1 if seen is None else seen)
        return keep

    def snapshot(self) -> dict[str, int]:
        return {str(p): o for p, o in self.counted.items()}

    @classmethod
    def restore(cls, snapshot: dict[str, int]) -> SourceWatermarks:
        return cls({int(p): int(o) for p, o in snapshot.items()})


class DeliveryRuns:
    """Per partition of the coded-rows topic, the run of consecutive offsets this process
    was handed most recently, to find messages the stream skipped.

    Faust can skip messages around a rebalance: it resumes fetching before it seeks to
    the committed offsets, and drops what it fetched meanwhile (faust-streaming issues
    #216/#221 describe the family). A key's messages between the last one counted and
    the start of the current run were then never handed over, and must be read again.
    """

    def __init__(self) -> None:
        self._starts: dict[int, int] = {}
        self._ends: dict[int, int] = {}

    def deliver(self, partition: int, offset: int, last_counted: int | None) -> range:
        """Note ``offset`` as handed over, for a key whose last message counted is at
        ``last_counted`` (None: none known); return the offsets that may hold that key's
        messages never handed over: from after the last counted to this run's start."""
        if self._ends.get(partition) != offset - 1:
            self._starts[partition] = offset
        self._ends[partition] = offset
        start = self._starts[partition]
        if last_counted is None or last_counted + 1 >= start:
            return range(0)
        return range(last_counted + 1, start)

    def clear(self) -> None:
        """Forget the runs: after a rebalance, fetching starts afresh."""
        self._starts.clear()
        self._ends.clear()
