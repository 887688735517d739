"""Property tests of ``decode``: whatever the bytes, it returns a well-formed value, and
the worker's ``FastDecoder`` returns the same.

Three sources of input: arbitrary bytes; arbitrary JSON (written by Python's json, so with
NaN, Infinity, integers of hundreds of digits and escaped lone surrogates); and valid
requests with one thing changed (a value replaced, a key dropped, added or repeated).
"""

import copy
import json
import math
import os

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.catalog import Catalog
from pipeline.decode import MAX_DEPTH, MAX_ID_LENGTH, MAX_NAME_LENGTH, Request, decode
from pipeline.fast_decode import FastDecoder
from pipeline.rejections import Reason, Rejection
from pipeline.routing import Canary, DeploymentSpec
from pipeline.schema import Feature, InputSchema

NAMES = ("sepal_length", "sepal_width", "petal_length", "petal_width")
IRIS = InputSchema(tuple(Feature(n) for n in NAMES))
CATALOG = Catalog({"iris": {"1": IRIS, "2": IRIS, "3": IRIS}},
                  {"iris": DeploymentSpec("iris", "2", canary=Canary("3", 0.3), fallback="1")})
MAX_BYTES = 65536
FAST = FastDecoder(CATALOG, MAX_BYTES, None)
FLOAT32_MAX = 3.4028234663852886e38
# Few examples, so that the whole file runs in a few seconds; STREAMSERVE_FUZZ_EXAMPLES=20000
# fuzzes longer. Failing examples are kept in .hypothesis/ (git-ignored by its own file).
FUZZ = settings(max_examples=int(os.environ.get("STREAMSERVE_FUZZ_EXAMPLES", "150")),
                deadline=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow])

FIELDS = ("id", "model", "features", "version", "deadline_ms", "tenant", "model_name",
          "model_version", "inputs", "name", "shape", "datatype", "data", "parameters")
keys = st.sampled_from(FIELDS + NAMES) | st.text(max_size=8)
hostile_numbers = st.sampled_from([10**400, -(10**400), 2**64, -(2**63) - 1, 1e308, -1e308,
                                   5e-324, 3.5e38, math.nan, math.inf, -math.inf])
scalars = (st.none() | st.booleans() | st.integers() | st.floats() | hostile_numbers
           | st.integers(min_value=-(10**400), max_value=10**400) | st.text(max_size=12))
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(keys, inner, max_size=5),
    max_leaves=12)
ids = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40)
finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)


class Pairs(list):
    """An object as its (key, value) pairs, written in order: a key may appear twice."""


def dump(value) -> str:
    """Python's json, with ``Pairs`` for objects whose keys repeat."""
    if isinstance(value, dict):
        value = Pairs(value.items())
    if isinstance(value, Pairs):
        return "{" + ", ".join(f"{json.dumps(k)}: {dump(v)}" for k, v in value) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(dump(v) for v in value) + "]"
    return json.dumps(value)


def encode(text: str, ascii_only: bool) -> bytes:
    # json.dumps escapes a lone surrogate as \udxxx; written raw it becomes bytes that
    # are not UTF-8. Both must be rejected.
    return text.encode("ascii") if ascii_only else text.encode("utf-8", "surrogatepass")


def no_duplicates(pairs):
    assert len({k for k, _ in pairs}) == len(pairs), pairs
    return dict(pairs)


def check(raw: bytes) -> Request | Rejection:
    """``decode(raw)``, asserting that what it returns can be served or dead-lettered, and
    that the fast decoder returns the same."""
    result = decode(raw, CATALOG, MAX_BYTES)
    assert FAST.decode(raw) == result
    assert type(result) in (Request, Rejection), result
    if isinstance(result, Rejection):
        assert isinstance(result.reason, Reason)
        assert isinstance(result.error, str) and 20 < len(result.error) < 2000, result
        assert result.id is None or 0 < len(result.id) <= MAX_ID_LENGTH
        assert result.model is None or 0 < len(result.model) <= MAX_NAME_LENGTH
        # The dead letter's fields encode: no lone surrogate, nothing but strings.
        orjson.dumps({"id": result.id, "error": result.error, "model": result.model})
    else:
        orjson.loads(raw)  # only strict JSON is served ...
        json.loads(raw, object_pairs_hook=no_duplicates)  # ... with no key twice
        assert 0 < len(result.id) <= MAX_ID_LENGTH and result.id.encode()
        assert (result.model, len(result.row)) == ("iris", len(NAMES))
        assert all(type(v) is float and abs(v) <= FLOAT32_MAX for v in result.row)
        assert result.version in ("1", "2", "3")
    return result


@FUZZ
@given(st.binary(max_size=300))
def test_arbitrary_bytes(raw):
    check(raw)


