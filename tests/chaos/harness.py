"""Fault tools for the chaos tests: seeded traffic, faults, and the ledger as the oracle.

Modelled on how Kafka tests its transactions: seed N records, inject faults while they
are served, then account every request against the outputs (``streamserve verify``,
in-process): one fate each, never lost, never both; no duplicates in exactly-once mode.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar
from pathlib import Path

import orjson
from aiokafka import AIOKafkaProducer

from agents.dev.fleet import WorkerProcess
from agents.kafka.topics import ensure_topics
from agents.ops.verify import render, verify
from models.datasets import load as load_dataset
from pipeline.config import Settings
from pipeline.ledger import LedgerReport
from tests.conftest import registry_keys

IRIS = load_dataset("iris")
POISON = -999.0
DELIVERY_MODES = ("at-least-once", "exactly-once")
T = TypeVar("T")


def fleets(bootstrap: str, registry: Path, folder: Path) -> Iterator[list[Fleet]]:
    """One fleet per delivery mode, on topics and groups of its own (a fixture's body)."""
    every = []
    for mode in DELIVERY_MODES:
        (folder / mode).mkdir()
        every.append(Fleet(bootstrap, registry, folder / mode, delivery=mode))
    yield every
    for fleet in every:
        fleet.close()


def at_once(fleets: list[Fleet], scenario: Callable[[Fleet], T]) -> list[T]:
    """``scenario(fleet)`` for every fleet at the same time, each in a thread of its own;
    the first failure is raised once all have finished. The fleets share nothing but the
    broker, and most of a scenario is waiting (worker starts, session timeouts, paced
    traffic), so running the delivery modes side by side halves the suite's chaos time."""
    with ThreadPoolExecutor(len(fleets)) as pool:
        futures = [pool.submit(scenario, fleet) for fleet in fleets]
        return [future.result() for future in futures]


def requests(run_id: str, n: int, *, poison_every: int = 0, deadline_ms: int | None = None) -> list[bytes]:
    """``n`` iris requests with ids ``<run_id>-<i>``; every ``poison_every``-th holds POISON."""
    out = []
    for i in range(n):
        row = IRIS.X[i % len(IRIS.X)].tolist()
        if poison_every and i % poison_every == poison_every - 1:
            row[0] = POISON
        body = {"id": f"{run_id}-{i}", "model": "iris", "features": dict(zip(IRIS.features, row, strict=True))}
        if deadline_ms is not None:
            body["deadline_ms"] = deadline_ms
        out.append(orjson.dumps(body))
    return out


async def produce(bootstrap: str, topic: str, values: list[bytes], rate: float | None = None) -> None:
    """Produce ``values`` keyed by id, at ``rate`` per second (None: as fast as possible)."""
    # Patient, as a client riding out a lost cluster must be: a send waits up to 90 s for
    # a partition's leader (aiokafka's default gives up after 40 s).
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True,
                                linger_ms=5, request_timeout_ms=90_000)
    await producer.start()
    try:
        started = time.monotonic()
        for i, value in enumerate(values):
            if rate is not None and i % 50 == 0:
                await asyncio.sleep(max(0.0, started + i / rate - time.monotonic()))
            await producer.send(topic, value=value, key=orjson.loads(value)["id"].encode())
        await producer.flush()
    finally:
        await producer.stop()


class Traffic:
    """Requests produced from a background thread, so faults can be injected meanwhile."""

    def __init__(self, bootstrap: str, topic: str, values: list[bytes], rate: float) -> None:
        self._thread = threading.Thread(
            target=lambda: asyncio.run(produce(bootstrap, topic, values, rate)), daemon=True)
        self._thread.start()

    def join(self, timeout: float = 120) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the traffic did not finish producing"


@dataclass
class Fleet:
    """Workers of one run: same topics, group and registry; each with its own worker id."""

    bootstrap: str
    registry: Path
    folder: Path
    delivery: str = "at-least-once"
    run_id: str = field(default_factory=lambda: f"c{uuid.uuid4().hex[:8]}")
    starts: int = 0
    workers: list[WorkerProcess] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        return {"STREAMSERVE_BROKER": self.bootstrap, "STREAMSERVE_REGISTRY": str(self.registry),
                "STREAMSERVE_TRUSTED_KEYS": registry_keys(self.registry)["STREAMSERVE_TRUSTED_KEYS"],
                "STREAMSERVE_TOPIC_PREFIX": self.run_id, "STREAMSERVE_APP_ID": self.run_id,
                "STREAMSERVE_DELIVERY": self.delivery}

    @property
    def settings(self) -> Settings:
        return Settings.from_env(self.env)

    def start(self, worker_id: str = "w1", wait: bool = True, **env: str) -> WorkerProcess:
        """A worker of the fleet, once ready (``wait``), or at once (one meant to crash)."""
        self.starts += 1
        worker = WorkerProcess.start(self.folder / f"{worker_id}-{self.starts}.log",
                                     {**self.env, "STREAMSERVE_WORKER_ID": worker_id, **env},
                                     wait=wait)
        self.workers.append(worker)
        return worker

    def close(self) -> None:
        """Stop every worker still running (a test that failed midway leaves some)."""
        for worker in self.workers:
            worker.stop()

    def send(self, values: list[bytes], rate: float | None = None, ensure: bool = True) -> None:
        if ensure:
            asyncio.run(ensure_topics(self.settings))
        asyncio.run(produce(self.bootstrap, self.settings.topics.requests, values, rate))

    def traffic(self, values: list[bytes], rate: float) -> Traffic:
        asyncio.run(ensure_topics(self.settings))
        return Traffic(self.bootstrap, self.settings.topics.requests, values, rate)

    def ledger(self, id_prefix: str | None = None) -> LedgerReport:
        return asyncio.run(verify(self.settings, id_prefix or self.run_id, None, None))

    def settle(self, expected: int, timeout: float = 90) -> tuple[LedgerReport, float]:
        """Wait until all ``expected`` requests have their fate; the report and the wait."""
        return self.settle_prefix(self.run_id, expected, timeout)

    def settle_prefix(self, id_prefix: str, expected: int,
                      timeout: float = 90) -> tuple[LedgerReport, float]:
        """``settle`` for the requests whose ids start with ``id_prefix``."""
        started = time.monotonic()
        while True:
            report = self.ledger(id_prefix)
            if report.requests == expected and not report.lost:
                return report, time.monotonic() - started
            if time.monotonic() - started > timeout:
                logs = "\n".join(f"--- {w.log.name} ends:\n{w.log_tail()}" for w in self.workers)
                raise AssertionError(f"after {timeout:.0f} s [{self.delivery}, {id_prefix}]:\n"
                                     f"{render(report)}\n{logs}")
            time.sleep(1)
