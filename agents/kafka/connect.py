"""Connections to Kafka: the options every aiokafka client is made with (servers, SASL
login, TLS context), starting clients, and the sentences that explain why Kafka could not
be reached or refused a login or an operation.

Shared by the CLI, the demo, the client library and the worker's start-up; the topic
admin (``agents.kafka.topics``) and the readers (``agents.kafka.read``) build on it.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.conn import collect_hosts, create_conn
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    KafkaError,
    SaslAuthenticationFailed,
    TopicAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
    UnsupportedSaslMechanismError,
)
from aiokafka.helpers import create_ssl_context

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
    return {"bootstrap_servers": settings.bootstrap, **settings.kafka.security.aiokafka_options(),
            "ssl_context": ssl_context(settings)}


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context of ``settings`` (None without TLS): trust, client identity, hostname check."""
    security = settings.kafka.security
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
    hint = ("start it with `streamserve broker start`" if settings.kafka.uses_local_broker
            else "check STREAMSERVE_BROKER")
    return KafkaAccessError(f"cannot reach Kafka at {settings.bootstrap} ({error}); {hint}")


async def _login_refusal(settings: Settings) -> str | None:
    """What the first bootstrap server makes of this client's TLS handshake and login
    (aiokafka only logs it and reports "Unable to bootstrap"); None when it accepts them
    or cannot be reached at all."""
    security = settings.kafka.security
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
    principal = settings.kafka.security.principal
    kind, name = _refused_resource(error)
    scope = acl.Scope(settings.topics, settings.kafka.app_id)
    how = {who: f"`set -a; . {path}`" for who in acl.Principals().all()
           if (path := local_env_file(settings.kafka.home, who.split(":", 1)[1])).is_file()}
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


async def _started(settings: Settings, client: Client) -> Client:
    """``client`` started, or stopped again and KafkaAccessError naming the fix."""
    try:
        await client.start()
    except KafkaConnectionError as e:
        await client.stop()
        raise await unreachable(settings, e) from e
    return client


async def start_consumer(settings: Settings, *topics: str, **options: object) -> AIOKafkaConsumer:
    """A started consumer without a group, or KafkaAccessError naming the fix."""
    return await _started(settings, AIOKafkaConsumer(*topics, **connection(settings), group_id=None,
                                                     enable_auto_commit=False, **options))


async def start_producer(settings: Settings, **options: object) -> AIOKafkaProducer:
    return await _started(settings, AIOKafkaProducer(**connection(settings), acks="all",
                                                     enable_idempotence=True, linger_ms=5, **options))
