import base64
import hashlib
import zlib

import numpy as np
import orjson
import pytest

from pipeline import outputs
from pipeline.catalog import Catalog
from pipeline.decode import Request, decode
from pipeline.drift import CodedRows
from pipeline.messages import PredictionEncoder
from pipeline.isolation import RowFailure
from pipeline.messages import SOURCE_OFFSET_HEADER, SOURCE_PARTITION_HEADER, SOURCE_TOPIC_HEADER
from pipeline.outputs import Incoming, Kind, Outgoing, dead_letter_key
from pipeline.redaction import MASKED, Action, Redactor
from pipeline.rejections import Reason, Rejection
from pipeline.routing import DeploymentSpec, Route
from pipeline.schema import Feature, InputSchema, OutputSchema

SCHEMA = InputSchema((Feature("age"), Feature("ssn")))
CATALOG = Catalog({"m": {"2": SCHEMA}}, {"m": DeploymentSpec("m", "2")})
LABELS = OutputSchema(("no", "yes"))
SENT_AT = 1_700_000_000.0
NO_RULES = Redactor({})


def incoming(value: bytes | None, partition: int = 4, offset: int = 17) -> Incoming:
    return Incoming("s.requests", partition, offset, SENT_AT, value)


REQUEST = Request("r-1", "m", "2", [41.0, 7.0])
RECORD = incoming(b'{"id": "r-1", "model": "m", "features": {"age": 41, "ssn": 7}}')
SOURCE = [(SOURCE_TOPIC_HEADER, b"s.requests"), (SOURCE_PARTITION_HEADER, b"4"),
          (SOURCE_OFFSET_HEADER, b"17")]


def test_dead_letter_key_falls_back_to_source_position():
    assert dead_letter_key(Rejection(Reason.MISSING_ID, "e"), "t", 2, 17) == b"t:2:17"
    assert dead_letter_key(Rejection(Reason.UNKNOWN_MODEL, "e", id="r-9"), "t", 2, 17) == b"r-9"


def test_a_too_large_record_is_dead_lettered_keyed_by_where_it_was_read():
    record = incoming(b'{"id": "r-1", "model": "m", "features": {"age": 41, "ssn": 7}}')
    rejection = decode(record.value, CATALOG, max_bytes=10)
    out = outputs.dead_letter(record, rejection, "s.deadletter", NO_RULES, max_original_bytes=10)
    assert (out.kind, out.topic, out.partition, out.key) == \
        (Kind.DEAD_LETTER, "s.deadletter", 4, b"s.requests:4:17")
    assert out.headers == SOURCE and out.request_timestamp == SENT_AT
    assert (out.model, out.version, out.reason, out.route, out.quota) == \
        ("", "", Reason.TOO_LARGE, "", "")
    message = orjson.loads(out.value)
    assert message["reason"] == "too_large" and message["id"] is None
    # Withheld unread: its size and digest say what it was.
    assert (message["original"], message["original_encoding"]) == ("", "withheld")
    assert message["original_bytes"] == len(record.value)
    assert message["original_sha256"] == hashlib.sha256(record.value).hexdigest()


@pytest.mark.parametrize("payload", [b'"' * 600_000, b"\xff" * 800_000, b"\x01" * 200_000,
                                     b'{"id": "x", "pad": "' + b'\\"' * 300_000 + b'"}'],
                         ids=["quotes", "not-utf8", "control-bytes", "escaped-quotes"])
def test_a_hostile_oversized_request_makes_a_small_dead_letter(payload):
    """Review section 1: escaped as JSON or base64, these originals grew past the broker's
    1 MiB limit, so their dead letters were refused and sent again forever."""
    record = incoming(payload)
    out = outputs.dead_letter(record, decode(payload, CATALOG, 65536), "s.deadletter",
                              Redactor({"ssn": Action.DROP}), max_original_bytes=65536)
    assert len(out.value) < 1024 and orjson.loads(out.value)["reason"] == "too_large"
    assert orjson.loads(out.value)["original_bytes"] == len(payload)


def test_an_original_within_the_limit_is_kept():
    out = outputs.dead_letter(RECORD, Rejection(Reason.MODEL_ERROR, "boom", id="r-1"),
                              "s.deadletter", NO_RULES, max_original_bytes=len(RECORD.value))
    message = orjson.loads(out.value)
    assert message["original"] == RECORD.value.decode() and message["original_encoding"] == "utf-8"
    assert "original_sha256" not in message


