import math

import orjson
import pytest

from pipeline.catalog import Catalog
from pipeline.routing import DeploymentSpec, Route
from pipeline.decode import Request, decode
from pipeline.rejections import REDACTED_VALUE, Reason, Rejection
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


PLANTED = "4.735193719"


@pytest.mark.parametrize("body, field", [
    ({"id": "r", "model": "iris", "features": dict(FEATURES, petal_length=PLANTED + "-x")},
     "petal_length"),
    (orjson.dumps({"id": "r", "model": "iris", "features": dict(FEATURES, petal_length=0.0)})
     .replace(b"0.0", PLANTED.encode() + b"e39"), "petal_length"),
    ({"id": "r", "model_name": "iris", "inputs": [
        {"name": n, "shape": [1], "datatype": "FP64", "data": [PLANTED if n == "petal_width" else 1.0]}
        for n in FEATURES]}, "petal_width"),
    ({"id": "r", "model_name": "iris", "inputs": [
        {"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [1.0, 1.0, PLANTED, 1.0]}]},
     "petal_length"),
    ({"id": "r", "model": "iris", "features": FEATURES, "tenant": PLANTED * 40}, "tenant"),
    ({"id": "r", "model": "iris", "features": FEATURES, "deadline_ms": PLANTED}, "deadline_ms"),
    (PLANTED, None),  # the whole request: no field holds it
])
def test_an_error_quoting_a_value_names_its_field_and_keeps_a_sentence_without_it(body, field):
    result = run(body)
    assert isinstance(result, Rejection) and PLANTED in result.error
    quoted_field, without = result.quotes
    assert quoted_field == field and PLANTED not in without
    before, after = without.split(REDACTED_VALUE)
    assert result.error.startswith(before) and result.error.endswith(after)


@pytest.mark.parametrize("body", [
    {"id": "r", "model": "iris", "features": dict(FEATURES, colour=1.0)},
    {"id": "r", "model": "rose", "features": FEATURES},
    {"id": "r", "model": "iris", "version": "9", "features": FEATURES},
])
def test_an_error_quoting_no_value_says_so(body):
    assert run(body).quotes is None


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


# Hostile inputs: each gets a precise reason and a sentence saying what to do, never an
# exception (an exception in the worker would lose the batch).

def tabular(**fields) -> dict:
    return {"id": "r", "model": "iris", "features": FEATURES} | fields


def test_null_value_is_a_tombstone_not_a_request():
    result = decode(None, CATALOG, 1000)
    assert result == Rejection(Reason.EMPTY_REQUEST, "the message value is null (a tombstone), "
                               "not a request; send a JSON request object")
    assert decode(b"", CATALOG, 1000).error == \
        "the message value is empty (0 bytes); send a JSON request object"


def test_size_limit_is_inclusive_and_names_the_setting():
    raw = orjson.dumps(tabular())
    assert isinstance(decode(raw, CATALOG, len(raw)), Request)
    result = decode(raw + b" ", CATALOG, len(raw))
    assert result == Rejection(Reason.TOO_LARGE, f"the request is {len(raw) + 1} bytes, over the "
                               f"{len(raw)}-byte limit (STREAMSERVE_MAX_MESSAGE_BYTES); send one "
                               "row per request")


FLAT = 'a request is one flat object: {"id": ..., "model": ..., "features": {...}}'


@pytest.mark.parametrize("raw,depth", [
    (b"[" * 33, 33),
    (b"[" * 10_000, 10_000),
    (b"[" * 10_000 + b"]" * 10_000, 10_000),
    (b'{"a": ' * 10_000 + b"1" + b"}" * 10_000, 10_000),
    (b'{"id": "r", "model": "iris", "features": {"sepal_length": ' + b"[" * 5000 + b"1"
     + b"]" * 5000 + b"}}", 5002),
    # orjson would refuse the NaN first, and Python's json (read to name it) the depth.
    (b"[NaN, " + b"[" * 1010 + b"]" * 1010 + b"]", 1011),
    # Valid to orjson, deep in a field the request form ignores.
    (b'{"id": "r", "model": "iris", "features": ' + orjson.dumps(FEATURES) + b', "x": '
     + b"[" * 1010 + b'{"k": 1}' + b"]" * 1010 + b"}", 1012),
    # Not UTF-8 and too deep: the depth is read on the bytes first.
    (b'{"id": "r\xff", "x": ' + b"[" * 40 + b"]" * 40 + b"}", 41),
])
def test_deep_nesting_is_refused_on_the_bytes_before_parsing(raw, depth):
    result = rejected(raw, Reason.TOO_DEEP, max_bytes=len(raw))
    assert result.error == (f"the request nests JSON arrays or objects {depth} levels deep, "
                            f"more than the 32 a request may; {FLAT}")


@pytest.mark.parametrize("extra", [
    b'"x": ' + b"[" * 30 + b"]" * 30,  # 32 deep with the request and its features
    b'"x": "' + b"[" * 100 + b'"',  # brackets in a string do not nest
    b'"x": "\\\"' + b"{" * 100 + b'"',  # nor after escaped quotes and backslashes
    b'"x": [' + b"[1], " * 40 + b"[1]]",  # many brackets, shallow
])
def test_nesting_within_the_limit_is_served(extra):
    raw = orjson.dumps(tabular())[:-1] + b", " + extra + b"}"
    assert isinstance(run(raw), Request), raw


@pytest.mark.parametrize("raw", [
    b"]" * 40 + b"[" * 40,  # a parser stops at the first closing bracket: not deep
    b'{"id": "r", "x": "' + b"[" * 40,  # a string the end cuts short
])
def test_brackets_a_parser_never_nests_are_malformed_not_deep(raw):
    rejected(raw, Reason.MALFORMED_JSON)


def test_deep_nesting_within_the_limit_in_an_oip_shape_is_described_not_printed():
    inputs = [{"name": "input-0", "shape": [[[[[[[[4]]]]]]]] * 50, "datatype": "FP32",
               "data": [1, 2, 3, 4]}]
    result = rejected({"id": "r", "model_name": "iris", "inputs": inputs}, Reason.SCHEMA_MISMATCH)
    assert result.error == ("input 'input-0' must have shape [1, 4] with 4 values (one row per "
                            "request), got shape a list with 4 values")


NON_FINITE_HINT = "not a finite float32 (at most ±3.403e+38); send finite numbers (impute " \
    "missing values before sending)"


@pytest.mark.parametrize("literal,shown", [
    (b"1e400", "inf"), (b"-1e309", "-inf"), (b"1" + b"0" * 400, "an integer of about 401 digits"),
    (b"-" + b"9" * 4000, "an integer of about 4001 digits"), (b"3.5e38", "3.5e+38"),
    (b"NaN", "nan"), (b"-Infinity", "-inf"),
])
def test_huge_numbers_in_a_feature_are_named(literal, shown):
    raw = b'{"id": "r", "model": "iris", "features": {"sepal_length": 1, "sepal_width": ' \
        + literal + b', "petal_length": 1, "petal_width": 1}}'
    result = rejected(raw, Reason.NON_FINITE)
    assert result.error == f"feature 'sepal_width' is {shown}, {NON_FINITE_HINT}"
    assert (result.id, result.model) == ("r", "iris")


def test_a_number_too_long_for_any_parser_is_located():
    raw = b'{"id": "r", "model": "iris", "features": {"sepal_length": ' + b"1" * 5000 + b"}}"
    assert rejected(raw, Reason.NON_FINITE).error == (
        "the request holds a number beyond the 64-bit float range (line 1 column 59); send "
        "finite numbers (features must fit float32: ±3.403e+38)")


@pytest.mark.parametrize("field,literal", [("deadline_ms", b"1" + b"0" * 400),
                                           ("note", b"NaN"), ("note", b"[1e999]")])
def test_non_json_numbers_outside_the_features_are_not_served(field, literal):
    raw = orjson.dumps(tabular())[:-1] + b', "' + field.encode() + b'": ' + literal + b"}"
    result = rejected(raw, Reason.NON_FINITE)
    assert result.error.startswith(
        "the request holds NaN, Infinity or a number beyond the 64-bit float range outside "
        "its features (")
    assert result.error.endswith("); JSON has no such numbers: send only finite ones")
    assert result.id == "r"


DUPLICATE = "appears twice in one JSON object, so the request is ambiguous (parsers disagree " \
    "on which value counts); send each key once"


@pytest.mark.parametrize("raw,key", [
    (b'{"id": "a", "id": "b", "model": "iris", "features": ' + orjson.dumps(FEATURES) + b"}",
     "id"),
    (b'{"id": "r", "model": "iris", "features": {"sepal_length": 1}, "features": '
     + orjson.dumps(FEATURES) + b"}", "features"),
    (b'{"id": "r", "model": "iris", "features": {"sepal_length": 1, "sepal_width": 1, '
     + b'"petal_length": 1, "petal_width": 1, "sepal_length": 2}}', "sepal_length"),
    # The second key is an escaped "features": orjson reads it as the same key.
    (b'{"id": "r", "model": "iris", "features": ' + orjson.dumps(FEATURES)
     + b', "\\u0066eatures": {}}', "features"),
    # An escaped colon in the id must not hide a duplicate from the byte count.
    (b'{"id": "r\\u003a1", "model": "iris", "features": {"sepal_length": 1, "sepal_width": 1, '
     + b'"petal_length": 1, "petal_width": 1, "petal_width": 1}}', "petal_width"),
    # Also where orjson fails first (NaN) and Python's json reads the request.
    (b'{"id": "r", "id": "s", "model": "iris", "features": {"sepal_length": NaN}}', "id"),
    (b'{"id": "r", "model_name": "iris", "inputs": [{"name": "input-0", "shape": [1, 4], '
     + b'"datatype": "FP32", "data": [1, 2, 3, 4], "data": [5, 6, 7, 8]}]}', "data"),
])
def test_duplicate_keys_are_rejected_as_ambiguous(raw, key):
    result = rejected(raw, Reason.DUPLICATE_KEY)
    assert result.error == f"the key {key!r} {DUPLICATE}"
    assert result.id is None  # which id would it be?


@pytest.mark.parametrize("request_id", ["topic:0:12", "a:b:c:d:e", "r\\u00e9:1"])
def test_colons_in_strings_are_not_taken_for_duplicate_keys(request_id):
    raw = b'{"id": "' + request_id.encode() + b'", "model": "iris", "tenant": "t:1", "features": ' \
        + orjson.dumps(FEATURES) + b"}"
    assert isinstance(run(raw), Request)


def test_too_many_features_are_counted_not_all_listed():
    features = dict(FEATURES) | {f"f{i:04}": 1.0 for i in range(5000)}
    result = rejected({"id": "r", "model": "iris", "features": features}, Reason.SCHEMA_MISMATCH)
    assert result.error == (
        "unexpected features: f0000, f0001, f0002, f0003, f0004, f0005, f0006, f0007, f0008, "
        "f0009 and 4990 more; the model takes 4 features: sepal_length, sepal_width, "
        "petal_length, petal_width")


def test_too_many_oip_inputs_are_counted_not_all_listed():
    inputs = [{"name": f"x{i}", "shape": [1], "datatype": "FP32", "data": [1]} for i in range(3000)]
    result = rejected({"id": "r", "model_name": "iris", "inputs": inputs}, Reason.SCHEMA_MISMATCH,
                      max_bytes=1 << 20)
    assert result.error.startswith("missing features: sepal_length, sepal_width, petal_length, "
                                   "petal_width; unexpected features: x0, x1, x10, x100, x1000, ")
    assert "and 2990 more; the model takes 4 features:" in result.error


def many_inputs(n):
    return [{"name": f"x{i}", "shape": [1], "datatype": "FP32", "data": [1]} for i in range(n)]


@pytest.mark.parametrize("body", [
    lambda n: tabular(features={f"f{i}": 1.0 for i in range(n)}),
    lambda n: {"id": "r", "model_name": "iris", "inputs": many_inputs(n)},
])
def test_more_features_than_the_limit_are_refused_before_they_are_read(body):
    result = decode(orjson.dumps(body(11)), CATALOG, 65536, max_features=10)
    assert result == Rejection(Reason.TOO_MANY_FEATURES, (
        "the request holds 11 features, more than the 10 a request may "
        "(STREAMSERVE_MAX_FEATURES); the model takes 4: send only those"), id="r", model="iris")
    at_the_limit = decode(orjson.dumps(body(10)), CATALOG, 65536, max_features=10)
    assert at_the_limit.reason is Reason.SCHEMA_MISMATCH  # its names are read


def test_a_model_wider_than_the_feature_limit_tells_the_operator():
    result = decode(orjson.dumps(tabular()), CATALOG, 65536, max_features=3)
    assert result.reason is Reason.TOO_MANY_FEATURES
    assert result.error.endswith("the model takes 4: the operator must raise "
                                 "STREAMSERVE_MAX_FEATURES to serve it")


def test_overlong_id():
    result = rejected(tabular(id="x" * 10_000), Reason.INVALID_ID)
    assert result.error == ("'id' must be a non-empty string of at most 256 characters, got a "
                            f"string of 10000 characters starting {'x' * 40!r}")


def test_overlong_model_name_is_not_echoed_or_carried():
    result = rejected(tabular(model="m" * 10_000), Reason.UNKNOWN_MODEL)
    assert result.error == (f"'model' is a string of 10000 characters starting {'m' * 40!r}, "
                            "over the 256-character limit for model names; served models: iris")
    assert (result.id, result.model) == ("r", None)


def test_overlong_feature_name_is_cut_short():
    result = rejected(tabular(features=FEATURES | {"y" * 10_000: 1}), Reason.SCHEMA_MISMATCH)
    assert result.error.startswith(f"unexpected features: {'y' * 40}… (10000 characters); ")


@pytest.mark.parametrize("field,says", [
    ("version", ("the version must be at most 256 characters, such as \"3\", got a string "
                 "of 300 characters starting ")),
    ("tenant", ("'tenant' must be a string of at most 256 characters, got a string of 300 "
                "characters starting "))])
def test_overlong_version_and_tenant(field, says):
    assert rejected(tabular(**{field: "v" * 300}), Reason.SCHEMA_MISMATCH).error.startswith(says)


def test_huge_integer_id_is_described_not_printed():
    raw = b'{"id": ' + b"7" * 400 + b', "model": "iris", "features": {"sepal_length": NaN}}'
    assert rejected(raw, Reason.INVALID_ID).error == \
        "'id' must be a non-empty string of at most 256 characters, got an integer of about 401 digits"


@pytest.mark.parametrize("raw,byte", [(b"\xff", "byte 0 is 0xff"),
                                      (b'{"id": "r\xc3"}', "byte 9 is 0xc3"),
                                      # A surrogate written raw (CESU-8), not escaped.
                                      (b'{"id": "\xed\xa0\x80"}', "byte 8 is 0xed")])
def test_bytes_that_are_not_utf8_are_located(raw, byte):
    assert rejected(raw, Reason.INVALID_UTF8).error == \
        f"the request is not valid UTF-8 ({byte}); encode the JSON as UTF-8"


@pytest.mark.parametrize("raw,where", [
    (b'{"id": "\\ud800", "model": "iris", "features": {}}', " (line 1 column 9)"),
    (b'{"id": "r", "model": "iris", "features": {"\\udfff": 1}}', " (line 1 column 44)"),
    # NaN makes orjson stop first, so the surrogate cannot be located; it is still found.
    (b'{"id": "r", "model": "iris", "features": {"sepal_length": NaN}, "t": "\\ud800"}', ""),
])
def test_lone_surrogate_escapes_are_rejected_before_they_reach_a_dead_letter(raw, where):
    result = rejected(raw, Reason.INVALID_UTF8)
    assert result.error == ('the request holds a lone UTF-16 surrogate escape such as "\\ud800"'
                            f"{where}, which is no character; send characters as UTF-8, or "
                            "escape one beyond U+FFFF as a surrogate pair")
    assert result.id is None


def test_a_surrogate_pair_is_a_character():
    assert run(b'{"id": "\\ud83d\\ude00", "model": "iris", "features": '
               + orjson.dumps(FEATURES) + b"}").id == "\U0001F600"


@pytest.mark.parametrize("tensor,says", [
    ({"name": ["input-0"], "datatype": "FP32"}, "each input's 'name' must be a string, got a list"),
    ({"name": "input-0", "datatype": ["FP32"]}, "input 'input-0' has datatype a list; use one of"),
    ({"name": "n" * 100, "datatype": "FP32", "data": 1},
     f"input {'n' * 40!r}… (100 characters) needs 'data' as a list"),
])
def test_oip_fields_of_the_wrong_type(tensor, says):
    inputs = [{"shape": [1, 4], "data": [1, 2, 3, 4]} | tensor]
    result = rejected({"id": "r", "model_name": "iris", "inputs": inputs}, Reason.SCHEMA_MISMATCH)
    assert result.error.startswith(says), result.error
