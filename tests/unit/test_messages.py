import base64

import numpy as np
import orjson

from pipeline.messages import (
    ServingFacts,
    encode_dead_letter,
    encode_prediction,
    encode_sample,
)
from pipeline.redaction import Action, RedactedOriginal, Redactor
from pipeline.rejections import Reason, Rejection


def test_prediction_is_an_oip_response():
    probs = np.array([0.97, 0.02, 0.01], dtype=np.float32)
    msg = orjson.loads(encode_prediction("r-1", "iris", "3", probs, ("setosa", "versicolor", "virginica"),
                                         ServingFacts("stable", 64, 3.14159)))
    assert msg["id"] == "r-1" and msg["model_name"] == "iris" and msg["model_version"] == "3"
    probabilities, label = msg["outputs"]
    assert probabilities["name"] == "probabilities" and probabilities["shape"] == [1, 3]
    assert probabilities["datatype"] == "FP32"
    np.testing.assert_allclose(probabilities["data"], probs, rtol=1e-7)
    assert label == {"name": "label", "shape": [1], "datatype": "BYTES", "data": ["setosa"]}
    assert msg["parameters"] == {"route": "stable", "batch_size": 64, "latency_ms": 3.142}


def test_dead_letter_keeps_utf8_original_as_text():
    rejection = Rejection(Reason.UNKNOWN_MODEL, "model 'x' is not served here", id="r", model="x")
    msg = orjson.loads(encode_dead_letter(rejection, RedactedOriginal(b'{"id": "r", "model": "x"}')))
    assert msg == {"id": "r", "reason": "unknown_model", "error": "model 'x' is not served here",
                   "model": "x", "original": '{"id": "r", "model": "x"}', "original_encoding": "utf-8"}


def test_dead_letter_keeps_binary_original_as_base64():
    raw = b"\xff\xfe{"
    msg = orjson.loads(encode_dead_letter(Rejection(Reason.INVALID_UTF8, "not utf-8"), RedactedOriginal(raw)))
    assert msg["original_encoding"] == "base64" and base64.b64decode(msg["original"]) == raw
    assert msg["id"] is None and "model" not in msg


def test_dead_letter_carries_the_redacted_original_or_says_it_was_withheld():
    redactor = Redactor({"ssn": Action.MASK})
    raw = b'{"id": "r", "model": "x", "features": {"ssn": "078-05-1120", "age": 41}}'
    rejection = Rejection(Reason.UNKNOWN_MODEL, "model 'x' is not served here", id="r", model="x")
    msg = orjson.loads(encode_dead_letter(rejection, redactor.original(raw)))
    assert orjson.loads(msg["original"])["features"] == {"ssn": "***", "age": 41}
    cut = orjson.loads(encode_dead_letter(Rejection(Reason.MALFORMED_JSON, "cut"),
                                          redactor.original(raw[:-3])))
    assert cut["original"] == "" and cut["original_encoding"] == "withheld"
    assert b"078-05" not in encode_dead_letter(rejection, redactor.original(raw))


def test_sample_holds_the_features_given_and_the_prediction():
    msg = orjson.loads(encode_sample("r-1", "iris", "3", 1700000000.25, {"a": 1.5, "b": "***"},
                                     np.array([0.1, 0.9], np.float32), ("no", "yes")))
    assert msg["features"] == {"a": 1.5, "b": "***"} and msg["timestamp"] == 1700000000.25
    assert msg["model_name"] == "iris" and msg["outputs"][1]["data"] == ["yes"]
