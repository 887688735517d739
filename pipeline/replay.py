"""Stream replay, the pure part: the recording format, rewriting, pacing, diff and gate.

A **recording** is JSON lines: a header line, then one line per Kafka record, in the
order they are replayed (timestamp, then partition and offset)::

    {"format": "streamserve-replay", "version": 1, "topics": ["streamserve.requests"],
     "from": "2026-01-01T10:00:00+00:00", "to": "2026-01-01T10:05:00+00:00",
     "captured_at": "2026-01-01T10:06:12+00:00", "run_id": null, "records": 1500}
    {"topic": "streamserve.requests", "partition": 0, "offset": 41, "timestamp": 1767261600123,
     "key": "r-1", "key_encoding": "utf-8", "value": "{\"id\":\"r-1\",...}", "value_encoding": "utf-8",
     "headers": [{"name": "traceparent", "value": "MDAtNGJm...", "encoding": "base64"}]}

Keys, values and header values are bytes and round-trip exactly: stored as text when
they are UTF-8 (``"encoding": "utf-8"``), else as base64 (``"base64"``); a null key or
value is ``null`` with no encoding.

A **replay** sends the records again, each after the recording's inter-arrival time
divided by the speed (``schedule``), with the header ``streamserve-replay: <run id>``
and ``streamserve-replay-index: <its line number among the records>``. ``Rewrite``
retargets requests (model, pinned version, both request forms) and prefixes their ids
with the run id (``<run id>/<id>``); a value that is not a JSON object, or holds a key
twice, is sent as recorded, since rewriting it would change how it is refused.

A **diff** compares two runs' replies (read by ``pipeline.replies``) keyed by request id
with the run prefix stripped: the share with the same outcome (the same label, or a dead letter with the
same reason), score differences, dead letters by reason, latency percentiles and the
requests that differ most. The **gate** turns a diff into a pass or a fail.
"""

from __future__ import annotations

import base64
import datetime
import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from pipeline.decode import MAX_ID_LENGTH
from pipeline.errors import StreamserveError
from pipeline.replies import DeadLetter, MalformedReply, Reply, SourcePosition, parse_reply

FORMAT = "streamserve-replay"
FORMAT_VERSION = 1
REPLAY_HEADER = "streamserve-replay"
"""Every replayed request carries it (value: the run id); workers keep such requests out of
drift statistics and canary analysis."""
INDEX_HEADER = "streamserve-replay-index"
"""The replayed record's place among the recording's records (0-based), so a reply to a
request without a readable id is still matched across runs."""

_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_MAX_SPEED = 1e6


class ReplayError(StreamserveError, ValueError):
    """A recording that cannot be read, or a replay, diff or gate that cannot work as asked;
    the message says what to do."""


# --------------------------------------------------------------------------- recording


