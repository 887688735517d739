"""Stream replay's pure parts (pipeline.replay), the recording files and the report, no broker."""

from __future__ import annotations

import datetime
import re

import orjson
import pytest

from agents.cli.main import main
from agents.ops.replay import read_recording, write_recording
from agents.ops.replay_report import render_text, render_verdict, write_html
from pipeline.replay import (
    INDEX_HEADER,
    REPLAY_HEADER,
    Answer,
    GateLimits,
    OffsetBound,
    Recorded,
    RecordingHeader,
    ReplayError,
    Rewrite,
    Side,
    TimeBound,
    answer_of,
    belongs_to_run,
    capture_range,
    check_run_id,
    diff,
    gate,
    in_time_range,
    key_replies,
    new_run_id,
    parse_bound,
    plan,
    recorded_pace,
    replay_order,
    request_features,
    request_models,
    schedule,
    strip_run,
)

FEATURES = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


def tabular(request_id: str, **extra) -> bytes:
    return orjson.dumps({"id": request_id, "model": "iris", "features": FEATURES, **extra})


def oip(request_id: str, **extra) -> bytes:
    return orjson.dumps({"id": request_id, "model_name": "iris", **extra, "inputs": [
        {"name": k, "shape": [1], "datatype": "FP32", "data": [v]} for k, v in FEATURES.items()]})


def record(value: bytes | None, key: bytes | None = None, ts: int = 1_000, offset: int = 0,
           headers=()) -> Recorded:
    return Recorded("streamserve.requests", 0, offset, ts, key, value, tuple(headers))


def prediction(request_id: str, label: str, probabilities, latency: float = 3.0,
               version: str = "1") -> bytes:
    return orjson.dumps({"id": request_id, "model_name": "iris", "model_version": version,
                         "outputs": [{"name": "probabilities", "shape": [1, len(probabilities)],
                                      "datatype": "FP32", "data": probabilities},
                                     {"name": "label", "shape": [1], "datatype": "BYTES",
                                      "data": [label]}],
                         "parameters": {"route": "pinned", "batch_size": 4, "latency_ms": latency}})


def dead_letter(request_id: str | None, reason: str) -> bytes:
    return orjson.dumps({"id": request_id, "reason": reason, "error": "...", "original": "x",
                         "original_encoding": "utf-8"})


# ---------------------------------------------------------------------------- recording


def test_a_record_round_trips_its_bytes_exactly():
    weird = bytes(range(256))
    samples = [
        record(tabular("r-1"), b"r-1", headers=[("trace", b"abc"), ("bin", b"\xff\x00"),
                                                 ("empty", b""), ("null", None)]),
        record(b"\xff\xfe not utf-8", weird, ts=5),
        record(None, None),
        record("naïve ✓".encode(), "ключ".encode()),
    ]
    for original in samples:
        line = original.to_line()
        assert b"\n" not in line
        assert Recorded.from_line(line, "f:2") == original


def test_a_record_line_says_how_its_bytes_are_stored():
    line = orjson.loads(record(b"\xff", b"k", headers=[("h", b"v")]).to_line())
    assert line["key"] == "k" and line["key_encoding"] == "utf-8"
    assert line["value_encoding"] == "base64"
    assert line["headers"] == [{"name": "h", "value": "v", "encoding": "utf-8"}]


@pytest.mark.parametrize("line, message", [
    (b"not json", "not a record"),
    (b'{"topic": "t"}', "not a record"),
    ((b'{"topic": "t", "partition": 0, "offset": 1, "timestamp": 2, "key": null, '
      b'"value": "x", "value_encoding": "rot13"}'), "encoding 'rot13'"),
    ((b'{"topic": "t", "partition": 0, "offset": 1, "timestamp": 2, "key": null, '
      b'"value": "!!", "value_encoding": "base64"}'), "not valid base64"),
])
def test_a_damaged_record_line_is_a_replay_error_naming_the_line(line, message):
    with pytest.raises(ReplayError, match=message) as error:
        Recorded.from_line(line, "traffic.jsonl:7")
    assert "traffic.jsonl:7" in str(error.value)


def test_the_header_line_is_checked():
    header = RecordingHeader(("streamserve.requests",), "a", "b", "c", "run-1", 3)
    assert RecordingHeader.from_line(header.to_line(), "f") == header
    with pytest.raises(ReplayError, match="not a streamserve replay recording"):
        RecordingHeader.from_line(b'{"id": "r-1"}', "f")
    with pytest.raises(ReplayError, match="version 9"):
        RecordingHeader.from_line(b'{"format": "streamserve-replay", "version": 9}', "f")


