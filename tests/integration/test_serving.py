"""The whole request → prediction path against the real broker and a real worker process."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import orjson
import pytest

from models.architectures import architecture
from models.datasets import load as load_dataset
from pipeline.registry import Registry
from tests.integration.clients import collect, produce, run

pytestmark = pytest.mark.integration

IRIS = load_dataset("iris")
CANCER = load_dataset("breast_cancer")


def requests_for(prefix: str, n: int) -> list[tuple[str, str, np.ndarray]]:
    """(id, model, row) alternating between the two models, rows taken from their data."""
    out = []
    for i in range(n):
        ds = IRIS if i % 2 else CANCER
        out.append((f"{prefix}-{i}", ds.name, ds.X[i % len(ds.X)]))
    return out


def tabular(request_id: str, model: str, row: np.ndarray, names) -> bytes:
    return orjson.dumps({"id": request_id, "model": model,
                         "features": dict(zip(names, row.tolist(), strict=True))})


def features_of(model: str):
    return (IRIS if model == "iris" else CANCER).features


def expected_probabilities(registry_dir, model: str, rows: np.ndarray) -> np.ndarray:
    registry = Registry(registry_dir)
    version = registry.latest(model)
    manifest = registry.manifest(model, version)
    apply = architecture(manifest.architecture)
    return np.asarray(apply(registry.load_params(model, version), rows))


def test_2000_requests_yield_2000_predictions_equal_to_the_model(worker, registry_dir):
    sent = requests_for("bulk", 2000)
    values = [tabular(i, m, row, features_of(m)) for i, m, row in sent]
    run(produce(worker.settings.bootstrap, worker.settings.topics.requests, values))
    received = run(collect(worker.settings.bootstrap,
                           [worker.settings.topics.predictions, worker.settings.topics.deadletter],
                           expected=2000))
    assert all(r.topic == worker.settings.topics.predictions for r in received), \
        [r.value for r in received if r.topic != worker.settings.topics.predictions][:3]
    by_id = {r.value["id"]: r for r in received if r.value["id"].startswith("bulk-")}
    assert len(received) == 2000 and len(by_id) == 2000
    for model in ("iris", "breast_cancer"):
        ids = [i for i, m, _ in sent if m == model]
        rows = np.stack([row for _, m, row in sent if m == model])
        expected = expected_probabilities(registry_dir, model, rows)
        served = np.array([by_id[i].value["outputs"][0]["data"] for i in ids])
        np.testing.assert_allclose(served, expected, atol=1e-5)
        for i in ids[:20]:
            record = by_id[i]
            assert record.key == i.encode()
            assert record.value["model_name"] == model and record.value["parameters"]["route"] == "stable"
            labels = ("setosa", "versicolor", "virginica") if model == "iris" else ("malignant", "benign")
            assert record.value["outputs"][1]["data"][0] in labels
            assert record.headers["streamserve-source-topic"] == worker.settings.topics.requests.encode()


def _bad_corpus(max_bytes: int) -> list[tuple[bytes, str]]:
    f = dict(zip(IRIS.features, IRIS.X[0].tolist(), strict=True))
    ok = {"id": "x", "model": "iris", "features": f}

    def req(i, **changes):
        return orjson.dumps({**ok, "id": f"bad-{i}", **changes})
    huge = {k: 3e38 for k in f}  # finite float32, but the network overflows to inf/nan
    return [
        (b"", "empty_request"),
        (b'{"id": "bad-1", "model": "iris", "features": {', "malformed_json"),
        (b'{"id": "bad-2\xff\xfe", "model": "iris"}', "invalid_utf8"),
        (b'["not", "an", "object"]', "malformed_json"),
        (orjson.dumps({"model": "iris", "features": f}), "missing_id"),
        (orjson.dumps({**ok, "id": 17}), "invalid_id"),
        (req(6, model="no-such-model"), "unknown_model"),
        (req(7, version="999"), "unknown_version"),
        (orjson.dumps({"id": "bad-8", "features": f}), "missing_model"),
        (req(9, features={k: v for k, v in f.items() if k != "petal_width"}), "schema_mismatch"),
        (req(10, features={**f, "colour": 1.0}), "schema_mismatch"),
        (req(11, features={**f, "sepal_width": "wide"}), "schema_mismatch"),
        (req(12).replace(orjson.dumps(f["sepal_length"]), b"NaN", 1), "non_finite"),
        (req(13).replace(orjson.dumps(f["sepal_length"]), b"Infinity", 1), "non_finite"),
        (req(14, pad="x" * max_bytes), "too_large"),
        (req(15, features=huge), "model_error"),
    ]


def test_every_bad_input_is_one_dead_letter_and_its_neighbours_are_served(worker):
    settings = worker.settings
    bad = _bad_corpus(settings.admission.max_message_bytes)
    good = [tabular(f"good-{i}", "iris", IRIS.X[i], IRIS.features) for i in range(len(bad) + 1)]
    values = [v for pair in zip(good, [b for b, _ in bad]) for v in pair] + [good[-1]]
    run(produce(settings.bootstrap, settings.topics.requests, values))
    received = run(collect(settings.bootstrap, [settings.topics.predictions, settings.topics.deadletter],
                           expected=len(values)))
    ours = [r for r in received if not r.value.get("id") or r.value["id"].startswith(("good-", "bad-"))
            or r.topic == settings.topics.deadletter]
    dead = [r for r in ours if r.topic == settings.topics.deadletter]
    served = [r for r in ours if r.topic == settings.topics.predictions]
    assert sorted(r.value["id"] for r in served) == sorted(f"good-{i}" for i in range(len(good)))
    assert len(dead) == len(bad)
    by_original = {}
    for r in dead:
        # An oversized original is withheld: its digest names it.
        original = r.value["original_sha256"] if "original_sha256" in r.value \
            else r.value["original"].encode() if r.value["original_encoding"] == "utf-8" \
            else base64.b64decode(r.value["original"])
        by_original[original] = r
        assert len(r.value["error"]) > 20 and "source" not in r.value
        assert r.headers["streamserve-source-topic"] == settings.topics.requests.encode()
    for value, reason in bad:
        if len(value) > settings.admission.max_message_bytes:
            value = hashlib.sha256(value).hexdigest()
        assert value in by_original, f"no dead letter for {value[:60]!r}"
        letter = by_original[value]
        assert letter.value["reason"] == reason, (value[:80], letter.value)
        if letter.value["id"] is None:
            assert re.fullmatch(rf"{settings.topics.requests}:\d+:\d+", letter.key.decode())
        else:
            assert letter.key == letter.value["id"].encode()


HOSTILE = [b'"' * 600_000, b"\xff" * 800_000, b"\x01" * 200_000]


def test_oversized_requests_whose_escaped_originals_pass_the_broker_limit_stall_nothing(worker):
    """Review section 1: each of these, escaped into its dead letter, made a record over the
    broker's 1 MiB limit; the worker sent it again forever and no commit followed."""
    settings = worker.settings
    good = [tabular(f"after-big-{i}", "iris", IRIS.X[i], IRIS.features) for i in range(9)]
    values = [v for pair in zip(good, HOSTILE + [b""] * 6) for v in pair if v]
    started = time.time()
    run(produce(settings.bootstrap, settings.topics.requests, values))
    received = run(collect(
        settings.bootstrap, [settings.topics.predictions, settings.topics.deadletter],
        expected=len(values), timeout=60,
        where=lambda r: (r.key or b"").startswith(b"after-big-") or (
            r.topic == settings.topics.deadletter
            and r.value.get("original_sha256") in {hashlib.sha256(h).hexdigest() for h in HOSTILE})))
    served = sorted(r.value["id"] for r in received if r.topic == settings.topics.predictions)
    assert served == sorted(f"after-big-{i}" for i in range(9))
    dead = [r.value for r in received if r.topic == settings.topics.deadletter]
    assert sorted(d["original_bytes"] for d in dead) == sorted(len(h) for h in HOSTILE)
    assert {d["reason"] for d in dead} == {"too_large"} and all(len(d["error"]) > 20 for d in dead)
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(started - 1))
    verified = subprocess.run([sys.executable, "-m", "agents.cli", "verify", "--from", since],
                              env=worker.env, capture_output=True, text=True, timeout=120)
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_an_expired_deadline_is_a_dead_letter(worker):
    settings = worker.settings
    body = orjson.loads(tabular("late-1", "iris", IRIS.X[0], IRIS.features))
    value = orjson.dumps({**body, "deadline_ms": 500})
    ten_seconds_ago = int(time.time() * 1000) - 10_000
    run(produce(settings.bootstrap, settings.topics.requests, [value], timestamp_ms=ten_seconds_ago))
    late = run(collect(settings.bootstrap, [settings.topics.deadletter], expected=1, timeout=30,
                       where=lambda r: r.value.get("id") == "late-1"))
    # Its deadline had passed before a worker took it: the client's own, no server failure.
    assert len(late) == 1 and late[0].value["reason"] == "arrived_late"
    assert "deadline_ms of 500 had passed before a worker took it" in late[0].value["error"]


