"""Hostile input, in both delivery modes: what one client sends must stop no worker and
open no breaker for others (the December 2026 reliability review, sections 1, 2 and 9).

A worker starts on a control topic holding an unreadable record; then normal requests go
out mixed with requests whose dead letters once grew past the broker's limit, and with a
flood of requests whose deadline had passed; and a canary starts and is rolled back again
and again while requests are served. Every request must get exactly one answer carrying
its id (the ledger), every normal one a prediction, and the worker must stop on SIGTERM
by itself.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from agents.kafka.control import change
from agents.kafka.topics import ensure_topics
from models.train import train_and_register
from pipeline import routing
from pipeline.registry import Registry
from tests.chaos.harness import Fleet, at_once, fleets, requests
from tests.conftest import iris_registry
from tests.chaos.test_crashes import report_line

pytestmark = pytest.mark.integration


@pytest.fixture
def every_mode(kafka_bootstrap, registry_dir, tmp_path):
    yield from fleets(kafka_bootstrap, registry_dir, tmp_path)


def test_oversized_and_expired_requests_and_a_bad_control_record_stop_nothing(every_mode):
    at_once(every_mode, _hostile)


def oversized(run_id: str) -> list[bytes]:
    """Requests over the size limit whose originals escape (JSON quotes, control bytes) to
    more than the broker's 1 MiB message limit."""
    return [b'{"id": "%s-big-%d", "pad": "%s"}' % (run_id.encode(), i, pad)
            for i, pad in enumerate([b'\\"' * 300_000, b"\\u0001" * 100_000])]


def _hostile(fleet: Fleet) -> None:
    asyncio.run(_write_control(fleet, b'{"model": "iris", "stable": "1", "revision": 99, "note": 1}'))
    worker = fleet.start()
    normal = requests(fleet.run_id, 600)
    expired = [orjson.dumps({**orjson.loads(r), "id": f"{fleet.run_id}-late-{i}", "deadline_ms": 1})
               for i, r in enumerate(requests(fleet.run_id, 50))]
    try:
        # Expired first (with 50 of them in a row, a breaker that counted them would open),
        # then the oversized ones among the normal requests.
        fleet.send(expired + normal[:300] + oversized(fleet.run_id) + normal[300:], ensure=False)
        report, recovery_s = fleet.settle(len(normal) + len(expired) + 2)
        metrics = worker.metrics()
    finally:
        stopped = worker.stop()
    report_line("hostile input", fleet, len(normal), report, recovery_s)
    assert report.holds and not report.misnamed, report
    assert report.predictions == len(normal) and report.dead_letters == len(expired) + 2, report
    assert 'streamserve_deadletters_total{model="iris",reason="too_large"}' not in metrics  # no model
    assert 'streamserve_deadletters_total{model="",reason="too_large"} 2.0' in metrics
    assert 'reason="circuit_open"' not in metrics and 'reason="undeliverable"' not in metrics
    assert stopped != -signal.SIGKILL, "the worker did not stop on SIGTERM within 30 s"


async def _write_control(fleet: Fleet, value: bytes) -> None:
    settings = fleet.settings
    await ensure_topics(settings)
    producer = AIOKafkaProducer(bootstrap_servers=fleet.bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(settings.topics.control, key=b"iris", value=value)
    finally:
        await producer.stop()


@pytest.fixture
def two_versions(kafka_bootstrap, registry_dir, tmp_path):
    """Fleets in every mode on a registry holding iris 1 and 2."""
    root, keys = iris_registry(registry_dir, tmp_path)
    train_and_register("iris", Registry(root), seed=1,
                       signing_key=Path(keys["STREAMSERVE_SIGNING_KEY"]))
    yield from fleets(kafka_bootstrap, root, tmp_path)


def test_spec_changes_under_load_answer_every_request_with_its_id(two_versions):
    """Review section 4: a canary started or rolled back while a batch ran failed the rest
    of that batch (id-less model_error dead letters)."""
    at_once(two_versions, _spec_changes)


def _spec_changes(fleet: Fleet) -> None:
    settings, n = fleet.settings, 1500
    asyncio.run(change(settings, "iris", lambda spec: routing.deploy(spec, "iris", "1"),
                       action="deploy", source="test"))
    worker = fleet.start()
    try:
        traffic = fleet.traffic(requests(fleet.run_id, n), rate=300)
        for _ in range(4):  # canary on and off while requests are served
            asyncio.run(change(settings, "iris", lambda spec: routing.start_canary(spec, "2", 0.5),
                               action="canary", source="test"))
            time.sleep(0.4)
            asyncio.run(change(settings, "iris", routing.rollback, action="rollback",
                               source="test"))
            time.sleep(0.4)
        traffic.join()
        report, recovery_s = fleet.settle(n)
    finally:
        stopped = worker.stop()
    report_line("spec changes under load", fleet, n, report, recovery_s)
    assert report.holds and not report.misnamed and report.predictions == n, report
    assert stopped != -signal.SIGKILL
