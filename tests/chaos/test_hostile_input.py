"""Hostile input, in both delivery modes: what one client sends must stop no worker and
open no breaker for others (the December 2026 reliability review, sections 1, 2 and 9).

A worker starts on a control topic holding an unreadable record; then normal requests go
out mixed with requests whose dead letters once grew past the broker's limit, and with a
flood of requests whose deadline had passed, while labels that are no labels and labels
for made-up ids flood the label join; and a canary starts and is rolled back again and
again while requests are served. Every request must get exactly one answer carrying
its id (the ledger), every normal one a prediction, and the worker must stop on SIGTERM
by itself.
"""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import time
from pathlib import Path

import numpy as np
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from agents.kafka.control import change
from agents.kafka.topics import ensure_topics
from models.train import train_and_register
from pipeline import routing
from pipeline.registry import ManifestDraft, Registry
from pipeline.schema import OutputSchema
from pipeline.signing import load_private_key, register_signed
from tests.chaos.harness import Fleet, at_once, fleets, requests
from tests.conftest import iris_registry
from tests.chaos.test_crashes import report_line

pytestmark = pytest.mark.integration


def test_oversized_and_expired_requests_and_a_bad_control_record_stop_nothing(every_mode):
    at_once(every_mode, _hostile)


def oversized(run_id: str) -> list[bytes]:
    """Requests over the size limit whose originals escape (JSON quotes, control bytes) to
    more than the broker's 1 MiB message limit."""
    return [b'{"id": "%s-big-%d", "pad": "%s"}' % (run_id.encode(), i, pad)
            for i, pad in enumerate([b'\\"' * 300_000, b"\\u0001" * 100_000])]


def hostile_labels(run_id: str) -> list[tuple[bytes | None, bytes]]:
    """(key, value) of labels a worker must refuse, each counted malformed, and of labels
    for ids no worker answered, kept only up to STREAMSERVE_LABEL_MAX_UNANSWERED."""
    refused = [(None, b""), (None, b'{"id": "x", "label": "%s"}' % (b"a" * 10_000)),  # over 4 KiB
               (None, b"[" * 2000 + b"]" * 2000), (None, b"\xff\xfe{"),  # too deep; not UTF-8
               (b"someone-else", b'{"id": "%s-0", "label": "setosa"}' % run_id.encode()),
               (None, b'{"id": "%s-1", "label": {"nested": 1}}' % run_id.encode())]
    made_up = [(None, b'{"id": "%s-made-up-%d", "label": "setosa"}' % (run_id.encode(), i))
               for i in range(300)]
    return refused + made_up