def test_a_repeated_request_id_gets_one_prediction_and_a_duplicate_dead_letter(worker):
    settings = worker.settings
    first = tabular("twice-1", "iris", IRIS.X[0], IRIS.features)
    again = tabular("twice-1", "iris", IRIS.X[1], IRIS.features)  # same id, another request
    run(produce(settings.bootstrap, settings.topics.requests, [first, again]))
    received = run(collect(settings.bootstrap, [settings.topics.predictions, settings.topics.deadletter],
                           expected=2, timeout=20, where=lambda r: r.value.get("id") == "twice-1"))
    fates = sorted((r.topic.rsplit(".", 1)[1], r.value.get("reason")) for r in received)
    assert fates == [("deadletter", "duplicate_request"), ("predictions", None)]
    dead = next(r for r in received if r.topic == settings.topics.deadletter)
    assert "already served within the last 600 s" in dead.value["error"]
    assert orjson.loads(dead.value["original"])["features"]["sepal_length"] == IRIS.X[1][0]  # nothing lost


@pytest.mark.skipif(shutil.which("kcat") is None, reason="kcat is installed by scripts/setup.sh")
def test_a_request_produced_by_kcat_gets_its_prediction(worker):
    settings = worker.settings
    line = tabular("kcat-1", "iris", IRIS.X[100], IRIS.features)
    subprocess.run(["kcat", "-P", "-b", settings.bootstrap, "-t", settings.topics.requests,
                    "-K", "\t"], input=b"kcat-1\t" + line + b"\n", check=True, timeout=30)
    out = subprocess.run(["kcat", "-C", "-b", settings.bootstrap, "-t", settings.topics.predictions,
                          "-o", "beginning", "-e", "-q", "-f", "%k\t%s\n"],
                         capture_output=True, check=True, timeout=30)
    deadline = time.monotonic() + 30
    while b"kcat-1\t" not in out.stdout and time.monotonic() < deadline:
        time.sleep(0.5)
        out = subprocess.run(["kcat", "-C", "-b", settings.bootstrap, "-t",
                              settings.topics.predictions, "-o", "beginning", "-e", "-q",
                              "-f", "%k\t%s\n"], capture_output=True, check=True, timeout=30)
    line = next(l for l in out.stdout.splitlines() if l.startswith(b"kcat-1\t"))
    prediction = orjson.loads(line.split(b"\t", 1)[1])
    assert prediction["outputs"][1]["data"] == ["virginica"]


