"""A feature the model's schema marks sensitive leaves the worker on no topic and in no log
line in clear: every topic the worker may write is scanned, raw, for planted values."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import numpy as np
import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient

from agents.kafka.control import change
from models.architectures import architecture
from models.datasets import load as load_dataset
from models.train import train
from pipeline.config import Settings
from pipeline.redaction import Redactor
from pipeline.registry import Registry
from pipeline.rejections import REDACTED_VALUE
from pipeline.routing import add_shadow, deploy
from pipeline.signing import ensure_signing_key, register_signed
from tests.conftest import registry_keys, start_worker
from tests.integration.clients import collect, produce, run

pytestmark = pytest.mark.integration

IRIS = load_dataset("iris")
SENSITIVE = "petal_length"
KEY = "test-redaction-key"
# Planted values share digits found nowhere else; each request plants its own variant.
SECRET = b"735193719"
PLANTED, OUT_OF_RANGE = 4.735193719, 9.735193719  # training saw petal_length in [1, 6.9]
# The control: an unmarked feature's planted value, which the scan must find (in samples).
CONTROL = 3.246813579
BASE_MS = (int(time.time()) - 120) * 1000  # event time: whole seconds, a little back


def row(i: int, petal_length: float | str = PLANTED) -> dict:
    features = dict(zip(IRIS.features, IRIS.X[i % len(IRIS.X)].tolist(), strict=True))
    return features | {SENSITIVE: petal_length, "sepal_width": CONTROL}


def valid(i: int) -> bytes:
    """A request the model serves; every fifth one's planted value is out of range."""
    return orjson.dumps({"id": f"p-{i}", "model": "iris",
                         "features": row(i, OUT_OF_RANGE if i % 5 == 0 else PLANTED)})