@dataclass(frozen=True, slots=True)
class Recorded:
    """One Kafka record as captured. ``timestamp_ms``: the record's own timestamp."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...] = ()

    def to_line(self) -> bytes:
        line: dict[str, Any] = {"topic": self.topic, "partition": self.partition,
                                "offset": self.offset, "timestamp": self.timestamp_ms}
        line.update(_encode_bytes("key", self.key))
        line.update(_encode_bytes("value", self.value))
        line["headers"] = [{"name": name, **_encode_bytes("value", value, "encoding")}
                           for name, value in self.headers]
        return orjson.dumps(line)

    @classmethod
    def from_line(cls, line: bytes, where: str) -> Recorded:
        """``where`` names the line in errors (``FILE:LINE``)."""
        try:
            d = orjson.loads(line)
            headers = tuple((_text(h["name"]), _decode_bytes(h, "value", where, "encoding"))
                            for h in d.get("headers", ()))
            return cls(_text(d["topic"]), _whole(d["partition"]), _whole(d["offset"]),
                       _whole(d["timestamp"]), _decode_bytes(d, "key", where),
                       _decode_bytes(d, "value", where), headers)
        except ReplayError:
            raise
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
            raise ReplayError(f"{where}: not a record of a streamserve replay recording "
                              f"({type(e).__name__}: {e}); record files with "
                              "`streamserve replay capture`") from None

    def header(self, name: str) -> bytes | None:
        return next((v for n, v in self.headers if n == name), None)


@dataclass(frozen=True, slots=True)
class RecordingHeader:
    """The first line of a recording: what was captured, and when."""

    topics: tuple[str, ...]
    since: str | None = None
    until: str | None = None
    captured_at: str | None = None
    run_id: str | None = None
    """Set when only one replay run's records were captured: its prefix is stripped from ids."""
    records: int | None = None

    def to_line(self) -> bytes:
        return orjson.dumps({"format": FORMAT, "version": FORMAT_VERSION, "topics": list(self.topics),
                             "from": self.since, "to": self.until, "captured_at": self.captured_at,
                             "run_id": self.run_id, "records": self.records})

    @classmethod
    def from_line(cls, line: bytes, where: str) -> RecordingHeader:
        try:
            d = orjson.loads(line)
        except orjson.JSONDecodeError:
            d = None
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ReplayError(f"{where} is not a streamserve replay recording (its first line is "
                              f"no {FORMAT!r} header); record one with `streamserve replay capture`")
        if d.get("version") != FORMAT_VERSION:
            raise ReplayError(f"{where} is a version {d.get('version')!r} recording; this "
                              f"streamserve reads version {FORMAT_VERSION}: capture it again")
        return cls(tuple(d.get("topics") or ()), d.get("from"), d.get("to"), d.get("captured_at"),
                   d.get("run_id"), d.get("records"))


def _encode_bytes(name: str, data: bytes | None, encoding_field: str | None = None) -> dict[str, Any]:
    """``{name: text, encoding_field: "utf-8"|"base64"}``, or ``{name: None}`` for null."""
    if data is None:
        return {name: None}
    encoding_field = encoding_field or f"{name}_encoding"
    try:
        return {name: data.decode("utf-8"), encoding_field: "utf-8"}
    except UnicodeDecodeError:
        return {name: base64.b64encode(data).decode("ascii"), encoding_field: "base64"}


def _decode_bytes(d: Mapping[str, Any], name: str, where: str,
                  encoding_field: str | None = None) -> bytes | None:
    text = d[name]
    if text is None:
        return None
    encoding = d.get(encoding_field or f"{name}_encoding")
    if encoding == "utf-8":
        return _text(text).encode("utf-8")
    if encoding == "base64":
        try:
            return base64.b64decode(_text(text), validate=True)
        except ValueError:
            raise ReplayError(f"{where}: {name} is not valid base64") from None
    raise ReplayError(f"{where}: {name} has encoding {encoding!r}; expected 'utf-8' or 'base64'")


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    return value


def _whole(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected a whole number, got {value!r}")
    return value


def replay_order(records: Iterable[Recorded]) -> list[Recorded]:
    """Records in the order they are replayed: by timestamp, then topic, partition, offset."""
    return sorted(records, key=lambda r: (r.timestamp_ms, r.topic, r.partition, r.offset))


# ------------------------------------------------------------------------- capture bounds


@dataclass(frozen=True, slots=True)
class TimeBound:
    """A capture bound in time: milliseconds since the epoch (record timestamps)."""

    ms: int


@dataclass(frozen=True, slots=True)
class OffsetBound:
    """A capture bound in offsets: ``every`` for all partitions, or one per partition
    (a partition not named starts at its beginning, or stops at its end)."""

    every: int | None = None
    partitions: Mapping[int, int] = field(default_factory=dict)

    def offset(self, partition: int) -> int | None:
        return self.every if self.every is not None else self.partitions.get(partition)


Bound = TimeBound | OffsetBound


def parse_bound(text: str) -> Bound:
    """``--from``/``--to``: an ISO 8601 time (UTC when no zone is given), an offset for
    every partition (``1200``) or offsets per partition (``0:1200,1:1187``)."""
    text = text.strip()
    if re.fullmatch(r"\d+", text):
        return OffsetBound(every=int(text))
    if re.fullmatch(r"\d+:\d+(,\d+:\d+)*", text):
        pairs = [tuple(map(int, part.split(":"))) for part in text.split(",")]
        partitions = dict(pairs)
        if len(partitions) != len(pairs):
            raise ReplayError(f"{text!r} names a partition twice; give each partition one offset")
        return OffsetBound(partitions=partitions)
    try:
        stamp = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ReplayError(f"{text!r} is neither a time (ISO 8601, e.g. 2026-01-31T10:00:00Z) nor an "
                          "offset (1200, or per partition 0:1200,1:1187)") from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=datetime.UTC)
    return TimeBound(round(stamp.timestamp() * 1000))


