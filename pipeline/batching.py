"""Padding buckets: a compiled model only ever sees a few batch sizes.

XLA compiles one executable per input shape. Padding every batch up to the next
bucket (1, 2, 4, ... max_batch) bounds the shapes to ``len(buckets)``, so all of
them can be compiled at load time and none on the serving path.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import numpy as np


def buckets_for(max_batch: int) -> tuple[int, ...]:
    """Powers of two below ``max_batch``, then ``max_batch`` itself: 1, 2, 4, ..., max_batch."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be at least 1, got {max_batch}")
    buckets = []
    size = 1
    while size < max_batch:
        buckets.append(size)
        size *= 2
    buckets.append(max_batch)
    return tuple(buckets)


def choose_bucket(n: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds ``n`` rows. ``buckets`` must be sorted ascending."""
    if n < 1:
        raise ValueError(f"a batch needs at least one row, got {n}")
    i = bisect.bisect_left(buckets, n)
    if i == len(buckets):
        raise ValueError(
            f"{n} rows exceed the largest bucket ({buckets[-1]}); split them with chunks() first"
        )
    return buckets[i]


def chunks(n: int, largest: int) -> list[tuple[int, int]]:
    """(start, stop) slices that split ``n`` rows into pieces of at most ``largest`` rows."""
    if n < 0:
        raise ValueError(f"row count must not be negative, got {n}")
    if largest < 1:
        raise ValueError(f"chunk size must be at least 1, got {largest}")
    return [(start, min(start + largest, n)) for start in range(0, n, largest)]


def padded_size(n: int, buckets: Sequence[int]) -> int:
    """Rows actually computed for ``n`` rows: each chunk padded up to its bucket."""
    return sum(choose_bucket(stop - start, buckets) for start, stop in chunks(n, buckets[-1]))


class PaddingBuffers:
    """One preallocated float32 buffer of shape (bucket, n_features) per bucket.

    ``fill`` reuses these buffers, so the serving path allocates nothing; the flip
    side is that a returned buffer is overwritten by the next ``fill`` of the same
    bucket. Not thread-safe: one caller at a time.
    """

    __slots__ = ("buckets", "n_features", "_buffers")

    def __init__(self, buckets: Sequence[int], n_features: int) -> None:
        if not buckets or list(buckets) != sorted(set(buckets)) or buckets[0] < 1:
            raise ValueError(f"buckets must be distinct positive sizes in ascending order, got {buckets}")
        if n_features < 1:
            raise ValueError(f"n_features must be at least 1, got {n_features}")
        self.buckets = tuple(buckets)
        self.n_features = n_features
        self._buffers = {b: np.zeros((b, n_features), np.float32) for b in self.buckets}

    def fill(self, rows: np.ndarray) -> np.ndarray:
        """Copy ``rows`` (n, n_features) into the smallest fitting buffer, zero the rest, return it."""
        if rows.ndim != 2 or rows.shape[1] != self.n_features:
            raise ValueError(
                f"rows must have shape (n, {self.n_features}), got {rows.shape}"
            )
        n = rows.shape[0]
        buffer = self._buffers[choose_bucket(n, self.buckets)]
        buffer[:n] = rows
        # The model treats rows independently, but stale rows from an earlier batch would
        # make a call's inputs depend on history; zeros keep every call reproducible.
        buffer[n:] = 0.0
        return buffer
