"""``streamserve status`` against a real broker and worker: one collection, read from
Kafka (routes, lag, drift) and the worker's /metrics while requests are being served."""

from __future__ import annotations

import asyncio
import io
import threading
import time

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from rich.console import Console

from agents.ops.status import StatusOptions, collect_once
from agents.ops.status_view import render
from models.datasets import load as load_dataset
from tests.conftest import start_worker
from tests.integration.clients import collect, produce, run

pytestmark = pytest.mark.integration

IRIS = load_dataset("iris")
CANCER = load_dataset("breast_cancer")
FIRST = 150  # requests served before the status is taken, over 5 s of event time
TRICKLE = 45  # sent while the status is taken: every 5th invalid
IRIS_REPORTS = len(IRIS.features) + 1  # drift reports per window: each feature and the label


def request(i: int, prefix: str) -> bytes:
    ds = IRIS if i % 2 else CANCER
    return orjson.dumps({"id": f"{prefix}-{i}", "model": ds.name,
                         "features": dict(zip(ds.features, ds.X[i % len(ds.X)].tolist(),
                                              strict=True))})


def invalid(i: int, prefix: str) -> bytes:
    if i % 2:
        return f'{{"id": "{prefix}-bad-{i}", "model": "iris", "features": {{'.encode()
    partial = dict(zip(IRIS.features[:-1], IRIS.X[0][:-1].tolist(), strict=True))
    return orjson.dumps({"id": f"{prefix}-bad-{i}", "model": "iris", "features": partial})


def trickle(bootstrap: str, topic: str, seconds: float) -> threading.Thread:
    """Send TRICKLE requests evenly over ``seconds``, from a thread."""
    async def send() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        try:
            for i in range(TRICKLE):
                value = invalid(i, "late") if i % 5 == 4 else request(i, "late")
                await producer.send_and_wait(topic, value, key=f"late-{i}".encode())
                await asyncio.sleep(seconds / TRICKLE)
        finally:
            await producer.stop()

    thread = threading.Thread(target=lambda: asyncio.run(send()), daemon=True)
    thread.start()
    return thread


def test_status_of_a_serving_worker(kafka_bootstrap, registry_dir, tmp_path):
    # iris's drift windows are short (2 s, closing 1 s late), so verdicts come within the test.
    (tmp_path / "models.toml").write_text(
        "[models.iris]\ndrift_window_s = 2\ndrift_hop_s = 1\ndrift_grace_s = 1\n")
    worker = start_worker(kafka_bootstrap, registry_dir, tmp_path / "worker.log",
                          STREAMSERVE_MODELS_FILE=str(tmp_path / "models.toml"))
    try:
        s = worker.settings
        base_ms = (int(time.time()) - 30) * 1000  # event time: seconds 0-4 of half a minute ago
        for second in range(5):
            batch = [request(i, "early") for i in range(second * 30, (second + 1) * 30)]
            run(produce(s.bootstrap, s.topics.requests, batch,
                        timestamp_ms=base_ms + second * 1000 + 500))
        run(produce(s.bootstrap, s.topics.requests, [invalid(i, "early") for i in range(6)]))
        # a request of second 8 closes iris's windows of seconds 0-4
        run(produce(s.bootstrap, s.topics.requests, [request(1001, "closer")],
                    timestamp_ms=base_ms + 8000))
        served = run(collect(s.bootstrap, [s.topics.predictions, s.topics.deadletter],
                             expected=FIRST + 7))
        assert len(served) == FIRST + 7
        assert run(collect(s.bootstrap, [s.topics.drift], expected=IRIS_REPORTS, timeout=60))

        sending = trickle(s.bootstrap, s.topics.requests, seconds=5)
        time.sleep(0.5)
        status = asyncio.run(collect_once(s, StatusOptions(metrics=(worker.metrics_url,),
                                                           interval_s=2.0)))
        sending.join(30)
    finally:
        worker.stop()

    console = Console(record=True, width=120, file=io.StringIO())
    console.print(render(status, latency_objective_s=s.slo.latency_ms / 1000))
    text = console.export_text()
    print(text)

    assert not status.problems, status.problems
    assert [m.model for m in status.models] == ["breast_cancer", "iris"]
    for model in status.models:
        assert model.spec is None and model.default_version == "1"
        assert model.metrics.requests_per_s > 0 and model.metrics.predictions_per_s > 0
        assert model.metrics.p99_s is not None and model.metrics.breakers == (("1", 0),)
    iris = status.models[1]
    assert "schema_mismatch" in dict(iris.metrics.reasons)
    assert "malformed_json" in dict(status.unrouted.reasons)
    assert status.metrics.workers == 1 and status.metrics.ready == 1

    lag = status.lag
    assert [p.partition for p in lag.partitions] == list(range(s.kafka.request_partitions))
    assert all(p.committed is not None and p.lag >= 0 for p in lag.partitions)
    assert sum(p.committed for p in lag.partitions) >= FIRST + 7

    assert [(d.model, d.version) for d in iris.drift] == [("iris", "1")]
    assert sum(n for _, n in iris.drift[0].counts) == IRIS_REPORTS

    lines = text.splitlines()
    iris_row = next(line for line in lines if line.startswith("iris "))
    assert "schema_mismatch" in iris_row and "closed" in iris_row and " ms " in iris_row
    assert any(line.startswith("breast_cancer ") for line in lines)
    assert "malformed_json" in text
    assert f"consumer lag of group {s.kafka.app_id} on {s.topics.requests}" in text
    table = lines[lines.index(next(line for line in lines if line.startswith("partition "))) + 2:]
    assert [row.split()[0] for row in table[:s.kafka.request_partitions]] == \
        [str(p) for p in range(s.kafka.request_partitions)]
    assert "drift: the latest verdict of each feature" in text