@pytest.mark.parametrize("name", ["traffic.jsonl", "traffic.jsonl.zst"])
def test_recording_files_round_trip_plain_and_zstd(tmp_path, name):
    records = [record(tabular(f"r-{i}"), f"r-{i}".encode(), ts=1000 + i, offset=i,
                      headers=[("h", bytes([i % 256]))]) for i in range(300)]
    header = RecordingHeader(("streamserve.requests",), records=len(records))
    path = tmp_path / name
    assert write_recording(path, header, records) == 300
    raw = path.read_bytes()
    assert raw.startswith(b"\x28\xb5\x2f\xfd") == name.endswith(".zst")
    assert read_recording(path) == (header, records)
    assert not list(tmp_path.glob("*.partial"))


def test_a_truncated_compressed_recording_is_a_replay_error(tmp_path):
    path = tmp_path / "t.jsonl.zst"
    write_recording(path, RecordingHeader(("t",)), [record(tabular(f"r-{i}"), ts=i) for i in range(500)])
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(ReplayError, match="cannot be read|not a record"):
        read_recording(path)
    with pytest.raises(ReplayError, match="is not a file"):
        read_recording(tmp_path / "missing.jsonl")


def test_replay_order_is_by_timestamp_then_position():
    a, b, c = record(b"a", ts=5, offset=9), record(b"b", ts=1, offset=3), record(b"c", ts=5, offset=2)
    assert replay_order([a, b, c]) == [b, c, a]


# -------------------------------------------------------------------------- capture range


def test_bounds_are_times_or_offsets():
    assert parse_bound("2026-01-31T10:00:00Z") == TimeBound(1_769_853_600_000)
    assert parse_bound("2026-01-31T10:00:00") == TimeBound(1_769_853_600_000)  # UTC
    assert parse_bound("2026-01-31T11:00:00+01:00") == TimeBound(1_769_853_600_000)
    assert parse_bound("1200") == OffsetBound(every=1200)
    assert parse_bound("0:1200,2:7") == OffsetBound(partitions={0: 1200, 2: 7})
    for bad in ("yesterday", "0:1,0:2", "-5"):
        with pytest.raises(ReplayError):
            parse_bound(bad)


def test_capture_range_clamps_to_what_the_partition_holds():
    # (partition, beginning, end, start, stop, offset at start time, offset at stop time)
    assert capture_range(0, 10, 100, None, None, None, None) == (10, 100)
    assert capture_range(0, 10, 100, OffsetBound(every=5), OffsetBound(every=500), None, None) == (10, 100)
    per = OffsetBound(partitions={1: 50})
    assert capture_range(0, 10, 100, per, per, None, None) == (10, 100)
    assert capture_range(1, 10, 100, per, OffsetBound(partitions={1: 60}), None, None) == (50, 60)
    t = TimeBound(1)
    assert capture_range(0, 0, 100, t, t, 40, 70) == (40, 70)
    assert capture_range(0, 0, 100, t, t, None, None) == (100, 100)  # nothing that late
    assert capture_range(0, 0, 100, t, t, 40, None) == (40, 100)
    assert capture_range(0, 0, 100, OffsetBound(every=80), OffsetBound(every=20), None, None) == (80, 80)


def test_time_bounds_hold_per_record():
    start, stop = TimeBound(100), TimeBound(200)
    assert [in_time_range(t, start, stop) for t in (99, 100, 199, 200)] == [False, True, True, False]
    assert in_time_range(5, OffsetBound(every=1), None)


def test_a_run_is_told_by_its_header_or_its_reply_ids():
    assert belongs_to_run(record(b"{}", headers=[(REPLAY_HEADER, b"a")]), "a")
    assert not belongs_to_run(record(tabular("a/r-1"), headers=[(REPLAY_HEADER, b"ab")]), "a")
    assert belongs_to_run(record(prediction("a/r-1", "setosa", [1.0])), "a")
    assert not belongs_to_run(record(prediction("ab/r-1", "setosa", [1.0])), "a")
    assert not belongs_to_run(record(b"garbage"), "a")


# ------------------------------------------------------------------------------ rewrite


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


def test_the_schedule_divides_inter_arrival_times_by_the_speed():
    stamps = [1000, 1100, 1100, 1400, 1300, 2000]
    assert schedule(stamps, 1) == pytest.approx([0, 0.1, 0.1, 0.4, 0.4, 1.1])
    assert schedule(stamps, 2) == pytest.approx([0, 0.05, 0.05, 0.2, 0.2, 0.55])
    assert schedule(stamps, None) == [0.0] * 6
    assert schedule([], 3) == []
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ReplayError, match="--speed"):
            schedule(stamps, bad)


