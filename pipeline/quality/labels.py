"""Label bytes → a validated ``Label``, or a ``LabelRefusal`` saying what to fix.

A label is the true outcome of a request, sent to ``<prefix>.labels`` keyed by the
request's id, any time after the request (seconds to days)::

    {"id": "r-1", "label": "setosa"}                 a classifier's class
    {"id": "r-1", "value": 12.5}                     a regressor's (first) target
    {"id": "r-1", "label": "setosa", "time": "2026-12-07T08:00:00Z"}

``time`` (ISO 8601, when the outcome happened; a time without a zone is UTC) is optional:
without it the label is dated when it was read. The record's key may carry the id
instead of the body; when both carry one they must agree. Whether the label's kind fits
the model (a class for a classifier, a number for a regressor) is only known once its
prediction is found: ``pipeline.quality.join`` checks that.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from pipeline.decode import MAX_ID_LENGTH
from pipeline.quality.outcomes import Outcome

# A label is a short JSON object; anything longer is refused before parsing.
MAX_LABEL_BYTES = 4096
MAX_CLASS_LENGTH = 256


@dataclass(frozen=True, slots=True)
class Label:
    id: str
    label: str | None  # a classifier's class, or None
    value: float | None  # a regressor's value, or None
    time: float | None  # when the outcome happened (epoch seconds); None: when read


@dataclass(frozen=True, slots=True)
class LabelRefusal:
    outcome: Outcome
    error: str
    id: str | None = None


def decode_label(key: bytes | None, raw: bytes | None) -> Label | LabelRefusal:
    """The label in one record of the labels topic."""
    if not raw:
        return LabelRefusal(Outcome.MALFORMED, "the label is empty; send "
                            '{"id": "<request id>", "label": "<class>"} or {"id": ..., "value": <number>}')
    if len(raw) > MAX_LABEL_BYTES:
        return LabelRefusal(Outcome.MALFORMED, f"the label is {len(raw)} bytes, over the "
                            f"{MAX_LABEL_BYTES} a label may take; send only id, label or value, and time")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        return LabelRefusal(Outcome.MALFORMED, f"the label is not JSON ({e})")
    if not isinstance(body, dict):
        return LabelRefusal(Outcome.MALFORMED, f"the label is a JSON {type(body).__name__}, "
                            "not an object with id and label or value")
    keyed = _key_id(key)
    given = body.get("id", keyed)
    if not isinstance(given, str) or not given or len(given) > MAX_ID_LENGTH:
        return LabelRefusal(Outcome.MISSING_ID if given is None else Outcome.MALFORMED,
                            "the label names no request: give its id (a string of 1 to "
                            f"{MAX_ID_LENGTH} characters) in \"id\" or as the record's key", keyed)
    if keyed is not None and keyed != given:
        return LabelRefusal(Outcome.MALFORMED, f"the record's key {keyed!r} and the label's id "
                            f"{given!r} differ; key the label by the id it labels", given)
    unknown = sorted(set(body) - {"id", "label", "value", "time"})
    if unknown:
        return LabelRefusal(Outcome.MALFORMED, f"the label has fields {unknown}; it may hold only "
                            "id, label or value, and time", given)
    label, value = body.get("label"), body.get("value")
    if (label is None) == (value is None):
        return LabelRefusal(Outcome.MALFORMED, "a label holds either \"label\" (a classifier's "
                            "class) or \"value\" (a regressor's number), not "
                            f"{'both' if label is not None else 'neither'}", given)
    if label is not None and (not isinstance(label, str) or not label or len(label) > MAX_CLASS_LENGTH):
        return LabelRefusal(Outcome.MALFORMED, f"\"label\" must be a class name (a string of 1 to "
                            f"{MAX_CLASS_LENGTH} characters), not {_describe(label)}", given)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                              or not math.isfinite(value)):
        return LabelRefusal(Outcome.MALFORMED, f"\"value\" must be a finite number, not "
                            f"{_describe(value)}", given)
    try:
        time = _time(body.get("time"))
    except ValueError as e:
        return LabelRefusal(Outcome.MALFORMED, str(e), given)
    return Label(given, label, None if value is None else float(value), time)


def encode_label(request_id: str, truth: str | float, time: float | None = None) -> bytes:
    """A label's bytes, as ``decode_label`` reads them: ``truth`` is a classifier's class
    (a string) or a regressor's value (a number); ``time`` when the outcome happened
    (epoch seconds). Raises ValueError for what a worker would refuse."""
    body: dict[str, Any] = {"id": request_id}
    if isinstance(truth, str):
        body["label"] = truth
    elif isinstance(truth, int | float) and not isinstance(truth, bool):
        body["value"] = float(truth)
    else:
        raise ValueError(f"a label is a class name (str) or a value (a number), not {_describe(truth)}")
    if time is not None:
        body["time"] = datetime.fromtimestamp(time, UTC).isoformat()
    raw = orjson.dumps(body)
    checked = decode_label(request_id.encode(), raw)
    if isinstance(checked, LabelRefusal):
        raise ValueError(checked.error)
    return raw


def _key_id(key: bytes | None) -> str | None:
    if not key:
        return None
    try:
        return key.decode()
    except UnicodeDecodeError:
        return None


def _time(given: Any) -> float | None:
    if given is None:
        return None
    if not isinstance(given, str):
        raise ValueError(f"\"time\" must be an ISO 8601 text such as 2026-12-07T08:00:00Z, "
                         f"not {_describe(given)}")
    try:
        moment = datetime.fromisoformat(given)
    except ValueError:
        raise ValueError(f"\"time\" {given[:64]!r} is not ISO 8601; send e.g. "
                         "2026-12-07T08:00:00Z") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _describe(value: Any) -> str:
    try:
        text = orjson.dumps(value).decode()
    except TypeError:
        text = type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."
