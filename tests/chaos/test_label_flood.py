"""A flood of labels (a client sending its backlog at once, or an attacker): the worker
goes on answering requests while the label join takes the flood in, and every label is
counted once; made-up ids beyond STREAMSERVE_LABEL_MAX_UNANSWERED are dropped, so a flood
cannot fill a worker's memory either."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from aiokafka import AIOKafkaProducer

from tests.chaos.harness import Fleet, requests
from tests.chaos.test_hostile_input import _metric_at_least
from tests.integration.clients import collect, run

pytestmark = pytest.mark.integration

FLOOD = 30_000  # labels for ids no worker answered
DROPPED = 'streamserve_labels_total{model="",outcome="dropped"}'


async def _flood(fleet: Fleet) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=fleet.bootstrap, acks="all", linger_ms=20)
    await producer.start()
    try:
        sent = [await producer.send(fleet.settings.topics.labels,
                                    b'{"id": "%s-made-up-%d", "label": "setosa"}' % (fleet.run_id.encode(), i))
                for i in range(FLOOD)]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


def test_requests_are_answered_while_a_flood_of_labels_is_taken_in(kafka_bootstrap, registry_dir, tmp_path):
    fleet = Fleet(kafka_bootstrap, registry_dir, tmp_path)
    worker = fleet.start(STREAMSERVE_LABELS="on", STREAMSERVE_LABEL_MAX_UNANSWERED="10")
    kept = 10 * fleet.settings.kafka.request_partitions  # made-up ids kept, at most
    try:
        asyncio.run(_flood(fleet))
        trickle = requests(f"{fleet.run_id}-during", 300)
        fleet.send(trickle, rate=100)
        answered = run(collect(fleet.bootstrap, [fleet.settings.topics.predictions], expected=len(trickle),
                               timeout=60, where=lambda r: r.value["id"].startswith(f"{fleet.run_id}-during")))
        dropped_meanwhile = _metric_at_least(worker, DROPPED, FLOOD, timeout=0)
        dropped = _metric_at_least(worker, DROPPED, FLOOD - kept, timeout=240)
        report, _ = fleet.settle_prefix(f"{fleet.run_id}-during", len(trickle))
    finally:
        worker.stop()
    latencies = np.array([r.value["parameters"]["latency_ms"] for r in answered])
    p99 = float(np.percentile(latencies, 99))
    print(f"\nLABEL FLOOD of {FLOOD}: {dropped_meanwhile:.0f} dropped while 300 requests were answered "
          f"at 100/s, p50/p99 {np.percentile(latencies, 50):.1f}/{p99:.1f} ms; {dropped:.0f} dropped in the end")
    assert len(answered) == len(trickle)
    assert report.holds and report.predictions == len(trickle) and not report.misnamed, report
    assert dropped_meanwhile < FLOOD - kept, "the flood was taken in before the requests: nothing was tested"
    assert p99 < 250, f"requests waited behind the labels: p99 {p99:.1f} ms"
    assert dropped >= FLOOD - kept, dropped
