"""Request bytes → a validated ``Request``, or a ``Rejection`` saying what to fix.

One module of about 480 lines because it is one decoder: its checks run in a fixed order
over one request's bytes and share the limits and the rejection sentences, so split
apart each piece would import all the others.

Two request forms are accepted:

* tabular (the documented default)::

    {"id": "r-1", "model": "iris", "features": {"sepal_length": 5.1, ...},
     "version"?: "3", "deadline_ms"?: 200, "tenant"?: "acme"}

* Open Inference Protocol v2, either one input per feature or one ``[1, F]`` tensor
  in schema order::

    {"id": "r-1", "model_name": "iris", "model_version"?: "3",
     "inputs": [{"name": "sepal_length", "shape": [1], "datatype": "FP32", "data": [5.1]}, ...]}

  A model that reads one tensor per row (``InputSchema.tensor``, e.g. an 8x8 image) takes
  this form only: one input of shape ``[1, 8, 8]``, its ``data`` the 64 numbers flat in
  row-major order.

Every check costs no more than the request's size, and size is checked first; then
nesting depth, on the bytes (so neither parser nears its recursion limit), and the number
of features before any per-feature work.

Only strict JSON (RFC 8259, as orjson reads it) becomes a ``Request``. What orjson refuses
is read again by Python's more lenient ``json`` only to say precisely what is wrong
(``NaN`` in feature 'x', a lone surrogate), never to serve it. A JSON
object holding the same key twice is refused as ambiguous (parsers disagree on which value
wins); the exact check is a second parse, run only when a byte count says a duplicate is
possible.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from pipeline.catalog import Catalog
from pipeline.errors import StreamserveError
from pipeline.rejections import REDACTED_VALUE, Reason, Rejection
from pipeline.routing import Route
from pipeline.schema import InputSchema

MAX_ID_LENGTH = 256
# Model names, versions and tenants are echoed in dead letters and error sentences.
MAX_NAME_LENGTH = 256
# An error lists this many missing or unexpected feature names, then counts the rest.
_MAX_LISTED = 10
_NUMERIC_DATATYPES = frozenset(
    {"FP16", "FP32", "FP64", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}
)
FLOAT32_MAX = float(np.finfo(np.float32).max)
_FLAT = 'a request is one flat object: {"id": ..., "model": ..., "features": {...}}'
# The request forms nest at most 5 deep (an OIP tensor's [[...]] data). This leaves room
# for a client's own fields and keeps both parsers far below their recursion limits.
MAX_DEPTH = 32
# A JSON string, also one the end of the bytes cuts short: brackets inside do not nest.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*\\?(?:"|\Z)', re.DOTALL)
_NOT_MARKS = bytes(b for b in range(256) if b not in b'[]{}"')
_ONE_KIND = bytes.maketrans(b"{}", b"[]")  # depth does not care which kind
# Up to this many brackets, peeling the innermost pairs is cheaper than numpy's set-up.
_PEEL_UP_TO = 1024


@dataclass(slots=True)  # not frozen: that cost 1.5 µs a request (pipeline.outputs.Outgoing)
class Request:
    id: str
    model: str
    version: str
    row: list[float]
    route: Route = Route.STABLE
    deadline_ms: int | None = None
    tenant: str | None = None


class _Invalid(StreamserveError):
    """Raised inside the decoder only; always turned into a Rejection before returning."""

    def __init__(self, reason: Reason, error: str, quotes: tuple[str, str] | None = None) -> None:
        self.reason, self.error, self.quotes = reason, error, quotes

    @classmethod
    def quoting(cls, reason: Reason, field: str, value: str, say: Callable[[str], str]) -> _Invalid:
        """An error quoting ``field``'s ``value``, worded by ``say``; it keeps the sentence
        without the value too, for when the field is redacted (``Rejection.quotes``)."""
        return cls(reason, say(value), (field, say(REDACTED_VALUE)))


class _DuplicateKey(StreamserveError):
    def __init__(self, key: str) -> None:
        self.key = key


def decode(raw: bytes | None, catalog: Catalog, max_bytes: int,
           max_features: int | None = None) -> Request | Rejection:
    """Decode and validate one request; never raises for bad input. ``max_features``
    bounds the tabular 'features' entries or OIP inputs (None: no bound)."""
    if raw is None:
        return Rejection(Reason.EMPTY_REQUEST,
                         "the message value is null (a tombstone), not a request; "
                         "send a JSON request object")
    if not raw:
        return Rejection(Reason.EMPTY_REQUEST,
                         "the message value is empty (0 bytes); send a JSON request object")
    if len(raw) > max_bytes:
        return Rejection(Reason.TOO_LARGE,
                         f"the request is {len(raw)} bytes, over the {max_bytes}-byte limit "
                         "(STREAMSERVE_MAX_MESSAGE_BYTES); send one row per request")
    depth = _depth_over_limit(raw)
    if depth is not None:
        return Rejection(Reason.TOO_DEEP,
                         f"the request nests JSON arrays or objects {depth} levels deep, more "
                         f"than the {MAX_DEPTH} a request may; {_FLAT}")
    parsed = _parse_json(raw)
    if isinstance(parsed, Rejection):
        return parsed
    body, strict_error = parsed
    result = _validate(body, catalog, max_features)
    if strict_error is not None and isinstance(result, Request):
        # Valid to Python's json only, and not because of a feature value: NaN, Infinity
        # or a number past the float64 range sits in a field the request form ignores.
        return Rejection(Reason.NON_FINITE,
                         f"the request holds NaN, Infinity or a number beyond the 64-bit float "
                         f"range outside its features ({strict_error}); JSON has no such "
                         "numbers: send only finite ones",
                         id=result.id, model=result.model)
    return result


def _validate(body: dict[str, Any], catalog: Catalog,
              max_features: int | None) -> Request | Rejection:
    request_id = body.get("id")
    if request_id is None:
        return Rejection(Reason.MISSING_ID, "the request has no 'id'; add a unique string id")
    if not isinstance(request_id, str) or not request_id or len(request_id) > MAX_ID_LENGTH:
        return Rejection(Reason.INVALID_ID,
                         f"'id' must be a non-empty string of at most {MAX_ID_LENGTH} characters, "
                         f"got {_describe(request_id)}")
    oip = "inputs" in body
    field = "model_name" if oip else "model"
    model = body.get(field)
    if not isinstance(model, str) or not model:
        return Rejection(Reason.MISSING_MODEL,
                         f"the request has no {field!r}; name the model to use", id=request_id)
    if len(model) > MAX_NAME_LENGTH:
        # Not carried in the rejection: dead letters and their metrics would hold it.
        served = ", ".join(sorted(catalog.specs)) or "none"
        return Rejection(Reason.UNKNOWN_MODEL,
                         f"{field!r} is {_describe(model)}, over the {MAX_NAME_LENGTH}-character "
                         f"limit for model names; served models: {served}", id=request_id)
    try:
        version = _optional_version(body.get("model_version" if oip else "version"))
        resolved = catalog.resolve(model, version, request_id)
        if isinstance(resolved, Rejection):
            return Rejection(resolved.reason, resolved.error, id=request_id, model=model)
        decision, schema = resolved
        row = (_oip_row(body["inputs"], schema, max_features) if oip
               else _tabular_row(body, schema, max_features))
        return Request(request_id, model, decision.version, row, decision.route,
                       deadline_ms=_optional_deadline(body.get("deadline_ms")),
                       tenant=_optional_tenant(body.get("tenant")))
    except _Invalid as invalid:
        return Rejection(invalid.reason, invalid.error, id=request_id, model=model,
                         quotes=invalid.quotes)


def _parse_json(raw: bytes) -> tuple[dict[str, Any], str | None] | Rejection:
    """The request object, with orjson's complaint when only Python's json could read it."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as strict_error:
        return _parse_lenient(raw, strict_error)
    if not isinstance(body, dict):
        return _not_an_object(body)
    # orjson keeps the last of two equal keys silently; the exact check is a second,
    # slower parse, run only for the few requests a byte count cannot clear.
    if _may_repeat_a_key(raw, body):
        try:
            json.loads(raw, object_pairs_hook=_unique_keys)
        except _DuplicateKey as duplicate:
            return _duplicate_key(duplicate.key)
        except ValueError:
            pass  # read by orjson: a difference of dialect, not a duplicate
    return body, None


