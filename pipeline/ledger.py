"""The ledger: every request read yields exactly one prediction or exactly one dead letter.

Outputs are matched to requests by where the request was read (topic, partition,
offset: the ``streamserve-source-*`` headers every output carries), not by request id,
so requests without a readable id, or two requests with the same id, are accounted
for too.

Under at-least-once delivery a crash makes a worker serve some requests again, so a
request may have its fate twice. A repeat is harmless when it gives the client the
same answer: the same version's label and probabilities (to float noise: another batch
size may round the last bits differently), or the same dead-letter reason. How it was
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


def same_answer(fate: Fate, first: bytes, repeat: bytes) -> bool:
    """Whether a repeat tells the client what the first output did: a prediction's version,
    label and probabilities (within float noise: another batch size may round the last
    bits differently), or a dead letter's reason. Unparsable values must be equal."""
    a, b = _parsed(first), _parsed(repeat)
    if a is None or b is None:
        return first == repeat
    if fate is Fate.DEAD_LETTER:
        return a.get("reason") == b.get("reason")
    if a.get("model_version") != b.get("model_version"):
        return False
    outputs_a, outputs_b = a.get("outputs") or [], b.get("outputs") or []
    if [o.get("name") for o in outputs_a] != [o.get("name") for o in outputs_b]:
        return False
    for x, y in zip(outputs_a, outputs_b, strict=True):
        if x.get("datatype") == "BYTES" or x.get("datatype") != y.get("datatype"):
            if x.get("data") != y.get("data"):
                return False
        elif not _close(x.get("data"), y.get("data")):
            return False
    return True


_TOLERANCE = 1e-5


def _close(a: Any, b: Any) -> bool:
    if not (isinstance(a, list) and isinstance(b, list) and len(a) == len(b)):
        return a == b
    return all(isinstance(x, (int, float)) and isinstance(y, (int, float))
               and abs(x - y) <= _TOLERANCE for x, y in zip(a, b, strict=True))


def _parsed(value: bytes) -> dict | None:
    try:
        message = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    return message if isinstance(message, dict) else None


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
        elif not same_answer(out.fate, first[key], out.value):
            conflicting.add(out.source)
    predicted = {p for p, fate in first if fate is Fate.PREDICTION}
    dead = {p for p, fate in first if fate is Fate.DEAD_LETTER}
    return LedgerReport(
        requests=len(wanted), predictions=len(predicted), dead_letters=len(dead),
        lost=tuple(sorted(wanted - predicted - dead)), both=tuple(sorted(predicted & dead)),
        duplicated=tuple(sorted(duplicated)), identical_duplicates=identical,
        conflicting=tuple(sorted(conflicting)), strays=strays)
