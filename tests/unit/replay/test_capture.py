"""What a capture takes (``pipeline.replay.capture``): bounds, offsets per partition, one
run's records."""

from __future__ import annotations

import pytest

from pipeline.replay import (
    REPLAY_HEADER,
    OffsetBound,
    ReplayError,
    TimeBound,
    belongs_to_run,
    capture_range,
    in_time_range,
    parse_bound,
)
from tests.unit.replay.samples import prediction, record, tabular


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
