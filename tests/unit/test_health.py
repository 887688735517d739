"""The health verdicts (agents/worker/health.py) with fake probes and a hand-driven clock; and the
HTTP endpoints in-process on an ephemeral port, beside prometheus_client's /metrics."""

import asyncio
import urllib.error
import urllib.request
from types import SimpleNamespace

import orjson
import pytest

from agents.worker.health import (
    BEAT_SECONDS,
    CheckResult,
    HealthChecks,
    Heartbeat,
    consumer_check,
    decide,
    models_check,
    run_checks,
)
from agents.worker.deployment import Deployment
from agents.worker.metrics import Metrics
from pipeline.routing import DeploymentSpec

OK = CheckResult(True, "fine")
BAD = CheckResult(False, "broken")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_all_checks_passing_is_200_and_the_body_names_each():
    report = decide({"loop": OK, "models": OK})
    assert report.ok and report.status == 200 and report.failing == []
    assert orjson.loads(report.body()) == {
        "status": "ok", "failing": [],
        "checks": {"loop": {"ok": True, "detail": "fine"}, "models": {"ok": True, "detail": "fine"}}}


def test_one_failing_check_is_503_naming_it():
    report = decide({"loop": OK, "models": BAD, "consumer": OK})
    assert not report.ok and report.status == 503 and report.failing == ["models"]
    body = orjson.loads(report.body())
    assert body["status"] == "failing" and body["failing"] == ["models"]
    assert body["checks"]["models"] == {"ok": False, "detail": "broken"}
    assert list(body["checks"]) == ["loop", "models", "consumer"]


def test_no_checks_is_not_health():
    report = decide({})
    assert report.status == 503 and report.failing == ["checks"]


def test_a_probe_that_raises_fails_its_check_and_the_others_still_run():
    def broken() -> CheckResult:
        raise RuntimeError("boom")
    report = run_checks({"a": lambda: OK, "b": broken, "c": lambda: OK})
    assert report.status == 503 and report.failing == ["b"]
    assert "RuntimeError('boom')" in dict(report.checks)["b"].detail
    assert dict(report.checks)["c"] == OK


def test_the_loop_is_alive_until_its_heartbeat_goes_stale():
    clock = Clock()
    heartbeat = Heartbeat(stale_after=10, clock=clock)
    assert heartbeat.check().ok  # creating it counts as a beat
    clock.now += 10
    assert heartbeat.check().ok
    clock.now += 0.5
    stale = heartbeat.check()
    assert not stale.ok and "no beat for 10.5 s" in stale.detail and "restart" in stale.detail
    heartbeat.beat()
    assert heartbeat.check() == CheckResult(True, "last beat 0.0 s ago")


async def test_the_heartbeat_beats_on_the_running_loop():
    clock = Clock()
    heartbeat = Heartbeat(stale_after=10, clock=clock)
    clock.now += 60
    assert not heartbeat.check().ok
    beats = asyncio.create_task(heartbeat.run())
    await asyncio.sleep(0)
    assert heartbeat.check().ok
    beats.cancel()
    with pytest.raises(asyncio.CancelledError):
        await beats
    assert BEAT_SECONDS < heartbeat.stale_after


def test_models_are_ready_once_a_deployment_is_installed():
    inference = SimpleNamespace(deployment=Deployment({}, {}))
    probe = models_check(inference)
    loading = probe()
    assert not loading.ok and "loading" in loading.detail
    inference.deployment = Deployment({}, {"iris": DeploymentSpec("iris", "1"),
                                           "breast_cancer": DeploymentSpec("breast_cancer", "2")})
    ready = probe()
    assert ready.ok and ready.detail.index("breast_cancer stable 2") < ready.detail.index("iris stable 1")


def server(assigned, should_stop=False):
    return SimpleNamespace(assigned=assigned, should_stop=should_stop)


def test_the_consumer_is_ready_once_joined_even_without_partitions():
    assert not consumer_check(lambda: None)().ok  # the worker has not made its server yet
    assert not consumer_check(lambda: server(None))().ok  # started, not yet joined
    idle = consumer_check(lambda: server(frozenset()))()
    assert idle.ok and "no partitions" in idle.detail  # more workers than partitions
    serving = consumer_check(lambda: server(frozenset({2, 0})))()
    assert serving.ok and "[0, 2]" in serving.detail
    stopping = consumer_check(lambda: server(frozenset({0}), should_stop=True))()
    assert not stopping.ok and "stopping" in stopping.detail


def test_readiness_is_503_while_models_load_and_before_the_group_is_joined():
    """The worker's wiring before it is ready: the loop beats, nothing else is there."""
    inference = SimpleNamespace(deployment=Deployment({}, {}))
    heartbeat = Heartbeat()
    readiness = {"loop": heartbeat.check, "models": models_check(inference),
                 "consumer": consumer_check(lambda: None)}
    report = run_checks(readiness)
    assert report.status == 503 and report.failing == ["models", "consumer"]
    assert run_checks({"loop": heartbeat.check}).status == 200  # alive meanwhile


def _get(url: str, method: str = "GET") -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=5) as r:
            return r.status, r.read(), r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.read(), e.headers.get("Content-Type", "")


def test_the_endpoints_share_the_metrics_port():
    metrics = Metrics()
    ready = {"consumer": BAD}
    httpd = metrics.serve(0, HealthChecks({"loop": lambda: OK},
                                           {"loop": lambda: OK, "consumer": lambda: ready["consumer"]}))
    base = f"http://127.0.0.1:{httpd.server_port}"
    try:
        status, body, kind = _get(base + "/healthz")
        assert status == 200 and kind == "application/json"
        assert orjson.loads(body)["checks"] == {"loop": {"ok": True, "detail": "fine"}}
        status, body, _ = _get(base + "/readyz")
        assert status == 503 and orjson.loads(body)["failing"] == ["consumer"]
        ready["consumer"] = OK
        status, body, _ = _get(base + "/readyz")
        assert status == 200 and orjson.loads(body)["status"] == "ok"
        assert _get(base + "/readyz", "HEAD")[:2] == (200, b"")
        assert _get(base + "/healthz", "POST")[0] == 405
        status, body, _ = _get(base + "/metrics")
        assert status == 200 and b"streamserve_worker_ready 0.0" in body
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_without_health_checks_only_metrics_are_served():
    httpd = Metrics().serve(0)
    try:
        status, body, _ = _get(f"http://127.0.0.1:{httpd.server_port}/healthz")
        assert status == 200 and b"streamserve_worker_ready" in body  # prometheus serves any path
    finally:
        httpd.shutdown()
        httpd.server_close()