def _parse_lenient(raw: bytes,
                   strict_error: orjson.JSONDecodeError) -> tuple[dict[str, Any], str] | Rejection:
    """Say why orjson refused ``raw``; a body read here is only ever rejected."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return Rejection(Reason.INVALID_UTF8,
                         f"the request is not valid UTF-8 (byte {e.start} is "
                         f"0x{raw[e.start]:02x}); encode the JSON as UTF-8")
    where = f"line {strict_error.lineno} column {strict_error.colno}"
    try:
        # Reads NaN and Infinity (Python's json.dumps writes them) so that the feature
        # holding one can be named.
        body = json.loads(text, object_pairs_hook=_unique_keys)
        # A lone surrogate escape ("\ud800") is read as a str no UTF-8 encoder accepts.
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except _DuplicateKey as duplicate:
        return _duplicate_key(duplicate.key)
    except UnicodeEncodeError:
        # Located only when orjson stopped at it (it may have stopped at a NaN before).
        at = f" ({where})" if "surrogate" in strict_error.msg else ""
        return Rejection(Reason.INVALID_UTF8,
                         f"the request holds a lone UTF-16 surrogate escape such as \"\\ud800\""
                         f"{at}, which is no character; send characters as UTF-8, or escape one "
                         "beyond U+FFFF as a surrogate pair")
    except ValueError:
        if strict_error.msg.startswith("number is infinity"):
            return Rejection(Reason.NON_FINITE,
                             f"the request holds a number beyond the 64-bit float range "
                             f"({where}); send finite numbers (features must fit float32: "
                             f"±{FLOAT32_MAX:.4g})")
        return Rejection(Reason.MALFORMED_JSON, f"the request is not valid JSON: {strict_error}")
    if not isinstance(body, dict):
        return _not_an_object(body)
    return body, str(strict_error)


def _depth_over_limit(raw: bytes) -> int | None:
    """How deep ``raw`` nests JSON arrays and objects, when deeper than MAX_DEPTH; else None.

    Brackets inside strings do not count, and counting stops at a closing bracket with
    nothing to close, where a parser stops too. Costs two byte counts for a request of at
    most MAX_DEPTH opening brackets (every tabular one), a few passes in C for any other.
    """
    if raw.count(b"[") + raw.count(b"{") <= MAX_DEPTH:
        return None
    if b'\\"' in raw:  # a quote may be escaped: lex the strings out (rare)
        raw = _STRING.sub(b"", raw)
    # Brackets and quotes only, less the strings that were empty of brackets; what lies
    # between the quotes left is a string's brackets.
    marks = raw.translate(_ONE_KIND, _NOT_MARKS).replace(b'""', b"")
    brackets = b"".join(marks.split(b'"')[::2]) if b'"' in marks else marks
    if len(brackets) <= _PEEL_UP_TO:
        peeled = brackets
        for _ in range(MAX_DEPTH):  # each round removes the innermost pairs
            peeled = peeled.replace(b"[]", b"")
            if not peeled:
                return None
    # Deeper, unbalanced or long: the depth at each bracket ('[' has bit 1 set, ']' not).
    depth = np.cumsum((np.frombuffer(brackets, np.uint8) & 2).astype(np.int32) - 1)
    unmatched = np.flatnonzero(depth < 0)
    deepest = int(depth[:unmatched[0] if unmatched.size else depth.size].max(initial=0))
    return deepest if deepest > MAX_DEPTH else None


def _not_an_object(body: Any) -> Rejection:
    def say(value: str) -> str:
        return f"the request must be a JSON object, got {value}"

    # No field holds the value: redaction, when on, hides it (Rejection.quotes).
    return Rejection(Reason.MALFORMED_JSON, say(_describe(body)), quotes=(None, say(REDACTED_VALUE)))


def _may_repeat_a_key(raw: bytes, body: dict[str, Any]) -> bool:
    """False when ``raw`` surely holds no JSON object with a key twice.

    Each key in ``raw`` is followed by one ':' byte, and every other ':' byte is inside a
    string. So when ``raw`` has no more colons than the distinct keys read, it has no
    duplicate, at any depth: a key that is not counted (deeper down) leaves a colon over
    and sends the request to the exact check.
    """
    colons, keys = raw.count(b":"), _key_count(body)
    if colons > keys and b"\\" not in raw:
        # Ids such as "topic:0:12" are common. With no escape in raw, each ':' in a string
        # value read is one ':' byte of raw (an escaped "\u003a" would be none).
        colons -= sum(value.count(":") for value in body.values() if isinstance(value, str))
    return colons > keys


def _key_count(body: dict[str, Any]) -> int:
    """Keys in the request object and the objects one level in, or in OIP's 'inputs' list:
    every object of the request forms but a tensor's own 'parameters'."""
    count = len(body)
    for value in body.values():
        if isinstance(value, dict):
            count += len(value)
    inputs = body.get("inputs")
    if isinstance(inputs, list):
        count += sum(len(item) for item in inputs if isinstance(item, dict))
    return count


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads``'s object_pairs_hook: an object, unless it holds a key twice."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return obj


