"""Health endpoints for orchestrators, served on the metrics port beside ``/metrics``.

``/healthz`` (liveness): the worker's event loop answers. The loop stamps a heartbeat
every second; a stamp older than ``LOOP_STALE_SECONDS`` means the loop is blocked or
gone, which only a restart mends. An HTTP thread that still answers proves nothing
about the loop, so the check reads the stamp, never the thread.

``/readyz`` (readiness): alive, every deployed model loaded and warm, the request
consumer has joined its group, and outputs can be written (a broker answers and every
partition of the predictions and dead-letter topics has a leader: ``agents.worker.brokers``). Joined, not "holds partitions": in a group with more
workers than partitions the extra workers hold none, yet they are healthy, warm and
take partitions at the next rebalance (as in KServe and Triton, ready means able to
serve, not serving). A worker that is stopping is not ready.

Each endpoint answers 200 when all its checks pass and 503 otherwise, with a JSON body
naming every check, its state and why::

    {"status": "failing", "failing": ["consumer"],
     "checks": {"loop": {"ok": true, "detail": "last beat 0.4 s ago"}, ...}}

The decision (``decide``) is pure; the probes that feed it are small callables, so it
is tested without a broker, a loop or a socket.
"""

from __future__ import annotations

import asyncio
import socketserver
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import mode
import orjson

from pipeline.routing import DeploymentSpec

# The loop beats every second; a batch, a GC pause or a rebalance callback may hold it
# for a moment, so only a silence this long means it is stuck.
BEAT_SECONDS = 1.0
LOOP_STALE_SECONDS = 10.0

HEALTH_PATHS = {"/healthz": "liveness", "/readyz": "readiness"}

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


@dataclass(frozen=True)
class CheckResult:
    """One check's state: ``detail`` says what was seen, and when failing, what it means."""

    ok: bool
    detail: str


Probe = Callable[[], CheckResult]


@dataclass(frozen=True)
class HealthReport:
    """Every check of one endpoint and the verdict: 200 when all pass, 503 otherwise."""

    checks: tuple[tuple[str, CheckResult], ...]

    @property
    def ok(self) -> bool:
        return all(result.ok for _, result in self.checks)

    @property
    def failing(self) -> list[str]:
        return [name for name, result in self.checks if not result.ok]

    @property
    def status(self) -> int:
        return 200 if self.ok else 503

    def body(self) -> bytes:
        return orjson.dumps({
            "status": "ok" if self.ok else "failing",
            "failing": self.failing,
            "checks": {name: {"ok": r.ok, "detail": r.detail} for name, r in self.checks},
        })


def decide(results: Mapping[str, CheckResult]) -> HealthReport:
    """The verdict on ``results``, in their order. No check at all is a failure: an
    endpoint wired to nothing must not claim health."""
    if not results:
        return HealthReport((("checks", CheckResult(False, "no check is configured")),))
    return HealthReport(tuple(results.items()))


def run_checks(probes: Mapping[str, Probe]) -> HealthReport:
    """Run every probe and decide; a probe that raises fails its check (never a 500)."""
    results = {}
    for name, probe in probes.items():
        try:
            results[name] = probe()
        except Exception as e:  # noqa: BLE001 - a broken probe is a failing check, visibly
            results[name] = CheckResult(False, f"the check raised {e!r}")
    return decide(results)


@dataclass(frozen=True)
class HealthChecks:
    """The probes behind ``/healthz`` (liveness) and ``/readyz`` (readiness)."""

    liveness: Mapping[str, Probe]
    readiness: Mapping[str, Probe]