def test_an_unreadable_record_keeps_its_bytes_in_base64():
    record = incoming(b"\xff\xfe{", partition=0, offset=3)
    out = outputs.dead_letter(record, decode(record.value, CATALOG, 65536), "s.deadletter", NO_RULES,
                              max_original_bytes=65536)
    assert out.key == b"s.requests:0:3" and out.partition == 0 and out.reason is Reason.INVALID_UTF8
    message = orjson.loads(out.value)
    assert message["original_encoding"] == "base64"
    assert base64.b64decode(message["original"]) == b"\xff\xfe{"


def test_a_dead_letter_names_its_request_and_hides_what_the_redactor_hides():
    rejection = Rejection(Reason.MODEL_ERROR, "boom", id="r-1", model="m")
    out = outputs.dead_letter(RECORD, rejection, "s.deadletter", Redactor({"ssn": Action.MASK}),
                              max_original_bytes=65536, version="2", route=Route.CANARY,
                              quota="acme")
    assert out.key == b"r-1" and out.model == "m" and out.version == "2"
    assert out.route == "canary" and out.quota == "acme"
    original = orjson.loads(orjson.loads(out.value)["original"])
    assert original["features"] == {"age": 41, "ssn": MASKED}


def test_a_prediction_goes_to_its_requests_partition_keyed_by_id_with_the_source_headers():
    encoder = PredictionEncoder("m", "3", LABELS, str(Route.FALLBACK), batch_size=8)
    [out] = outputs.predictions([(RECORD, REQUEST)], np.array([[0.25, 0.75]], np.float32), encoder,
                                answered_at=SENT_AT + 0.125, topic="s.predictions", quotas=["acme"])
    assert (out.kind, out.topic, out.partition, out.key) == \
        (Kind.PREDICTION, "s.predictions", 4, b"r-1")
    assert out.headers == SOURCE
    assert (out.model, out.version, out.route, out.quota, out.reason) == \
        ("m", "3", "fallback", "acme", None)
    message = orjson.loads(out.value)
    assert message["model_version"] == "3" and message["outputs"][1]["data"] == ["yes"]
    assert message["parameters"] == {"route": "fallback", "batch_size": 8, "latency_ms": 125.0}


def test_a_sample_is_redacted_and_goes_to_the_samples_topic():
    out = outputs.sample(RECORD, REQUEST, SCHEMA, np.array([0.9, 0.1], np.float32), LABELS,
                         Redactor({"ssn": Action.DROP, "age": Action.MASK}), "s.samples")
    assert (out.kind, out.topic, out.partition, out.key, out.headers) == \
        (Kind.SAMPLE, "s.samples", 4, b"r-1", SOURCE)
    message = orjson.loads(out.value)
    assert message["features"] == {"age": MASKED}
    assert message["timestamp"] == SENT_AT and message["outputs"][1]["data"] == ["no"]
    assert b"7.0" not in out.value


def test_a_shadow_answer_goes_to_the_shadow_topic_beside_the_served_one():
    ours, theirs = np.array([0.2, 0.8], np.float32), np.array([0.6, 0.4], np.float32)
    out = outputs.shadow(RECORD, REQUEST, "4", "2", ours, theirs, LABELS, LABELS, "s.shadow")
    assert (out.kind, out.topic, out.partition, out.key, out.headers) == \
        (Kind.SHADOW, "s.shadow", 4, b"r-1", SOURCE)
    assert (out.model, out.version, out.route, out.quota) == ("m", "4", "shadow", "")
    message = orjson.loads(out.value)
    assert message["answered_by"] == "2" and message["agree"] is False
    failed = orjson.loads(outputs.shadow(RECORD, REQUEST, "4", "2", RowFailure("nan out"), theirs,
                                         LABELS, LABELS, "s.shadow").value)
    assert failed["error"] == "nan out" and "agree" not in failed


def test_a_shadow_with_other_labels_is_compared_by_label_name():
    """Review section 3: a shadow that adds a class made every batch holding its model fail
    (its probabilities could not be subtracted from stable's)."""
    theirs = np.array([0.3, 0.7], np.float32)  # stable: no, yes
    ours = np.array([0.1, 0.6, 0.3], np.float32)  # the shadow: no, yes, maybe
    message = orjson.loads(outputs.shadow(RECORD, REQUEST, "4", "2", ours, theirs,
                                          OutputSchema(("no", "yes", "maybe")), LABELS,
                                          "s.shadow").value)
    assert message["agree"] is True and "max_abs_difference" not in message
    assert message["outputs"][1]["data"] == ["yes"]