def describe_bound(bound: Bound | None) -> str | None:
    if bound is None:
        return None
    if isinstance(bound, TimeBound):
        return datetime.datetime.fromtimestamp(bound.ms / 1000, datetime.UTC).isoformat()
    if bound.every is not None:
        return f"offset {bound.every}"
    return "offsets " + ",".join(f"{p}:{o}" for p, o in sorted(bound.partitions.items()))


def capture_range(partition: int, beginning: int, end: int, start: Bound | None,
                  stop: Bound | None, start_at_time: int | None,
                  stop_at_time: int | None) -> tuple[int, int]:
    """The offsets ``[first, past)`` of one partition to capture.

    ``beginning``/``end``: the partition's first offset and its end (read_committed).
    ``start_at_time``/``stop_at_time``: for time bounds, the first offset whose timestamp
    is at or after the bound (None: no such record), as the broker answers them.
    """
    if start is None:
        first = beginning
    elif isinstance(start, TimeBound):
        first = end if start_at_time is None else start_at_time
    else:
        offset = start.offset(partition)
        first = beginning if offset is None else offset
    if stop is None:
        past = end
    elif isinstance(stop, TimeBound):
        past = end if stop_at_time is None else stop_at_time
    else:
        offset = stop.offset(partition)
        past = end if offset is None else offset
    first = min(max(first, beginning), end)
    return first, max(first, min(past, end))


def in_time_range(timestamp_ms: int, start: Bound | None, stop: Bound | None) -> bool:
    """Time bounds hold for each record too: a timestamp earlier than an earlier offset's
    (producers set them) stays out of ``[from, to)``."""
    if isinstance(start, TimeBound) and timestamp_ms < start.ms:
        return False
    return not (isinstance(stop, TimeBound) and timestamp_ms >= stop.ms)


def belongs_to_run(record: Recorded, run_id: str) -> bool:
    """A replayed request of run ``run_id`` (by its header), or a reply to one (by its id)."""
    if record.header(REPLAY_HEADER) is not None:
        return record.header(REPLAY_HEADER) == run_id.encode()
    request_id = _json_id(record.value)
    return request_id is not None and request_id.startswith(f"{run_id}/")


def _json_id(value: bytes | None) -> str | None:
    try:
        body = orjson.loads(value) if value else None
    except orjson.JSONDecodeError:
        return None
    request_id = body.get("id") if isinstance(body, dict) else None
    return request_id if isinstance(request_id, str) else None


# ------------------------------------------------------------------------------ rewrite


def check_run_id(run_id: str) -> str:
    if not _RUN_ID.fullmatch(run_id):
        raise ReplayError(f"run id {run_id!r} must be 1 to 64 letters, digits, '.', '_' or '-', "
                          "starting with a letter or digit (it prefixes request ids as RUN/ID)")
    return run_id


def new_run_id(now: datetime.datetime, token: str) -> str:
    """A run id for a replay not given one: ``replay-20260131T100000-<token>``."""
    return check_run_id(f"replay-{now.astimezone(datetime.UTC):%Y%m%dT%H%M%S}-{token}")


def strip_run(request_id: str, run_id: str | None) -> str:
    """The request id as recorded: ``run_id/`` removed when it starts with it."""
    if run_id is not None and request_id.startswith(f"{run_id}/"):
        return request_id[len(run_id) + 1:]
    return request_id