def _counter(text: str, name: str) -> dict[tuple, float]:
    values = {}
    for m in re.finditer(rf"^{name}_total\{{(.*?)\}} (\S+)$", text, re.M):
        labels = tuple(sorted(re.findall(r'(\w+)="(.*?)"', m.group(1))))
        values[labels] = float(m.group(2))
    return values


def test_ledger_holds_in_topics_and_counters(worker):
    """Runs last in this module: every request this worker read is accounted for once."""
    settings = worker.settings
    received = run(collect(settings.bootstrap, [settings.topics.requests], expected=10**9, timeout=5))
    requests_read = len(received)
    outputs = run(collect(settings.bootstrap, [settings.topics.predictions, settings.topics.deadletter],
                          expected=requests_read, timeout=30))
    assert len(outputs) == requests_read
    ids_served = [r.value["id"] for r in outputs if r.topic == settings.topics.predictions]
    # One id per fate, but for the repeated id sent on purpose: its repeat is a dead letter.
    ids_dead = {r.value["id"] for r in outputs if r.topic == settings.topics.deadletter
                and r.value["id"] and r.value["reason"] != "duplicate_request"}
    assert len(ids_served) == len(set(ids_served)) and not set(ids_served) & ids_dead
    text = worker.metrics()
    requests = _counter(text, "streamserve_requests")
    predictions = sum(_counter(text, "streamserve_predictions").values())
    dead_letters = sum(_counter(text, "streamserve_deadletters").values())
    assert sum(requests.values()) == requests_read == predictions + dead_letters
    assert sum(v for k, v in requests.items() if ("outcome", "prediction") in k) == predictions
    compiles = _counter(text, "streamserve_jit_compiles")
    assert compiles and all(v == 9 for v in compiles.values())  # buckets 1..256, all at load
    assert re.search(r'^streamserve_e2e_latency_seconds_count\{model="iris"\} [1-9]', text, re.M)
    assert re.search(r'^streamserve_batch_size_bucket\{.*le="64.0".*\} [1-9]', text, re.M)


def _verify(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agents.cli.main", "verify", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def test_verify_confirms_the_ledger_of_the_served_run(worker):
    result = _verify(worker.env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ledger          holds, exactly once" in result.stdout
    assert re.search(r"^lost\s+0$", result.stdout, re.M)
    scoped = _verify(worker.env, "--id-prefix", "good-")
    assert re.search(r"^requests\s+17$", scoped.stdout, re.M), scoped.stdout
    assert re.search(r"^dead letters\s+0$", scoped.stdout, re.M)


def test_verify_fails_when_a_request_has_no_answer(kafka_bootstrap):
    prefix = f"t{uuid.uuid4().hex[:10]}"
    env = dict(os.environ, STREAMSERVE_BROKER=kafka_bootstrap, STREAMSERVE_TOPIC_PREFIX=prefix)
    assert _verify(env).returncode == 0  # creates the topics; nothing to account for
    run(produce(kafka_bootstrap, f"{prefix}.requests",
                [tabular("orphan-1", "iris", IRIS.X[0], IRIS.features)]))
    result = _verify(env)
    assert result.returncode == 1
    assert re.search(r"^lost\s+1$", result.stdout, re.M) and "DOES NOT HOLD" in result.stdout


def test_a_worker_keeps_its_data_under_streamserve_home_not_where_it_was_started(worker):
    """Faust makes a data folder per app even for memory stores; every worker of every test
    run once left one in the folder it was started from (the checkout)."""
    folder = f"{worker.settings.kafka.app_id}.faust-data"
    assert (worker.settings.kafka.home / "faust" / folder).is_dir()
    assert not (Path.cwd() / folder).exists()
