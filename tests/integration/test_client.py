"""The client library against the real broker and a real worker process."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace

import numpy as np
import pytest

from agents.client.stream import StreamClient
from agents.client.sync import SyncStreamClient
from agents.kafka.connect import KafkaAccessError
from agents.kafka.topics import ensure_topics
from models.architectures import architecture
from models.datasets import load as load_dataset
from pipeline.client import (
    ClientClosed,
    DeadLetterError,
    PredictionTimeout,
    PredictRequest,
    RequestNotSent,
)
from pipeline.registry import Registry

pytestmark = pytest.mark.integration

IRIS = load_dataset("iris")
CANCER = load_dataset("breast_cancer")


def row(ds, i: int) -> dict[str, float]:
    return dict(zip(ds.features, ds.X[i % len(ds.X)].tolist(), strict=True))


def model_probabilities(registry_dir, ds, rows: np.ndarray) -> np.ndarray:
    registry = Registry(registry_dir)
    version = registry.latest(ds.name)
    apply = architecture(registry.manifest(ds.name, version).architecture)
    return np.asarray(apply(registry.load_params(ds.name, version), rows))


async def test_1000_concurrent_predictions_equal_the_models_own(worker, registry_dir):
    async with StreamClient(worker.settings, timeout=60) as client:
        sent = [(IRIS if i % 2 else CANCER, i) for i in range(1000)]
        results = await asyncio.gather(*(client.predict(ds.name, row(ds, i)) for ds, i in sent))
    assert len({r.id for r in results}) == 1000
    assert all(r.id.startswith(client.id_prefix + "-") and r.route == "stable" for r in results)
    for ds in (IRIS, CANCER):
        mine = [(r, i) for r, (d, i) in zip(results, sent, strict=True) if d is ds]
        assert all(r.model == ds.name and r.version == "1" for r, _ in mine)
        expected = model_probabilities(registry_dir, ds, np.stack([ds.X[i % len(ds.X)] for _, i in mine]))
        np.testing.assert_allclose([r.probabilities for r, _ in mine], expected, atol=1e-5)
        assert [r.label for r, _ in mine] == [ds.labels[k] for k in expected.argmax(axis=1)]
        assert all(r.round_trip_ms > 0 and r.latency_ms >= 0 for r, _ in mine)


async def test_predict_many_keeps_the_order_of_its_rows(worker, registry_dir):
    indices = range(0, 150, 5)
    async with StreamClient(worker.settings, timeout=60) as client:
        results = await client.predict_many("iris", [row(IRIS, i) for i in indices], version="1")
    expected = model_probabilities(registry_dir, IRIS, IRIS.X[list(indices)]).argmax(axis=1)
    assert [r.label for r in results] == [IRIS.labels[k] for k in expected]


async def test_an_unknown_model_raises_its_dead_letter(worker):
    async with StreamClient(worker.settings, timeout=30) as client:
        with pytest.raises(DeadLetterError) as caught:
            await client.predict("no-such-model", row(IRIS, 0), request_id=f"unknown-{uuid.uuid4().hex}")
        assert caught.value.reason == "unknown_model" and caught.value.dead_letter.model == "no-such-model"
        assert caught.value.dead_letter.id.startswith("unknown-") and "no-such-model" in caught.value.error
        with pytest.raises(DeadLetterError) as caught:
            await client.predict("iris", {"sepal_length": 1.0})
        assert caught.value.reason == "schema_mismatch"
        results = await client.predict_many("iris", [row(IRIS, 0), {"x": 1.0}], return_exceptions=True)
        assert results[0].label == "setosa" and results[1].reason == "schema_mismatch"


async def test_raw_requests_get_their_replies_even_without_a_readable_id(worker):
    async with StreamClient(worker.settings, timeout=30) as client:
        broken = [b'{"id": "raw-1", "model": "iris", "features": {', b"", b'{"model": "iris"}']
        outcomes = await asyncio.gather(*(client.send_raw(v) for v in broken), return_exceptions=True)
        assert [e.reason for e in outcomes] == ["malformed_json", "empty_request", "missing_id"]
        assert [e.dead_letter.original for e in outcomes] == broken
        good = PredictRequest("iris", row(IRIS, 120), id=f"raw-{uuid.uuid4().hex}")
        prediction = await client.send_raw(good.encode())
        assert prediction.id == good.id and prediction.label == "virginica"


async def test_a_request_kafka_cannot_take_fails_as_not_sent_and_the_client_goes_on(worker):
    # Beyond any Kafka message's size: refused before it is sent, saying why, and the
    # client's next request is served.
    async with StreamClient(worker.settings, timeout=30) as client:
        with pytest.raises(RequestNotSent, match="(?i)did not take the request.*too large"):
            await client.send_raw(b"x" * 2_000_000)
        assert (await client.predict("iris", row(IRIS, 0))).label == "setosa"


async def test_a_client_pointed_at_no_broker_says_so(worker):
    nowhere = replace(worker.settings, kafka=replace(worker.settings.kafka, broker="127.0.0.1:1"))
    with pytest.raises(KafkaAccessError, match="cannot reach Kafka at 127.0.0.1:1"):
        await StreamClient(nowhere).start()


async def test_no_reply_in_time_raises_the_timeout_and_a_late_reply_is_ignored(worker):
    async with StreamClient(worker.settings) as client:
        with pytest.raises(PredictionTimeout) as caught:
            await client.predict("iris", row(IRIS, 0), timeout=0.001)
        assert isinstance(caught.value, TimeoutError) and caught.value.timeout == 0.001
        assert (await client.predict("iris", row(IRIS, 1), timeout=30)).label == "setosa"


async def test_without_a_worker_a_request_times_out(kafka_bootstrap, worker):
    prefix = f"t{uuid.uuid4().hex[:10]}"
    settings = replace(worker.settings, kafka=replace(worker.settings.kafka, topic_prefix=prefix))
    with pytest.raises(KafkaAccessError, match="does not exist"):
        await StreamClient(settings).start()
    await ensure_topics(settings)
    async with StreamClient(settings, timeout=1.0) as client:
        with pytest.raises(PredictionTimeout, match="within 1 s"):
            await client.predict("iris", row(IRIS, 0))
        with pytest.raises(PredictionTimeout):
            await client.send_raw(b"not json", timeout=0.5)


async def test_two_clients_at_once_each_get_only_their_own_replies(worker):
    settings = worker.settings
    async with StreamClient(settings, timeout=60, id_prefix="alice") as alice, \
            StreamClient(settings, timeout=60, id_prefix="bob", partitions=[1, 3]) as bob:
        asked = {name: [(f"{name}-{i}", IRIS if (i + k) % 2 else CANCER, i) for i in range(150)]
                 for k, name in enumerate(("alice", "bob"))}

        async def ask(client, name):
            return await asyncio.gather(*(client.predict(ds.name, row(ds, i), request_id=rid)
                                          for rid, ds, i in asked[name]))
        answers = dict(zip(("alice", "bob"), await asyncio.gather(ask(alice, "alice"), ask(bob, "bob")),
                           strict=True))
    for name, results in answers.items():
        assert [r.id for r in results] == [rid for rid, _, _ in asked[name]]
        assert [r.model for r in results] == [ds.name for _, ds, _ in asked[name]]
    assert {r.source.partition for r in answers["bob"]} <= {1, 3}


async def test_stream_yields_every_outcome_with_bounded_requests_in_flight(worker):
    requests = [PredictRequest("iris", row(IRIS, i)) for i in range(60)]
    requests[7] = PredictRequest("no-such-model", row(IRIS, 7))
    async with StreamClient(worker.settings, timeout=60) as client:
        outcomes = [o async for o in client.stream(requests, max_in_flight=8)]
    assert len(outcomes) == 60 and len({o.request.id for o in outcomes}) == 60
    failed = [o for o in outcomes if not o.ok]
    assert len(failed) == 1 and failed[0].error.reason == "unknown_model"
    assert all(o.prediction.id == o.request.id for o in outcomes if o.ok)


def test_the_sync_client_works_from_plain_code(worker):
    with SyncStreamClient(worker.settings, timeout=60) as client:
        assert client.predict("iris", row(IRIS, 0)).label == "setosa"
        assert [r.label for r in client.predict_many("iris", [row(IRIS, 0), row(IRIS, 149)])] == \
            ["setosa", "virginica"]
        with pytest.raises(DeadLetterError, match="unknown_model"):
            client.predict("no-such-model", row(IRIS, 0))
        outcomes = list(client.stream(PredictRequest("iris", row(IRIS, i)) for i in range(20)))
        assert len(outcomes) == 20 and all(o.ok for o in outcomes)
        for outcome in client.stream([PredictRequest("iris", row(IRIS, i)) for i in range(20)]):
            break  # leaving a stream early stops it cleanly
        with pytest.raises(DeadLetterError, match="malformed_json"):
            client.send_raw(b"not json")
    with pytest.raises(ClientClosed, match="closed"):
        client.predict("iris", row(IRIS, 0))


def test_the_demo_sends_through_the_client_and_tallies_every_answer(worker, registry_dir, capsys):
    from agents.dev.demo import _drive, _plan, _print_summary

    settings = worker.settings
    plan = _plan(Registry(registry_dir), f"demo-{uuid.uuid4().hex[:8]}", 300, 0.1,
                 settings.admission.max_message_bytes)
    tally, elapsed = asyncio.run(_drive(settings, plan, rate=0))
    broken = [p for p in plan if p.expected_reason is not None]
    assert len(tally.answered_at) == len(plan) and tally.wrong_reason == 0
    assert sum(tally.reasons.values()) == len(broken) > 10
    _print_summary(plan, tally, elapsed, rate=0)
    summary = capsys.readouterr().out
    assert "requests        300" in summary and "unanswered      0" in summary
    # Sent at once, every request falls in the first second, whose latency is told apart.
    assert "first 1 s" in summary and "after the first second" not in summary
