"""Serve a batch so that one bad row never spoils the rest of it.

When a model call fails, the batch is bisected: each half is tried again, down to
single rows, so the rows that fail are found in O(k log n) calls for k bad rows and
every other row is still served. A row whose output is not finite fails on its own.
The answers stay one array, a row each, so what reads them works per batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class RowFailure:
    error: str


@dataclass(frozen=True, slots=True)
class Answers:
    """A model's answers to a batch of rows: row ``i``'s is ``values[i]``, unless
    ``failures`` holds ``i`` (then why it has none, and ``values[i]`` means nothing)."""

    values: np.ndarray  # (rows, ...) the model's output rows
    failures: dict[int, RowFailure]

    def __len__(self) -> int:
        return len(self.values)

    def answered(self, rows: Sequence[int] | range) -> list[int]:
        """Those of ``rows`` with an answer."""
        failures = self.failures
        return [i for i in rows if i not in failures] if failures else list(rows)

    def of(self, i: int) -> np.ndarray | RowFailure:
        """Row ``i``'s answer, or its failure."""
        return self.failures.get(i) or self.values[i]


def serve_isolated(predict: Callable[[np.ndarray], np.ndarray], rows: np.ndarray) -> Answers:
    """One output row (or the failure that explains its absence) per input row, in order."""
    parts: list[tuple[int, np.ndarray]] = []  # (first row, its outputs) of each call that answered
    failures: dict[int, RowFailure] = {}
    _serve(predict, rows, 0, parts, failures)
    if len(parts) == 1 and len(parts[0][1]) == len(rows):
        values = parts[0][1]  # the whole batch in one call: no copy
    else:
        shape = parts[0][1].shape[1:] if parts else (0,)
        values = np.zeros((len(rows), *shape), parts[0][1].dtype if parts else np.float32)
        for start, outputs in parts:
            if outputs.shape[1:] != shape:
                for i in range(start, start + len(outputs)):
                    failures[i] = RowFailure(f"the model answered rows of shape {outputs.shape[1:]} "
                                             f"here and {shape} for others in the same batch")
            else:
                values[start:start + len(outputs)] = outputs
    return Answers(values, failures)


def _serve(predict: Callable[[np.ndarray], np.ndarray], rows: np.ndarray, start: int,
           parts: list[tuple[int, np.ndarray]], failures: dict[int, RowFailure]) -> None:
    try:
        outputs = np.asarray(predict(rows))
        if outputs.shape[0] != rows.shape[0]:
            raise ValueError(f"the model returned {outputs.shape[0]} rows for {rows.shape[0]} inputs")
    except Exception as e:  # noqa: BLE001 - any model failure must stay inside its rows
        if len(rows) == 1:
            failures[start] = RowFailure(f"the model failed on this request: {type(e).__name__}: {e}")
            return
        middle = len(rows) // 2
        _serve(predict, rows[:middle], start, parts, failures)
        _serve(predict, rows[middle:], start + middle, parts, failures)
        return
    parts.append((start, outputs))
    finite = np.isfinite(outputs).reshape(len(outputs), -1).all(axis=1)
    if not finite.all():
        for i in np.flatnonzero(~finite).tolist():
            failures[start + i] = RowFailure(
                "the model produced a non-finite output for this request; check the "
                "feature values against the model's training ranges")
