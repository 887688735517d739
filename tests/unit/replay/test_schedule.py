"""The schedule of a replay (``pipeline.replay.schedule``): when each record is sent, and
how it is tagged."""

from __future__ import annotations

import orjson
import pytest

from pipeline.replay import INDEX_HEADER, REPLAY_HEADER, ReplayError, Rewrite, plan, recorded_pace, schedule
from tests.unit.replay.samples import record, tabular


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
