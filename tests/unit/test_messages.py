import base64

import numpy as np
import orjson

from pipeline.messages import (
    PredictionEncoder,
    ServingFacts,
    agreement,
    encode_dead_letter,
    encode_prediction,
    encode_sample,
    values_agree,
)
from pipeline.redaction import Action, RedactedOriginal, Redactor
from pipeline.rejections import Reason, Rejection
from pipeline.schema import OutputSchema


def test_prediction_is_an_oip_response():
    probs = np.array([0.97, 0.02, 0.01], dtype=np.float32)
    msg = orjson.loads(encode_prediction("r-1", "iris", "3", probs,
                                         OutputSchema(("setosa", "versicolor", "virginica")),
                                         ServingFacts("stable", 64, 3.14159)))
    assert msg["id"] == "r-1" and msg["model_name"] == "iris" and msg["model_version"] == "3"
    probabilities, label = msg["outputs"]
    assert probabilities["name"] == "probabilities" and probabilities["shape"] == [1, 3]
    assert probabilities["datatype"] == "FP32"
    np.testing.assert_allclose(probabilities["data"], probs, rtol=1e-7)
    assert label == {"name": "label", "shape": [1], "datatype": "BYTES", "data": ["setosa"]}
    assert msg["parameters"] == {"route": "stable", "batch_size": 64, "latency_ms": 3.142}


def test_the_batch_encoder_writes_the_bytes_of_the_whole_response_object():
    """PredictionEncoder assembles responses from parts encoded once; its bytes must be
    those of orjson.dumps of the response, for ids, names and labels that need escaping."""
    rng = np.random.default_rng(7)
    for outputs in (OutputSchema(("a", 'quo"te', "ü\u2028")), OutputSchema(targets=1),
                    OutputSchema(targets=3)):
        answers = np.stack([rng.normal(scale=10.0 ** rng.integers(-8, 8), size=outputs.width)
                            for _ in range(200)]).astype(np.float32)
        ids = [f'r-{i}"\\é\u2028' for i in range(200)]
        latencies = rng.exponential(10, size=200).tolist()
        wholes = [orjson.dumps({
            "id": request_id, "model_name": 'm"x', "model_version": "v3",
            "outputs": ([{"name": "value", "shape": [outputs.targets], "datatype": "FP32",
                          "data": answer.tolist()}] if outputs.is_regressor else
                        [{"name": "probabilities", "shape": [1, outputs.width], "datatype": "FP32",
                          "data": answer.tolist()},
                         {"name": "label", "shape": [1], "datatype": "BYTES",
                          "data": [outputs.labels[int(np.argmax(answer))]]}]),
            "parameters": {"route": "canary", "batch_size": 17, "latency_ms": round(latency, 3)}})
            for request_id, answer, latency in zip(ids, answers, latencies, strict=True)]
        assert PredictionEncoder('m"x', "v3", outputs, "canary", 17).encode(ids, answers, latencies) == wholes


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
                                     np.array([0.1, 0.9], np.float32), OutputSchema(("no", "yes"))))
    assert msg["features"] == {"a": 1.5, "b": "***"} and msg["timestamp"] == 1700000000.25
    assert msg["model_name"] == "iris" and msg["outputs"][1]["data"] == ["yes"]


def test_a_regressors_prediction_is_one_fp32_value_output_per_target():
    one = orjson.loads(encode_prediction("r-1", "price", "1", np.array([12.5], np.float32),
                                         OutputSchema(targets=1), ServingFacts("stable", 8, 1.0)))
    assert one["outputs"] == [{"name": "value", "shape": [1], "datatype": "FP32", "data": [12.5]}]
    two = orjson.loads(encode_prediction("r-1", "price", "1", np.array([1.5, -2.0], np.float32),
                                         OutputSchema(targets=2), ServingFacts("stable", 8, 1.0)))
    assert two["outputs"] == [{"name": "value", "shape": [2], "datatype": "FP32",
                               "data": [1.5, -2.0]}]


def test_regressors_agree_within_one_percent_and_never_with_a_classifier():
    value, other = OutputSchema(targets=1), OutputSchema(targets=2)
    agree, difference = agreement(np.array([100.0]), value, np.array([100.9]), value)
    assert agree is True and abs(difference - 0.9) < 1e-9
    agree, difference = agreement(np.array([100.0]), value, np.array([102.0]), value)
    assert agree is False and difference == 2.0
    assert agreement(np.array([1.0, 2.0]), other, np.array([1.0]), value) == (False, None)
    assert agreement(np.array([0.3, 0.7]), OutputSchema(("no", "yes")), np.array([0.7]), value) == \
        (False, None)
    assert values_agree([0.0], [5e-7]) and not values_agree([0.0], [1e-3])
    assert not values_agree([1.0], [1.0, 1.0])

