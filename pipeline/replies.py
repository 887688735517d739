"""Replies (contract): a prediction or a dead letter, read from its record's bytes and headers.

A worker answers every request it reads with one reply (README, "Requests and replies"):
a prediction (Open Inference Protocol v2 response) on ``<prefix>.predictions`` or a dead
letter on ``<prefix>.deadletter``, keyed by request id, with the ``streamserve-source-*``
headers naming where the request was read (topic, partition, offset). ``pipeline.messages``
writes them; this module reads them, for every reader: the client library
(``pipeline.client``), replay's diff (``pipeline.replay``) and the ledger
(``pipeline.ledger``).

A record that is not such a reply raises ``MalformedReply``; each reader decides what that
means (the client skips it, the diff leaves it out, the ledger compares its bytes).
"""

from __future__ import annotations

import base64
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson

from pipeline.errors import StreamserveError
from pipeline.messages import (
    SOURCE_OFFSET_HEADER,
    SOURCE_PARTITION_HEADER,
    SOURCE_TOPIC_HEADER,
)
from pipeline.rejections import Reason


class MalformedReply(StreamserveError, ValueError):
    """A record on a reply topic is not a prediction or dead letter this client can read.
    The client logs and skips it; a caller never sees it."""


class SourcePosition(NamedTuple):
    """Where the request a reply answers was read: its topic, partition and offset. A
    tuple: it sorts, and equals ``(topic, partition, offset)``."""

    topic: str
    partition: int
    offset: int


def source_position(headers: Iterable[tuple[str, bytes | None]]) -> SourcePosition | None:
    """The source headers every reply carries; None when they are missing or unreadable."""
    found = dict(headers)
    try:
        return SourcePosition(found[SOURCE_TOPIC_HEADER].decode(),
                              int(found[SOURCE_PARTITION_HEADER]), int(found[SOURCE_OFFSET_HEADER]))
    except (KeyError, ValueError, TypeError, AttributeError):  # missing, unreadable or null
        return None


@dataclass(frozen=True, slots=True)
class Output:
    """One Open Inference Protocol v2 output tensor, ``data`` flat in row-major order."""

    name: str
    shape: tuple[int, ...]
    datatype: str
    data: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Prediction:
    """A served request. ``latency_ms``: the worker's, from the request's timestamp to the
    prediction (NaN when it gave none); ``round_trip_ms``: the client's, from sending to
    receiving (None until the client has received it)."""

    id: str
    model: str
    version: str
    outputs: tuple[Output, ...]
    route: str
    batch_size: int
    latency_ms: float
    round_trip_ms: float | None = None
    source: SourcePosition | None = None

    def output(self, name: str) -> Output:
        for output in self.outputs:
            if output.name == name:
                return output
        raise KeyError(f"prediction {self.id} has no output {name!r}; it has "
                       f"{', '.join(o.name for o in self.outputs) or 'none'}")

    @property
    def probabilities(self) -> tuple[float, ...]:
        """Class probabilities, in the order of the model's labels."""
        return tuple(float(x) for x in self.output("probabilities").data)

    @property
    def label(self) -> str:
        """The most probable class."""
        return str(self.output("label").data[0])

    @property
    def value(self) -> tuple[float, ...]:
        """A regressor's answer: one value per target."""
        return tuple(float(x) for x in self.output("value").data)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A refused request. ``original``: the request bytes as the worker received them (None
    when redaction withheld them)."""

    id: str | None
    reason: str
    error: str
    model: str | None = None
    original: bytes | None = None
    round_trip_ms: float | None = None
    source: SourcePosition | None = None

    @property
    def is_client_error(self) -> bool:
        """True when the request must be fixed; False when the server failed it (a retry
        may succeed), or the reason is one this client does not know."""
        try:
            return Reason(self.reason).is_client_error
        except ValueError:
            return False


Reply = Prediction | DeadLetter


def parse_reply(value: bytes | None, *, dead_letter: bool | None,
                headers: Iterable[tuple[str, bytes | None]] = ()) -> Reply:
    """A record of the predictions (``dead_letter`` False) or dead-letter topic (True) as a
    value, its source position read from ``headers``. ``dead_letter`` None, for a record
    whose topic is not known (a capture file of both): a dead letter names a reason."""
    if value is None:
        raise MalformedReply("an empty record (a tombstone) is no reply")
    source = source_position(headers)
    if dead_letter is None:
        dead_letter = isinstance(_object(value, "reply").get("reason"), str)
    return parse_dead_letter(value, source) if dead_letter else parse_prediction(value, source)


def parse_prediction(value: bytes, source: SourcePosition | None = None) -> Prediction:
    body = _object(value, "prediction")
    try:
        outputs = tuple(Output(str(o["name"]), tuple(map(int, o["shape"])),
                               str(o["datatype"]), tuple(o["data"])) for o in body["outputs"])
        parameters = body.get("parameters") or {}
        return Prediction(id=_text(body["id"]), model=_text(body["model_name"]),
                          version=_text(body["model_version"]), outputs=outputs,
                          route=str(parameters.get("route", "")),
                          batch_size=int(parameters.get("batch_size", 0)),
                          latency_ms=float(parameters.get("latency_ms", math.nan)), source=source)
    except (KeyError, TypeError, ValueError) as e:
        raise MalformedReply(f"not a prediction ({type(e).__name__}: {e}): {value[:200]!r}") from None


def parse_dead_letter(value: bytes, source: SourcePosition | None = None) -> DeadLetter:
    body = _object(value, "dead letter")
    try:
        encoding = body.get("original_encoding", "utf-8")
        text = body.get("original")
        original = (None if encoding == "withheld" or text is None
                    else base64.b64decode(text) if encoding == "base64" else str(text).encode())
        return DeadLetter(id=None if body.get("id") is None else _text(body["id"]),
                          reason=_text(body["reason"]), error=str(body["error"]),
                          model=body.get("model"), original=original, source=source)
    except (KeyError, TypeError, ValueError) as e:
        raise MalformedReply(f"not a dead letter ({type(e).__name__}: {e}): {value[:200]!r}") from None


def _object(value: bytes, what: str) -> dict[str, Any]:
    try:
        body = orjson.loads(value)
    except orjson.JSONDecodeError as e:
        raise MalformedReply(f"a {what} that is not JSON ({e}): {value[:200]!r}") from None
    if not isinstance(body, dict):
        raise MalformedReply(f"a {what} that is not a JSON object: {value[:200]!r}")
    return body


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    return value
