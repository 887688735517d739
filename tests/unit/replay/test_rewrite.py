"""Run ids (``pipeline.replay.runs``), how a replay rewrites requests
(``pipeline.replay.rewrite``) and what it reads from them (``pipeline.replay.request_fields``)."""

from __future__ import annotations

import datetime
import re

import orjson
import pytest

from pipeline.replay import (
    Recorded,
    ReplayError,
    Rewrite,
    check_run_id,
    gated,
    new_run_id,
    request_features,
    request_models,
    strip_run,
)
from tests.unit.replay.samples import FEATURES, oip, tabular


def test_run_ids_are_checked_and_generated():
    assert check_run_id("gate-1.b_c") == "gate-1.b_c"
    for bad in ("", "a/b", "-x", "x" * 65, "a b"):
        with pytest.raises(ReplayError, match="run id"):
            check_run_id(bad)
    now = datetime.datetime(2026, 1, 31, 10, 0, tzinfo=datetime.UTC)
    assert new_run_id(now, "ab12") == "replay-20260131T100000-ab12"
    assert strip_run("run/r-1", "run") == "r-1"
    assert strip_run("other/r-1", "run") == "other/r-1"
    assert strip_run("r-1", None) == "r-1"


def test_rewriting_a_tabular_request():
    key, value = Rewrite(prefix="b", model="iris2", version="3").apply(b"r-1", tabular("r-1", tenant="t"))
    assert key == b"b/r-1"
    assert orjson.loads(value) == {"id": "b/r-1", "model": "iris2", "features": FEATURES,
                                   "tenant": "t", "version": "3"}


def test_rewriting_an_open_inference_protocol_request():
    _, value = Rewrite(model="iris2", version="3").apply(None, oip("r-1", model_version="1"))
    body = orjson.loads(value)
    assert body["model_name"] == "iris2" and body["model_version"] == "3"
    assert "model" not in body and "version" not in body and body["id"] == "r-1"


def test_rewriting_keeps_what_it_must_not_touch():
    assert Rewrite().apply(b"k", b'{"id": "r-1" }') == (b"k", b'{"id": "r-1" }')  # no change asked
    # a key that is not the id stays
    assert Rewrite(prefix="b").apply(b"other", tabular("r-1"))[0] == b"other"
    # a request without a model field stays without one (it is refused as missing_model)
    body = orjson.loads(Rewrite(model="iris").apply(None, b'{"id": "r-1", "features": {}}')[1])
    assert "model" not in body
    # bytes that are not an unambiguous JSON object are replayed as recorded
    for value in (b"not json", b"[1, 2]", b'{"id": "r-1", "id": "r-2"}', b'{"x": NaN}', b"",
                  b'{"id": "\xff"}'):
        assert Rewrite(prefix="b", version="2").apply(b"k", value) == (b"k", value)
    assert Rewrite(prefix="b").apply(None, None) == (None, None)


def test_a_prefix_that_makes_an_id_too_long_is_refused_before_sending():
    with pytest.raises(ReplayError, match="shorter --run-id"):
        Rewrite(prefix="run").apply(None, tabular("x" * 256))
    with pytest.raises(ReplayError, match="--version"):
        Rewrite(version="")


def test_requests_give_their_features_and_models():
    assert request_features(tabular("r-1")) == ("r-1", FEATURES)
    assert request_features(oip("r-2")) == ("r-2", FEATURES)
    assert request_features(b"junk") is None
    assert request_models([tabular("a"), oip("b"), b"junk", None,
                           orjson.dumps({"id": "c", "model": "cancer"})]) == {"iris", "cancer"}


def recorded(*values):
    return [Recorded("streamserve.requests", 0, i, 0, None, v) for i, v in enumerate(values)]


def test_a_gate_replays_only_the_requests_of_the_model_it_pins():
    records = recorded(tabular("a"), orjson.dumps({"id": "c", "model": "cancer"}), b"junk", oip("b"))
    kept, model = gated(records, "iris")
    assert model == "iris" and [r.offset for r in kept] == [0, 2, 3]  # junk names none: kept
    assert gated(records, "iris", retarget=True) == (records, "iris")
    assert gated(recorded(tabular("a"), b"junk"), None) == (recorded(tabular("a"), b"junk"), "iris")


@pytest.mark.parametrize(("values", "model", "retarget", "error"), [
    ((b"junk",), None, False, "names a model; pass --model"),
    ((tabular("a"), orjson.dumps({"id": "c", "model": "cancer"})), None, False,
     "requests for cancer, iris; a gate pins one model's versions: pass --model"),
    ((tabular("a"),), "flowers", False, "no request in the recording names flowers (they name iris); "
                                        "pass --retarget"),
    ((tabular("a"),), None, True, "--retarget needs --model"),
])
def test_a_gate_says_which_requests_it_cannot_pin(values, model, retarget, error):
    with pytest.raises(ReplayError, match=re.escape(error)):
        gated(recorded(*values), model, retarget)
