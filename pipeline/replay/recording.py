"""The recording format: what ``streamserve replay capture`` writes and ``replay run`` reads.

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
value is ``null`` with no encoding. The files themselves (plain or zstd) are written by
``agents.ops.replay``.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from pipeline.replay.errors import ReplayError

FORMAT = "streamserve-replay"
FORMAT_VERSION = 1


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
