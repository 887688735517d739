"""Replies (pipeline.replies): predictions and dead letters read from their bytes and headers."""

import numpy as np
import pytest

from pipeline.messages import (
    ServingFacts,
    encode_dead_letter,
    encode_prediction,
    source_headers,
)
from pipeline.redaction import RedactedOriginal
from pipeline.rejections import Reason, Rejection
from pipeline.schema import OutputSchema
from pipeline.replies import (
    DeadLetter,
    MalformedReply,
    Prediction,
    SourcePosition,
    parse_reply,
    source_position,
)

LABELS = OutputSchema(("setosa", "versicolor", "virginica"))


def prediction_record(request_id: str, offset: int = 7) -> tuple[bytes, list]:
    value = encode_prediction(request_id, "iris", "3", np.array([0.9, 0.07, 0.03], np.float32), LABELS,
                              ServingFacts("canary", 16, 2.5))
    return value, source_headers("s.requests", 2, offset)


def dead_letter_record(request_id: str | None, raw: bytes = b"{}", offset: int = 8) -> tuple[bytes, list]:
    rejection = Rejection(Reason.UNKNOWN_MODEL, "model 'x' is not served here", id=request_id, model="x")
    return encode_dead_letter(rejection, RedactedOriginal(raw)), source_headers("s.requests", 1, offset)


def test_a_prediction_parses_into_a_typed_result():
    value, headers = prediction_record("r-1")
    prediction = parse_reply(value, dead_letter=False, headers=headers)
    assert isinstance(prediction, Prediction)
    assert (prediction.id, prediction.model, prediction.version) == ("r-1", "iris", "3")
    assert prediction.label == "setosa" and prediction.route == "canary" and prediction.batch_size == 16
    np.testing.assert_allclose(prediction.probabilities, [0.9, 0.07, 0.03], rtol=1e-6)
    assert prediction.latency_ms == 2.5 and prediction.round_trip_ms is None
    assert prediction.source == SourcePosition("s.requests", 2, 7)
    assert prediction.output("label").shape == (1,)
    with pytest.raises(KeyError, match="probabilities, label"):
        prediction.output("logits")


def test_a_regressors_prediction_parses_with_its_value():
    value = encode_prediction("r-1", "price", "2", np.array([12.5, -1.0], np.float32),
                              OutputSchema(targets=2), ServingFacts("stable", 4, 1.0))
    prediction = parse_reply(value, dead_letter=False, headers=source_headers("s.requests", 0, 1))
    assert isinstance(prediction, Prediction) and prediction.value == (12.5, -1.0)
    with pytest.raises(KeyError, match="has no output 'label'; it has value"):
        prediction.label


def test_a_dead_letter_parses_with_its_original_bytes():
    value, headers = dead_letter_record("r-2", raw=b'{"id": "r-2", "model": "x"}')
    dead = parse_reply(value, dead_letter=True, headers=headers)
    assert dead == DeadLetter("r-2", "unknown_model", "model 'x' is not served here", "x",
                              b'{"id": "r-2", "model": "x"}', source=SourcePosition("s.requests", 1, 8))
    assert dead.is_client_error
    binary = parse_reply(encode_dead_letter(Rejection(Reason.INVALID_UTF8, "e"), RedactedOriginal(b"\xff{")),
                         dead_letter=True)
    assert binary.original == b"\xff{" and binary.id is None and binary.source is None
    withheld = parse_reply(encode_dead_letter(Rejection(Reason.MALFORMED_JSON, "e"),
                                              RedactedOriginal(b"x", withheld=True)), dead_letter=True)
    assert withheld.original is None
    assert not DeadLetter("r", "model_error", "e").is_client_error
    assert not DeadLetter("r", "some_future_reason", "e").is_client_error


@pytest.mark.parametrize("value", [None, b"not json", b"[1]", b'{"id": "r"}', b'{"id": 5, "outputs": []}'])
def test_a_foreign_record_on_a_reply_topic_is_a_malformed_reply(value):
    with pytest.raises(MalformedReply):
        parse_reply(value, dead_letter=False)
    with pytest.raises(MalformedReply):
        parse_reply(value, dead_letter=True)


def test_source_position_needs_all_three_headers():
    assert source_position(source_headers("t", 3, 41)) == SourcePosition("t", 3, 41)
    assert source_position(source_headers("t", 3, 41)[:2]) is None
    assert source_position([("streamserve-source-topic", b"t"), ("streamserve-source-partition", b"x"),
                            ("streamserve-source-offset", b"1")]) is None


def test_a_source_position_is_a_tuple_and_a_null_header_is_no_position():
    position = SourcePosition("t", 3, 41)
    assert position == ("t", 3, 41) and hash(position) == hash(("t", 3, 41))
    assert sorted([SourcePosition("t", 1, 2), SourcePosition("t", 0, 9)])[0].partition == 0
    assert "{}:{}:{}".format(*position) == "t:3:41"
    assert source_position([*source_headers("t", 3, 41)[:2], ("streamserve-source-offset", None)]) is None


def test_a_record_of_unknown_topic_is_told_apart_by_its_body():
    value, headers = prediction_record("r-1")
    assert isinstance(parse_reply(value, dead_letter=None, headers=headers), Prediction)
    value, headers = dead_letter_record("r-2")
    dead = parse_reply(value, dead_letter=None, headers=headers)
    assert isinstance(dead, DeadLetter) and dead.source == SourcePosition("s.requests", 1, 8)
    for foreign in (None, b"not json", b"[1]", b'{"id": "r"}', b'{"reason": "x"}'):
        with pytest.raises(MalformedReply):
            parse_reply(foreign, dead_letter=None)
