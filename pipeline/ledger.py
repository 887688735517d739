"""The ledger: every request read yields exactly one prediction or exactly one dead letter.

Outputs are matched to requests by where the request was read (topic, partition,
offset: the ``streamserve-source-*`` headers every output carries), not by request id,
so requests without a readable id, or two requests with the same id, are accounted
for too.

Under at-least-once delivery a crash makes a worker serve some requests again, so a
request may have its fate twice. A repeat is harmless when it gives the client the
same answer: the same version's outputs, or the same dead-letter reason. How it was
served (batch size, latency) may differ, so repeats are rarely byte-identical; the
report counts both.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson

Position = tuple[str, int, int]  # (topic, partition, offset) of a request


class Fate(StrEnum):
    PREDICTION = "prediction"
    DEAD_LETTER = "dead_letter"


@dataclass(frozen=True, slots=True)
class Output:
    source: Position
    fate: Fate
    value: bytes


@dataclass(frozen=True, slots=True)
class LedgerReport:
    requests: int
    predictions: int
    dead_letters: int
    lost: tuple[Position, ...]  # read, but neither predicted nor dead-lettered
    both: tuple[Position, ...]  # predicted and dead-lettered
    duplicated: tuple[Position, ...]  # more than one output of the same fate
    identical_duplicates: int  # of the repeated outputs, those byte-identical to the first
    conflicting: tuple[Position, ...]  # repeated with a different answer
    strays: int  # outputs whose request is not in the checked range

    @property
    def holds(self) -> bool:
        """One fate, one answer per request. Repeats of that answer are at-least-once's due."""
        return not self.lost and not self.both and not self.conflicting

    @property
    def exactly_once(self) -> bool:
        return self.holds and not self.duplicated


def answer(fate: Fate, value: bytes) -> Any:
    """What the client reads from an output: a prediction's version and outputs, or a
    dead letter's reason. Unparsable values are their bytes."""
    try:
        message = orjson.loads(value)
    except orjson.JSONDecodeError:
        return value
    if not isinstance(message, dict):
        return value
    if fate is Fate.PREDICTION:
        return orjson.dumps([message.get("model_version"), message.get("outputs")])
    return message.get("reason")


def reconcile(requests: Iterable[Position], outputs: Iterable[Output]) -> LedgerReport:
    """Account every request in ``requests`` against ``outputs``."""
    wanted = set(requests)
    first: dict[tuple[Position, Fate], bytes] = {}
    duplicated: set[Position] = set()
    conflicting: set[Position] = set()
    identical = strays = 0
    for out in outputs:
        if out.source not in wanted:
            strays += 1
            continue
        key = (out.source, out.fate)
        if key not in first:
            first[key] = out.value
            continue
        duplicated.add(out.source)
        if first[key] == out.value:
            identical += 1
        elif answer(out.fate, first[key]) != answer(out.fate, out.value):
            conflicting.add(out.source)
    predicted = {p for p, fate in first if fate is Fate.PREDICTION}
    dead = {p for p, fate in first if fate is Fate.DEAD_LETTER}
    return LedgerReport(
        requests=len(wanted), predictions=len(predicted), dead_letters=len(dead),
        lost=tuple(sorted(wanted - predicted - dead)), both=tuple(sorted(predicted & dead)),
        duplicated=tuple(sorted(duplicated)), identical_duplicates=identical,
        conflicting=tuple(sorted(conflicting)), strays=strays)
