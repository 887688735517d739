"""The records a worker reads and writes: each output's kind, topic, partition, key and headers.

The worker's shell hands the inference step ``Incoming`` request records and sends the
``Outgoing`` records it returns. The builders here decide where each output goes and how it
is keyed; the bytes of each value are the contract in ``pipeline.messages``, shared with
the clients that read them. Every builder takes what it needs (topic names, the redactor,
the answer time) as arguments: nothing here reads a clock or a setting.

Replies land on their request's partition number, keyed by request id, with the request's
position in the source headers, so a client can match a reply to its request either way.
Once the broker has them, ``tally`` says what they count for in the metrics.
"""

from __future__ import annotations

import hashlib
import zlib
from collections import Counter
from collections.abc import Container, Iterable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

import numpy as np
import orjson

from pipeline.decode import Request
from pipeline.drift import CodedRows
from pipeline.messages import (
    PredictionEncoder,
    encode_dead_letter,
    encode_sample,
    encode_shadow,
    source_headers,
)
from pipeline.quality.join import Kept
from pipeline.quality.wire import kept_messages
from pipeline.redaction import RedactedOriginal, Redactor
from pipeline.rejections import Reason, Rejection
from pipeline.routing import Route
from pipeline.schema import InputSchema, OutputSchema


# The most a drift-rows message holds: half the broker's default message limit (1 MiB).
DRIFT_MESSAGE_BYTES = 512 * 1024


@dataclass(slots=True)  # not frozen, as ``Outgoing`` (below) says why
class Incoming:
    topic: str
    partition: int
    offset: int
    timestamp: float  # seconds since the epoch, as Kafka stamped the request
    value: bytes | None
    replay: bool = False  # a replayed request (``streamserve replay``): kept out of monitoring
    # The tenant a trusted gateway named in a header (STREAMSERVE_TENANT_HEADER), when the
    # worker takes tenants from one: then it, not the body's "tenant", draws on a quota.
    tenant: str | None = None


class Kind(StrEnum):
    PREDICTION = "prediction"
    DEAD_LETTER = "dead_letter"
    SAMPLE = "sample"  # a copy of a served request, redacted, beside its prediction
    SHADOW = "shadow"  # a shadow version's output: never on the predictions topic
    DRIFT_ROWS = "drift_rows"  # internal: served rows coded for the drift windows
    KEPT = "kept"  # internal: answers kept for the join with labels


# Not frozen: a frozen dataclass sets each field through object.__setattr__, which cost
# 2 µs of every output (3.3 against 1.0 for these 12 fields) and as much of every request
# read. Nothing changes one once made.
@dataclass(slots=True)
class Outgoing:
    kind: Kind
    topic: str
    partition: int  # the request's partition: replies land on the same partition number
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]
    model: str  # "" when the request named no servable model
    version: str
    reason: Reason | None  # why, for a dead letter
    request_timestamp: float
    route: str = ""
    quota: str = ""  # a request's answer: the tenant quota whose in-flight slot it frees


def dead_letter_key(rejection: Rejection, topic: str, partition: int, offset: int) -> bytes:
    """Keyed by request id, or by where the message was read when no id could be read."""
    return (rejection.id or f"{topic}:{partition}:{offset}").encode()


def predictions(answered: Sequence[tuple[Incoming, Request]], answers: np.ndarray,
                encoder: PredictionEncoder, answered_at: float, topic: str,
                quotas: Sequence[str] | None = None) -> list[Outgoing]:
    """The predictions for ``answered`` requests: ``answers`` holds a row for each, in order,
    by the version ``encoder`` encodes the batch's answers of; ``answered_at`` (epoch
    seconds) dates their latency; ``quotas``: each request's tenant quota (None: none)."""
    values = encoder.encode([request.id for _, request in answered], answers,
                            [1000 * (answered_at - record.timestamp) for record, _ in answered])
    version, route = encoder.version, encoder.route
    return [Outgoing(Kind.PREDICTION, topic, record.partition, request.id.encode(), value,
                     source_headers(record.topic, record.partition, record.offset), request.model,
                     version, None, record.timestamp, route, quota)
            for (record, request), value, quota in zip(
                answered, values, [""] * len(answered) if quotas is None else quotas, strict=True)]


def dead_letter(record: Incoming, rejection: Rejection, topic: str, redactor: Redactor,
                max_original_bytes: int, version: str = "", route: Route | str = "",
                quota: str = "") -> Outgoing:
    """``record``'s dead letter, its error sentence and original bytes as ``redactor`` hides
    them. An original over ``max_original_bytes`` is withheld unread (its size and sha256
    stand in): escaped as JSON or base64 it could grow past what the broker takes."""
    raw = record.value
    original = (RedactedOriginal.too_large(raw) if raw is not None and len(raw) > max_original_bytes
                else redactor.original(raw))
    return Outgoing(
        kind=Kind.DEAD_LETTER, topic=topic, partition=record.partition,
        key=dead_letter_key(rejection, record.topic, record.partition, record.offset),
        value=encode_dead_letter(redactor.rejection(rejection), original),
        headers=source_headers(record.topic, record.partition, record.offset),
        model=rejection.model or "", version=version, reason=rejection.reason,
        request_timestamp=record.timestamp, route=str(route), quota=quota)


