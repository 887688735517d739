"""Request bytes → a validated ``Request``, or a ``Rejection`` saying what to fix.

Two request forms are accepted:

* tabular (the documented default)::

    {"id": "r-1", "model": "iris", "features": {"sepal_length": 5.1, ...},
     "version"?: "3", "deadline_ms"?: 200, "tenant"?: "acme"}

* Open Inference Protocol v2, either one input per feature or one ``[1, F]`` tensor
  in schema order::

    {"id": "r-1", "model_name": "iris", "model_version"?: "3",
     "inputs": [{"name": "sepal_length", "shape": [1], "datatype": "FP32", "data": [5.1]}, ...]}

Every check costs no more than the request's size, and size is checked first.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from pipeline.catalog import Catalog
from pipeline.rejections import Reason, Rejection
from pipeline.routing import Route
from pipeline.schema import InputSchema

MAX_ID_LENGTH = 256
_NUMERIC_DATATYPES = frozenset(
    {"FP16", "FP32", "FP64", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}
)
_FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True, slots=True)
class Request:
    id: str
    model: str
    version: str
    row: list[float]
    route: Route = Route.STABLE
    deadline_ms: int | None = None
    tenant: str | None = None


class _Invalid(Exception):
    """Raised inside the decoder only; always turned into a Rejection before returning."""

    def __init__(self, reason: Reason, error: str) -> None:
        self.reason, self.error = reason, error


def decode(raw: bytes | None, catalog: Catalog, max_bytes: int) -> Request | Rejection:
    """Decode and validate one request; never raises for bad input."""
    if not raw:
        return Rejection(Reason.EMPTY_REQUEST,
                         "the message value is empty; send a JSON request object")
    if len(raw) > max_bytes:
        return Rejection(Reason.TOO_LARGE,
                         f"the request is {len(raw)} bytes, over the {max_bytes}-byte limit "
                         "(STREAMSERVE_MAX_MESSAGE_BYTES); send one row per request")
    body = _parse_json(raw)
    if isinstance(body, Rejection):
        return body
    request_id = body.get("id")
    if request_id is None:
        return Rejection(Reason.MISSING_ID, "the request has no 'id'; add a unique string id")
    if not isinstance(request_id, str) or not request_id or len(request_id) > MAX_ID_LENGTH:
        return Rejection(Reason.INVALID_ID,
                         f"'id' must be a non-empty string of at most {MAX_ID_LENGTH} characters, "
                         f"got {_describe(request_id)}")
    oip = "inputs" in body
    model = body.get("model_name" if oip else "model")
    if not isinstance(model, str) or not model:
        field = "model_name" if oip else "model"
        return Rejection(Reason.MISSING_MODEL,
                         f"the request has no {field!r}; name the model to use", id=request_id)
    try:
        version = _optional_version(body.get("model_version" if oip else "version"))
        resolved = catalog.resolve(model, version, request_id)
        if isinstance(resolved, Rejection):
            return Rejection(resolved.reason, resolved.error, id=request_id, model=model)
        decision, schema = resolved
        row = _oip_row(body["inputs"], schema) if oip else _tabular_row(body, schema)
        return Request(request_id, model, decision.version, row, decision.route,
                       deadline_ms=_optional_deadline(body.get("deadline_ms")),
                       tenant=_optional_tenant(body.get("tenant")))
    except _Invalid as invalid:
        return Rejection(invalid.reason, invalid.error, id=request_id, model=model)


def _parse_json(raw: bytes) -> dict[str, Any] | Rejection:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as strict_error:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            return Rejection(Reason.INVALID_UTF8,
                             f"the request is not valid UTF-8 (byte {e.start}); encode JSON as UTF-8")
        # Python's json.dumps writes NaN/Infinity by default; name that as what it is.
        try:
            body = json.loads(text)
        except (ValueError, RecursionError):
            return Rejection(Reason.MALFORMED_JSON, f"the request is not valid JSON: {strict_error}")
        if not isinstance(body, dict):
            return Rejection(Reason.MALFORMED_JSON, "the request is not valid JSON")
    if not isinstance(body, dict):
        return Rejection(Reason.MALFORMED_JSON,
                         f"the request must be a JSON object, got {_describe(body)}")
    return body


def _tabular_row(body: dict[str, Any], schema: InputSchema) -> list[float]:
    features = body.get("features")
    if not isinstance(features, dict):
        raise _Invalid(Reason.SCHEMA_MISMATCH,
                       "'features' must be an object mapping feature names to numbers, "
                       f"got {_describe(features)}")
    if features.keys() != schema.index.keys():
        _check_names(features.keys(), schema)
    row = [features[name] for name in schema.names]
    # One chained comparison per value accepts exactly the finite float32 range (NaN
    # fails every comparison); anything else gets the precise check and message.
    for value in row:
        if type(value) is not float or not -_FLOAT32_MAX <= value <= _FLOAT32_MAX:
            return [_number(name, v) for name, v in zip(schema.names, row)]
    return row


def _oip_row(inputs: Any, schema: InputSchema) -> list[float]:
    if not isinstance(inputs, list) or not inputs or not all(isinstance(i, dict) for i in inputs):
        raise _Invalid(Reason.SCHEMA_MISMATCH, "'inputs' must be a non-empty list of tensor objects")
    for tensor in inputs:
        datatype = tensor.get("datatype")
        if datatype not in _NUMERIC_DATATYPES:
            raise _Invalid(Reason.SCHEMA_MISMATCH,
                           f"input {tensor.get('name')!r} has datatype {datatype!r}; "
                           f"use one of {', '.join(sorted(_NUMERIC_DATATYPES))}")
    if len(inputs) == 1 and inputs[0].get("name") not in schema.index:
        # One tensor holding the whole row, in schema order.
        tensor = inputs[0]
        values = _tensor_values(tensor, len(schema))
        return [_number(name, v) for name, v in zip(schema.names, values)]
    by_name = {t.get("name"): t for t in inputs}
    if len(by_name) != len(inputs):
        raise _Invalid(Reason.SCHEMA_MISMATCH, "each input name may appear only once")
    _check_names(by_name.keys(), schema)
    return [_number(name, _tensor_values(by_name[name], 1)[0]) for name in schema.names]


def _tensor_values(tensor: dict[str, Any], width: int) -> list[Any]:
    name, shape, data = tensor.get("name"), tensor.get("shape"), tensor.get("data")
    if not isinstance(data, list):
        raise _Invalid(Reason.SCHEMA_MISMATCH, f"input {name!r} needs 'data' as a list")
    if len(data) == 1 and isinstance(data[0], list):
        data = data[0]  # row-major nested form [[...]]
    if shape not in ([width], [1, width]) or len(data) != width:
        raise _Invalid(Reason.SCHEMA_MISMATCH,
                       f"input {name!r} must have shape [1, {width}] with {width} values "
                       f"(one row per request), got shape {shape} with "
                       f"{len(data)} values")
    return data


def _check_names(given: Any, schema: InputSchema) -> None:
    given = set(given)
    missing = [n for n in schema.names if n not in given]
    extra = sorted(str(n) for n in given - schema.index.keys())
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing features: {', '.join(missing)}")
        if extra:
            parts.append(f"unexpected features: {', '.join(extra)}")
        raise _Invalid(Reason.SCHEMA_MISMATCH,
                       f"{'; '.join(parts)}; the model takes {', '.join(schema.names)}")


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Invalid(Reason.SCHEMA_MISMATCH,
                       f"feature {name!r} must be a number, got {_describe(value)}")
    value = float(value)
    if not math.isfinite(value) or abs(value) > _FLOAT32_MAX:
        raise _Invalid(Reason.NON_FINITE,
                       f"feature {name!r} is {value!r}, which is not a finite float32; "
                       "send finite numbers (impute missing values before sending)")
    return value


def _optional_version(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise _Invalid(Reason.SCHEMA_MISMATCH,
                       f"the version must be a string such as \"3\", got {_describe(value)}")
    return str(value)


def _optional_deadline(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise _Invalid(Reason.SCHEMA_MISMATCH,
                       f"'deadline_ms' must be a positive whole number of milliseconds, "
                       f"got {_describe(value)}")
    return value


def _optional_tenant(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise _Invalid(Reason.SCHEMA_MISMATCH, f"'tenant' must be a string, got {_describe(value)}")
    return value


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {value[:40]!r}"
    return {dict: "an object", list: "a list"}.get(type(value), type(value).__name__)