def test_a_versions_drift_rows_go_to_one_partition_dated_by_the_latest_request():
    rows = CodedRows(np.zeros((2, 3), np.uint8), np.array([0, 1], np.int32),
                     np.array([5, 9], np.int64), np.array([1_000, 2_500], np.int64))
    [out] = outputs.drift_rows("m", "2", rows, "s.drift-rows")
    assert (out.kind, out.topic, out.key, out.headers) == (Kind.DRIFT_ROWS, "s.drift-rows", b"m:2", [])
    assert out.partition == zlib.crc32(b"m:2") and out.request_timestamp == 2.5
    assert CodedRows.from_bytes(out.value).offsets.tolist() == [5, 9]


def test_drift_rows_are_split_to_stay_under_the_message_limit():
    """Review section 1: one message per version and flush grew with traffic and width
    (1,000 rows of 1,024 features: right at the broker's limit)."""
    n, width = 1000, 1024
    rows = CodedRows(np.ones((n, width), np.uint8), np.zeros(n, np.int32),
                     np.arange(n, dtype=np.int64), np.arange(n, dtype=np.int64) * 1000)
    messages = outputs.drift_rows("m", "2", rows, "s.drift-rows", max_bytes=256 * 1024)
    assert len(messages) > 1 and all(len(m.value) <= 256 * 1024 for m in messages)
    assert len({m.partition for m in messages}) == 1  # one window owner, rows in order
    parts = [CodedRows.from_bytes(m.value) for m in messages]
    assert np.concatenate([p.offsets for p in parts]).tolist() == list(range(n))
    assert messages[-1].request_timestamp == parts[-1].timestamps_ms.max() / 1000


def test_a_refused_answer_is_replaced_by_a_minimal_dead_letter_and_a_side_output_given_up():
    [served] = outputs.predictions([(RECORD, REQUEST)], np.array([[0.4, 0.6]], np.float32),
                                   PredictionEncoder("m", "2", LABELS, str(Route.STABLE), 1), SENT_AT,
                                   "s.predictions", quotas=["acme"])
    stand_in = outputs.stand_in(served, "MessageSizeTooLargeError()", "s.deadletter")
    assert (stand_in.kind, stand_in.topic, stand_in.key, stand_in.partition, stand_in.quota) == \
        (Kind.DEAD_LETTER, "s.deadletter", b"r-1", 4, "acme")
    message = orjson.loads(stand_in.value)
    assert (message["id"], message["reason"], message["original_encoding"]) == \
        ("r-1", "undeliverable", "withheld")
    assert "MessageSizeTooLargeError" in message["error"] and str(len(served.value)) in message["error"]
    dead = outputs.dead_letter(incoming(b"{}"), Rejection(Reason.MISSING_ID, "no id"),
                               "s.deadletter", NO_RULES, max_original_bytes=65536)
    replaced = orjson.loads(outputs.stand_in(dead, "refused", "s.deadletter").value)
    assert (replaced["id"], replaced["reason"]) == (None, "missing_id")  # the reason stays
    sample = outputs.sample(RECORD, REQUEST, SCHEMA, np.array([0.4, 0.6], np.float32),
                            LABELS, NO_RULES, "s.samples")
    assert outputs.stand_in(sample, "refused", "s.deadletter") is None


def answer(kind: Kind, model="m", version="2", route="stable", reason=None, quota="",
           at=SENT_AT) -> Outgoing:
    return Outgoing(kind, "t", 0, b"k", b"{}", [], model, version, reason, at, route, quota)


def test_tally_counts_per_label_set_and_names_only_served_models():
    delivered = [answer(Kind.PREDICTION, quota="acme"), answer(Kind.PREDICTION, at=SENT_AT - 1),
                 answer(Kind.PREDICTION, route="canary", version="3", at=SENT_AT + 5),
                 answer(Kind.SAMPLE),
                 answer(Kind.DEAD_LETTER, model="invented", version="", reason=Reason.UNKNOWN_MODEL),
                 answer(Kind.DEAD_LETTER, reason=Reason.MODEL_ERROR, quota="acme"),
                 answer(Kind.SHADOW, version="4", route="shadow")]
    counted = outputs.tally(delivered, {"m"}, now=SENT_AT + 1)
    assert counted.predictions == {("m", "2", "stable"): 2, ("m", "3", "canary"): 1}
    assert counted.dead_letters == {("", "", Reason.UNKNOWN_MODEL): 1,
                                    ("m", "2", Reason.MODEL_ERROR): 1}
    assert counted.samples == {"m": 1} and counted.answered == {"acme": 2}
    assert counted.latencies == {"m": [1.0, 2.0, 0.0]}  # a clock stepping back counts 0
