"""Topic facts read from the real broker: the message limit a worker bounds its outputs by."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka.admin import NewTopic

from agents.kafka.topics import DEFAULT_MESSAGE_LIMIT, admin_client, message_limit
from pipeline.config import Settings

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