def _duplicate_key(key: str) -> Rejection:
    return Rejection(Reason.DUPLICATE_KEY,
                     f"the key {_quote(key)} appears twice in one JSON object, so the request is "
                     "ambiguous (parsers disagree on which value counts); send each key once")


def _tabular_row(body: dict[str, Any], schema: InputSchema,
                 max_features: int | None) -> list[float]:
    if schema.tensor is not None:
        shape = [1, *schema.tensor.shape]
        raise _Invalid(Reason.SCHEMA_MISMATCH,
                       f"the model reads one tensor, {schema.tensor.name!r} of shape "
                       f"{list(schema.tensor.shape)}, not named features: send the Open Inference "
                       f'Protocol form {{"id", "model_name", "inputs": [{{"name": '
                       f'"{schema.tensor.name}", "shape": {shape}, "datatype": "FP32", "data": '
                       f"[{schema.tensor.size} numbers, row-major]}}]}}")
    features = body.get("features")
    if not isinstance(features, dict):
        raise _Invalid(Reason.SCHEMA_MISMATCH,
                       "'features' must be an object mapping feature names to numbers, "
                       f"got {_describe(features)}")
    _check_count(len(features), schema, max_features)
    if features.keys() != schema.index.keys():
        _check_names(features.keys(), schema)
    row = [features[name] for name in schema.names]
    # One chained comparison per value accepts exactly the finite float32 range (NaN
    # fails every comparison); anything else gets the precise check and message.
    for value in row:
        if type(value) is not float or not -FLOAT32_MAX <= value <= FLOAT32_MAX:
            return [_number(name, v) for name, v in zip(schema.names, row)]
    return row


