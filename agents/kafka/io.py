"""Plain aiokafka plumbing shared by the CLI, the demo and the worker's start-up."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Self, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.conn import collect_hosts, create_conn
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    KafkaError,
    SaslAuthenticationFailed,
    TopicAlreadyExistsError,
    TopicAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
    UnsupportedSaslMechanismError,
    for_code,
)
from aiokafka.helpers import create_ssl_context
from aiokafka.protocol.api import Request, Response
from aiokafka.protocol.metadata import MetadataRequest

from pipeline import acl
from pipeline.config import Settings
from pipeline.errors import StreamserveError
from pipeline.security import local_env_file

Client = TypeVar("Client", AIOKafkaConsumer, AIOKafkaProducer)

# What Kafka answers when the principal logged in may not do something.
REFUSALS = (TopicAuthorizationFailedError, GroupAuthorizationFailedError,
            ClusterAuthorizationFailedError, TransactionalIdAuthorizationFailed)


def connection(settings: Settings) -> dict[str, object]:
    """The keyword arguments every aiokafka client of ``settings`` is made with: the
    bootstrap servers and the security (SASL login, TLS context) of STREAMSERVE_SECURITY_*."""
    return {"bootstrap_servers": settings.bootstrap, **settings.kafka_security.aiokafka_options(),
            "ssl_context": ssl_context(settings)}


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context of ``settings`` (None without TLS): trust, client identity, hostname check."""
    security = settings.kafka_security
    if not security.uses_tls:
        return None
    context = create_ssl_context(cafile=security.cafile and str(security.cafile),
                                 certfile=security.certfile and str(security.certfile),
                                 keyfile=security.keyfile and str(security.keyfile),
                                 password=security.key_password or None)
    context.check_hostname = security.check_hostname
    return context


class KafkaAccessError(StreamserveError, RuntimeError):
    """Kafka could not be used as asked: unreachable servers, a refused login or access,
    a missing topic."""


async def unreachable(settings: Settings, error: Exception) -> KafkaAccessError:
    """Why the clients of ``settings`` could not start: a refused login or TLS handshake
    when the first server says so, else that Kafka cannot be reached."""
    refusal = await _login_refusal(settings)
    if refusal is not None:
        return KafkaAccessError(refusal)
    hint = ("start it with `streamserve broker start`" if settings.uses_local_broker
            else "check STREAMSERVE_BROKER")
    return KafkaAccessError(f"cannot reach Kafka at {settings.bootstrap} ({error}); {hint}")


async def _login_refusal(settings: Settings) -> str | None:
    """What the first bootstrap server makes of this client's TLS handshake and login
    (aiokafka only logs it and reports "Unable to bootstrap"); None when it accepts them
    or cannot be reached at all."""
    security = settings.kafka_security
    host, port, _ = collect_hosts(settings.bootstrap, randomize=False)[0]
    where = f"Kafka at {host}:{port}"
    options = {k: v for k, v in connection(settings).items() if k != "bootstrap_servers"}
    try:
        conn = await create_conn(host, port, request_timeout_ms=5000, **options)
    except ssl.SSLCertVerificationError as e:
        return (f"{where} presented a certificate this client does not trust ({e.verify_message}): "
                "set STREAMSERVE_SSL_CAFILE to the CA that signed it, and connect by a name or "
                "address the certificate holds")
    except ssl.SSLError as e:
        return (f"the TLS handshake with {where} failed ({e.reason or e}): check that its listener "
                f"speaks STREAMSERVE_SECURITY_PROTOCOL={security.protocol}")
    except SaslAuthenticationFailed:
        return (f"{where} refused the login of {security.principal} ({security.sasl_mechanism}): "
                "check STREAMSERVE_SASL_USERNAME and STREAMSERVE_SASL_PASSWORD (or _FILE)")
    except UnsupportedSaslMechanismError:
        return (f"{where} does not accept SASL mechanism {security.sasl_mechanism}: set "
                "STREAMSERVE_SASL_MECHANISM to one its listener enables")
    except KafkaConnectionError:  # connected, then dropped: it wanted another protocol
        return (f"{where} closed the connection: is it a Kafka listener that speaks "
                f"STREAMSERVE_SECURITY_PROTOCOL={security.protocol}? (a secured broker wants "
                "SASL_SSL, with a user name and password)")
    except (TimeoutError, OSError, KafkaError):
        return None
    conn.close()
    return None


