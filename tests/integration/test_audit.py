"""The audit trail on the real broker, with one worker: the versions it loads and refuses
(at start and live), a deploy from the command line, and broker-side client quotas (set,
listed, enforced, removed); each change in `streamserve audit` with who, what, when and
from where."""

from __future__ import annotations

import asyncio
import getpass
import socket
import time
import uuid

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import NewTopic

from agents.kafka.audit import read_entries
from agents.cli.main import main
from agents.kafka.control import change
from agents.kafka.connect import connection
from agents.kafka.topics import admin_client
from agents.ops.broker_quotas import describe_quotas
from pipeline import routing
from pipeline.broker_quotas import entity
from tests.conftest import iris_registry, register_tampered, start_worker
from tests.integration.test_lifecycle import Lifecycle

pytestmark = pytest.mark.integration

WHO = f"{getpass.getuser()}@{socket.gethostname()}"


@pytest.fixture(scope="module")
def audited(kafka_bootstrap, registry_dir, tmp_path_factory):
    """A worker on a registry of iris 1 and 2, 2 tampered with before the worker starts."""
    folder = tmp_path_factory.mktemp("audit")
    root, keys = iris_registry(registry_dir, folder)
    assert register_tampered(root) == "2"
    worker = start_worker(kafka_bootstrap, root, folder / "worker.log", **keys)
    try:
        yield Lifecycle(worker, root)
    finally:
        worker.stop()


@pytest.fixture
def streamserve(audited, monkeypatch, capsys):
    """``streamserve ARGS`` in this process (no interpreter to start) on the worker's
    settings: its exit code, stdout and stderr."""
    for name, value in audited.worker.env.items():
        if name.startswith("STREAMSERVE_"):
            monkeypatch.setenv(name, value)

    def run(*args: str) -> tuple[int, str, str]:
        code = main(list(args))
        return code, *capsys.readouterr()
    return run


def changed(streamserve, *args: str) -> str:
    code, out, err = streamserve(*args)
    assert code == 0, err
    return out


def entries_until(settings, found, timeout: float = 30):
    """The trail once ``found(entries)`` holds."""
    deadline = time.monotonic() + timeout
    while not found(entries := asyncio.run(read_entries(settings))):
        assert time.monotonic() < deadline, f"not in the trail after {timeout:.0f} s: {entries}"
        time.sleep(0.3)
    return entries


def test_a_worker_audits_the_versions_it_loads_and_refuses_at_start(audited):
    s, pid = audited.settings, audited.worker.process.pid
    # The newest version is tried first: 2 is refused, 1 serves.
    trail = entries_until(s, lambda es: {e.action for e in es} >= {"load", "load_refused"})
    refused = next(e for e in trail if e.action == "load_refused")
    loaded = next(e for e in trail if e.action == "load")
    for e in (refused, loaded):
        assert (e.subject, e.source, e.who, e.principal, e.host, e.pid) == \
            ("iris", "worker", WHO, "User:ANONYMOUS", socket.gethostname(), pid)
        assert e.command.endswith("worker --metrics-port " + str(audited.worker.metrics_port))
        assert abs(e.when - time.time()) < 120
    assert refused.details == {"version": "2", "error": "tampered_parameters"}
    assert "iris:2" in refused.reason and refused.after["stable"] == "2"
    assert loaded.details == {"version": "1", "key_id": loaded.details["key_id"],
                              "signature": "verified"} and loaded.details["key_id"]
    assert refused.when < loaded.when


def test_a_deploy_and_a_live_refusal_are_audited(audited):
    s = audited.settings
    assert audited.changed("deploy", "iris", "1").startswith("iris  stable 1")
    # A spec written past the command line's check: the worker refuses it while serving.
    asyncio.run(change(s, "iris", lambda spec: routing.deploy(spec, "iris", "2"), action="deploy",
                       source="test"))
    # The test's own audit entry and the worker's refusal race to the trail (the worker
    # reads the spec as soon as it is written): wait for both, in either order.
    trail = [e for e in entries_until(s, lambda es: any(
        e.action == "deploy" and e.source == "test" for e in es) and any(
        e.action == "load_refused" and e.before is not None for e in es)) if e.subject == "iris"]
    by_cli = next(e for e in trail if e.action == "deploy" and e.source == "cli")
    live = next(e for e in trail if e.action == "load_refused" and e.before is not None)
    assert (by_cli.source, by_cli.who, by_cli.principal) == ("cli", WHO, "User:ANONYMOUS")
    assert by_cli.command == "main.py deploy iris 1" and by_cli.pid != audited.worker.process.pid
    assert by_cli.after["stable"] == "1" and by_cli.before is None
    assert live.source == "worker" and live.details["version"] == "2"
    assert live.before["stable"] == "1" and live.after["stable"] == "2"


