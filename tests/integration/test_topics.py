"""Topics on the real broker: the message limit a worker bounds its outputs by, the
control topic when two writers race, and `streamserve topics check [--fix]`."""

from __future__ import annotations

import asyncio
import threading
import uuid

import orjson
import pytest
from aiokafka.admin import NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from agents.cli.main import main
from agents.kafka.audit import read_entries
from agents.kafka.connect import start_producer
from agents.kafka.control import change, read_specs
from agents.kafka.topics import DEFAULT_MESSAGE_LIMIT, admin_client, ensure_topics, message_limit
from pipeline import routing
from pipeline.config import Settings
from pipeline.routing import ControlError
from pipeline.topology import TopologyError

pytestmark = pytest.mark.integration


def test_a_topics_message_limit_is_read_from_the_broker(kafka_bootstrap):
    settings = Settings.from_env({"STREAMSERVE_BROKER": kafka_bootstrap})
    name = f"limit-{uuid.uuid4().hex[:8]}"

    async def scenario() -> tuple[int, int]:
        async with admin_client(settings) as admin:
            await admin.create_topics([NewTopic(name, 1, 1,
                                                topic_configs={"max.message.bytes": "200000"})])
        return await message_limit(settings, name), await message_limit(settings, f"{name}-none")

    assert asyncio.run(scenario()) == (200_000, DEFAULT_MESSAGE_LIMIT)


def test_two_changes_of_the_same_revision_leave_every_reader_on_the_first(kafka_bootstrap):
    """Reliability review section 16: two writers (an admin's promote, a worker's automatic
    rollback) both wrote revision N+1; live workers kept the first, compaction the second,
    so a worker started later served the other spec. The loser now writes the first on top,
    and is told (and the audit trail says) its change did not take effect."""
    settings = Settings.from_env({"STREAMSERVE_BROKER": kafka_bootstrap,
                                  "STREAMSERVE_TOPIC_PREFIX": f"race-{uuid.uuid4().hex[:8]}"})
    asyncio.run(change(settings, "iris", lambda spec: routing.deploy(spec, "iris", "1"),
                       action="deploy", source="test"))

    def racing(current):  # another writer lands its revision 2 while this one decides
        asyncio.run_coroutine_threadsafe(_write(settings, routing.deploy(current, "iris", "2")),
                                         other_loop).result()
        return routing.deploy(current, "iris", "3")

    other_loop = asyncio.new_event_loop()
    thread = threading.Thread(target=other_loop.run_forever, daemon=True)
    thread.start()
    try:
        with pytest.raises(ControlError, match="another change of iris landed first"):
            asyncio.run(change(settings, "iris", racing, action="deploy", source="test"))
    finally:
        other_loop.call_soon_threadsafe(other_loop.stop)
    held = asyncio.run(read_specs(settings))["iris"]
    assert (held.stable, held.revision) == ("2", 3)  # the first, written again on top
    assert [e.action for e in asyncio.run(read_entries(settings))] == \
        ["deploy", "deploy", "deploy_superseded"]


async def _write(settings, spec) -> None:
    producer = await start_producer(settings)
    try:
        await producer.send_and_wait(settings.topics.control, key=b"iris",
                                     value=orjson.dumps(spec.to_json()))
    finally:
        await producer.stop()


def test_topics_check_shows_what_differs_and_fix_mends_it(kafka_bootstrap, monkeypatch, capsys, tmp_path):
    prefix = f"tc{uuid.uuid4().hex[:8]}"
    for name, value in {"STREAMSERVE_BROKER": kafka_bootstrap, "STREAMSERVE_TOPIC_PREFIX": prefix,
                        "STREAMSERVE_APP_ID": prefix, "STREAMSERVE_MIN_INSYNC_REPLICAS": "1"}.items():
        monkeypatch.setenv(name, value)
    settings = Settings.from_env()
    assert main(["topics", "check"]) == 1
    assert f"- {prefix}.control: missing is absent, wanted 1 partitions x 1 replicas" in capsys.readouterr().out
    assert main(["topics", "check", "--fix"]) == 0
    out = capsys.readouterr().out
    assert f"fixed: created {prefix}.requests" in out and "every topic is as wanted" in out

    async def spoil() -> None:  # the control topic not compacted; the shadow topic too small
        async with admin_client(settings) as admin:
            await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, settings.topics.control,
                                                      configs={"cleanup.policy": "delete"})])
            await admin.delete_topics([settings.topics.shadow])
            await asyncio.sleep(1)
            await admin.create_topics([NewTopic(settings.topics.shadow, 2, 1)])

    asyncio.run(spoil())
    assert main(["topics", "check"]) == 1
    out = capsys.readouterr().out
    assert f"- {prefix}.control: config cleanup.policy is delete, wanted compact; --fix sets it" in out
    assert f"- {prefix}.shadow: partitions is 2, wanted 4; --fix adds partitions" in out
    assert f"- {prefix}.shadow: config min.insync.replicas is" not in out  # the cluster's default: 1
    assert main(["topics", "check", "--fix", "--plan", str(tmp_path / "plan.json")]) == 0
    out = capsys.readouterr().out
    assert f"fixed: {prefix}.control: cleanup.policy=compact" in out
    assert f"fixed: {prefix}.shadow: partitions 2 -> 4" in out
    assert orjson.loads((tmp_path / "plan.json").read_bytes()) == {"version": 1, "partitions": []}


def test_more_replicas_than_brokers_is_refused_before_any_topic_is_made(kafka_bootstrap):
    prefix = f"tr{uuid.uuid4().hex[:8]}"
    settings = Settings.from_env({"STREAMSERVE_BROKER": kafka_bootstrap, "STREAMSERVE_TOPIC_PREFIX": prefix,
                                  "STREAMSERVE_REPLICATION_FACTOR": "3"})
    with pytest.raises(TopologyError, match="STREAMSERVE_REPLICATION_FACTOR is 3 but the cluster at .* has "
                                            "1 broker up: set STREAMSERVE_REPLICATION_FACTOR to at most 1"):
        asyncio.run(ensure_topics(settings))

    async def listed() -> list[str]:
        async with admin_client(settings) as admin:
            return [t for t in await admin.list_topics() if t.startswith(prefix)]

    assert asyncio.run(listed()) == []
