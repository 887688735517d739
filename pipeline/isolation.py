"""Serve a batch so that one bad row never spoils the rest of it.

When a model call fails, the batch is bisected: each half is tried again, down to
single rows, so the rows that fail are found in O(k log n) calls for k bad rows and
every other row is still served. A row whose output is not finite fails on its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class RowFailure:
    error: str


def serve_isolated(predict: Callable[[np.ndarray], np.ndarray],
                   rows: np.ndarray) -> list[np.ndarray | RowFailure]:
    """One output row (or the failure that explains its absence) per input row, in order."""
    results: list[np.ndarray | RowFailure] = [RowFailure("not served")] * len(rows)
    _serve(predict, rows, 0, results)
    return results


def _serve(predict: Callable[[np.ndarray], np.ndarray], rows: np.ndarray, start: int,
           results: list[np.ndarray | RowFailure]) -> None:
    try:
        outputs = np.asarray(predict(rows))
        if outputs.shape[0] != rows.shape[0]:
            raise ValueError(f"the model returned {outputs.shape[0]} rows for {rows.shape[0]} inputs")
    except Exception as e:  # noqa: BLE001 - any model failure must stay inside its rows
        if len(rows) == 1:
            results[start] = RowFailure(f"the model failed on this request: {type(e).__name__}: {e}")
            return
        middle = len(rows) // 2
        _serve(predict, rows[:middle], start, results)
        _serve(predict, rows[middle:], start + middle, results)
        return
    finite = np.isfinite(outputs).reshape(len(outputs), -1).all(axis=1)
    for i, output in enumerate(outputs):
        results[start + i] = output if finite[i] else RowFailure(
            "the model produced a non-finite output for this request; check the "
            "feature values against the model's training ranges")