def test_plan_tags_every_record_with_the_run_and_its_index():
    records = [record(tabular("r-0"), b"r-0", ts=0, headers=[("trace", b"t"), (REPLAY_HEADER, b"old")]),
               record(b"junk", None, ts=500)]
    out = plan(records, Rewrite(prefix="run"), "run", speed=2)
    assert [o.at_s for o in out] == [0, 0.25]
    assert out[0].key == b"run/r-0" and orjson.loads(out[0].value)["id"] == "run/r-0"
    assert out[0].headers == (("trace", b"t"), (REPLAY_HEADER, b"run"), (INDEX_HEADER, b"0"))
    assert out[1].value == b"junk" and out[1].headers == ((REPLAY_HEADER, b"run"), (INDEX_HEADER, b"1"))
    assert recorded_pace(records) == pytest.approx(2.0)
    assert recorded_pace(records[:1]) is None


def test_requests_give_their_features_and_models():
    assert request_features(tabular("r-1")) == ("r-1", FEATURES)
    assert request_features(oip("r-2")) == ("r-2", FEATURES)
    assert request_features(b"junk") is None
    assert request_models([tabular("a"), oip("b"), b"junk", None,
                           orjson.dumps({"id": "c", "model": "cancer"})]) == {"iris", "cancer"}


# --------------------------------------------------------------------------------- diff


def test_replies_are_read_as_answers_with_the_run_prefix_stripped():
    value = prediction("run/r-1", "setosa", [0.9, 0.1], latency=4.5, version="2")
    for dead_letter_topic in (False, None):
        reply = answer_of(value, "run", dead_letter=dead_letter_topic)
        assert reply == Answer("r-1", "2", "setosa", {"probabilities": (0.9, 0.1)}, None, 4.5)
        assert reply.outcome == "setosa"
    for dead_letter_topic in (True, None):
        dead = answer_of(dead_letter("run/r-2", "schema_mismatch"), "run", dead_letter=dead_letter_topic)
        assert dead.request_id == "r-2" and dead.outcome == "dead letter: schema_mismatch"
    assert answer_of(dead_letter(None, "malformed_json"), "run", dead_letter=True).request_id is None
    assert answer_of(tabular("r-1"), "run", dead_letter=None) is None
    assert answer_of(b"junk", None, dead_letter=False) is None
    assert answer_of(None, None, dead_letter=True) is None


def test_replies_are_keyed_once_per_request():
    a1 = Answer("r-1", label="x")
    a1_again = Answer("r-1", label="x")
    b1 = Answer("r-1", reason="duplicate_request")
    anonymous = Answer(None, reason="malformed_json")
    keyed = key_replies([(("t", 0, 7), b1, "#7"), (("t", 0, 3), a1, "#3"), (("t", 0, 3), a1_again, "#3"),
                         (("t", 1, 0), anonymous, "#9")])
    assert keyed == {"r-1": a1, "r-1~2": b1, "#9": anonymous}


def side(name: str, replies: dict[str, Answer], requests: int | None = None) -> Side:
    return Side(name, replies, requests)


def p(label: str, scores=(0.5, 0.5), latency: float = 3.0) -> Answer:
    return Answer("x", "1", label, {"probabilities": tuple(scores)}, None, latency)


def test_diff_counts_agreement_scores_dead_letters_and_latency():
    base = {f"r-{i}": p("a", (0.9, 0.1), latency=float(i)) for i in range(100)}
    cand = {f"r-{i}": p("a", (0.8, 0.2), latency=float(2 * i)) for i in range(100)}
    cand["r-5"] = p("b", (0.3, 0.7))
    base["r-6"] = Answer("r-6", reason="schema_mismatch")
    cand["r-6"] = Answer("r-6", reason="schema_mismatch")
    cand["r-7"] = Answer("r-7", reason="model_error")
    base["only-base"] = p("a")
    features = {"r-5": {"f": 1.5}, "r-7": {"f": 2.5}}
    report = diff(side("B", base, 101), side("C", cand, 100), features)
    assert report.compared == 100 and report.only_baseline == 1 and report.only_candidate == 0
    assert report.baseline_unanswered == 0 and report.candidate_unanswered == 0
    assert report.agreeing == 98 and report.disagreement == pytest.approx(0.02)
    assert report.both_predicted == 98 and report.same_label == 97
    assert report.score_max == pytest.approx(0.6)
    assert 0.1 <= report.score_p99 <= 0.6
    assert [(d.reason, d.baseline, d.candidate) for d in report.dead_letters] == [
        ("model_error", 0, 1), ("schema_mismatch", 1, 1)]
    # outcome changes first, then the largest score differences
    assert [(d.key, d.candidate, d.features) for d in report.differences[:2]] == [
        ("r-5", "b", {"f": 1.5}), ("r-7", "dead letter: model_error", {"f": 2.5})]
    assert report.differences[0].max_abs_difference == pytest.approx(0.6)
    assert report.differences[2].baseline == report.differences[2].candidate == "a"
    assert report.baseline_latency.p50 == pytest.approx(50, abs=1)
    assert report.candidate_latency.p99 > report.baseline_latency.p99
    assert ("a", "b", 1) in report.outcome_pairs and report.outcome_pairs[0] == ("a", "a", 97)


