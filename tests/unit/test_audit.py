import datetime
import json
import logging
import math

import pytest

from agents.kafka.audit import AuditTrail
from agents.dev.fleet import free_port
from pipeline.audit import AuditEntry, command_line, parse_since, render, select
from pipeline.config import Settings
from pipeline.routing import ControlError, deploy, start_canary

SPEC = deploy(None, "iris", "1")


def entry(action="deploy", subject="iris", when=1.0, **fields) -> AuditEntry:
    return AuditEntry(action, subject, "bob@box", when, "cli", **fields)


def test_an_entry_round_trips_through_json():
    full = AuditEntry("canary", "iris", "alice@box", 1_700_000_000.5, "cli", principal="User:admin",
                      host="box", pid=4242, command="streamserve canary iris 2 --weight 0.1",
                      before=SPEC.to_json(), after=start_canary(SPEC, "2", 0.1).to_json(),
                      details={"version": "2"}, reason="try the retrained model")
    assert AuditEntry.from_json(json.loads(json.dumps(full.to_json()))) == full
    bare = entry(action="broker_start", subject="broker:127.0.0.1:9092")
    assert AuditEntry.from_json(bare.to_json()) == bare
    assert set(bare.to_json()) == set(full.to_json())  # one shape, every key present


def test_entries_written_before_subjects_still_read():
    old = {"action": "deploy", "model": "iris", "who": "bob@box", "when": 1.0, "source": "cli",
           "before": None, "after": SPEC.to_json()}
    read = AuditEntry.from_json(old)
    assert (read.subject, read.after, read.principal, read.pid, read.details) == \
        ("iris", SPEC.to_json(), "", None, {})
    assert AuditEntry.from_json({**old, "reason": "why"}).reason == "why"
    with pytest.raises(ControlError, match="lacks after"):
        AuditEntry.from_json({k: v for k, v in old.items() if k != "after"})


@pytest.mark.parametrize("change, match", [
    ({"who": ""}, "who must be a non-empty string"),
    ({"subject": 3}, "subject must be a non-empty string"),
    ({"when": math.nan}, "finite number"),
    ({"when": "now"}, "finite number"),
    ({"pid": "42"}, "pid must be"),
    ({"before": []}, "before must be a JSON object"),
    ({"details": None}, "details must be a JSON object"),
    ({"extra": 1}, "unknown keys extra"),
])
def test_an_entry_refuses_bad_shapes(change, match):
    d = entry(after=SPEC.to_json()).to_json()
    with pytest.raises(ControlError, match=match):
        AuditEntry.from_json({**d, **change})
    with pytest.raises(ControlError, match="lacks who"):
        AuditEntry.from_json({k: v for k, v in d.items() if k != "who"})


def test_select_filters_and_puts_the_oldest_first():
    entries = [entry("quota_set", "quota:user=alice", 5.0), entry("deploy", "iris", 3.0),
               entry("load_refused", "iris", 4.0), entry("deploy", "iris-v2", 1.0),
               entry("acl_apply", "acl", 2.0)]
    assert [e.when for e in select(entries)] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert [e.when for e in select(entries, model="iris")] == [3.0, 4.0]
    assert [e.subject for e in select(entries, subject="quota")] == ["quota:user=alice"]
    assert [e.subject for e in select(entries, subject="acl")] == ["acl"]
    assert select(entries, subject="quota:user=alice") == select(entries, subject="quota")
    assert [e.action for e in select(entries, actions=["deploy", "acl_apply"])] == \
        ["deploy", "acl_apply", "deploy"]
    assert [e.when for e in select(entries, model="iris", since=3.5)] == [4.0]


def test_since_is_a_time_or_an_age():
    now = 1_000_000.0
    assert parse_since("90s", now) == now - 90
    assert parse_since("30m", now) == now - 1800
    assert parse_since("2h", now) == now - 7200
    assert parse_since("1.5d", now) == now - 1.5 * 86400
    utc = datetime.datetime(2026, 1, 31, 10, tzinfo=datetime.UTC).timestamp()
    assert parse_since("2026-01-31T10:00:00", now) == utc  # no zone: UTC
    assert parse_since("2026-01-31T11:00:00+01:00", now) == utc
    with pytest.raises(ControlError, match="neither a time .* nor an age"):
        parse_since("yesterday", now)


def test_the_command_line_hides_secrets():
    assert command_line(["/opt/venv/bin/streamserve", "deploy", "iris", "2"]) == \
        "streamserve deploy iris 2"
    assert command_line(["streamserve", "acl", "apply", "--password", "hunter2", "--user", "a b"]) \
        == "streamserve acl apply --password REDACTED --user 'a b'"
    assert command_line(["x", "--sasl-password=hunter2", "--client-secret", "s", "--token=t"]) == \
        "x --sasl-password=REDACTED --client-secret REDACTED --token=REDACTED"
    assert command_line([]) == ""


def test_render_shows_who_what_when_and_where():
    entries = [
        AuditEntry("deploy", "iris", "alice@box", 0.0, "cli", principal="User:admin", host="box",
                   pid=42, command="streamserve deploy iris 1", after=SPEC.to_json()),
        AuditEntry("load_refused", "iris", "svc@node", 60.0, "worker", host="node", pid=7,
                   details={"version": "2", "error": "tampered_parameters"},
                   reason="iris:2 parameters changed", before=SPEC.to_json(),
                   after=deploy(SPEC, "iris", "2").to_json()),
        AuditEntry("quota_set", "quota:user=alice", "alice@box", 120.0, "cli",
                   before={"producer_byte_rate": 1024}, after={"producer_byte_rate": 2048}),
    ]
    lines = render(entries).splitlines()
    assert lines[0].split() == ["WHEN", "(UTC)", "ACTION", "SUBJECT", "WHO", "PRINCIPAL", "FROM"]
    assert lines[1].split()[:6] == ["1970-01-01", "00:00:00", "deploy", "iris", "alice@box",
                                    "User:admin"]
    assert lines[1].endswith("cli on box pid 42: streamserve deploy iris 1")
    assert lines[2].strip() == f"now: {SPEC.describe()}"
    assert "load_refused" in lines[3] and " - " in lines[3]  # no principal recorded
    assert lines[4].strip() == "refused: iris  stable 2  rev 2"
    assert lines[5].strip() == "why: iris:2 parameters changed"
    assert lines[6].strip() == "version=2  error=tampered_parameters"
    assert lines[8].strip() == "was: producer_byte_rate=1024"
    assert lines[9].strip() == "now: producer_byte_rate=2048"
    # The columns line up: every row's action starts where the header's does.
    assert {line.index(action) for line, action in
            zip(lines, ["ACTION", "deploy"], strict=False)} == {lines[0].index("ACTION")}


async def test_a_trail_that_cannot_write_logs_the_entry_whole(caplog):
    settings = Settings.from_env({"STREAMSERVE_BROKER": f"127.0.0.1:{free_port()}"})
    trail = AuditTrail(settings, source="worker")
    with caplog.at_level(logging.ERROR, logger="agents.kafka.audit"):
        trail.note(action="load", subject="iris", details={"version": "1"})
        await trail.close()
    lost = [r.getMessage() for r in caplog.records if "audit entry not written" in r.getMessage()]
    assert len(lost) == 1 and '"action":"load"' in lost[0] and '"subject":"iris"' in lost[0]