@FUZZ
@given(st.binary(max_size=100), st.integers(min_value=0, max_value=200))
def test_arbitrary_bytes_inside_a_valid_request(junk, at):
    valid = orjson.dumps({"id": "r", "model": "iris", "features": dict.fromkeys(NAMES, 1.0)})
    at = min(at, len(valid))
    check(valid[:at] + junk + valid[at:])


@FUZZ
@given(json_values, st.booleans())
def test_arbitrary_json(value, ascii_only):
    check(encode(dump(value), ascii_only))


@FUZZ
@given(st.sampled_from([{}, {"id": "r", "model": "iris"}, {"id": "r", "model_name": "iris"}]),
       st.dictionaries(keys, json_values, max_size=4), st.booleans())
def test_arbitrary_json_objects(start, fields, ascii_only):
    # Mostly past the id and model checks, so that the fields reach the deeper ones.
    check(encode(dump(start | fields), ascii_only))


@st.composite
def valid_requests(draw) -> dict:
    row = draw(st.lists(finite, min_size=len(NAMES), max_size=len(NAMES)))
    if draw(st.booleans()):
        body = {"id": draw(ids), "model": "iris", "features": dict(zip(NAMES, row))}
        optional = {"version": st.sampled_from(["1", "2", "3", 2]),
                    "deadline_ms": st.integers(1, 10**6), "tenant": ids}
    else:
        if draw(st.booleans()):
            inputs = [{"name": n, "shape": [1], "datatype": "FP32", "data": [v]}
                      for n, v in zip(NAMES, row)]
        else:
            inputs = [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": row}]
        body = {"id": draw(ids), "model_name": "iris", "inputs": inputs}
        optional = {"model_version": st.sampled_from(["1", "2", "3"])}
    for field, values in optional.items():
        if draw(st.booleans()):
            body[field] = draw(values)
    return body


def places(value, found=None) -> list:
    """Every (container, key or index) in a request, to pick one to change."""
    found = [] if found is None else found
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for key, inner in items:
        found.append((value, key))
        if isinstance(inner, dict | list):
            places(inner, found)
    return found


@FUZZ
@given(valid_requests())
def test_valid_requests_are_served(body):
    result = check(orjson.dumps(body))
    assert isinstance(result, Request), result
    assert result.row == [float(v) for v in (
        body["features"].values() if "features" in body
        else [v for t in body["inputs"] for v in t["data"]])]


@FUZZ
@given(valid_requests(), st.data())
def test_valid_requests_with_one_change(body, data):
    body = copy.deepcopy(body)
    container, key = data.draw(st.sampled_from(places(body)))
    change = data.draw(st.sampled_from(["replace", "delete", "add"]))
    if change == "replace":
        container[key] = data.draw(json_values | hostile_numbers)
    elif change == "delete":
        del container[key]
    elif isinstance(container, dict):
        container[data.draw(keys)] = data.draw(json_values)
    else:
        container.insert(key, data.draw(json_values))
    check(encode(dump(body), data.draw(st.booleans())))


@FUZZ
@given(valid_requests(), st.data())
def test_a_key_given_twice_anywhere_is_rejected_as_ambiguous(body, data):
    objects = [c for c, _ in places(body) if isinstance(c, dict)]
    obj = data.draw(st.sampled_from(objects))
    key = data.draw(st.sampled_from(sorted(obj)))
    pairs = Pairs(obj.items())
    pairs.insert(data.draw(st.integers(0, len(pairs))), (key, data.draw(json_values)))
    # Replace the object by its pairs, wherever it sits.
    for container, k in places(body):
        if container[k] is obj:
            container[k] = pairs
    raw = encode(dump(pairs if obj is body else body), ascii_only=True)
    result = check(raw)
    assert isinstance(result, Rejection) and result.reason is Reason.DUPLICATE_KEY, result
    assert f"the key {key!r} appears twice" in result.error


def depth_of(value) -> int:
    if isinstance(value, dict | Pairs):
        inner = value.values() if isinstance(value, dict) else [v for _, v in value]
    elif isinstance(value, list):
        inner = value
    else:
        return 0
    return 1 + max((depth_of(v) for v in inner), default=0)


@FUZZ
@given(json_values, st.lists(st.booleans(), max_size=40), st.booleans())
def test_nesting_deeper_than_the_limit_and_only_that_is_too_deep(value, wrappers, ascii_only):
    # Strings with brackets, quotes and backslashes (escaped by json.dumps) must not count.
    for in_object in wrappers:
        value = {"k": value} if in_object else [value]
    result = check(encode(dump(value), ascii_only))
    deep = depth_of(value) > MAX_DEPTH
    assert (isinstance(result, Rejection) and result.reason is Reason.TOO_DEEP) == deep, result
    if deep:
        assert result.error.startswith(f"the request nests JSON arrays or objects "
                                       f"{depth_of(value)} levels deep")
