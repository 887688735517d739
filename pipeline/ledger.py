"""The ledger: every request read yields exactly one prediction or exactly one dead letter.

Outputs are matched to requests by where the request was read (topic, partition,
offset: the ``streamserve-source-*`` headers every output carries), not by request id,
so requests without a readable id, or two requests with the same id, are accounted
for too. Then each answer must carry the id its request had, where the worker could read
one: an answer that lost it (keyed by position) reaches no client that waits by id.
Whether a repeat gives the same answer is read with the replies' parser
(``pipeline.replies``).

Under at-least-once delivery a crash makes a worker serve some requests again, so a
request may have its fate twice. A repeat is harmless when it gives the client the
same answer: the same version's label and probabilities (to float noise: another batch
size may round the last bits differently), or the same dead-letter reason. How it was
served (batch size, latency) may differ, so repeats are rarely byte-identical; the
report counts both.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson

from pipeline.rejections import Reason
from pipeline.replies import DeadLetter, MalformedReply, Prediction, SourcePosition, parse_reply


class Fate(StrEnum):
    PREDICTION = "prediction"
    DEAD_LETTER = "dead_letter"


@dataclass(frozen=True, slots=True)
class ReplyRecord:
    """One record of the predictions or dead-letter topic, as the ledger counts it: where
    its request was read (its source headers), its fate (the topic) and its bytes."""

    source: SourcePosition
    fate: Fate
    value: bytes


@dataclass(frozen=True, slots=True)
class LedgerReport:
    requests: int
    predictions: int
    dead_letters: int
    lost: tuple[SourcePosition, ...]  # read, but neither predicted nor dead-lettered
    both: tuple[SourcePosition, ...]  # predicted and dead-lettered
    duplicated: tuple[SourcePosition, ...]  # more than one output of the same fate
    identical_duplicates: int  # of the repeated outputs, those byte-identical to the first
    conflicting: tuple[SourcePosition, ...]  # repeated with a different answer
    strays: int  # outputs whose request is not in the checked range
    # Answered, but the answer does not carry the request's (readable) id.
    misnamed: tuple[SourcePosition, ...] = ()

    @property
    def holds(self) -> bool:
        """One fate, one answer per request, naming it. Repeats of that answer are
        at-least-once's due."""
        return not self.lost and not self.both and not self.conflicting and not self.misnamed

    @property
    def exactly_once(self) -> bool:
        return self.holds and not self.duplicated


def same_answer(fate: Fate, first: bytes, repeat: bytes) -> bool:
    """Whether a repeat tells the client what the first output did: a prediction's version,
    label and probabilities (within float noise: another batch size may round the last
    bits differently), or a dead letter's reason. Values that are no reply (``MalformedReply``)
    must be equal."""
    try:
        a = parse_reply(first, dead_letter=fate is Fate.DEAD_LETTER)
        b = parse_reply(repeat, dead_letter=fate is Fate.DEAD_LETTER)
    except MalformedReply:
        return first == repeat
    if isinstance(a, DeadLetter) or isinstance(b, DeadLetter):
        return isinstance(a, DeadLetter) and isinstance(b, DeadLetter) and a.reason == b.reason
    return _same_prediction(a, b)


def _same_prediction(a: Prediction, b: Prediction) -> bool:
    if a.version != b.version or [o.name for o in a.outputs] != [o.name for o in b.outputs]:
        return False
    for x, y in zip(a.outputs, b.outputs, strict=True):
        if x.datatype == "BYTES" or x.datatype != y.datatype:
            if x.data != y.data:
                return False
        elif not _close(x.data, y.data):
            return False
    return True


_TOLERANCE = 1e-5


def _close(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    if len(a) != len(b):
        return False
    return all(isinstance(x, (int, float)) and isinstance(y, (int, float))
               and abs(x - y) <= _TOLERANCE for x, y in zip(a, b, strict=True))


def reconcile(requests: Iterable[SourcePosition], outputs: Iterable[ReplyRecord],
              ids: Mapping[SourcePosition, str] | None = None) -> LedgerReport:
    """Account every request in ``requests`` against ``outputs``; ``ids``: the id of each
    request whose id the worker can read, which its answer must carry."""
    ids = ids or {}
    wanted = set(requests)
    first: dict[tuple[SourcePosition, Fate], bytes] = {}
    duplicated: set[SourcePosition] = set()
    conflicting: set[SourcePosition] = set()
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
    misnamed = {p for (p, _), value in first.items() if p in ids and not _names(value, ids[p])}
    predicted = {p for p, fate in first if fate is Fate.PREDICTION}
    dead = {p for p, fate in first if fate is Fate.DEAD_LETTER}
    return LedgerReport(
        requests=len(wanted), predictions=len(predicted), dead_letters=len(dead),
        lost=tuple(sorted(wanted - predicted - dead)), both=tuple(sorted(predicted & dead)),
        duplicated=tuple(sorted(duplicated)), identical_duplicates=identical,
        conflicting=tuple(sorted(conflicting)), strays=strays, misnamed=tuple(sorted(misnamed)))


def _names(value: bytes, request_id: str) -> bool:
    """Whether an answer carries ``request_id``; a dead letter for a reason the decoder
    gives before it reads any id (too large, not JSON, ...) rightly carries none."""
    try:
        body = orjson.loads(value)
    except orjson.JSONDecodeError:
        return False
    if not isinstance(body, dict):
        return False
    return body.get("id") == request_id or (body.get("id") is None
                                            and body.get("reason") in _BEFORE_THE_ID)


# Dead-letter reasons given before a request's id is read (pipeline.decode's order).
_BEFORE_THE_ID = frozenset(str(r) for r in (
    Reason.EMPTY_REQUEST, Reason.TOO_LARGE, Reason.TOO_DEEP, Reason.TOO_MANY_FEATURES,
    Reason.INVALID_UTF8, Reason.MALFORMED_JSON, Reason.DUPLICATE_KEY, Reason.MISSING_ID,
    Reason.INVALID_ID))