def refused(settings: Settings, error: KafkaError, operation: acl.Operation | None = None,
            fix: str | None = None, fixed_by: str | None = None) -> KafkaAccessError:
    """``error`` (one of REFUSALS) as a sentence naming the principal, the resource and the
    fix: ``fix`` (with ``fixed_by``'s credentials) when given, else who the streamserve ACL
    layout lets do it."""
    principal = settings.kafka_security.principal
    kind, name = _refused_resource(error)
    scope = acl.Scope(settings.topics, settings.app_id)
    how = {who: f"`set -a; . {path}`" for who in acl.Principals().all()
           if (path := local_env_file(settings.home, who.split(":", 1)[1])).is_file()}
    return KafkaAccessError(acl.refusal(principal, kind, name, operation, acl.layout(scope),
                                        fix=fix, fixed_by=fixed_by, how_to_become=how))


def _refused_resource(error: KafkaError) -> tuple[acl.ResourceType, str]:
    subject = error.args[0] if error.args else None
    names = [subject] if isinstance(subject, str) else sorted(subject or ())
    kind = {TopicAuthorizationFailedError: acl.ResourceType.TOPIC,
            GroupAuthorizationFailedError: acl.ResourceType.GROUP,
            TransactionalIdAuthorizationFailed: acl.ResourceType.TRANSACTIONAL_ID,
            }.get(type(error), acl.ResourceType.CLUSTER)
    if kind == acl.ResourceType.CLUSTER or not names:
        return acl.ResourceType.CLUSTER, "kafka-cluster"
    return kind, ", ".join(map(str, names))


