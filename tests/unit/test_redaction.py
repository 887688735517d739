import copy

import orjson
import pytest

from pipeline.redaction import (
    HASH_PREFIX,
    MASKED,
    Action,
    RedactedOriginal,
    RedactionError,
    Redactor,
    parse_rules,
)
from pipeline.rejections import REDACTED_VALUE, Reason, Rejection

KEY = b"k" * 32
CARD = "4111-1111-1111-1111"
RADIUS = 123.456789


def tabular():
    return {"id": "r-1", "model": "cancer", "version": "2", "tenant": "acme",
            "features": {"mean_radius": RADIUS, "card": CARD, "mean_texture": 10.5}}


def oip_per_feature():
    return {"id": "r-1", "model_name": "cancer", "model_version": "2",
            "inputs": [{"name": "mean_radius", "shape": [1], "datatype": "FP64", "data": [RADIUS]},
                       {"name": "card", "shape": [1], "datatype": "BYTES", "data": [CARD]},
                       {"name": "mean_texture", "shape": [1], "datatype": "FP32", "data": [10.5]}]}


def oip_tensor():
    return {"id": "r-1", "model_name": "cancer",
            "inputs": [{"name": "input-0", "shape": [1, 3], "datatype": "FP64",
                        "data": [RADIUS, 7.0, 10.5]}]}


def redactor(action):
    return Redactor({"mean_radius": action, "card": action}, KEY)


def planted_absent(out):
    dumped = orjson.dumps(out)
    return b"123.456789" not in dumped and CARD.encode() not in dumped


# --- rules -------------------------------------------------------------------------

def test_parse_rules_is_whitespace_tolerant_and_case_insensitive():
    assert parse_rules(" a = drop ,b=HASH,\tc=mask , ", "X") == {
        "a": Action.DROP, "b": Action.HASH, "c": Action.MASK}
    assert parse_rules("", "X") == {} and parse_rules("  ", "X") == {}


@pytest.mark.parametrize("text, message", [
    ("mean_radius=blur",
     "STREAMSERVE_REDACT: 'mean_radius=blur' has an unknown action 'blur'; use drop, hash or mask"),
    ("mean_radius", "STREAMSERVE_REDACT: 'mean_radius' has no '='; write field=action"),
    ("=drop", "STREAMSERVE_REDACT: '=drop' has no field name; write field=action"),
    ("a=", "STREAMSERVE_REDACT: 'a=' has no action; use drop, hash or mask"),
    ("a=drop,a=mask", "STREAMSERVE_REDACT: field 'a' is given twice (drop and mask)"),
])
def test_bad_rules_name_the_part_and_the_fix(text, message):
    with pytest.raises(RedactionError) as e:
        parse_rules(text, "STREAMSERVE_REDACT")
    assert str(e.value).startswith(message)


def test_hash_without_a_key_is_refused():
    with pytest.raises(RedactionError,
                       match="STREAMSERVE_REDACTION_KEY or STREAMSERVE_REDACTION_KEY_FILE"):
        Redactor({"card": Action.HASH})
    Redactor({"card": Action.DROP, "zip": Action.MASK})  # no key needed


def test_rules_are_validated_and_copied():
    with pytest.raises(RedactionError, match="unknown action 'blur'"):
        Redactor({"card": "blur"})
    with pytest.raises(RedactionError, match="non-empty strings"):
        Redactor({"": Action.DROP})
    rules = {"card": "mask"}
    r = Redactor(rules)
    rules["card"] = "drop"
    assert r.rules == {"card": Action.MASK}


def test_repr_never_shows_the_key():
    secret = b"super-secret-redaction-key"
    r = Redactor({"card": Action.HASH}, secret)
    assert "super-secret" not in repr(r) and "key" not in repr(r) and "card" in repr(r)


# --- the hash ------------------------------------------------------------------------

