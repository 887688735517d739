"""/healthz and /readyz of real worker processes on the real broker, beside /metrics.

Two workers share one group on a one-partition requests topic: one serves the
partition, the other holds none and is ready all the same (more workers than
partitions is healthy, not a failure).
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
import uuid

import orjson
import pytest

from agents.dev.fleet import WorkerProcess
from tests.conftest import start_worker

pytestmark = pytest.mark.integration


def get(worker: WorkerProcess, path: str) -> tuple[int, dict | str]:
    url = f"http://127.0.0.1:{worker.metrics_port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            status, body, kind = r.status, r.read(), r.headers.get("Content-Type")
    except urllib.error.HTTPError as e:
        with e:
            status, body, kind = e.code, e.read(), e.headers.get("Content-Type")
    return status, orjson.loads(body) if kind == "application/json" else body.decode()


def ready(worker: WorkerProcess, timeout: float = 60) -> dict:
    """The body of /readyz once it is 200."""
    deadline = time.monotonic() + timeout
    status, body = get(worker, "/readyz")
    while time.monotonic() < deadline:
        status, body = get(worker, "/readyz")
        if status == 200:
            return body
        time.sleep(0.3)
    raise AssertionError(f"/readyz still {status} after {timeout} s: {body}\n{worker.log_tail()}")


@pytest.fixture(scope="module")
def pair(kafka_bootstrap, registry_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("health")
    prefix = f"t{uuid.uuid4().hex[:10]}"
    env = {"STREAMSERVE_TOPIC_PREFIX": prefix, "STREAMSERVE_APP_ID": prefix,
           "STREAMSERVE_REQUEST_PARTITIONS": "1"}
    first = start_worker(kafka_bootstrap, registry_dir, folder / "first.log", **env)
    try:
        second = start_worker(kafka_bootstrap, registry_dir, folder / "second.log", **env)
    except BaseException:
        first.stop()
        raise
    try:
        yield first, second
    finally:
        second.stop()
        first.stop()


def test_a_serving_worker_is_alive_and_ready_and_still_serves_metrics(pair):
    for worker in pair:
        status, body = get(worker, "/healthz")
        assert status == 200 and body["status"] == "ok" and body["failing"] == []
        assert list(body["checks"]) == ["loop"] and body["checks"]["loop"]["ok"]
        body = ready(worker)
        assert body["status"] == "ok" and list(body["checks"]) == ["loop", "models", "consumer", "agents",
                                                                   "kafka"]
        assert all(check["ok"] for check in body["checks"].values())
        assert body["checks"]["kafka"]["detail"].endswith("; every output partition has a leader")
        models = body["checks"]["models"]["detail"]
        assert "iris stable 1" in models and "breast_cancer stable 1" in models
        status, text = get(worker, "/metrics")
        assert status == 200 and "streamserve_worker_ready 1.0" in text
        assert "streamserve_kafka_outputs_writable 1.0" in text
        assert "streamserve_kafka_brokers_unreachable 0.0" in text
        assert "streamserve_jit_compiles_total" in text


def test_with_more_workers_than_partitions_the_idle_one_is_ready_too(pair):
    deadline = time.monotonic() + 60
    while True:
        details = [ready(worker)["checks"]["consumer"]["detail"] for worker in pair]
        serving = ["serving partitions [0]" in d for d in details]
        # Settled once the rebalance the second worker caused gave the partition to one.
        if sum(serving) == 1 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert sum(serving) == 1, details
    assert "no partitions" in details[serving.index(False)], details