class Heartbeat:
    """The last time the event loop ran a beat, read from the HTTP thread.

    Creating it counts as a beat: the process was making progress then.
    """

    def __init__(self, stale_after: float = LOOP_STALE_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stale_after = stale_after
        self._clock = clock
        self._last = clock()

    def beat(self) -> None:
        self._last = self._clock()

    async def run(self) -> None:
        """Beat every ``BEAT_SECONDS`` on the running loop until cancelled."""
        while True:
            self.beat()
            await asyncio.sleep(BEAT_SECONDS)

    def check(self) -> CheckResult:
        age = self._clock() - self._last
        if age > self.stale_after:
            return CheckResult(False, f"no beat for {age:.1f} s (limit {self.stale_after:g} s): "
                                      "the event loop is blocked or stopped; restart the worker")
        return CheckResult(True, f"last beat {age:.1f} s ago")


class HeartbeatService(mode.Service):
    """Beats ``heartbeat`` from the worker's loop while the worker runs."""

    def __init__(self, heartbeat: Heartbeat, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self._heartbeat = heartbeat

    @mode.Service.task
    async def _beat(self) -> None:
        while not self.should_stop:
            self._heartbeat.beat()
            await self.sleep(BEAT_SECONDS)


class _Deployment(Protocol):
    @property
    def specs(self) -> Mapping[str, DeploymentSpec]: ...


class _Serving(Protocol):  # what the checks read of the inference service and the server
    @property
    def deployment(self) -> _Deployment: ...


class _Consuming(Protocol):
    @property
    def assigned(self) -> Collection[int] | None: ...  # partition numbers

    @property
    def should_stop(self) -> bool: ...


def models_check(inference: _Serving) -> Probe:
    """Ready once a deployment is installed: ``install`` takes only loaded, warm versions."""

    def probe() -> CheckResult:
        specs = inference.deployment.specs
        if not specs:
            return CheckResult(False, "models are loading and warming (compiling every bucket)")
        return CheckResult(True, "loaded and warm: " + "; ".join(
            " ".join(spec.describe().split()) for _, spec in sorted(specs.items())))
    return probe


def consumer_check(server: Callable[[], _Consuming | None]) -> Probe:
    """Ready once the request consumer joined its group (with or without partitions)."""

    def probe() -> CheckResult:
        s = server()
        if s is None or s.assigned is None:
            return CheckResult(False, "the request consumer has not joined its group yet")
        if s.should_stop:
            return CheckResult(False, "the worker is stopping")
        if not s.assigned:
            return CheckResult(True, "joined its group; no partitions (more workers than "
                                     "partitions): idle until a rebalance gives it some")
        return CheckResult(True, f"joined its group; serving partitions "
                                 f"{sorted(s.assigned)}")
    return probe


def with_health(checks: HealthChecks, other: WSGIApp) -> WSGIApp:
    """A WSGI app answering ``/healthz`` and ``/readyz`` from ``checks``; ``other`` gets
    every other path (prometheus_client's app, which serves metrics on any path)."""
    probes = {"liveness": checks.liveness, "readiness": checks.readiness}

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        endpoint = HEALTH_PATHS.get(environ.get("PATH_INFO", ""))
        if endpoint is None:
            return other(environ, start_response)
        method = environ["REQUEST_METHOD"]
        if method not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed", [("Allow", "GET, HEAD")])
            return [b""]
        report = run_checks(probes[endpoint])
        body = report.body()
        start_response("200 OK" if report.ok else "503 Service Unavailable",
                       [("Content-Type", "application/json"), ("Cache-Control", "no-store"),
                        ("Content-Length", str(len(body)))])
        return [b"" if method == "HEAD" else body]
    return app


class _ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a hung client never keeps the process alive


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass  # probes every few seconds would flood the log


def serve_wsgi(app: WSGIApp, port: int, addr: str = "0.0.0.0") -> WSGIServer:
    """Serve ``app`` on ``addr:port`` from a daemon thread; ``shutdown()`` stops it."""
    httpd = make_server(addr, port, app, _ThreadingServer, handler_class=_QuietHandler)
    threading.Thread(target=httpd.serve_forever, name="http", daemon=True).start()
    return httpd
