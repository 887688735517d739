"""Topics on the real broker: the message limit a worker bounds its outputs by, and the
control topic when two writers race."""

from __future__ import annotations

import asyncio
import threading
import uuid

import orjson
import pytest
from aiokafka.admin import NewTopic

from agents.kafka.audit import read_entries
from agents.kafka.connect import start_producer
from agents.kafka.control import change, read_specs
from agents.kafka.topics import DEFAULT_MESSAGE_LIMIT, admin_client, message_limit
from pipeline import routing
from pipeline.config import Settings
from pipeline.routing import ControlError

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
