"""The ledger: every request read yields exactly one prediction or exactly one dead letter.

Outputs are matched to requests by where the request was read (topic, partition,
offset: the ``streamserve-source-*`` headers every output carries), not by request id,
so requests without a readable id, or two requests with the same id, are accounted
for too.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

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
    duplicates_identical: bool  # every duplicate is byte-identical to its first copy
    strays: int  # outputs whose request is not in the checked range

    @property
    def holds(self) -> bool:
        """Exactly one fate per request. Identical duplicates are at-least-once's due."""
        return not self.lost and not self.both and self.duplicates_identical

    @property
    def exactly_once(self) -> bool:
        return self.holds and not self.duplicated


def reconcile(requests: Iterable[Position], outputs: Iterable[Output]) -> LedgerReport:
    """Account every request in ``requests`` against ``outputs``."""
    wanted = set(requests)
    first: dict[tuple[Position, Fate], bytes] = {}
    duplicated: set[Position] = set()
    identical = True
    strays = 0
    for out in outputs:
        if out.source not in wanted:
            strays += 1
            continue
        key = (out.source, out.fate)
        if key in first:
            duplicated.add(out.source)
            identical = identical and first[key] == out.value
        else:
            first[key] = out.value
    predicted = {p for p, fate in first if fate is Fate.PREDICTION}
    dead = {p for p, fate in first if fate is Fate.DEAD_LETTER}
    return LedgerReport(
        requests=len(wanted), predictions=len(predicted), dead_letters=len(dead),
        lost=tuple(sorted(wanted - predicted - dead)), both=tuple(sorted(predicted & dead)),
        duplicated=tuple(sorted(duplicated)), duplicates_identical=identical, strays=strays)