@dataclass(frozen=True, slots=True)
class Rewrite:
    """How a replay changes requests: ``prefix`` (a run id) prefixes ids and keys equal to
    them as ``prefix/id``; ``model`` retargets (``model`` or ``model_name``), ``version`` pins
    (``version`` or ``model_version``)."""

    prefix: str | None = None
    model: str | None = None
    version: str | None = None

    def __post_init__(self) -> None:
        if self.prefix is not None:
            check_run_id(self.prefix)
        for name, value in (("model", self.model), ("version", self.version)):
            if value is not None and (not isinstance(value, str) or not value):
                raise ReplayError(f"--{name} must be a non-empty name, got {value!r}")

    @property
    def changes_anything(self) -> bool:
        return self.prefix is not None or self.model is not None or self.version is not None

    def apply(self, key: bytes | None, value: bytes | None) -> tuple[bytes | None, bytes | None]:
        """The rewritten key and value; both unchanged when the value is not a JSON object
        read unambiguously (replayed as recorded, to be refused as it was)."""
        if not self.changes_anything or not value:
            return key, value
        body = _unambiguous_object(value)
        if body is None:
            return key, value
        oip = "inputs" in body
        if self.prefix is not None and isinstance(body.get("id"), str):
            original = body["id"]
            body["id"] = f"{self.prefix}/{original}"
            if len(body["id"]) > MAX_ID_LENGTH >= len(original):
                raise ReplayError(f"request id {original!r} with the run prefix is over "
                                  f"{MAX_ID_LENGTH} characters; use a shorter --run-id")
            if key == original.encode():
                key = body["id"].encode()
        model_field = "model_name" if oip else "model"
        if self.model is not None and model_field in body:
            body[model_field] = self.model
        if self.version is not None:
            body["model_version" if oip else "version"] = self.version
        return key, orjson.dumps(body)


def _unambiguous_object(value: bytes) -> dict[str, Any] | None:
    try:
        body = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(body, dict):
        return None
    try:
        json.loads(value, object_pairs_hook=_refuse_repeats)
    except (ValueError, RecursionError):
        return None
    return body


def _refuse_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    d = dict(pairs)
    if len(d) != len(pairs):
        raise ValueError("a key appears twice")
    return d


@dataclass(frozen=True, slots=True)
class ScheduledRecord:
    """One recorded request to send again, rewritten: ``at_s`` seconds after the replay starts."""

    index: int
    at_s: float
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]


def schedule(timestamps_ms: Sequence[int], speed: float | None) -> list[float]:
    """When to send each record, in seconds from the start: the recording's inter-arrival
    times divided by ``speed`` (a negative gap, out of order, counts as 0); all 0 when
    ``speed`` is None (as fast as possible)."""
    if speed is not None and not (isinstance(speed, int | float) and 0 < speed <= _MAX_SPEED):
        raise ReplayError(f"--speed must be a number above 0 (2 replays twice as fast, 0.5 at "
                          f"half speed), got {speed!r}; use --max for as fast as possible")
    at, times = 0.0, []
    for i, stamp in enumerate(timestamps_ms):
        if speed is not None and i:
            at += max(0, stamp - timestamps_ms[i - 1]) / 1000 / speed
        times.append(at)
    return times


def plan(records: Sequence[Recorded], rewrite: Rewrite, run_id: str,
         speed: float | None) -> list[ScheduledRecord]:
    """The records to send, rewritten, tagged with the run id, on schedule."""
    check_run_id(run_id)
    times = schedule([r.timestamp_ms for r in records], speed)
    out = []
    for i, (record, at_s) in enumerate(zip(records, times, strict=True)):
        key, value = rewrite.apply(record.key, record.value)
        headers = tuple((n, v) for n, v in record.headers if n not in (REPLAY_HEADER, INDEX_HEADER))
        headers += ((REPLAY_HEADER, run_id.encode()), (INDEX_HEADER, b"%d" % i))
        out.append(ScheduledRecord(i, at_s, key, value, headers))
    return out


def recorded_pace(records: Sequence[Recorded]) -> float | None:
    """The recording's own rate in records per second (None for fewer than two records or
    no time between them)."""
    if len(records) < 2:
        return None
    span = (records[-1].timestamp_ms - records[0].timestamp_ms) / 1000
    return (len(records) - 1) / span if span > 0 else None