def sample(record: Incoming, request: Request, inputs: InputSchema, answer: np.ndarray,
           outputs: OutputSchema, redactor: Redactor, topic: str) -> Outgoing:
    """A copy of a served request (its features by name, redacted) and its answer."""
    features = redactor.fields(inputs.fields(request.row))
    return Outgoing(
        kind=Kind.SAMPLE, topic=topic, partition=record.partition, key=request.id.encode(),
        value=encode_sample(request.id, request.model, request.version, record.timestamp,
                            features, answer, outputs),
        headers=source_headers(record.topic, record.partition, record.offset),
        model=request.model, version=request.version, reason=None,
        request_timestamp=record.timestamp)


def shadow(record: Incoming, request: Request, version: str, answered_by: str,
           ours: np.ndarray | Any, theirs: np.ndarray | Any, outputs: OutputSchema,
           their_outputs: OutputSchema, topic: str) -> Outgoing:
    """Shadow ``version``'s answer (``ours``, as ``outputs`` describes) beside
    ``answered_by``'s (``theirs``, as ``their_outputs``); either may be a failure (anything
    with an ``error``)."""
    return Outgoing(
        kind=Kind.SHADOW, topic=topic, partition=record.partition, key=request.id.encode(),
        value=encode_shadow(request.id, request.model, version, answered_by, ours, theirs, outputs,
                            their_outputs),
        headers=source_headers(record.topic, record.partition, record.offset),
        model=request.model, version=version, reason=None, request_timestamp=record.timestamp,
        route=str(Route.SHADOW))


def drift_rows(model: str, version: str, rows: CodedRows, topic: str,
               max_bytes: int = DRIFT_MESSAGE_BYTES) -> list[Outgoing]:
    """A version's served rows, coded for drift, as messages to the window owner of at most
    ``max_bytes`` each (a busy flush of a wide model would outgrow the broker's limit)."""
    key = f"{model}:{version}".encode()
    row_bytes = max(1, len(rows.to_bytes()) // max(1, len(rows)))
    per_message = max(1, max_bytes // row_bytes)
    messages = []
    for start in range(0, len(rows), per_message):
        part = rows.select(np.arange(len(rows))[start:start + per_message]) \
            if len(rows) > per_message else rows
        # All of a version's rows go to one partition, in order: one worker owns its windows.
        messages.append(Outgoing(
            kind=Kind.DRIFT_ROWS, topic=topic, partition=zlib.crc32(key), key=key,
            value=part.to_bytes(), headers=[], model=model, version=version, reason=None,
            request_timestamp=float(part.timestamps_ms.max()) / 1000))
    return messages


def kept_rows(rows: Sequence[tuple[str, Kept]], topic: str, partitions: int) -> list[Outgoing]:
    """Answers kept for the label join, each in its request id's join partition."""
    return [Outgoing(kind=Kind.KEPT, topic=topic, partition=partition, key=b"", value=value,
                     headers=[], model="", version="", reason=None, request_timestamp=0.0)
            for partition, value in kept_messages(rows, partitions)]


def stand_in(refused: Outgoing, error: str, topic: str) -> Outgoing | None:
    """What replaces an output the broker refused for good (too large, not allowed): a
    request's answer becomes a minimal dead letter (its id, the refusal, the refused
    record's size and sha256, no original), so the request still has one answer; a
    side output (sample, shadow, drift rows) is given up (None)."""
    if refused.kind is Kind.PREDICTION:
        what, reason, request_id = "prediction", Reason.UNDELIVERABLE, refused.key.decode()
    elif refused.kind is Kind.DEAD_LETTER:  # our own JSON: its id may be null
        what, reason, request_id = "dead letter", refused.reason, orjson.loads(refused.value)["id"]
    else:
        return None
    assert reason is not None
    sentence = (f"the broker refused this request's {what} ({len(refused.value)} bytes, sha256 "
                f"{hashlib.sha256(refused.value).hexdigest()}): {error}")
    rejection = Rejection(reason, sentence, id=request_id, model=refused.model or None)
    return replace(refused, kind=Kind.DEAD_LETTER, topic=topic, reason=reason,
                   value=encode_dead_letter(rejection, RedactedOriginal(None, withheld=True)))


@dataclass(frozen=True, slots=True)
class Tally:
    """What delivered outputs count for, per metric label set: the shell then touches each
    metric once, since label lookups cost more than the increments."""

    predictions: Counter[tuple[str, str, str]]  # (model, version, route)
    dead_letters: Counter[tuple[str, str, Reason]]  # (model, or "" when not served; version, reason)
    samples: Counter[str]  # per model
    latencies: dict[str, list[float]]  # per model: each prediction's seconds since its request
    answered: Counter[str]  # per tenant quota: the in-flight slots the answers free


def tally(outgoing: Iterable[Outgoing], served_models: Container[str], now: float) -> Tally:
    """Count ``outgoing``, delivered at ``now`` (epoch seconds)."""
    t = Tally(Counter(), Counter(), Counter(), {}, Counter())
    for out in outgoing:
        if out.quota:
            t.answered[out.quota] += 1
        if out.kind is Kind.PREDICTION:
            t.predictions[(out.model, out.version, out.route)] += 1
            # A clock that steps back makes no negative latency.
            t.latencies.setdefault(out.model, []).append(max(0.0, now - out.request_timestamp))
        elif out.kind is Kind.DEAD_LETTER:
            assert out.reason is not None
            # Only served models name a series: any sender could invent model names.
            model = out.model if out.model in served_models else ""
            t.dead_letters[(model, out.version, out.reason)] += 1
        elif out.kind is Kind.SAMPLE:
            t.samples[out.model] += 1
    return t
