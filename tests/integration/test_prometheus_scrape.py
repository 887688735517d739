"""A real Prometheus scrapes a real worker with the rules loaded: the counters it stores
add up to the traffic sent, and the rules evaluate against the series a worker exports.

The server is the `prometheus` binary (scripts/setup.sh installs it), on a free port with
its data in tmp_path, scraping every second. Traffic goes in two rounds, the second
after Prometheus has seen the first, so every rate in the recording rules has two
samples to compare.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from agents.dev.fleet import WorkerProcess, free_port
from pipeline.config import LATENCY_BUCKETS_S
from models.datasets import load as load_dataset
from pipeline import slo
from tests.conftest import REPO, start_worker
from tests.integration.clients import collect, produce, run

PROMETHEUS = shutil.which("prometheus")
RULES = REPO / "ops" / "prometheus" / "streamserve-rules.yml"

pytestmark = [pytest.mark.integration, pytest.mark.skipif(
    PROMETHEUS is None, reason="the prometheus binary is not installed: scripts/setup.sh installs "
                               "it (Debian package prometheus), or put Prometheus on PATH")]

IRIS = load_dataset("iris")
CANCER = load_dataset("breast_cancer")
FIRST_ROUND = 20
VALID = 270
# 30 invalid requests: 10 of each reason, none of them the service's fault
INVALID = {"malformed_json": 10, "unknown_model": 10, "schema_mismatch": 10}


def valid_requests(prefix: str, start: int, stop: int) -> list[bytes]:
    out = []
    for i in range(start, stop):
        ds = IRIS if i % 2 else CANCER
        row = ds.X[i % len(ds.X)].tolist()
        out.append(orjson.dumps({"id": f"{prefix}-{i}", "model": ds.name,
                                 "features": dict(zip(ds.features, row, strict=True))}))
    return out


def invalid_requests(prefix: str) -> list[bytes]:
    features = dict(zip(IRIS.features, IRIS.X[0].tolist(), strict=True))
    out = []
    for i in range(INVALID["malformed_json"]):
        out.append(f'{{"id": "{prefix}-json-{i}", "model": "iris", "features": {{'.encode())
    for i in range(INVALID["unknown_model"]):
        out.append(orjson.dumps({"id": f"{prefix}-model-{i}", "model": "no-such-model",
                                 "features": features}))
    for i in range(INVALID["schema_mismatch"]):
        partial = {k: v for k, v in features.items() if k != "petal_width"}
        out.append(orjson.dumps({"id": f"{prefix}-schema-{i}", "model": "iris", "features": partial}))
    return out


@dataclass
class Prometheus:
    url: str
    process: subprocess.Popen
    log: Path

    def get(self, path: str, **params: str) -> dict:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=10) as r:
            body = json.loads(r.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, promql: str) -> dict[tuple[tuple[str, str], ...], float]:
        """An instant query's samples: sorted labels (``__name__`` dropped) to value."""
        data = self.get("/api/v1/query", query=promql)
        assert data["resultType"] == "vector", data
        return {tuple(sorted((k, v) for k, v in s["metric"].items() if k != "__name__")):
                float(s["value"][1]) for s in data["result"]}

    def until(self, promql: str, check: Callable[[dict], bool], timeout: float = 60) -> dict:
        """The query's samples once ``check`` accepts them; fails with the last ones seen."""
        deadline = time.monotonic() + timeout
        while True:
            samples = self.query(promql)
            if check(samples):
                return samples
            if time.monotonic() > deadline:
                pytest.fail(f"{promql} was still {samples} after {timeout:.0f} s; Prometheus log "
                            f"({self.log}) ends:\n{self.log.read_text()[-2000:]}")
            time.sleep(0.5)

    def total(self, promql: str) -> float:
        return sum(self.query(promql).values())