@contextmanager
def refusals(settings: Settings, operation: acl.Operation | None = None,
             fix: str | None = None, fixed_by: str | None = None) -> Iterator[None]:
    """Turn Kafka's authorization refusals inside the block into ``refused(...)``."""
    try:
        yield
    except REFUSALS as e:
        raise refused(settings, e, operation, fix, fixed_by) from None


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
    wanted = [NewTopic(name, settings.request_partitions, 1)
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


async def _require_topic(settings: Settings, topic: str) -> None:
    """Return when ``topic`` exists and this principal may see it; raise
    TopicAuthorizationFailedError when it may not, KafkaAccessError when it does not exist."""
    async with admin_client(settings) as admin:
        if topic in await admin.list_topics():
            return
        # Named, a topic one may not see answers "not authorized", whether it exists or not.
        response = await send_request(admin, MetadataRequest([topic], allow_auto_topic_creation=False))
    if any(t["error_code"] == TopicAuthorizationFailedError.errno
           for t in response.to_object()["topics"]):
        raise TopicAuthorizationFailedError(topic)
    raise KafkaAccessError(f"topic {topic!r} does not exist on {settings.bootstrap}; "
                           f"the serving topics are {settings.topic_prefix}.requests, "
                           ".predictions and .deadletter")


async def _wait_for_metadata(settings: Settings, names: list[str], timeout: float = 30) -> None:
    producer = AIOKafkaProducer(**connection(settings))
    await producer.start()
    try:
        for name in names:
            await asyncio.wait_for(producer.partitions_for(name), timeout)
    finally:
        await producer.stop()


async def _started(settings: Settings, client: Client) -> Client:
    """``client`` started, or stopped again and KafkaAccessError naming the fix."""
    try:
        await client.start()
    except KafkaConnectionError as e:
        await client.stop()
        raise await unreachable(settings, e) from e
    return client


async def _start_consumer(settings: Settings, *topics: str, **options: object) -> AIOKafkaConsumer:
    """A started consumer without a group, or KafkaAccessError naming the fix."""
    return await _started(settings, AIOKafkaConsumer(*topics, **connection(settings), group_id=None,
                                                     enable_auto_commit=False, **options))


async def start_producer(settings: Settings, **options: object) -> AIOKafkaProducer:
    return await _started(settings, AIOKafkaProducer(**connection(settings), acks="all",
                                                     enable_idempotence=True, linger_ms=5, **options))


async def read_topic(settings: Settings, topic: str, *, from_beginning: bool,
                     idle_timeout: float | None = None, to_end: bool = False,
                     ready: asyncio.Event | None = None) -> AsyncIterator[ConsumerRecord]:
    """Records of every partition of ``topic``, without joining a consumer group.

    Stops after ``idle_timeout`` seconds with no record (never, when None), or with
    ``to_end`` once every partition is read up to its end as of the start. ``ready`` is
    set once the start positions are fixed, so a caller can produce after it without
    missing its own replies.
    """
    await _require_topic(settings, topic)
    consumer = await _start_consumer(settings, topic, isolation_level="read_committed",
                                     auto_offset_reset="earliest" if from_beginning else "latest")
    try:
        for tp in consumer.assignment():
            await consumer.position(tp)  # fix the start positions now, before ``ready``
        if ready is not None:
            ready.set()
        ends = await consumer.end_offsets(list(consumer.assignment())) if to_end else {}
        last = time.monotonic()
        while True:
            if to_end and all([await consumer.position(tp) >= end for tp, end in ends.items()]):
                return
            batch = await consumer.getmany(timeout_ms=200, max_records=1000)
            records = [r for tp, rs in batch.items() for r in rs
                       if not to_end or r.offset < ends[tp]]
            for record in records:
                yield record
            if records:
                last = time.monotonic()
            elif idle_timeout is not None and time.monotonic() - last > idle_timeout:
                return
    finally:
        await consumer.stop()



async def require_topic(settings: Settings, topic: str) -> None:
    """Raise ``KafkaAccessError`` (naming the serving topics) when ``topic`` does not exist."""
    await _require_topic(settings, topic)


async def partition_offsets(
        settings: Settings, topic: str, timestamps_ms: tuple[int, ...] = (),
) -> dict[int, tuple[int, int, tuple[int | None, ...]]]:
    """Per partition of ``topic``: its first offset, its end (read_committed: the last
    stable offset) and, for each of ``timestamps_ms``, the first offset whose timestamp is
    at or after it (None when no record is that late)."""
    await _require_topic(settings, topic)
    # Subscribed without a group: every partition is assigned once it has started.
    consumer = await _start_consumer(settings, topic, isolation_level="read_committed")
    try:
        partitions = sorted(consumer.assignment())
        beginnings = await consumer.beginning_offsets(partitions)
        ends = await consumer.end_offsets(partitions)
        at_times = []
        for stamp in timestamps_ms:
            found = await consumer.offsets_for_times({tp: stamp for tp in partitions})
            at_times.append({tp: None if hit is None else hit.offset for tp, hit in found.items()})
        return {tp.partition: (beginnings[tp], ends[tp], tuple(at[tp] for at in at_times))
                for tp in partitions}
    finally:
        await consumer.stop()


async def read_partitions(settings: Settings, topic: str,
                          ranges: dict[int, tuple[int, int]]) -> AsyncIterator[ConsumerRecord]:
    """The records of ``topic`` (read_committed) from ``ranges[partition] = (first, past)``:
    offsets ``first`` up to, not including, ``past``; in offset order within a partition."""
    wanted = {TopicPartition(topic, p): (first, past)
              for p, (first, past) in ranges.items() if first < past}
    if not wanted:
        return
    consumer = await _start_consumer(settings, isolation_level="read_committed",
                                     auto_offset_reset="earliest")
    try:
        consumer.assign(list(wanted))
        for tp, (first, _) in wanted.items():
            consumer.seek(tp, first)
        while True:
            # Transaction markers take offsets too: stop on the position, not a count.
            open_ = [tp for tp, (_, past) in wanted.items() if await consumer.position(tp) < past]
            if not open_:
                return
            batch = await consumer.getmany(*open_, timeout_ms=500)
            for tp, records in batch.items():
                for record in records:
                    if record.offset < wanted[tp][1]:
                        yield record
    finally:
        await consumer.stop()


class ClusterView:
    """An admin client and a group-less consumer (read_committed), kept open for reading
    offsets again and again, and for tailing topics from their beginning
    (``streamserve status``, refreshed by ``--watch``).

    ``tail(topic)`` returns the records written since its last call, up to the end
    offsets as of this call; the first call starts at the beginning. The topics to tail
    are given up front: the consumer's assignment is set once they all exist.
    """

    def __init__(self, settings: Settings, tailed: tuple[str, ...] = ()) -> None:
        self._settings = settings
        self._tailed = tailed
        self._admin = AIOKafkaAdminClient(**connection(settings))
        self._consumer = AIOKafkaConsumer(**connection(settings), group_id=None,
                                          enable_auto_commit=False,
                                          isolation_level="read_committed",
                                          auto_offset_reset="earliest")
        self._assigned: set[TopicPartition] = set()

    async def __aenter__(self) -> Self:
        try:
            await self._admin.start()
            await self._consumer.start()
        except KafkaError as e:
            await self.close()
            raise await unreachable(self._settings, e) from e
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._consumer.stop()
        await self._admin.close()

    async def topics(self) -> set[str]:
        return set(await self._admin.list_topics())

    async def partitions(self, topic: str) -> list[int]:
        """``topic``'s partition numbers, sorted; empty when it does not exist."""
        described = await self._admin.describe_topics([topic])
        return sorted(p["partition"] for d in described
                      if d["topic"] == topic and not d["error_code"] for p in d["partitions"])

    async def offsets(self, topic: str) -> dict[int, tuple[int, int]]:
        """Per partition of ``topic``: its first offset kept and its end (the last stable
        offset); empty when the topic does not exist."""
        tps = [TopicPartition(topic, p) for p in await self.partitions(topic)]
        if not tps:
            return {}
        firsts = await self._consumer.beginning_offsets(tps)
        ends = await self._consumer.end_offsets(tps)
        return {tp.partition: (firsts[tp], ends[tp]) for tp in tps}

    async def committed(self, group: str, topic: str) -> dict[int, int]:
        """The offsets consumer group ``group`` committed on ``topic``, by partition (those
        it never committed on are absent)."""
        offsets = await self._admin.list_consumer_group_offsets(group)
        return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic}

    async def tail(self, topic: str, timeout: float = 30) -> list[ConsumerRecord]:
        """``topic``'s records since the last call (the first: from the beginning), at
        least up to its end as of this call; empty while a tailed topic does not exist yet.
        ``KafkaAccessError`` when they cannot all be read within ``timeout`` seconds."""
        if topic not in self._tailed:
            raise ValueError(f"{topic!r} is not tailed; pass it to ClusterView(tailed=...)")
        if not self._assigned:
            wanted = {TopicPartition(t, p) for t in self._tailed for p in await self.partitions(t)}
            if {tp.topic for tp in wanted} != set(self._tailed):
                return []
            self._consumer.assign(sorted(wanted))
            self._assigned = wanted
        mine = [tp for tp in self._assigned if tp.topic == topic]
        ends = await self._consumer.end_offsets(mine)
        records: list[ConsumerRecord] = []
        deadline = time.monotonic() + timeout
        # Transaction markers take offsets too: stop on the position, not a count. Records
        # past the ends are kept: the position has moved past them.
        while open_ := [tp for tp in mine if await self._consumer.position(tp) < ends[tp]]:
            if time.monotonic() > deadline:
                raise KafkaAccessError(f"could not read {topic} up to its end within "
                                       f"{timeout:.0f} s from {self._settings.bootstrap}")
            batch = await self._consumer.getmany(*open_, timeout_ms=500, max_records=5000)
            records += [r for rs in batch.values() for r in rs]
        return records
