"""Topic administration: the admin client, raw protocol requests through it, creating
the serving, control and audit topics, and checking that a topic exists and may be seen.

Apart from ``agents.kafka.connect`` because only the commands that set up or check
topics need it; the readers (``agents.kafka.read``) check their topic here first.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, TopicAuthorizationFailedError, for_code
from aiokafka.protocol.api import Request, Response
from aiokafka.protocol.metadata import MetadataRequest

from agents.kafka.connect import REFUSALS, KafkaAccessError, connection, unreachable
from pipeline.config import Settings


async def send_request(admin: AIOKafkaAdminClient, request: Request) -> Response:
    """``request`` (an aiokafka protocol class) to any broker, through ``admin``'s connections:
    aiokafka's admin client has no method for ACLs, nor a metadata request that never
    creates a topic."""
    return await admin._send_request(request)


@asynccontextmanager
async def admin_client(settings: Settings) -> AsyncIterator[AIOKafkaAdminClient]:
    admin = AIOKafkaAdminClient(**connection(settings))
    try:
        await admin.start()
    except KafkaError as e:
        await admin.close()
        raise await unreachable(settings, e) from e
    try:
        yield admin
    finally:
        await admin.close()


async def ensure_topics(settings: Settings) -> None:
    """Create the topics that do not exist yet: the serving ones with the requests'
    partitions; the control topic compacted (the latest spec per model is what counts)
    in one partition, so every reader sees the changes in the order they were made."""
    topics = settings.topics
    wanted = [NewTopic(name, settings.kafka.request_partitions, 1)
              for name in (topics.requests, topics.predictions, topics.deadletter, topics.drift,
                           topics.drift_rows, topics.samples, topics.shadow)]
    wanted += [NewTopic(topics.control, 1, 1, topic_configs={"cleanup.policy": "compact"}),
               NewTopic(topics.audit, 1, 1)]
    async with admin_client(settings) as admin:
        existing = set(await admin.list_topics())
        missing = [topic for topic in wanted if topic.name not in existing]
        if not missing:
            return
        response = await admin.create_topics(missing)
    created = []
    for name, code, *message in response.topic_errors:
        error = for_code(code)
        if code == 0:
            created.append(name)
        elif error not in (TopicAlreadyExistsError, *REFUSALS):
            raise KafkaAccessError(f"creating topic {name} on {settings.bootstrap} failed: "
                                   f"{error.__name__} {''.join(filter(None, message))}".rstrip())
        # Refused: a topic this principal may not see or create. Using it will say so.
    if created:
        await _wait_for_metadata(settings, created)


# Kafka's default largest record batch (message.max.bytes / max.message.bytes).
DEFAULT_MESSAGE_LIMIT = 1_048_588


async def message_limit(settings: Settings, topic: str) -> int:
    """The largest record batch ``topic`` takes (its max.message.bytes, which defaults to
    the broker's message.max.bytes); Kafka's default when it cannot be read."""
    try:
        async with admin_client(settings) as admin:
            [response] = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, topic, configs={"max.message.bytes": None})])
    except (KafkaError, KafkaAccessError, ValueError):
        return DEFAULT_MESSAGE_LIMIT
    for _code, _message, _type, _name, configs in response.resources:
        for name, value, *_ in configs:
            if name == "max.message.bytes" and str(value).isdigit():
                return int(value)
    return DEFAULT_MESSAGE_LIMIT


async def require_topic(settings: Settings, topic: str) -> None:
    """Return when ``topic`` exists and this principal may see it; raise
    TopicAuthorizationFailedError when it may not, KafkaAccessError (naming the serving
    topics) when it does not exist."""
    async with admin_client(settings) as admin:
        if topic in await admin.list_topics():
            return
        # Named, a topic one may not see answers "not authorized", whether it exists or not.
        response = await send_request(admin, MetadataRequest([topic], allow_auto_topic_creation=False))
    if any(t["error_code"] == TopicAuthorizationFailedError.errno
           for t in response.to_object()["topics"]):
        raise TopicAuthorizationFailedError(topic)
    raise KafkaAccessError(f"topic {topic!r} does not exist on {settings.bootstrap}; "
                           f"the serving topics are {settings.kafka.topic_prefix}.requests, "
                           ".predictions and .deadletter")


async def _wait_for_metadata(settings: Settings, names: list[str], timeout: float = 30) -> None:
    producer = AIOKafkaProducer(**connection(settings))
    await producer.start()
    try:
        for name in names:
            await asyncio.wait_for(producer.partitions_for(name), timeout)
    finally:
        await producer.stop()
