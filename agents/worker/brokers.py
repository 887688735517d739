"""The worker's watch on the Kafka cluster: every few seconds, the metadata of its topics
(``pipeline.cluster_health`` reads it), a log line per change of state, the
``streamserve_kafka_*`` gauges, and the readiness check that outputs can be written.

Its own admin client, so a look never waits behind the serving consumer's or producer's
requests; a look that gets no answer within ``LOOK_TIMEOUT_S`` counts as "no broker
answers".
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection

import mode
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aiokafka.protocol.metadata import MetadataRequest

from agents.kafka.connect import connection
from agents.kafka.topics import send_request, topic_states
from agents.worker.health import CheckResult
from agents.worker.metrics import Metrics
from pipeline.cluster_health import ClusterHealth, ClusterView
from pipeline.config import Settings

log = logging.getLogger(__name__)

LOOK_EVERY_S = 5.0
LOOK_TIMEOUT_S = 4.0


class BrokerWatch(mode.Service):
    """Looks at the cluster every ``LOOK_EVERY_S``; ``check`` is the readiness probe."""

    def __init__(self, settings: Settings, metrics: Metrics, topics: Collection[str], replicas: int,
                 **kwargs: object) -> None:
        super().__init__(**kwargs)
        self._settings = settings
        self._metrics = metrics
        self._topics = sorted(topics)
        self.health = ClusterHealth(settings.bootstrap, (settings.topics.predictions,
                                                         settings.topics.deadletter), replicas)
        self._admin: AIOKafkaAdminClient | None = None

    def check(self) -> CheckResult:
        return CheckResult(*self.health.writable())

    async def on_stop(self) -> None:
        await self._close()

    @mode.Service.task
    async def _watch(self) -> None:
        while not self.should_stop:
            await self.look()
            await self.sleep(LOOK_EVERY_S)

    async def look(self) -> None:
        view = await self._view()
        for level, line in self.health.observe(view, time.monotonic()):
            log.log(level, line)
        health, metrics = self.health, self._metrics
        metrics.brokers_unreachable.set(health.unreachable)
        metrics.outputs_writable.set(int(health.writable()[0]))
        for gauge, counts in ((metrics.under_replicated, health.under_replicated()),
                              (metrics.leaderless, health.leaderless()),
                              (metrics.replicas_missing, health.replicas_missing())):
            for topic, count in counts.items():
                gauge.labels(topic).set(count)

    async def _view(self) -> ClusterView | None:
        """The metadata of the worker's topics; None when no broker answered. A client whose
        broker went away fails once: a fresh one, bootstrapped from any broker, asks again."""
        for _ in range(2):
            try:
                if self._admin is None:
                    admin = AIOKafkaAdminClient(**connection(self._settings),
                                                request_timeout_ms=round(LOOK_TIMEOUT_S * 1000))
                    self._admin = admin
                    await asyncio.wait_for(admin.start(), LOOK_TIMEOUT_S)
                request = MetadataRequest(self._topics, allow_auto_topic_creation=False)
                metadata = (await asyncio.wait_for(send_request(self._admin, request),
                                                   LOOK_TIMEOUT_S)).to_object()
            except (KafkaError, OSError, TimeoutError):
                await self._close()
                continue
            return ClusterView(frozenset(b["node_id"] for b in metadata["brokers"]),
                               topic_states(metadata))
        return None

    async def _close(self) -> None:
        admin, self._admin = self._admin, None
        if admin is not None:
            try:
                await admin.close()
            except (KafkaError, OSError):
                pass
