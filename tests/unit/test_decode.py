import math

import orjson
import pytest

from pipeline.catalog import Catalog
from pipeline.routing import DeploymentSpec, Route
from pipeline.decode import Request, decode
from pipeline.rejections import Reason, Rejection
from pipeline.schema import Feature, InputSchema

IRIS = InputSchema(tuple(Feature(n) for n in
                         ("sepal_length", "sepal_width", "petal_length", "petal_width")))
CATALOG = Catalog({"iris": {"1": IRIS, "2": IRIS}}, {"iris": DeploymentSpec("iris", "2", fallback="1")})
FEATURES = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


def run(body, max_bytes=65536):
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return decode(raw, CATALOG, max_bytes)


def rejected(body, reason, **kw):
    result = run(body, **kw)
    assert isinstance(result, Rejection), result
    assert result.reason is reason, result
    assert len(result.error) > 20  # a sentence, not a code
    return result


def test_tabular_request_is_decoded_in_schema_order():
    shuffled = dict(reversed(list(FEATURES.items())))
    result = run({"id": "r-1", "model": "iris", "features": shuffled, "tenant": "acme",
                  "deadline_ms": 250})
    assert result == Request("r-1", "iris", "2", [5.1, 3.5, 1.4, 0.2], deadline_ms=250,
                             tenant="acme")


def test_pinned_version_is_honoured():
    assert run({"id": "r", "model": "iris", "version": "1", "features": FEATURES}).version == "1"
    assert run({"id": "r", "model": "iris", "version": 1, "features": FEATURES}).version == "1"


def test_oip_per_feature_inputs():
    inputs = [{"name": k, "shape": [1], "datatype": "FP32", "data": [v]} for k, v in FEATURES.items()]
    result = run({"id": "r", "model_name": "iris", "model_version": "1", "inputs": inputs})
    assert result == Request("r", "iris", "1", [5.1, 3.5, 1.4, 0.2], Route.PINNED)