@pytest.fixture(scope="module")
def worker(kafka_bootstrap: str, registry_dir: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    handle = start_worker(kafka_bootstrap, registry_dir,
                          tmp_path_factory.mktemp("scraped-worker") / "worker.log")
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture(scope="module")
def prometheus(worker: WorkerProcess,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    assert PROMETHEUS is not None
    home = tmp_path_factory.mktemp("prometheus")
    config = home / "prometheus.yml"
    config.write_text(json.dumps({  # JSON is YAML
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": "streamserve", "static_configs": [
            {"targets": [f"127.0.0.1:{worker.metrics_port}"]}]}],
    }))
    port, log = free_port(), home / "prometheus.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={home / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"], stdout=out, stderr=subprocess.STDOUT)
    server = Prometheus(f"http://127.0.0.1:{port}", process, log)
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                pytest.fail(f"prometheus exited with code {process.returncode}:\n"
                            f"{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{server.url}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"prometheus was not ready after 60 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def traffic(worker: WorkerProcess, prometheus: Prometheus) -> int:
    """Send 300 requests (30 of them invalid) in two rounds; return how many were sent."""
    s = worker.settings
    outputs = [s.topics.predictions, s.topics.deadletter]
    prometheus.until('up{job="streamserve"}', lambda v: list(v.values()) == [1.0])
    first = valid_requests("prom", 0, FIRST_ROUND)
    run(produce(s.bootstrap, s.topics.requests, first))
    run(collect(s.bootstrap, outputs, expected=len(first)))
    prometheus.until("sum(streamserve_requests_total)", lambda v: list(v.values()) == [FIRST_ROUND])
    second = valid_requests("prom", FIRST_ROUND, VALID) + invalid_requests("prom")
    run(produce(s.bootstrap, s.topics.requests, second))
    sent = len(first) + len(second)
    received = run(collect(s.bootstrap, outputs, expected=sent))
    assert len(received) == sent
    prometheus.until("sum(streamserve_requests_total)", lambda v: list(v.values()) == [sent])
    return sent


def test_prometheus_counts_every_request_sent(prometheus, traffic):
    assert traffic == VALID + sum(INVALID.values()) == 300
    assert prometheus.total("sum(streamserve_requests_total)") == traffic
    by_outcome = prometheus.query("sum by (outcome) (streamserve_requests_total)")
    assert by_outcome == {(("outcome", "prediction"),): VALID,
                          (("outcome", "deadletter"),): sum(INVALID.values())}


def test_the_latency_histogram_counts_every_prediction(prometheus, traffic):
    assert prometheus.total("sum(streamserve_predictions_total)") == VALID
    assert prometheus.total("sum(streamserve_e2e_latency_seconds_count)") == VALID
    assert prometheus.total('sum(streamserve_e2e_latency_seconds_bucket{le="+Inf"})') == VALID


def test_dead_letters_are_counted_by_reason(prometheus, traffic):
    by_reason = prometheus.query("sum by (reason) (streamserve_deadletters_total)")
    assert by_reason == {(("reason", r),): n for r, n in INVALID.items()}


def test_the_rules_load_and_evaluate_without_errors(prometheus, traffic):
    expected = {r.get("alert") or r["record"]
                for g in slo.rules_document(slo.Objectives(), LATENCY_BUCKETS_S)["groups"]
                for r in g["rules"]}
    deadline = time.monotonic() + 30
    while True:
        groups = prometheus.get("/api/v1/rules")["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        if all(rule["health"] != "unknown" for rule in rules) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert {group["file"] for group in groups} == {str(RULES)}
    assert {rule["name"] for rule in rules} == expected
    failing = {rule["name"]: (rule["health"], rule.get("lastError")) for rule in rules
               if rule["health"] != "ok" or rule.get("lastError")}
    assert not failing


def test_the_slo_ratios_are_recorded_for_every_model(prometheus, traffic):
    # The objective's bucket is a label the worker exports, so the latency ratio has data.
    le = slo.Objectives().latency_bucket(LATENCY_BUCKETS_S)
    assert prometheus.total(f'sum(streamserve_e2e_latency_seconds_bucket{{le="{le}"}})') <= VALID
    models = {(("model", "breast_cancer"),), (("model", "iris"),)}
    availability = prometheus.until(f"{slo.AVAILABILITY_RECORD}5m", lambda v: set(v) == models)
    assert availability == dict.fromkeys(models, 0.0)  # only client errors: no budget burnt
    latency = prometheus.until(f"{slo.LATENCY_RECORD}5m", lambda v: set(v) == models)
    assert all(0 <= share <= 1 for share in latency.values()), latency
    assert prometheus.query('ALERTS{alertname=~"StreamserveAvailability.*"}') == {}