def bad() -> dict[str, bytes]:
    """One request per other path, keyed by the id it carries."""
    def oip(petal_length: float | str) -> list[dict]:
        return [{"name": n, "shape": [1], "datatype": "FP64", "data": [v]}
                for n, v in row(0, petal_length).items()]

    tensor = [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": list(row(1).values())}]
    return {
        "b-oip": orjson.dumps({"id": "b-oip", "model_name": "iris", "inputs": oip(PLANTED)}),
        "b-oip-mismatch": orjson.dumps({"id": "b-oip-mismatch", "model_name": "iris",
                                        "inputs": oip(f"{PLANTED} cm")}),
        "b-tensor": orjson.dumps({"id": "b-tensor", "model_name": "iris", "inputs": tensor}),
        "b-mismatch": orjson.dumps({"id": "b-mismatch", "model": "iris",
                                    "features": row(2, f"{PLANTED} cm")}),
        "b-nonfinite": orjson.dumps({"id": "b-nonfinite", "model": "iris", "features": row(3, 0.125)})
        .replace(b"0.125", str(PLANTED).encode() + b"e39"),
        "b-unknown-model": orjson.dumps({"id": "b-unknown-model", "model": "lily", "features": row(4)}),
        "b-unknown-version": orjson.dumps({"id": "b-unknown-version", "model": "iris", "version": "7",
                                           "features": row(5)}),
        "b-malformed": orjson.dumps({"id": "b-malformed", "model": "iris", "features": row(6)})[:-2],
        "b-bare": orjson.dumps(f"petal length {PLANTED}"),  # no object: the error would quote it
    }


@pytest.fixture(scope="module")
def sensitive_registry(tmp_path_factory):
    """iris with petal_length marked sensitive, twice: version 2 serves as a shadow."""
    root = tmp_path_factory.mktemp("sensitive-registry")
    key = ensure_signing_key(Path(registry_keys(root)["STREAMSERVE_SIGNING_KEY"]))
    trained = train("iris", sensitive=[SENSITIVE])
    for _ in range(2):
        register_signed(Registry(root), trained.draft, trained.params, key)
    return root, trained


async def every_record(bootstrap: str, prefix: str, skip: set[str]) -> list:
    """Every record, aborted transactions' included, of every topic named after ``prefix``
    (the worker's topics, its Faust tables' changelogs) but those in ``skip``."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        topics = [t for t in await admin.list_topics() if t.startswith(prefix) and t not in skip]
    finally:
        await admin.close()
    consumer = AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, group_id=None,
                                enable_auto_commit=False, auto_offset_reset="earliest",
                                isolation_level="read_uncommitted")
    await consumer.start()
    try:
        while not consumer.assignment():
            await asyncio.sleep(0.1)
        ends = await consumer.end_offsets(list(consumer.assignment()))
        records = []
        while not all([await consumer.position(tp) >= end for tp, end in ends.items()]):
            batch = await consumer.getmany(timeout_ms=500)
            records += [r for rs in batch.values() for r in rs]
        return records
    finally:
        await consumer.stop()


def test_sensitive_values_leave_the_worker_nowhere_in_clear(kafka_bootstrap, sensitive_registry,
                                                             tmp_path):
    root, trained = sensitive_registry
    prefix = f"t{uuid.uuid4().hex[:10]}"
    env = {"STREAMSERVE_TOPIC_PREFIX": prefix, "STREAMSERVE_APP_ID": prefix,
           "STREAMSERVE_SAMPLE_RATE": "1", "STREAMSERVE_REDACTION_KEY": KEY,
           "STREAMSERVE_DRIFT_WINDOW_S": "1", "STREAMSERVE_DRIFT_HOP_S": "1",
           "STREAMSERVE_DRIFT_GRACE_S": "0"}
    settings = Settings.from_env({"STREAMSERVE_BROKER": kafka_bootstrap, **env})
    run(change(settings, "iris", lambda current: add_shadow(deploy(current, "iris", "1"), "2"),
               action="shadow", source="test"))
    worker = start_worker(kafka_bootstrap, root, tmp_path / "worker.log", **env)
    try:
        t = settings.topics
        # Two seconds of served requests, then the other paths, then one request later on
        # that closes the drift windows.
        n = 40
        for second in range(2):
            batch = [valid(i) for i in range(second * n // 2, (second + 1) * n // 2)]
            run(produce(kafka_bootstrap, t.requests, batch, timestamp_ms=BASE_MS + second * 1000 + 500))
        others = bad()
        run(produce(kafka_bootstrap, t.requests, list(others.values()), timestamp_ms=BASE_MS + 1500))
        run(produce(kafka_bootstrap, t.requests, [valid(n)], timestamp_ms=BASE_MS + 3500))
        sent = n + 1 + len(others)
        fates = run(collect(kafka_bootstrap, [t.predictions, t.deadletter], expected=sent, timeout=60))
        reports = run(collect(kafka_bootstrap, [t.drift], expected=len(IRIS.features) + 1,
                              timeout=30, settle=0))
    finally:
        worker.stop()  # everything it wrote is flushed before the scan

    # Every request has exactly one fate, and the served ones the model's own answer.
    assert len(fates) == sent
    keys = [r.key for r in fates]
    assert len(set(keys)) == sent
    predictions = {r.value["id"]: r.value for r in fates if r.topic == t.predictions}
    assert set(predictions) == {f"p-{i}" for i in range(n + 1)} | {"b-oip", "b-tensor"}
    apply = architecture("mlp")
    for request_id, prediction in predictions.items():
        request = orjson.loads(others.get(request_id) or valid(int(request_id[2:])))
        values = (list(request["features"].values()) if "features" in request else
                  [i["data"][0] for i in request["inputs"]] if request_id == "b-oip" else
                  request["inputs"][0]["data"])
        expected = np.asarray(apply(trained.params, np.array([values], np.float32)))[0]
        assert prediction["outputs"][0]["data"] == pytest.approx(expected.tolist(), abs=1e-6)
    dead = {r.value["id"]: r.value for r in fates if r.topic == t.deadletter}
    assert {d["reason"] for d in dead.values()} == {
        "schema_mismatch", "non_finite", "unknown_model", "unknown_version", "malformed_json"}
    for request_id in ("b-mismatch", "b-oip-mismatch"):
        assert dead[request_id]["error"] == f"feature '{SENSITIVE}' must be a number, got {REDACTED_VALUE}"
    hashed = Redactor({}, KEY.encode()).hash
    assert orjson.loads(dead["b-unknown-model"]["original"])["features"][SENSITIVE] == hashed(PLANTED)
    oip_original = orjson.loads(dead["b-oip-mismatch"]["original"])["inputs"]
    assert [i["data"] for i in oip_original if i["name"] == SENSITIVE] == [hashed([f"{PLANTED} cm"])]
    assert reports and {r.value["feature"] for r in reports} <= {*IRIS.features, "label"}

    # The scan: every topic but the requests (the clients' own input), raw bytes. The app
    # id is the prefix, so this takes in the Faust tables' changelogs too.
    records = run(every_record(kafka_bootstrap, prefix, skip={t.requests}))
    samples = [orjson.loads(r.value) for r in records if r.topic == t.samples]
    assert sorted(s["id"] for s in samples) == sorted(predictions)
    assert {s["features"][SENSITIVE] for s in samples} == {hashed(PLANTED), hashed(OUT_OF_RANGE)}
    found: dict[bytes, set[str]] = {}
    for record in records:
        raw = b"".join([record.key or b"", record.value or b"", *(v for _, v in record.headers)])
        for token in (SECRET, str(CONTROL).encode()):
            if token in raw:
                found.setdefault(token, set()).add(record.topic)
    topics = {record.topic for record in records}
    assert {t.predictions, t.deadletter, t.samples, t.shadow, t.drift, t.drift_rows} <= topics
    assert [name for name in topics if name.endswith("drift-windows-changelog")]
    # The control shows the scan can fail: an unmarked planted value is found in clear.
    assert t.samples in found.get(str(CONTROL).encode(), set())
    assert SECRET not in found, f"a sensitive value leaked on {found.get(SECRET)}"
    log = worker.log.read_bytes()
    assert b"serving partitions" in log and SECRET not in log