def _oip_row(inputs: Any, schema: InputSchema, max_features: int | None) -> list[float]:
    _check_count(len(inputs) if isinstance(inputs, list) else 0, schema, max_features)
    if not isinstance(inputs, list) or not inputs or not all(isinstance(i, dict) for i in inputs):
        raise _Invalid(Reason.SCHEMA_MISMATCH, "'inputs' must be a non-empty list of tensor objects")
    for tensor in inputs:
        name, datatype = tensor.get("name"), tensor.get("datatype")
        if name is not None and not isinstance(name, str):
            raise _Invalid(Reason.SCHEMA_MISMATCH,
                           f"each input's 'name' must be a string, got {_describe(name)}")
        if not isinstance(datatype, str) or datatype not in _NUMERIC_DATATYPES:
            raise _Invalid(Reason.SCHEMA_MISMATCH,
                           f"input {_quote(name)} has datatype {_describe(datatype)}; "
                           f"use one of {', '.join(sorted(_NUMERIC_DATATYPES))}")
    if schema.tensor is not None:
        return _tensor_row(inputs, schema, max_features)
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


def _tensor_row(inputs: list[dict[str, Any]], schema: InputSchema,
                max_features: int | None) -> list[float]:
    """The one input of a tensor model: shape ``[1, *shape]``, its numbers flat (counted
    against ``max_features`` before any is read)."""
    tensor = schema.tensor
    if len(inputs) != 1:
        raise _Invalid(Reason.SCHEMA_MISMATCH,
                       f"the model reads one tensor, {tensor.name!r}; the request has "
                       f"{len(inputs)} inputs")
    given, name = inputs[0], _quote(inputs[0].get("name"))
    shape, data = given.get("shape"), given.get("data")
    if isinstance(data, list):
        _check_count(len(data), schema, max_features)
    if shape != [1, *tensor.shape] or not isinstance(data, list) or len(data) != tensor.size:
        described = shape if isinstance(shape, list) and len(shape) <= 8 and all(
            type(d) is int and abs(d) < 10**9 for d in shape) else _describe(shape)
        count = len(data) if isinstance(data, list) else _describe(data)
        raise _Invalid(Reason.SCHEMA_MISMATCH,
                       f"input {name} must have shape {[1, *tensor.shape]} with "
                       f"{tensor.size} numbers flat in 'data' (row-major; one row per request), "
                       f"got shape {described} with {count}")
    return [_number(tensor.name, v) for v in data]


def _tensor_values(tensor: dict[str, Any], width: int) -> list[Any]:
    name, shape, data = _quote(tensor.get("name")), tensor.get("shape"), tensor.get("data")
    if not isinstance(data, list):
        raise _Invalid(Reason.SCHEMA_MISMATCH, f"input {name} needs 'data' as a list")
    if len(data) == 1 and isinstance(data[0], list):
        data = data[0]  # row-major nested form [[...]]
    if shape not in ([width], [1, width]) or len(data) != width:
        # Never repr() what the sender chose: it may be long, or nested deep enough to
        # raise RecursionError.
        given = shape if isinstance(shape, list) and len(shape) <= 4 and all(
            type(d) is int and abs(d) < 10**9 for d in shape) else _describe(shape)
        raise _Invalid(Reason.SCHEMA_MISMATCH,
                       f"input {name} must have shape [1, {width}] with {width} values "
                       f"(one row per request), got shape {given} with {len(data)} values")
    return data