def test_hash_is_deterministic_per_key_and_differs_across_keys():
    a, a2, b = Redactor({}, KEY), Redactor({}, KEY), Redactor({}, b"other")
    assert a.hash(CARD) == a2.hash(CARD) != b.hash(CARD)
    assert a.hash(CARD) != a.hash("4111-1111-1111-1112")
    assert a.hash(CARD).startswith(HASH_PREFIX) and len(a.hash(CARD)) == len(HASH_PREFIX) + 32


def test_hash_matches_the_documented_formula():
    import hashlib
    import hmac
    expected = hmac.new(KEY, orjson.dumps([RADIUS]), hashlib.sha256).hexdigest()[:32]
    assert Redactor({}, KEY).hash([RADIUS]) == "hmac-sha256:" + expected


# --- fields and tabular requests ------------------------------------------------------

def test_fields_applies_each_action():
    values = {"a": 1, "b": 2, "c": 3, "d": 4}
    out = Redactor({"a": Action.DROP, "b": Action.HASH, "c": Action.MASK}, KEY).fields(values)
    assert out == {"b": Redactor({}, KEY).hash(2), "c": MASKED, "d": 4}
    assert values == {"a": 1, "b": 2, "c": 3, "d": 4}


@pytest.mark.parametrize("action", list(Action))
@pytest.mark.parametrize("make", [tabular, oip_per_feature, oip_tensor])
def test_planted_values_never_survive_and_the_argument_is_unchanged(action, make):
    body = make()
    before = copy.deepcopy(body)
    out = redactor(action).request(body)
    assert body == before
    assert planted_absent(out)
    assert out["id"] == "r-1"


def test_tabular_actions():
    drop = redactor(Action.DROP).request(tabular())
    assert drop == {"id": "r-1", "model": "cancer", "version": "2", "tenant": "acme",
                    "features": {"mean_texture": 10.5}}
    hashed = redactor(Action.HASH).request(tabular())
    assert hashed["features"] == {"mean_radius": Redactor({}, KEY).hash(RADIUS),
                                  "card": Redactor({}, KEY).hash(CARD), "mean_texture": 10.5}
    masked = redactor(Action.MASK).request(tabular())
    assert masked["features"] == {"mean_radius": MASKED, "card": MASKED, "mean_texture": 10.5}


def test_top_level_fields_are_redacted_but_routing_fields_never():
    body = {"id": "r-1", "model": "m", "version": "1", "tenant": "acme", "features": {}}
    r = Redactor({"tenant": Action.MASK, "id": Action.DROP, "model": Action.DROP,
                  "version": Action.DROP}, KEY)
    assert r.request(body) == {"id": "r-1", "model": "m", "version": "1", "tenant": MASKED,
                               "features": {}}


def test_inactive_redactor_returns_an_equal_copy():
    body = tabular()
    out = Redactor({}).request(body)
    assert out == body and out is not body


# --- OIP requests ---------------------------------------------------------------------

def test_oip_per_feature_actions():
    drop = redactor(Action.DROP).request(oip_per_feature())
    assert [i["name"] for i in drop["inputs"]] == ["mean_texture"]
    hashed = redactor(Action.HASH).request(oip_per_feature())
    radius, card, texture = hashed["inputs"]
    assert radius["data"] == Redactor({}, KEY).hash([RADIUS])  # the data list as one value
    assert card["data"] == Redactor({}, KEY).hash([CARD])
    assert radius["shape"] == [1] and texture["data"] == [10.5]
    masked = redactor(Action.MASK).request(oip_per_feature())
    assert [i["data"] for i in masked["inputs"]] == [MASKED, MASKED, [10.5]]
    assert masked["model_name"] == "cancer" and masked["model_version"] == "2"


@pytest.mark.parametrize("data", [[RADIUS, 7.0, 10.5], [[RADIUS, 7.0, 10.5]], {"x": RADIUS}])
def test_an_unattributable_tensor_is_masked_when_any_rule_is_set(data):
    body = {"id": "r", "model_name": "m", "inputs": [{"name": "input-0", "shape": [1, 3],
                                                      "datatype": "FP64", "data": data}]}
    out = Redactor({"unrelated": Action.DROP}).request(body)
    assert out["inputs"][0] == {"name": "input-0", "shape": [1, 3], "datatype": "FP64",
                                "data": MASKED}
    assert Redactor({}).request(body) == body


