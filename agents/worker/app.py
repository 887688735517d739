"""The Faust application that hosts a worker's services.

Requests are served by ``RequestServer`` (see agents/worker/server.py for why it is not a
Faust agent), which runs inside this app's worker; the app itself runs the drift
agent and its table (agents/worker/drift.py). The app's own consumer group is
``<app id>.faust``: it must differ from the serving group, because Faust's partition
assignor and the serving consumer's cannot share one group.
"""

from __future__ import annotations

from pathlib import Path

import faust
from faust.auth import SASLCredentials, SSLCredentials

from agents.kafka.connect import ssl_context
from pipeline.config import Settings


def faust_broker_url(bootstrap: str) -> str:
    return ";".join(f"kafka://{server.strip()}" for server in bootstrap.split(","))


def broker_credentials(settings: Settings) -> SASLCredentials | SSLCredentials | None:
    """Faust's form of STREAMSERVE_SECURITY_* (its clients take no aiokafka keywords)."""
    security, context = settings.kafka.security, ssl_context(settings)
    if security.uses_sasl:
        return SASLCredentials(username=security.username, password=security.password,
                               mechanism=security.sasl_mechanism, ssl_context=context)
    return SSLCredentials(context) if context is not None else None


def app_id(settings: Settings) -> str:
    return f"{settings.kafka.app_id}.faust"


def data_folder(settings: Settings) -> Path:
    """Where the app keeps its tables' files (the label join's RocksDB), under STREAMSERVE_HOME."""
    return settings.kafka.home / "faust" / f"{app_id(settings)}-data"


def create_app(settings: Settings, replicas: int) -> faust.App:
    """The app; its own topics (the drift table's changelog, its leader topic) get
    ``replicas`` replicas, as every topic streamserve creates."""
    data = data_folder(settings)
    data.parent.mkdir(parents=True, exist_ok=True)  # Faust makes only the last folder of datadir
    return faust.App(
        app_id(settings),
        broker=faust_broker_url(settings.bootstrap),
        broker_credentials=broker_credentials(settings),
        store="memory://",
        # Faust makes a data folder even for memory stores: under STREAMSERVE_HOME, not in
        # whatever folder the worker was started from.
        datadir=str(data),
        web_enabled=False,  # metrics come from prometheus_client; one port per worker is enough
        topic_partitions=settings.kafka.request_partitions,
        topic_replication_factor=replicas,
        producer_acks=-1,
        # As the serving consumer's (10 s): a crashed worker's drift windows
        # move to another worker within seconds, not Faust's default minute.
        broker_session_timeout=10.0,
        # Every topic and table of the app carries bytes its own code encodes.
        key_serializer="raw",
        value_serializer="raw",
    )