def test_a_client_quota_is_set_listed_and_removed_and_audited(audited, streamserve):
    s = audited.settings
    user = f"u{uuid.uuid4().hex[:8]}"
    out = audited.changed("quota", "set", "--user", user, "--producer-byte-rate", "1048576",
                          "--consumer-byte-rate", "2097152")
    assert f"user={user}" in out and "1048576" in out
    changed(streamserve, "quota", "set", "--user", f"User:{user}", "--request-percentage", "50")
    # Each command returns once the broker applies its change.
    assert [q.to_json() for q in asyncio.run(describe_quotas(s, entity(user=user)))] == \
        [{"producer_byte_rate": 1048576, "consumer_byte_rate": 2097152, "request_percentage": 50}]
    listed = changed(streamserve, "quota", "list")
    assert any(line.split() == [f"user={user}", "1048576", "2097152", "50"]
               for line in listed.splitlines()), listed
    assert changed(streamserve, "quota", "remove", "--user", user).strip() == \
        f"removed the quota of user={user}"
    assert asyncio.run(describe_quotas(s, entity(user=user))) == []
    code, _, err = streamserve("quota", "remove", "--user", user)
    assert code == 2 and f"user={user} has no quota" in err
    quota = [e for e in entries_until(s, lambda es: any(e.action == "quota_remove" for e in es))
             if e.subject == f"quota:user={user}"]
    assert [(e.action, e.before, e.after) for e in quota] == [
        ("quota_set", None, {"producer_byte_rate": 1048576, "consumer_byte_rate": 2097152}),
        ("quota_set", {"producer_byte_rate": 1048576, "consumer_byte_rate": 2097152},
         {"producer_byte_rate": 1048576, "consumer_byte_rate": 2097152, "request_percentage": 50}),
        ("quota_remove", {"producer_byte_rate": 1048576, "consumer_byte_rate": 2097152,
                          "request_percentage": 50}, None)]
    assert all((e.source, e.who, e.principal) == ("cli", WHO, "User:ANONYMOUS") for e in quota)
    assert quota[0].command.startswith(f"main.py quota set --user {user}")


def test_a_producer_over_its_client_quota_is_held_down(audited, streamserve):
    """A quota for one client id (so no other test's clients are touched): at 20 kB/s, a
    250 kB burst is over the rate the broker measures across its ~10 s window, and the
    broker holds the client's connection for the seconds it takes to come back under."""
    s = audited.settings
    client_id = f"quota-test-{uuid.uuid4().hex[:8]}"
    topic = f"{s.kafka.topic_prefix}.quota-test"
    changed(streamserve, "quota", "set", "--client-id", client_id, "--producer-byte-rate", "20000")
    try:
        free, held = asyncio.run(_burst_times(s, topic, [f"{client_id}-free", client_id]))
    finally:
        changed(streamserve, "quota", "remove", "--client-id", client_id)
    assert held > 1.5 and held > free + 1.0, (free, held)


async def _burst_times(settings, topic: str, client_ids: list[str]) -> list[float]:
    """Seconds each client takes to produce 250 kB and then one small record."""
    async with admin_client(settings) as admin:
        await admin.create_topics([NewTopic(topic, 1, 1)])
    times = []
    for client_id in client_ids:
        producer = AIOKafkaProducer(**connection(settings), client_id=client_id, acks=1)
        await producer.start()
        try:
            await producer.partitions_for(topic)
            started = time.monotonic()
            await producer.send_and_wait(topic, b"x" * 250_000)
            await producer.send_and_wait(topic, b"after")  # waits while the broker holds it
            times.append(time.monotonic() - started)
        finally:
            await producer.stop()
    return times


def test_streamserve_audit_lists_filters_and_prints_json(streamserve):
    table = changed(streamserve, "audit").splitlines()
    assert table[0].split() == ["WHEN", "(UTC)", "ACTION", "SUBJECT", "WHO", "PRINCIPAL", "FROM"]
    rows = [line for line in table[1:] if not line.startswith("    ")]
    actions = {line.split()[2] for line in rows}
    assert {"load", "load_refused", "deploy", "quota_set", "quota_remove"} <= actions
    refused = next(line for line in rows if line.split()[2] == "load_refused")
    assert f"{WHO}  User:ANONYMOUS  worker on {socket.gethostname()} pid " in refused
    quota = [orjson.loads(line) for line in changed(
        streamserve, "audit", "--subject", "quota", "--json", "--since", "10m").splitlines()]
    assert quota and all(e["subject"].startswith("quota:") for e in quota)
    assert [e["when"] for e in quota] == sorted(e["when"] for e in quota)
    refusals = changed(streamserve, "audit", "--model", "iris", "--action", "load_refused",
                       "--json").splitlines()
    assert [orjson.loads(line)["details"]["version"] for line in refusals] == ["2", "2"]
    assert changed(streamserve, "audit", "--since", "2999-01-01T00:00:00") == ""
    code, _, err = streamserve("audit", "--since", "yesterday")
    assert code == 2 and "neither a time" in err

