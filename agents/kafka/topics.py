"""Topic administration: the admin client, raw protocol requests through it, creating
the serving, control and audit topics, and checking that a topic exists and may be seen.

Apart from ``agents.kafka.connect`` because only the commands that set up or check
topics need it; the readers (``agents.kafka.read``) check their topic here first.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, TopicAuthorizationFailedError, for_code
from aiokafka.protocol.api import Request, Response
from aiokafka.protocol.metadata import MetadataRequest

from agents.kafka.connect import REFUSALS, KafkaAccessError, connection, unreachable
from pipeline.config import Settings
from pipeline.topology import TopicSpec, TopicState, check_creatable, replication, wanted_topics


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


@dataclass(frozen=True)
class Cluster:
    """The brokers up (KRaft lists only live, unfenced ones) and the replication topics get."""

    brokers: tuple[int, ...]
    replicas: int


async def cluster(settings: Settings, admin: AIOKafkaAdminClient) -> Cluster:
    """The cluster's live brokers and the replication ``pipeline.topology`` gives topics:
    STREAMSERVE_REPLICATION_FACTOR, or the cluster's default.replication.factor (read from
    a live broker; a principal refused that, such as a worker under least-privilege ACLs,
    takes the replication of the existing requests topic, else one replica per broker up to
    three)."""
    metadata = (await send_request(
        admin, MetadataRequest([settings.topics.requests], allow_auto_topic_creation=False))).to_object()
    brokers = tuple(sorted(b["node_id"] for b in metadata["brokers"]))
    if not brokers:
        raise KafkaAccessError(f"the cluster at {settings.bootstrap} lists no live broker; start one")
    default = await _broker_config(admin, brokers[0], "default.replication.factor")
    if default is None:
        existing = [len(p["replicas"]) for t in metadata["topics"] if t["error_code"] == 0
                    for p in t["partitions"]]
        default = min(existing) if existing else min(3, len(brokers))
    return Cluster(brokers, replication(settings, int(default)))


async def ensure_topics(settings: Settings) -> int:
    """Create the topics that do not exist yet as ``pipeline.topology`` wants them (the
    serving ones with the requests' partitions, the control topic compacted in one
    partition, every one with the same replication); return that replication, which the
    Faust app's own topics get too."""
    async with admin_client(settings) as admin:
        facts = await cluster(settings, admin)
        existing = set(await admin.list_topics())
        missing = [spec for spec in wanted_topics(settings, facts.replicas) if spec.name not in existing]
        if not missing:
            return facts.replicas
        check_creatable(settings, facts.replicas, len(facts.brokers))
        response = await admin.create_topics([new_topic(spec) for spec in missing])
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
    return facts.replicas


def topic_states(metadata: Mapping, configs: Mapping[str, Mapping[str, str]] | None = None,
                 ) -> dict[str, TopicState]:
    """The state of every topic a metadata answer (``to_object()``) describes without error,
    with its ``configs`` when given."""
    states = {}
    for topic in metadata["topics"]:
        if topic["error_code"]:
            continue
        partitions = sorted(topic["partitions"], key=lambda p: p["partition"])
        states[topic["topic"]] = TopicState(
            topic["topic"], tuple(tuple(p["replicas"]) for p in partitions),
            tuple(tuple(p["isr"]) for p in partitions), tuple(p["leader"] for p in partitions),
            (configs or {}).get(topic["topic"], {}))
    return states


def new_topic(spec: TopicSpec) -> NewTopic:
    assert spec.partitions is not None, "only topics whose partitions streamserve decides are made here"
    return NewTopic(spec.name, spec.partitions, spec.replication, topic_configs=dict(spec.configs))


async def _broker_config(admin: AIOKafkaAdminClient, broker: int, name: str) -> str | None:
    """One of ``broker``'s configs in force; None when this principal may not read it."""
    try:
        [response] = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.BROKER, str(broker), configs={name: None})])
    except KafkaError:
        return None
    for resource in response.to_object()["resources"]:
        for entry in resource["config_entries"] if resource["error_code"] == 0 else ():
            if entry["config_names"] == name:
                return entry["config_value"]
    return None


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
