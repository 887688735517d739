"""``FastDecoder``: the common request form in one msgspec call, the same result as the
precise decoder for every input (``test_decode_fuzz`` checks arbitrary ones; these are
the plain requests without escapes the fast path takes, with what could slip past it)."""

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline import fast_decode
from pipeline.catalog import Catalog
from pipeline.decode import Request, decode
from pipeline.fast_decode import FastDecoder
from pipeline.rejections import Reason, Rejection
from pipeline.routing import Canary, DeploymentSpec, Route
from pipeline.schema import Feature, InputSchema
from tests.unit.test_decode_fuzz import FUZZ, Pairs, dump

NAMES = ("a", "b:c", "d")
SCHEMA = InputSchema(tuple(Feature(n) for n in NAMES))
PIXELS = InputSchema((Feature("pixels", shape=(2, 2)),))
LONG = "l" * 300  # a name longer than a request may give
CATALOG = Catalog(
    {"m": {"1": SCHEMA, "2": SCHEMA}, LONG: {"1": SCHEMA}, "img": {"1": PIXELS},
     "mixed": {"1": SCHEMA, "2": InputSchema((Feature("a"),))}},
    {"m": DeploymentSpec("m", "1", canary=Canary("2", 0.5)), LONG: DeploymentSpec(LONG, "1"),
     "img": DeploymentSpec("img", "1"), "mixed": DeploymentSpec("mixed", "1", fallback="2")})
MAX_BYTES = 4096
FLOAT32_MAX = 3.4028234663852886e38


def both(raw: bytes, max_features: int | None = None) -> Request | Rejection:
    """The fast decoder's result, asserting that the precise one's is the same."""
    result = FastDecoder(CATALOG, MAX_BYTES, max_features).decode(raw)
    assert result == decode(raw, CATALOG, MAX_BYTES, max_features)
    return result


def plain(**fields) -> bytes:
    return orjson.dumps({"id": "r-1", "model": "m", "features": {"a": 1.5, "b:c": -2, "d": 0.0}}
                        | fields)


@pytest.fixture
def precise_decoder_refused(monkeypatch):
    """Fails any call of the precise decoder from the fast one."""
    def refuse(*args):
        raise AssertionError(f"the precise decoder was called for {args[0]!r}")
    monkeypatch.setattr(fast_decode, "decode", refuse)


@pytest.mark.usefixtures("precise_decoder_refused")
@pytest.mark.parametrize("fields", [
    {}, {"version": "2"}, {"version": 1}, {"deadline_ms": 250}, {"tenant": "acme:eu"},
    {"id": "topic:0:12"}, {"id": "ünïcode", "tenant": "Zürich"},
    {"version": "1", "deadline_ms": 1, "tenant": "t"},
])
def test_plain_requests_are_decoded_without_the_precise_decoder(fields):
    result = FastDecoder(CATALOG, MAX_BYTES, None).decode(plain(**fields))
    assert isinstance(result, Request) and result.row == [1.5, -2.0, 0.0]
    assert type(result.row[1]) is float


def test_the_route_is_the_catalogs():
    routes = {both(plain(id=f"r-{i}")).route for i in range(40)}
    assert routes == {Route.STABLE, Route.CANARY}
    assert both(plain(version="2")).route is Route.PINNED


