"""Tenant quotas and input limits in a real worker against the real broker: excess and
hostile input become dead letters with their reasons, and the ledger holds."""

from __future__ import annotations

import hashlib
import re
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from agents.dev.fleet import WorkerProcess
from agents.ops.verify import verify
from models.datasets import load as load_dataset
from tests.conftest import start_worker
from tests.integration.clients import collect, produce, run

pytestmark = pytest.mark.integration

IRIS = load_dataset("iris")
BURST = 5  # greedy's bucket; it refills one token a second
SENT = 40  # per tenant


@pytest.fixture(scope="module")
def quota_worker(kafka_bootstrap: str, registry_dir: Path,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    handle = start_worker(kafka_bootstrap, registry_dir,
                          tmp_path_factory.mktemp("quotas") / "worker.log",
                          STREAMSERVE_TENANT_QUOTAS=f"greedy:rate=1,burst={BURST}; "
                                                    "polite:rate=1000,burst=1000",
                          STREAMSERVE_MAX_FEATURES="64")
    try:
        yield handle
    finally:
        handle.stop()


def request(request_id: str, **fields) -> bytes:
    features = dict(zip(IRIS.features, IRIS.X[0].tolist(), strict=True))
    return orjson.dumps({"id": request_id, "model": "iris", "features": features} | fields)


def nested(depth: int) -> list:
    value: list | int = 1
    for _ in range(depth):
        value = [value]
    return value


def test_a_tenant_over_its_quota_is_dead_lettered_and_nothing_is_lost(quota_worker):
    settings = quota_worker.settings
    limits = {  # one request over each input limit, with the reason it must get
        request("q-large", pad="x" * settings.admission.max_message_bytes): "too_large",
        request("q-deep", x=nested(40)): "too_deep",
        request("q-wide", features={f"f{i}": 1.0 for i in range(65)}): "too_many_features",
    }
    values = [v for i in range(SENT) for v in (request(f"q-greedy-{i}", tenant="greedy"),
                                               request(f"q-polite-{i}", tenant="polite"))]
    values += list(limits)
    started = time.monotonic()
    run(produce(settings.bootstrap, settings.topics.requests, values))
    received = run(collect(settings.bootstrap,
                           [settings.topics.predictions, settings.topics.deadletter],
                           expected=len(values), timeout=40))
    elapsed = time.monotonic() - started

    fates = {}
    withheld = {hashlib.sha256(v).hexdigest(): v for v in values}  # too large to keep
    for r in received:  # every request's one fate, by the request it answers
        request_id = r.value["id"] or orjson.loads(
            r.value["original"].encode() or withheld[r.value["original_sha256"]])["id"]
        assert request_id not in fates, f"{request_id} has two fates"
        fates[request_id] = r.value.get("reason", "prediction")
    assert len(fates) == len(values)

    greedy = Counter(fates[f"q-greedy-{i}"] for i in range(SENT))
    admitted = greedy["prediction"]
    # The burst, then a token a second while the run lasted.
    assert BURST <= admitted <= BURST + elapsed + 1, (greedy, elapsed)
    assert greedy["quota_exceeded"] == SENT - admitted
    assert all(fates[f"q-polite-{i}"] == "prediction" for i in range(SENT))
    assert {orjson.loads(v)["id"]: fates[orjson.loads(v)["id"]] for v in limits} == \
        {orjson.loads(v)["id"]: reason for v, reason in limits.items()}

    refused = next(r.value for r in received if r.value.get("reason") == "quota_exceeded")
    assert refused["error"].startswith("tenant 'greedy': over the rate quota on this worker "
                                       f"(1 requests/s, burst {BURST}); retry in ")
    deep = next(r.value for r in received if r.value.get("reason") == "too_deep")
    assert deep["error"].startswith("the request nests JSON arrays or objects 41 levels deep")
    wide = next(r.value for r in received if r.value.get("reason") == "too_many_features")
    assert "holds 65 features, more than the 64 a request may (STREAMSERVE_MAX_FEATURES)" \
        in wide["error"]

    report = run(verify(settings, "q-", None, None))  # the ledger, read from the topics
    assert report.holds and report.exactly_once and report.requests == len(values)
    assert report.predictions + report.dead_letters == len(values)
    text = quota_worker.metrics()
    counted = re.search(r'^streamserve_quota_rejections_total\{limit="rate",tenant="greedy"\} (\S+)$',
                        text, re.MULTILINE)
    assert counted and float(counted.group(1)) == SENT - admitted
    assert 'tenant="polite"' not in text
