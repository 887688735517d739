"""Plain aiokafka clients for the tests: what a user's own producer and consumer would do."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer


@dataclass(frozen=True)
class Received:
    topic: str
    key: bytes | None
    raw: bytes | None
    headers: dict[str, bytes]

    @property
    def value(self) -> dict:
        return orjson.loads(self.raw)


async def produce(bootstrap: str, topic: str, values: Sequence[bytes], *,
                  timestamp_ms: int | None = None) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for value in values:
            await producer.send(topic, value=value, key=_key(value), timestamp_ms=timestamp_ms)
        await producer.flush()
    finally:
        await producer.stop()


def _key(value: bytes) -> bytes | None:
    try:
        body = orjson.loads(value)
        return body["id"].encode() if isinstance(body.get("id"), str) else None
    except (orjson.JSONDecodeError, AttributeError):
        return None


async def collect(bootstrap: str, topics: Sequence[str], expected: int,
                  timeout: float = 60, settle: float = 1.0,
                  where: Callable[[Received], bool] | None = None) -> list[Received]:
    """Read ``topics`` from the beginning until ``expected`` records (those ``where`` keeps)
    arrived, then ``settle`` seconds more so that any surplus (a duplicate, a record in
    both topics) is seen too."""
    consumer = AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, group_id=None,
                                enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        received: list[Received] = []
        deadline = time.monotonic() + timeout
        settle_until = None
        while time.monotonic() < deadline:
            if settle_until is None and len(received) >= expected:
                settle_until = time.monotonic() + settle
            if settle_until is not None and time.monotonic() > settle_until:
                break
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                fresh = (Received(r.topic, r.key, r.value, {k: v for k, v in r.headers})
                         for r in records)
                received.extend(r for r in fresh if where is None or where(r))
        return received
    finally:
        await consumer.stop()


def run(coro):
    return asyncio.run(coro)