@pytest.mark.parametrize("data", [[5.1, 3.5, 1.4, 0.2], [[5.1, 3.5, 1.4, 0.2]]])
def test_oip_single_tensor_in_schema_order(data):
    inputs = [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": data}]
    assert run({"id": "r", "model_name": "iris", "inputs": inputs}).row == [5.1, 3.5, 1.4, 0.2]


def test_integers_are_accepted_as_numbers():
    assert run({"id": "r", "model": "iris", "features": dict(FEATURES, sepal_length=5)}).row[0] == 5.0


def test_empty_value():
    for raw in (b"", None):
        result = decode(raw, CATALOG, 1000)
        assert result.reason is Reason.EMPTY_REQUEST


def test_too_large_is_rejected_before_parsing():
    body = orjson.dumps({"id": "r", "model": "iris", "features": FEATURES, "pad": "x" * 500})
    result = rejected(body, Reason.TOO_LARGE, max_bytes=300)
    assert "300-byte limit" in result.error and result.id is None


def test_invalid_utf8():
    result = rejected(b'{"id": "r\xff"}', Reason.INVALID_UTF8)
    assert "UTF-8" in result.error


@pytest.mark.parametrize("raw", [b"{", b"not json", b'{"id": "r",}', b"[1, 2"])
def test_malformed_json(raw):
    rejected(raw, Reason.MALFORMED_JSON)


@pytest.mark.parametrize("body", [[1, 2], "text", 3, None])
def test_non_object_json(body):
    assert "JSON object" in rejected(body, Reason.MALFORMED_JSON).error


def test_missing_id():
    rejected({"model": "iris", "features": FEATURES}, Reason.MISSING_ID)


@pytest.mark.parametrize("bad_id", [7, "", ["r"], True, "x" * 257])
def test_invalid_id(bad_id):
    rejected({"id": bad_id, "model": "iris", "features": FEATURES}, Reason.INVALID_ID)


def test_missing_model():
    result = rejected({"id": "r", "features": FEATURES}, Reason.MISSING_MODEL)
    assert result.id == "r"


def test_unknown_model_names_the_served_ones():
    result = rejected({"id": "r", "model": "nope", "features": FEATURES}, Reason.UNKNOWN_MODEL)
    assert "iris" in result.error and result.model == "nope" and result.id == "r"


def test_unknown_version_names_the_deployed_ones():
    result = rejected({"id": "r", "model": "iris", "version": "9", "features": FEATURES},
                      Reason.UNKNOWN_VERSION)
    assert "2 (stable), 1 (fallback)" in result.error


def test_missing_features_are_named():
    partial = {k: v for k, v in FEATURES.items() if k != "petal_width"}
    result = rejected({"id": "r", "model": "iris", "features": partial}, Reason.SCHEMA_MISMATCH)
    assert "missing features: petal_width" in result.error


def test_extra_features_are_named():
    result = rejected({"id": "r", "model": "iris", "features": dict(FEATURES, colour=1)},
                      Reason.SCHEMA_MISMATCH)
    assert "unexpected features: colour" in result.error


@pytest.mark.parametrize("value", ["5.1", None, True, [5.1], {"v": 1}])
def test_mistyped_feature(value):
    result = rejected({"id": "r", "model": "iris", "features": dict(FEATURES, sepal_width=value)},
                      Reason.SCHEMA_MISMATCH)
    assert "'sepal_width' must be a number" in result.error


def test_features_not_an_object():
    rejected({"id": "r", "model": "iris", "features": [1, 2, 3, 4]}, Reason.SCHEMA_MISMATCH)


@pytest.mark.parametrize("raw", [
    b'{"id": "r", "model": "iris", "features": {"sepal_length": NaN, "sepal_width": 1, '
    b'"petal_length": 1, "petal_width": 1}}',
    b'{"id": "r", "model": "iris", "features": {"sepal_length": Infinity, "sepal_width": 1, '
    b'"petal_length": 1, "petal_width": 1}}',
    b'{"id": "r", "model": "iris", "features": {"sepal_length": 1e999, "sepal_width": 1, '
    b'"petal_length": 1, "petal_width": 1}}',
    b'{"id": "r", "model": "iris", "features": {"sepal_length": 1e39, "sepal_width": 1, '
    b'"petal_length": 1, "petal_width": 1}}',
])
def test_non_finite_values(raw):
    result = rejected(raw, Reason.NON_FINITE)
    assert "sepal_length" in result.error and result.id == "r"


@pytest.mark.parametrize("inputs", [
    [],
    "x",
    [{"name": "input-0", "shape": [1, 4], "datatype": "BYTES", "data": ["a", "b", "c", "d"]}],
    [{"name": "input-0", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}],
    [{"name": "input-0", "shape": [2, 4], "datatype": "FP32", "data": [1] * 8}],
    [{"name": "input-0", "shape": [1, 4], "datatype": "FP32", "data": "1,2,3,4"}],
    [{"name": k, "shape": [1], "datatype": "FP32", "data": [v]} for k, v in FEATURES.items()][:3],
])
def test_oip_shape_and_type_errors(inputs):
    rejected({"id": "r", "model_name": "iris", "inputs": inputs}, Reason.SCHEMA_MISMATCH)


@pytest.mark.parametrize("field,value,says", [
    ("deadline_ms", -1, "'deadline_ms' must be"), ("deadline_ms", "soon", "'deadline_ms' must be"),
    ("tenant", 3, "'tenant' must be"), ("version", 1.5, "version must be")])
def test_mistyped_optional_fields(field, value, says):
    body = {"id": "r", "model": "iris", "features": FEATURES, field: value}
    assert says in rejected(body, Reason.SCHEMA_MISMATCH).error


def test_decode_never_raises_on_arbitrary_bytes():
    import random
    rng = random.Random(0)
    valid = orjson.dumps({"id": "r", "model": "iris", "features": FEATURES})
    for _ in range(2000):
        mutated = bytearray(valid)
        for _ in range(rng.randint(1, 4)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        result = decode(bytes(mutated), CATALOG, 65536)
        assert isinstance(result, Request | Rejection)
        if isinstance(result, Request):
            assert all(math.isfinite(v) for v in result.row)
