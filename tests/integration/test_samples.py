"""Sampled inputs and redaction on the real broker: the rate holds, and fields marked
sensitive leave the worker on no topic (the label join's and the quality reports' too)
and in no log line in clear."""

from __future__ import annotations

import math

import orjson
import pytest

from models.datasets import load as load_dataset
from pipeline.redaction import Redactor
from pipeline.sampling import sampled
from tests.conftest import start_worker
from tests.integration.clients import collect, produce, run

pytestmark = pytest.mark.integration

CANCER = load_dataset("breast_cancer")
RATE = 0.1
KEY = "test-redaction-key"
# Planted values: distinctive enough that finding one anywhere can only be a leak.
HASHED, DROPPED, MASKED = ("mean_radius", 71.717171), ("mean_area", 9191.9191), ("mean_texture", 63.636363)
PLANTED = [str(value).encode() for _, value in (HASHED, DROPPED, MASKED)]


def request(i: int, model: str = "breast_cancer") -> dict:
    features = dict(zip(CANCER.features, CANCER.X[i % len(CANCER.X)].tolist(), strict=True))
    features.update([HASHED, DROPPED, MASKED])
    return {"id": f"s-{i}", "model": model, "features": features}


@pytest.fixture(scope="module")
def sampling_worker(kafka_bootstrap, registry_dir, tmp_path_factory):
    worker = start_worker(
        kafka_bootstrap, registry_dir, tmp_path_factory.mktemp("samples") / "worker.log",
        STREAMSERVE_SAMPLE_RATE=str(RATE), STREAMSERVE_REDACTION_KEY=KEY, STREAMSERVE_LABELS="on",
        STREAMSERVE_QUALITY_REPORT_S="1",
        STREAMSERVE_REDACT=f"{HASHED[0]}=hash,{DROPPED[0]}=drop,{MASKED[0]}=mask")
    yield worker
    worker.stop()


def test_samples_come_at_the_configured_rate_and_sensitive_fields_never_leave(sampling_worker):
    s = sampling_worker.settings
    n = 3000
    good = [orjson.dumps(request(i)) for i in range(n)]
    # Bad requests carrying the same values: one that parses (its original is redacted),
    # one that does not (its original is withheld), one for a model not served.
    schema_mismatch = request(n)
    schema_mismatch["features"]["not_a_feature"] = 1.0
    bad = [orjson.dumps(schema_mismatch), orjson.dumps(request(n + 1))[:-2],
           orjson.dumps(request(n + 2, model="no_such_model"))]
    run(produce(s.bootstrap, s.topics.requests, good + bad))
    t = s.topics
    received = run(collect(s.bootstrap, [t.predictions, t.deadletter],
                           expected=n + len(bad), timeout=120))
    assert len(received) == n + len(bad)
    samples = run(collect(s.bootstrap, [t.samples], expected=n, timeout=5))

    expected_ids = {f"s-{i}" for i in range(n) if sampled(f"s-{i}", RATE)}
    assert {r.value["id"] for r in samples} == expected_ids and len(samples) == len(expected_ids)
    tolerance = 4 * math.sqrt(n * RATE * (1 - RATE))  # four binomial standard deviations
    assert abs(len(samples) - n * RATE) <= tolerance

    hash_of_planted = Redactor({}, KEY.encode()).hash(HASHED[1])
    predictions = {r.value["id"]: r.value for r in received if r.topic == t.predictions}
    for sample in (r.value for r in samples):
        assert sample["features"][HASHED[0]] == hash_of_planted
        assert sample["features"][MASKED[0]] == "***" and DROPPED[0] not in sample["features"]
        assert sample["outputs"] == predictions[sample["id"]]["outputs"]

    dead = {r.value["reason"]: r.value for r in received if r.topic == t.deadletter}
    assert set(dead) == {"schema_mismatch", "malformed_json", "unknown_model"}
    assert orjson.loads(dead["schema_mismatch"]["original"])["features"][MASKED[0]] == "***"
    assert dead["malformed_json"]["original_encoding"] == "withheld"

    every_topic = [t.predictions, t.deadletter, t.samples, t.drift, t.drift_rows, t.label_join, t.quality]
    everything = run(collect(s.bootstrap, every_topic, expected=10**9, timeout=5))
    assert len(everything) > n + len(samples)
    assert {t.label_join, t.quality} <= {r.topic for r in everything}  # the join saw the answers
    for record in everything:
        seen = b"".join([record.key or b"", record.raw or b"", *record.headers.values()])
        assert not [p for p in PLANTED if p in seen], f"a planted value leaked on {record.topic}"
    log = sampling_worker.log_tail(10**8).encode()
    assert not [p for p in PLANTED if p in log]
    assert f'streamserve_samples_total{{model="breast_cancer"}} {len(samples)}.0' \
        in sampling_worker.metrics()