async def _send_labels(fleet: Fleet, labels: list[tuple[bytes | None, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=fleet.bootstrap, acks="all")
    await producer.start()
    try:
        for key, value in labels:
            await producer.send(fleet.settings.topics.labels, key=key, value=value)
        await producer.flush()
    finally:
        await producer.stop()


def _hostile(fleet: Fleet) -> None:
    asyncio.run(_write_control(fleet, b'{"model": "iris", "stable": "1", "revision": 99, "note": 1}'))
    worker = fleet.start(STREAMSERVE_LABELS="on", STREAMSERVE_LABEL_MAX_UNANSWERED="10")
    normal = requests(fleet.run_id, 600)
    expired = [orjson.dumps({**orjson.loads(r), "id": f"{fleet.run_id}-late-{i}", "deadline_ms": 1})
               for i, r in enumerate(requests(fleet.run_id, 50))]
    try:
        # Expired first (with 50 of them in a row, a breaker that counted them would open),
        # then the oversized ones among the normal requests.
        fleet.send(expired + normal[:300] + oversized(fleet.run_id) + normal[300:], ensure=False)
        asyncio.run(_send_labels(fleet, hostile_labels(fleet.run_id)))
        report, recovery_s = fleet.settle(len(normal) + len(expired) + 2)
        malformed = _metric_lines(worker, 'streamserve_labels_total{model="",outcome="malformed"} 6.0')
        kept = 10 * fleet.settings.kafka.request_partitions  # made-up ids kept, at most
        dropped = _metric_at_least(worker, 'streamserve_labels_total{model="",outcome="dropped"}',
                                   300 - kept)
        # Counted once acknowledged (exactly-once: committed), a moment after readers see them.
        too_large = _metric_lines(
            worker, 'streamserve_deadletters_total{model="",reason="too_large"} 2.0')
        metrics = worker.metrics()
    finally:
        stopped = worker.stop()
    report_line("hostile input", fleet, len(normal), report, recovery_s)
    assert report.holds and not report.misnamed, report
    assert report.predictions == len(normal) and report.dead_letters == len(expired) + 2, report
    assert 'streamserve_deadletters_total{model="iris",reason="too_large"}' not in metrics  # no model
    assert too_large, "the two too_large dead letters were not counted"
    assert 'reason="circuit_open"' not in metrics and 'reason="undeliverable"' not in metrics
    # Expired before the worker took them: the senders' own, no server failure (SLO).
    assert 'streamserve_deadletters_total{model="iris",reason="arrived_late"} 50.0' in metrics
    assert 'reason="deadline_exceeded"' not in metrics
    # Labels: every refusal counted, the made-up ids kept only up to the bound per partition.
    assert malformed, "the six labels that are no labels were not counted as malformed"
    assert dropped >= 300 - kept, dropped
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
            # The canary's judge may have rolled it back already (it acts on its own).
            asyncio.run(change(settings, "iris", _drop_canary, action="rollback", source="test"))
            time.sleep(0.4)
        traffic.join()
        report, recovery_s = fleet.settle(n)
    finally:
        stopped = worker.stop()
    report_line("spec changes under load", fleet, n, report, recovery_s)
    assert report.holds and not report.misnamed and report.predictions == n, report
    assert stopped != -signal.SIGKILL


def _drop_canary(spec: routing.DeploymentSpec | None) -> routing.DeploymentSpec | None:
    return routing.rollback(spec) if spec is not None and spec.canary is not None else spec


@pytest.fixture
def odd_versions(kafka_bootstrap, registry_dir, tmp_path):
    """Fleets in every mode on a registry holding iris 1, 2 (signed, a fourth class) and 3
    (signed, an architecture this release lacks)."""
    root, keys = iris_registry(registry_dir, tmp_path)
    registry, key = Registry(root), load_private_key(Path(keys["STREAMSERVE_SIGNING_KEY"]))
    v1 = registry.manifest("iris", "1")
    draft = ManifestDraft(**{f.name: getattr(v1, f.name) for f in dataclasses.fields(ManifestDraft)})
    params = registry.load_params("iris", "1")
    wider = {**params, "w1": np.concatenate([params["w1"], params["w1"][:, :1]], axis=1),
             "b1": np.concatenate([params["b1"], params["b1"][:1] - 100])}
    register_signed(registry, dataclasses.replace(
        draft, outputs=OutputSchema((*v1.outputs.labels, "unseen"))), wider, key)
    register_signed(registry, dataclasses.replace(draft, architecture="transformer"), params, key)
    yield from fleets(kafka_bootstrap, root, tmp_path)


def test_versions_of_another_shape_and_future_timestamps_fail_no_request(odd_versions):
    """Review sections 3, 7 and 8: a shadow and a canary with a fourth class failed every
    batch; a version of an unknown architecture crash-looped the fleet; a request stamped
    an hour ahead blinded drift and its deadline."""
    at_once(odd_versions, _odd_versions)


def _odd_versions(fleet: Fleet) -> None:
    settings, n = fleet.settings, 900
    write = asyncio.run
    write(change(settings, "iris", lambda spec: routing.deploy(spec, "iris", "1"),
                 action="deploy", source="test"))
    worker = fleet.start()
    try:
        for step in (lambda spec: routing.add_shadow(spec, "2"),
                     lambda spec: routing.start_canary(spec, "2", 0.5)):
            write(change(settings, "iris", step, action="change", source="test"))
        # Written past the CLI's check (it verifies signatures, not architectures).
        write(change(settings, "iris", lambda spec: routing.deploy(spec, "iris", "3"),
                     action="deploy", source="test"))
        values = requests(fleet.run_id, n)
        ahead = int((time.time() + 3600) * 1000)
        write(_produce_at(fleet, values[:n // 3], ahead))
        fleet.send(values[n // 3:], rate=300)
        report, recovery_s = fleet.settle(n)
        # The follower may still be loading version 2.
        refusals = _metric_lines(worker, "streamserve_model_refusals_total{")
    finally:
        stopped = worker.stop()
    report_line("versions of another shape", fleet, n, report, recovery_s)
    assert report.holds and not report.misnamed and report.predictions == n, report
    assert refusals == ['streamserve_model_refusals_total{model="iris",'
                        'reason="UnknownArchitectureError",version="3"} 1.0'], refusals
    assert stopped != -signal.SIGKILL


def _metric_lines(worker, start: str, timeout: float = 60) -> list[str]:
    """The worker's metric lines that start with ``start``, once there is one (or after
    ``timeout``): metrics follow what the test can see by a moment."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [line for line in worker.metrics().splitlines() if line.startswith(start)]
        if lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.2)


def _metric_at_least(worker, series: str, value: float, timeout: float = 60) -> float:
    """The value of ``series`` once it reaches ``value`` (or what it is after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [line for line in worker.metrics().splitlines() if line.startswith(series + " ")]
        seen = float(lines[0].split()[-1]) if lines else 0.0
        if seen >= value or time.monotonic() > deadline:
            return seen
        time.sleep(0.2)


async def _produce_at(fleet: Fleet, values: list[bytes], timestamp_ms: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=fleet.bootstrap, acks="all")
    await producer.start()
    try:
        for value in values:
            await producer.send(fleet.settings.topics.requests, value=value,
                                key=orjson.loads(value)["id"].encode(), timestamp_ms=timestamp_ms)
        await producer.flush()
    finally:
        await producer.stop()