def _check_count(count: int, schema: InputSchema, max_features: int | None) -> None:
    """Refuse more features than a request may hold, before any work per feature."""
    if max_features is not None and count > max_features:
        fix = ("send only those" if len(schema) <= max_features
               else "the operator must raise STREAMSERVE_MAX_FEATURES to serve it")
        raise _Invalid(Reason.TOO_MANY_FEATURES,
                       f"the request holds {count} features, more than the {max_features} a "
                       f"request may (STREAMSERVE_MAX_FEATURES); the model takes "
                       f"{len(schema)}: {fix}")


def _check_names(given: Any, schema: InputSchema) -> None:
    given = set(given)
    missing = [n for n in schema.names if n not in given]
    extra = sorted(str(n) for n in given - schema.index.keys())
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing features: {_listing(missing)}")
        if extra:
            parts.append(f"unexpected features: {_listing(extra)}")
        raise _Invalid(Reason.SCHEMA_MISMATCH,
                       f"{'; '.join(parts)}; the model takes {len(schema)} features: "
                       f"{', '.join(schema.names)}")


def _listing(names: list[str]) -> str:
    """The first few names, each cut short: a request may send thousands, each long."""
    shown = [n if len(n) <= 40 else f"{n[:40]}… ({len(n)} characters)"
             for n in names[:_MAX_LISTED]]
    more = len(names) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more else "")


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Invalid.quoting(Reason.SCHEMA_MISMATCH, name, _describe(value),
                               lambda v: f"feature {name!r} must be a number, got {v}")
    try:
        number = float(value)
    except OverflowError:  # an integer literal of more than 308 digits
        number = math.inf
    if not -FLOAT32_MAX <= number <= FLOAT32_MAX:  # also false for NaN
        raise _Invalid.quoting(Reason.NON_FINITE, name, _number_text(value), lambda v: (
            f"feature {name!r} is {v}, not a finite float32 (at most ±{FLOAT32_MAX:.4g}); "
            "send finite numbers (impute missing values before sending)"))
    return number


def _optional_version(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise _Invalid(Reason.SCHEMA_MISMATCH,
                       f"the version must be a string such as \"3\", got {_describe(value)}")
    version = str(value)
    if len(version) > MAX_NAME_LENGTH:
        raise _Invalid(Reason.SCHEMA_MISMATCH,
                       f"the version must be at most {MAX_NAME_LENGTH} characters, such as \"3\", "
                       f"got {_describe(value)}")
    return version


def _optional_deadline(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise _Invalid.quoting(Reason.SCHEMA_MISMATCH, "deadline_ms", _describe(value), lambda v:
                               f"'deadline_ms' must be a positive whole number of milliseconds, "
                               f"got {v}")
    return value


def _optional_tenant(value: Any) -> str | None:
    if value is not None and (not isinstance(value, str) or len(value) > MAX_NAME_LENGTH):
        raise _Invalid.quoting(Reason.SCHEMA_MISMATCH, "tenant", _describe(value), lambda v:
                               f"'tenant' must be a string of at most {MAX_NAME_LENGTH} "
                               f"characters, got {v}")
    return value


def _describe(value: Any) -> str:
    """What the sender sent, in a few words: never all of it (it may be huge or deep)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int | float):
        text = _number_text(value)
        return text if text.startswith("an ") else f"the number {text}"
    if isinstance(value, str):
        return f"the string {value!r}" if len(value) <= 40 else \
            f"a string of {len(value)} characters starting {value[:40]!r}"
    return {dict: "an object", list: "a list"}.get(type(value), type(value).__name__)


def _quote(text: str | None) -> str:
    """A name for a message, quoted and cut short (repr also escapes lone surrogates)."""
    if text is None or len(text) <= 40:
        return repr(text)
    return f"{text[:40]!r}… ({len(text)} characters)"


def _number_text(value: int | float) -> str:
    if isinstance(value, int) and abs(value) >= 10**20:
        # repr() of a huge int is slow (and refused past 4300 digits).
        return f"an integer of about {int(value.bit_length() * math.log10(2)) + 1} digits"
    return repr(value)
