"""The Faust application: the inference agent that wires Kafka to ``InferenceService``.

Commit order, per batch (at-least-once):
  1. decode, serve and encode the whole batch (``InferenceService.handle``);
  2. send every output and wait until the broker acknowledges each one;
  3. only then return to ``take_events``, which acks the batch's events so their
     offsets become committable. A crash before 3 replays the batch.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import faust
from faust.types import EventT

from agents.inference import Incoming, InferenceService, Outgoing
from agents.metrics import Metrics
from pipeline.config import Settings

log = logging.getLogger(__name__)

_SEND_RETRY_SECONDS = 1.0


def faust_broker_url(bootstrap: str) -> str:
    return ";".join(f"kafka://{server.strip()}" for server in bootstrap.split(","))


def create_app(settings: Settings, service: InferenceService, metrics: Metrics) -> faust.App:
    app = faust.App(
        settings.app_id,
        broker=faust_broker_url(settings.bootstrap),
        store="memory://",
        web_enabled=False,  # metrics come from prometheus_client; one port per worker is enough
        topic_partitions=settings.request_partitions,
        producer_acks=-1,
        consumer_auto_offset_reset="earliest",
    )
    topics = settings.topics
    requests = app.topic(topics.requests, key_type=bytes, value_type=bytes,
                         key_serializer="raw", value_serializer="raw",
                         partitions=settings.request_partitions)

    async def deliver(outgoing: Sequence[Outgoing]) -> None:
        """Send every output and wait for the broker's acks, retrying until it accepts them."""
        pending = list(outgoing)
        while pending:
            # The transport producer directly: Topic.send's per-message codecs, sensors and
            # attachments cost about a millisecond each, more than serving the request.
            futures = [await app.producer.send(o.topic, o.key, o.value, None, None, o.headers)
                       for o in pending]
            results = await asyncio.gather(*futures, return_exceptions=True)
            failed = [o for o, r in zip(pending, results, strict=True) if isinstance(r, BaseException)]
            service.delivered([o for o, r in zip(pending, results, strict=True)
                               if not isinstance(r, BaseException)])
            if failed:
                log.warning("%d outputs were not acknowledged (%r); retrying", len(failed),
                            next(r for r in results if isinstance(r, BaseException)))
                await asyncio.sleep(_SEND_RETRY_SECONDS)
            pending = failed

    @app.agent(requests, concurrency=1)  # concurrency > 1 commits past in-flight batches (#606)
    async def infer(stream: faust.StreamT) -> None:
        within = settings.batch_timeout_ms / 1000
        async for events in stream.take_events(settings.max_batch, within=within):
            batch = [_incoming(event) for event in events]
            try:
                outgoing = await service.handle(batch)
            except Exception as e:  # noqa: BLE001 - an escaped exception would lose the batch
                log.exception("serving a batch of %d failed; dead-lettering it", len(batch))
                outgoing = service.fail_batch(batch, e)
            await deliver(outgoing)

    @app.on_rebalance_complete.connect
    async def on_ready(sender: faust.App, **kwargs: object) -> None:
        metrics.ready.set(1)

    return app


def _incoming(event: EventT) -> Incoming:
    message = event.message
    return Incoming(topic=message.topic, partition=message.partition, offset=message.offset,
                    timestamp=message.timestamp, value=message.value)