def request_features(value: bytes | None) -> tuple[str, dict[str, Any]] | None:
    """A request's id and its features (tabular ``features``, or OIP inputs by name)."""
    try:
        body = orjson.loads(value) if value else None
    except orjson.JSONDecodeError:
        return None
    if not isinstance(body, dict) or not isinstance(body.get("id"), str):
        return None
    if isinstance(body.get("features"), dict):
        return body["id"], body["features"]
    inputs = body.get("inputs")
    if isinstance(inputs, list):
        features: dict[str, Any] = {}
        for i, tensor in enumerate(inputs):
            if isinstance(tensor, dict):
                data = tensor.get("data")
                single = isinstance(data, list) and len(data) == 1
                features[str(tensor.get("name", f"input{i}"))] = data[0] if single else data
        return body["id"], features
    return body["id"], {}


def request_models(values: Iterable[bytes | None]) -> set[str]:
    """The models the requests among ``values`` name (either form)."""
    models = set()
    for value in values:
        try:
            body = orjson.loads(value) if value else None
        except orjson.JSONDecodeError:
            continue
        if isinstance(body, dict):
            model = body.get("model_name" if "inputs" in body else "model")
            if isinstance(model, str):
                models.add(model)
    return models


# --------------------------------------------------------------------------------- diff


@dataclass(frozen=True, slots=True)
class Answer:
    """What a reply (``pipeline.replies``) told the client, as the diff compares it."""

    request_id: str | None
    """The id the reply names, with its run prefix stripped (None for an unreadable request)."""
    version: str | None = None
    label: str | None = None
    scores: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    reason: str | None = None
    latency_ms: float | None = None

    @property
    def outcome(self) -> str:
        """What the client got: the label, or ``dead letter: <reason>``."""
        return f"dead letter: {self.reason}" if self.reason is not None else str(self.label)

    @classmethod
    def of(cls, reply: Reply, run_id: str | None) -> Answer:
        """A prediction's version, label (its ``BYTES`` or ``label`` output), scores (its
        numeric outputs) and latency, or a dead letter's reason."""
        request_id = strip_run(reply.id, run_id) if reply.id is not None else None
        if isinstance(reply, DeadLetter):
            return cls(request_id, reason=reply.reason)
        label, scores = None, {}
        for output in reply.outputs:
            if output.datatype == "BYTES" or output.name == "label":
                label = str(output.data[0]) if output.data else None
            elif all(isinstance(x, int | float) and not isinstance(x, bool) for x in output.data):
                scores[output.name] = tuple(float(x) for x in output.data)
        latency = None if math.isnan(reply.latency_ms) else reply.latency_ms
        return cls(request_id, reply.version, label, scores, latency_ms=latency)


def answer_of(value: bytes | None, run_id: str | None, *,
              dead_letter: bool | None) -> Answer | None:
    """The answer of a predictions (``dead_letter`` False) or dead-letter record (True;
    None: told by its body), ``run_id`` stripped from its id; None for a record that is no
    reply (``pipeline.replies.MalformedReply``)."""
    try:
        return Answer.of(parse_reply(value, dead_letter=dead_letter), run_id)
    except MalformedReply:
        return None


def key_replies(entries: Iterable[tuple[SourcePosition, Answer, str]]) -> dict[str, Answer]:
    """Answers keyed for the diff. ``entries``: (the position of the request answered,
    its answer, a key for an answer without an id). A repeat for the same position
    (at-least-once delivery) is dropped; requests sharing an id are told apart in order
    of position: ``id``, ``id~2``, ``id~3``."""
    by_position: dict[SourcePosition, tuple[Answer, str]] = {}
    for position, reply, fallback in entries:
        by_position.setdefault(position, (reply, fallback))
    keyed: dict[str, Answer] = {}
    seen: Counter[str] = Counter()
    for position in sorted(by_position):
        reply, fallback = by_position[position]
        base = reply.request_id if reply.request_id is not None else fallback
        seen[base] += 1
        keyed[base if seen[base] == 1 else f"{base}~{seen[base]}"] = reply
    return keyed


