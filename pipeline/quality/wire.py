"""The label join's own topic (``<prefix>.label-join``): what workers kept and the labels.

Both kinds of message for one request id land in one partition, ``join_partition(id)``,
whatever partition the request or the label came in on (clients partition as they like:
librdkafka and the JVM hash keys differently), so one table partition holds all of an
id's state. The key says which kind a message is:

* empty: the answers one worker gave since its last flush whose ids fall in the
  partition, ``[[id, *Kept.to_list()], ...]`` (``KEPT_ROWS_PER_MESSAGE`` at most);
* the request id (never empty): its label, read and checked,
  ``[id, label, value, time, arrived, source]`` (``source``: where the label was read on
  the labels topic, ``partition:offset``, so one relayed twice is known as one).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence

import numpy as np
import orjson

from pipeline.quality.join import Kept
from pipeline.quality.labels import Label

# About 150 bytes a row: a message stays far under the broker's 1 MiB default limit.
KEPT_ROWS_PER_MESSAGE = 2000


def join_partition(request_id: str, partitions: int) -> int:
    return zlib.crc32(request_id.encode()) % partitions


def kept_messages(rows: Iterable[tuple[str, Kept]], partitions: int) -> list[tuple[int, bytes]]:
    """(partition, value) of each message carrying ``rows``, every row in its id's partition."""
    by_partition: dict[int, list[list]] = {}
    for request_id, kept in rows:
        by_partition.setdefault(join_partition(request_id, partitions), []).append(
            [request_id, *kept.to_list()])
    return [(partition, orjson.dumps(part[start:start + KEPT_ROWS_PER_MESSAGE]))
            for partition, part in sorted(by_partition.items())
            for start in range(0, len(part), KEPT_ROWS_PER_MESSAGE)]


class KeptAnswers:
    """The answers a worker gave since its last flush, as the join keeps them."""

    def __init__(self) -> None:
        self._rows: list[tuple[str, Kept]] = []

    def __len__(self) -> int:
        return len(self._rows)

    def answered(self, ids: Sequence[str], model: str, version: str, route: str, time: float,
                 answers: np.ndarray, regressor: bool) -> None:
        """A batch's answers by one version: (n, width) class probabilities or values."""
        if regressor:
            self._rows.extend((i, Kept(model, version, route, time, value=v))
                              for i, v in zip(ids, answers[:, 0].tolist(), strict=True))
            return
        predicted = answers.argmax(axis=1).tolist()
        # Seven digits are what float32 holds; rounded, they encode short.
        probabilities = np.round(answers.astype(np.float64), 7).tolist()
        self._rows.extend((i, Kept(model, version, route, time, p, tuple(ps)))
                          for i, p, ps in zip(ids, predicted, probabilities, strict=True))

    def dead_lettered(self, request_id: str, model: str, version: str, route: str, time: float,
                      reason: str) -> None:
        self._rows.append((request_id, Kept(model, version, route, time, dead_letter=reason)))

    def truncate(self, length: int) -> None:
        """Forget what was kept after the first ``length`` (a batch that was not answered)."""
        del self._rows[length:]

    def take(self) -> list[tuple[str, Kept]]:
        rows, self._rows = self._rows, []
        return rows


def read_kept(raw: bytes) -> list[tuple[str, Kept]]:
    return [(row[0], Kept.from_list(row[1:])) for row in orjson.loads(raw)]


def label_message(label: Label, arrived: float, source: str) -> bytes:
    return orjson.dumps([label.id, label.label, label.value, label.time, arrived, source])


def read_label(raw: bytes) -> tuple[Label, float, str]:
    request_id, label, value, time, arrived, source = orjson.loads(raw)
    return Label(request_id, label, value, time), arrived, source