@pytest.mark.parametrize("raw, reason", [
    (b'{"id":"r","model":"m","model":"m","features":{"a":1,"b:c":2,"d":3}}', Reason.DUPLICATE_KEY),
    (b'{"id":"r","model":"m","features":{"a":1,"a":1,"b:c":2,"d":3}}', Reason.DUPLICATE_KEY),
    (b'{"id":"r","model":"m","features":{"a":1,"b:c":2,"d":3},"id":"s"}', Reason.DUPLICATE_KEY),
    (b'{"id":"r","model":"m","features":{"a":1,"b:c":2,"d":3,"e":4}}', Reason.SCHEMA_MISMATCH),
    (b'{"id":"r","model":"m","features":{"a":1,"b:c":2}}', Reason.SCHEMA_MISMATCH),
    (b'{"id":"r","model":"m","features":{"a":true,"b:c":2,"d":3}}', Reason.SCHEMA_MISMATCH),
    (b'{"id":"r","model":"m","features":{"a":3.5e38,"b:c":2,"d":3}}', Reason.NON_FINITE),
    (b'{"id":"r","model":"m","features":{"a":1e999,"b:c":2,"d":3}}', Reason.NON_FINITE),
    (b'{"id":"r","model":"m","features":{"a":NaN,"b:c":2,"d":3}}', Reason.NON_FINITE),
    (b'{"id":"r","model":"m","features":{"a":1,"b:c":2,"d":3},"version":"9"}', Reason.UNKNOWN_VERSION),
    (b'{"id":"r","model":"m","features":{"a":1,"b:c":2,"d":3},"version":true}', Reason.SCHEMA_MISMATCH),
    (b'{"id":"r","model":"m","features":{"a":1,"b:c":2,"d":3},"deadline_ms":0}', Reason.SCHEMA_MISMATCH),
    (b'{"id":"","model":"m","features":{"a":1,"b:c":2,"d":3}}', Reason.INVALID_ID),
    (b'{"id":"r","model":"","features":{"a":1,"b:c":2,"d":3}}', Reason.MISSING_MODEL),
    (b'{"id":"r"," model":"m","features":{"a":1,"b:c":2,"d":3}}', Reason.MISSING_MODEL),
    (b'{"id":"r","model":"q","features":{"a":1,"b:c":2,"d":3}}', Reason.UNKNOWN_MODEL),
    (b'{"id":"r","model":"img","features":{"pixels":1}}', Reason.SCHEMA_MISMATCH),
    (b'{"id":"r","model":"m","features":{"a":1,"b:c":2,"d":3},"inputs":[]}', Reason.MISSING_MODEL),
    (b'{"id":"r","model":"m","features":{"a":1,"b:c":2,"d":3}} x', Reason.MALFORMED_JSON),
    (b'{"id":"\xff","model":"m","features":{"a":1,"b:c":2,"d":3}}', Reason.INVALID_UTF8),
    (b'{"id":"r","model":"m","features":{"a":1,"b:c":2,"d":3},"x":' + b"[" * 40 + b"]" * 40 + b"}",
     Reason.TOO_DEEP),
    (b'{"id":"r","model":"m","features":{"a":1,"b:c":2,"d":3},"x":"' + b"y" * MAX_BYTES + b'"}',
     Reason.TOO_LARGE),
    (b"", Reason.EMPTY_REQUEST),
    (None, Reason.EMPTY_REQUEST),
])
def test_what_the_fast_path_must_not_take_gets_the_precise_rejection(raw, reason):
    result = both(raw)
    assert isinstance(result, Rejection) and result.reason is reason, result


def test_a_client_key_beside_the_request_is_served_as_the_precise_decoder_serves_it():
    assert isinstance(both(plain(trace="span:1", extra={"k": [1, 2]})), Request)


def test_models_the_fast_path_leaves_to_the_precise_decoder_are_decoded_as_it_does():
    # The versions of "mixed" read different features.
    assert isinstance(both(orjson.dumps({"id": "r", "model": "mixed", "version": "2",
                                         "features": {"a": 1.0}})), Request)
    assert both(plain(model=LONG)).reason is Reason.UNKNOWN_MODEL


def test_more_features_than_a_request_may_hold_is_the_precise_refusal():
    result = both(plain(), max_features=2)
    assert isinstance(result, Rejection) and result.reason is Reason.TOO_MANY_FEATURES


ascii_text = st.text(st.characters(min_codepoint=32, max_codepoint=126,
                                   blacklist_characters='"\\'), max_size=12)
values = (st.none() | st.booleans() | st.integers(-(10**30), 10**30) | ascii_text
          | st.floats(allow_nan=False, allow_infinity=False)
          | st.sampled_from([FLOAT32_MAX, -FLOAT32_MAX, 3.5e38, 2**64, 5e-324, -0.0]))
keys = st.sampled_from(["id", "model", "features", "version", "deadline_ms", "tenant", "inputs",
                        "a", "b:c", "d", "model_name"]) | ascii_text


@FUZZ
@given(st.lists(st.tuples(keys, values | st.dictionaries(keys, values, max_size=4)), max_size=4),
       st.lists(values, min_size=3, max_size=3), st.lists(st.tuples(keys, values), max_size=2),
       st.booleans())
def test_plain_requests_with_keys_changed_added_or_repeated_decode_as_the_precise_decoder_does(
        top, row, inner, first):
    features = Pairs([*zip(NAMES, row), *inner])
    pairs = Pairs([("id", "r:1"), ("model", "m"), ("features", features), *top])
    if first and top:  # a changed key also in front, where a parser may read it first
        pairs.insert(0, top[0])
    both(dump(pairs).encode())