def test_identical_runs_agree_fully():
    replies = {f"r-{i}": p("a", (0.25, 0.75)) for i in range(10)}
    report = diff(side("B", replies, 10), side("C", dict(replies), 10))
    assert report.agreement == 1 and report.score_max == 0 and report.differences == ()


def test_an_empty_diff_has_no_shares():
    report = diff(side("B", {}), side("C", {}))
    assert report.agreement is None and report.score_max is None and report.candidate_latency is None
    assert "n/a" in render_text(report)


# --------------------------------------------------------------------------------- gate


def gate_report(disagreeing: int, latency: float, unanswered: int = 0):
    base = {f"r-{i}": p("a") for i in range(100)}
    cand = {f"r-{i}": p("b" if i < disagreeing else "a", latency=latency) for i in range(100 - unanswered)}
    return diff(side("B", base, 100), side("C", cand, 100))


def test_the_gate_passes_within_its_limits_and_fails_past_them():
    limits = GateLimits(max_disagreement=0.05, max_p99_ms=50)
    assert gate(gate_report(5, 20), limits).passed  # at the limit passes
    verdict = gate(gate_report(6, 20), limits)
    assert not verdict.passed
    assert [c.name for c in verdict.checks if not c.passed] == ["disagreement"]
    assert "6.00% of 100" in render_verdict(verdict)
    assert [c.name for c in gate(gate_report(0, 51), limits).checks if not c.passed] == ["candidate p99"]
    assert [c.name for c in gate(gate_report(0, 5, unanswered=3), limits).checks
            if not c.passed] == ["replies"]


def test_a_gate_with_nothing_to_compare_fails():
    report = diff(side("B", {}, 10), side("C", {}, 10))
    verdict = gate(report, GateLimits(0.1, 100))
    assert not verdict.passed and {c.name for c in verdict.checks if not c.passed} == {
        "replies", "disagreement", "candidate p99"}


@pytest.mark.parametrize("share, p99", [(-0.1, 10), (1.5, 10), (0.1, 0), (0.1, float("inf"))])
def test_gate_limits_are_checked(share, p99):
    with pytest.raises(ReplayError):
        GateLimits(share, p99)


# ------------------------------------------------------------------------------- report


def test_the_text_report_shows_the_figures():
    text = render_text(gate_report(4, 12.5))
    assert re.search(r"agreement\s+96\.00%", text)
    assert "r-0" in text and "a" in text and "most different requests" in text
    assert re.search(r"candidate\s+100\s+12\.5\s+12\.5\s+12\.5", text)


def test_the_html_report_is_self_contained(tmp_path):
    report = gate_report(4, 12.5)
    path = tmp_path / "report.html"
    write_html(report, path, gate(report, GateLimits(0.01, 100)))
    page = path.read_text()
    assert page.count("data:image/png;base64,") == 3
    assert "gate FAIL" in page and "96.00%" in page
    assert not re.search(r'(src|href)="(?!data:)', page)


# ---------------------------------------------------------------------------------- CLI


def test_cli_mistakes_are_one_line_and_exit_2(tmp_path, capsys):
    assert main(["replay", "run", str(tmp_path / "missing.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a file" in err
    recording = tmp_path / "r.jsonl"
    write_recording(recording, RecordingHeader(("t",)), [record(tabular("r-1"))])
    assert main(["replay", "gate", "--file", str(recording), "--baseline", "1", "--candidate", "2",
                 "--max-disagreement", "5", "--max-p99-ms", "10"]) == 2
    assert "--max-disagreement is a share" in capsys.readouterr().err
    assert main(["replay", "run", str(recording), "--run-id", "a/b"]) == 2
    assert "run id 'a/b'" in capsys.readouterr().err
    assert main(["replay", "diff", "a", "b", "--html", str(tmp_path / "no" / "r.html")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["replay", "capture", "--from", "yesterday", "--out", str(tmp_path / "x.jsonl")])