def test_a_one_feature_tensor_under_another_name_is_masked():
    """Review section 11: a one-feature model's value sent as a [1, 1] tensor named "x" was
    served as its (sensitive) feature, yet left in clear as a lone named value."""
    body = {"id": "p", "model_name": "m", "inputs": [{"name": "x", "datatype": "FP64",
                                                      "shape": [1, 1], "data": [123456789]}]}
    assert Redactor({"ssn": Action.HASH}, b"k").request(body)["inputs"][0]["data"] == MASKED
    named = {**body, "inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": [7]}]}
    assert Redactor({"ssn": Action.HASH}, b"k").request(named) == named  # one named feature


def test_a_tensor_named_by_a_rule_gets_that_rule():
    body = oip_tensor()
    out = Redactor({"input-0": Action.HASH}, KEY).request(body)
    assert out["inputs"][0]["data"] == Redactor({}, KEY).hash([RADIUS, 7.0, 10.5])


@pytest.mark.parametrize("body, expected", [
    ({"id": "r", "features": 5}, {"id": "r", "features": 5}),
    ({"id": "r", "features": [RADIUS, CARD]}, {"id": "r", "features": MASKED}),
    ({"id": "r", "features": None}, {"id": "r", "features": None}),
    ({"id": "r", "inputs": {"card": [CARD]}}, {"id": "r", "inputs": MASKED}),
    ({"id": "r", "inputs": "x"}, {"id": "r", "inputs": "x"}),
    ({"id": "r", "inputs": [7, [CARD], {"data": [RADIUS, 1.0]}, {"name": ["card"], "data": [1.0]},
                            {"name": "card"}]},
     {"id": "r", "inputs": [7, MASKED, {"data": MASKED}, {"name": ["card"], "data": [1.0]},
                            {"name": "card"}]}),
    ({"id": "r", "inputs": [{"name": "x", "data": 3.0}]},
     {"id": "r", "inputs": [{"name": "x", "data": 3.0}]}),
])
def test_odd_shapes_never_raise_and_containers_are_masked(body, expected):
    before = copy.deepcopy(body)
    assert Redactor({"card": Action.MASK}).request(body) == expected
    assert body == before


# --- dead-letter originals ------------------------------------------------------------

def test_original_of_valid_json_is_the_redacted_request():
    raw = orjson.dumps(tabular())
    result = redactor(Action.MASK).original(raw)
    assert result == RedactedOriginal(orjson.dumps(redactor(Action.MASK).request(tabular())))
    assert not result.withheld and planted_absent(orjson.loads(result.value))


def test_original_with_nan_stays_readable_and_redacted():
    raw = b'{"id": "r", "model": "m", "features": {"card": "' + CARD.encode() + b'", "x": NaN}}'
    result = Redactor({"card": Action.DROP}).original(raw)
    assert not result.withheld and CARD.encode() not in result.value and b"NaN" in result.value


@pytest.mark.parametrize("raw", [
    b'{"id": "r", "features": {"card": "' + CARD.encode() + b'"',  # malformed JSON
    b"\xff\xfe" + CARD.encode(),  # invalid UTF-8
    b'["' + CARD.encode() + b'"]',  # not an object
    b'"' + CARD.encode() + b'"',
])
def test_original_that_cannot_be_parsed_is_withheld(raw):
    assert Redactor({"card": Action.MASK}).original(raw) == RedactedOriginal(None, withheld=True)


def test_original_passes_through_when_inactive_or_absent():
    raw = b"\xff not json " + CARD.encode()
    assert Redactor({}).original(raw) == RedactedOriginal(raw, withheld=False)
    assert redactor(Action.DROP).original(None) == RedactedOriginal(None, withheld=False)
    assert redactor(Action.DROP).original(b"") == RedactedOriginal(b"", withheld=False)