@dataclass(frozen=True, slots=True)
class Side:
    """One run's answers, keyed (``key_replies``). ``requests``: how many requests the run
    sent (None: unknown)."""

    name: str
    replies: Mapping[str, Answer]
    requests: int | None = None

    @property
    def unanswered(self) -> int | None:
        return None if self.requests is None else max(0, self.requests - len(self.replies))


@dataclass(frozen=True, slots=True)
class Latency:
    count: int
    p50: float
    p95: float
    p99: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Latency | None:
        if not values:
            return None
        p50, p95, p99 = np.percentile(np.asarray(values, dtype=float), [50, 95, 99])
        return cls(len(values), float(p50), float(p95), float(p99))


@dataclass(frozen=True, slots=True)
class ReasonCount:
    reason: str
    baseline: int
    candidate: int


@dataclass(frozen=True, slots=True)
class Difference:
    """A request answered differently: its outcomes and largest score difference."""

    key: str
    baseline: str
    candidate: str
    max_abs_difference: float | None
    features: Mapping[str, Any] | None


@dataclass(frozen=True, slots=True)
class DiffReport:
    baseline: str
    candidate: str
    baseline_replies: int
    candidate_replies: int
    baseline_unanswered: int | None
    candidate_unanswered: int | None
    compared: int
    """Requests answered in both runs: what agreement is measured on."""
    only_baseline: int
    only_candidate: int
    agreeing: int
    both_predicted: int
    same_label: int
    score_differences: tuple[float, ...]
    """Per request predicted by both: the largest absolute difference of a score."""
    dead_letters: tuple[ReasonCount, ...]
    outcome_pairs: tuple[tuple[str, str, int], ...]
    """(baseline outcome, candidate outcome, requests), most frequent first."""
    baseline_latencies: tuple[float, ...]
    candidate_latencies: tuple[float, ...]
    differences: tuple[Difference, ...]
    """The requests that differ most: another outcome first, then by score difference."""

    @property
    def agreement(self) -> float | None:
        return self.agreeing / self.compared if self.compared else None

    @property
    def disagreement(self) -> float | None:
        return (self.compared - self.agreeing) / self.compared if self.compared else None

    @property
    def score_max(self) -> float | None:
        return max(self.score_differences) if self.score_differences else None

    @property
    def score_p99(self) -> float | None:
        if not self.score_differences:
            return None
        return float(np.percentile(np.asarray(self.score_differences), 99))

    @property
    def baseline_latency(self) -> Latency | None:
        return Latency.of(self.baseline_latencies)

    @property
    def candidate_latency(self) -> Latency | None:
        return Latency.of(self.candidate_latencies)


def max_abs_difference(a: Answer, b: Answer) -> float | None:
    """The largest absolute difference between the scores both replies hold (outputs of the
    same name and length); None when they share none."""
    worst = None
    for name, values in a.scores.items():
        other = b.scores.get(name)
        if other is not None and len(other) == len(values) and values:
            d = float(np.max(np.abs(np.asarray(values) - np.asarray(other))))
            worst = d if worst is None else max(worst, d)
    return worst


