"""The recording format (``pipeline.replay.recording``) and its files, plain and zstd
(``agents.ops.replay.files``)."""

from __future__ import annotations

import orjson
import pytest

from agents.ops.replay import read_recording, write_recording
from pipeline.replay import Recorded, RecordingHeader, ReplayError, replay_order
from tests.unit.replay.samples import record, tabular


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