# --- merging --------------------------------------------------------------------------

def test_merged_keeps_the_strictest_action():
    a = Redactor({"x": Action.MASK, "y": Action.HASH, "z": Action.DROP, "only_a": Action.MASK}, KEY)
    b = Redactor({"x": Action.HASH, "y": Action.DROP, "z": Action.MASK, "only_b": Action.HASH}, KEY)
    expected = {"x": Action.MASK, "y": Action.DROP, "z": Action.DROP,
                "only_a": Action.MASK, "only_b": Action.HASH}
    assert a.merged(b).rules == expected and b.merged(a).rules == expected
    assert a.merged(b).key == KEY


def test_merged_takes_the_key_that_is_set_and_refuses_two_different_keys():
    keyless = Redactor({"x": Action.MASK})
    assert keyless.merged(Redactor({"y": Action.HASH}, KEY)).key == KEY
    with pytest.raises(RedactionError, match="different keys"):
        Redactor({}, KEY).merged(Redactor({}, b"other"))
    assert not Redactor({}).merged(Redactor({})).active


# --- schema marks ---------------------------------------------------------------------

def test_a_mark_hashes_with_a_key_and_masks_without_one():
    assert Redactor({}, KEY).marking(["card"]).rules == {"card": Action.HASH}
    assert Redactor({}).marking(["card"]).rules == {"card": Action.MASK}
    assert not Redactor({}, KEY).marking([]).active


@pytest.mark.parametrize("rule, key, expected", [
    (Action.DROP, KEY, Action.DROP), (Action.MASK, KEY, Action.MASK),
    (Action.HASH, KEY, Action.HASH), (Action.HASH, b"", None), (Action.MASK, b"", Action.MASK),
])
def test_a_rule_may_be_stricter_than_a_mark_never_weaker(rule, key, expected):
    if expected is None:  # a hash rule needs a key: refused before any mark applies
        with pytest.raises(RedactionError):
            Redactor({"card": rule}, key)
        return
    marked = Redactor({"card": rule, "zip": Action.MASK}, key).marking(["card", "mean_radius"])
    assert marked.rules == {"card": expected, "zip": Action.MASK,
                            "mean_radius": Action.HASH if key else Action.MASK}
    assert marked.key == key


# --- error sentences ------------------------------------------------------------------

QUOTING = Rejection(Reason.SCHEMA_MISMATCH, f"feature 'card' must be a number, got the string {CARD!r}",
                    id="r", model="m",
                    quotes=("card", f"feature 'card' must be a number, got {REDACTED_VALUE}"))


@pytest.mark.parametrize("action", list(Action))
def test_an_error_quoting_a_redacted_field_is_worded_without_the_value(action):
    out = Redactor({"card": action}, KEY).rejection(QUOTING)
    assert out == Rejection(Reason.SCHEMA_MISMATCH, QUOTING.quotes[1], id="r", model="m")
    assert CARD not in out.error


def test_an_error_quoting_a_value_no_field_holds_is_worded_without_it_when_any_rule_is_set():
    whole = Rejection(Reason.MALFORMED_JSON, f"the request must be a JSON object, got {CARD!r}",
                      quotes=(None, f"the request must be a JSON object, got {REDACTED_VALUE}"))
    assert Redactor({"zip": Action.MASK}).rejection(whole).error == whole.quotes[1]
    assert Redactor({}).rejection(whole) is whole


def test_an_error_quoting_another_field_or_none_is_kept():
    assert Redactor({"zip": Action.DROP}).rejection(QUOTING) is QUOTING
    assert Redactor({}).rejection(QUOTING) is QUOTING
    plain = Rejection(Reason.UNKNOWN_MODEL, "model 'x' is not served here", id="r", model="x")
    assert Redactor({"card": Action.DROP}).rejection(plain) is plain