def diff(baseline: Side, candidate: Side, features: Mapping[str, Mapping[str, Any]] | None = None,
         top: int = 10) -> DiffReport:
    """Compare two runs' replies, keyed alike (``key_replies``). ``features``: requests'
    features by key, shown for the requests that differ most."""
    features = features or {}
    common = [k for k in baseline.replies if k in candidate.replies]
    agreeing = both_predicted = same_label = 0
    score_differences: list[float] = []
    pairs: Counter[tuple[str, str]] = Counter()
    ranked: list[tuple[bool, float, str, Answer, Answer, float | None]] = []
    for key in common:
        b, c = baseline.replies[key], candidate.replies[key]
        same = b.outcome == c.outcome
        agreeing += same
        pairs[(b.outcome, c.outcome)] += 1
        d = None
        if b.reason is None and c.reason is None:
            both_predicted += 1
            same_label += b.label == c.label
            d = max_abs_difference(b, c)
            if d is not None:
                score_differences.append(d)
        if not same or (d is not None and d > 0):
            ranked.append((not same, d or 0.0, key, b, c, d))
    ranked.sort(key=lambda r: (not r[0], -r[1], r[2]))
    differences = tuple(Difference(key, b.outcome, c.outcome, d, features.get(key))
                        for _, _, key, b, c, d in ranked[:top])
    reasons_b = Counter(r.reason for r in baseline.replies.values() if r.reason is not None)
    reasons_c = Counter(r.reason for r in candidate.replies.values() if r.reason is not None)
    dead = tuple(ReasonCount(reason, reasons_b[reason], reasons_c[reason])
                 for reason in sorted(reasons_b.keys() | reasons_c.keys()))
    return DiffReport(
        baseline=baseline.name, candidate=candidate.name,
        baseline_replies=len(baseline.replies), candidate_replies=len(candidate.replies),
        baseline_unanswered=baseline.unanswered, candidate_unanswered=candidate.unanswered,
        compared=len(common), only_baseline=len(baseline.replies) - len(common),
        only_candidate=len(candidate.replies) - len(common), agreeing=agreeing,
        both_predicted=both_predicted, same_label=same_label,
        score_differences=tuple(score_differences), dead_letters=dead,
        outcome_pairs=tuple((b, c, n) for (b, c), n in
                            sorted(pairs.items(), key=lambda item: (-item[1], item[0]))),
        baseline_latencies=_latencies(baseline), candidate_latencies=_latencies(candidate),
        differences=differences)


def _latencies(side: Side) -> tuple[float, ...]:
    return tuple(r.latency_ms for r in side.replies.values() if r.latency_ms is not None)


# --------------------------------------------------------------------------------- gate


@dataclass(frozen=True, slots=True)
class GateLimits:
    """``max_disagreement``: the share of requests (0 to 1) the candidate may answer
    otherwise than the baseline; ``max_p99_ms``: the candidate's p99 latency limit."""

    max_disagreement: float
    max_p99_ms: float

    def __post_init__(self) -> None:
        if not (isinstance(self.max_disagreement, int | float) and 0 <= self.max_disagreement <= 1):
            raise ReplayError(f"--max-disagreement is a share from 0 to 1 (0.02 allows 2% of "
                              f"requests answered otherwise), got {self.max_disagreement!r}")
        if not (isinstance(self.max_p99_ms, int | float) and 0 < self.max_p99_ms < math.inf):
            raise ReplayError(f"--max-p99-ms must be a number of milliseconds above 0, got "
                              f"{self.max_p99_ms!r}")


@dataclass(frozen=True, slots=True)
class GateCheck:
    name: str
    passed: bool
    detail: str


@dataclass(frozen=True, slots=True)
class GateVerdict:
    checks: tuple[GateCheck, ...]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)


def gate(report: DiffReport, limits: GateLimits) -> GateVerdict:
    """Pass when every request of both runs was answered, the candidate answers at most
    ``max_disagreement`` of them otherwise, and its p99 latency is within ``max_p99_ms``."""
    unanswered = {"baseline": report.baseline_unanswered or 0,
                  "candidate": report.candidate_unanswered or 0}
    missing = unanswered["baseline"] + unanswered["candidate"] + report.only_baseline + \
        report.only_candidate
    checks = [GateCheck("replies", missing == 0 and report.compared > 0,
                        "every request answered in both runs" if missing == 0 and report.compared
                        else "no request was answered by both runs" if not report.compared
                        else f"{unanswered['baseline']} baseline and {unanswered['candidate']} "
                             f"candidate requests unanswered, {report.only_baseline + report.only_candidate} "
                             "answered in one run only")]
    share = report.disagreement
    checks.append(GateCheck(
        "disagreement", share is not None and share <= limits.max_disagreement,
        "nothing to compare" if share is None else
        f"{share:.2%} of {report.compared} requests answered otherwise "
        f"(limit {limits.max_disagreement:.2%})"))
    latency = report.candidate_latency
    checks.append(GateCheck(
        "candidate p99", latency is not None and latency.p99 <= limits.max_p99_ms,
        "the candidate served no prediction" if latency is None else
        f"{latency.p99:.1f} ms (limit {limits.max_p99_ms:g} ms)"))
    return GateVerdict(tuple(checks))
