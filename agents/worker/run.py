"""One serving worker: load and warm every deployed version, then join the consumer group."""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import gc
import logging
import os
import sys
import threading
import traceback
from collections.abc import Awaitable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import faust
import jax

from agents.worker.app import create_app
from agents.worker.brokers import BrokerWatch
from agents.worker.deployer import ControlFollower, Deployer
from agents.worker.drift import add_drift_agent
from agents.worker.health import (CheckResult, HealthChecks, Heartbeat, HeartbeatService, consumer_check,
                           models_check)
from agents.worker.inference import InferenceService, OutputLimits
from agents.worker.log_limits import limit_repeats
from agents.kafka.topics import ensure_topics, message_limit
from agents.worker.metrics import Metrics
from agents.worker.quality import add_quality_agents
from agents.worker.server import RequestServer
from models.runtime import keep_compiled
from pipeline.canary import CanaryVerdict
from pipeline.config import Settings
from pipeline.registry import Registry, RegistryError
from pipeline.signing import TrustedKeys, verify_version

log = logging.getLogger(__name__)

T = TypeVar("T")


def run_worker(settings: Settings, metrics_port: int | None) -> None:
    """Serve until SIGINT/SIGTERM. Models are warm before the worker takes any partition.

    The metrics port opens before models load, so meanwhile /healthz answers (the loop
    beats) and /readyz says what it waits for (``agents.worker.health``).
    """
    # The model thread waits for each result anyway; on CPU, async dispatch only adds a
    # thread hand-off per call (measured: ~340 -> ~240 µs per small batch).
    jax.config.update("jax_cpu_enable_async_dispatch", False)
    keep_compiled(settings.registry.compile_cache)
    metrics = Metrics()
    heartbeat = Heartbeat()
    server: RequestServer | None = None
    worker: _Worker | None = None
    replicas = asyncio.run(_beating(heartbeat, ensure_topics(settings)))
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
    deployer: Deployer | None = None
    watch: BrokerWatch | None = None

    def on_canary_verdict(model: str, revision: int, verdict: CanaryVerdict) -> None:
        assert deployer is not None
        deployer.on_canary_verdict(model, revision, verdict)

    topics = settings.topics
    limits = OutputLimits(*(asyncio.run(message_limit(settings, topic))
                            for topic in (topics.deadletter, topics.drift_rows)))
    inference = InferenceService(settings, metrics, executor, on_canary_verdict, limits)
    deployer = Deployer(settings, inference, metrics)
    if metrics_port is not None:
        liveness = {"loop": heartbeat.check}
        metrics.serve(metrics_port, HealthChecks(liveness, {
            **liveness, "models": models_check(inference), "consumer": consumer_check(lambda: server),
            "agents": lambda: _agents_check(worker),
            "kafka": lambda: _kafka_check(watch)}))
    asyncio.run(_beating(heartbeat, deployer.start()))
    if not inference.deployment.specs:
        raise RegistryError(f"no model can be served from {settings.registry.root}; train one with "
                            "`streamserve models train iris` (see the log for refused versions)")
    # Everything loaded so far lives for the whole run: keep it out of the garbage
    # collector's scans, so collections during serving stay short.
    gc.collect()
    gc.freeze()
    server = RequestServer(settings, inference, metrics)
    follower = ControlFollower(settings, deployer)
    app = create_app(settings, replicas)
    registry = Registry(settings.registry.root)
    trusted = TrustedKeys.load(settings.registry.trusted_keys)

    def reference_of(model: str, version: str) -> dict:
        # The signed manifest's reference, as the version was loaded: an edit on disk
        # since must not steer drift monitoring.
        return verify_version(registry, model, version, trusted,
                              settings.registry.allow_unsigned).manifest.reference

    add_drift_agent(app, settings, reference_of, metrics)
    if settings.quality.enabled:
        add_quality_agents(app, settings, lambda model, version: verify_version(
            registry, model, version, trusted, settings.registry.allow_unsigned).manifest,
            inference, metrics)
    changelogs = [table.changelog_topic.get_topic_name() for table in app.tables.values()]
    watch = BrokerWatch(settings, metrics, [*topics.all, *changelogs], replicas)
    heartbeat.beat()  # the loop that beats next is Faust's; its heartbeat service starts first
    worker = _Worker(app, HeartbeatService(heartbeat), server, follower, watch, loglevel="INFO")
    worker.stop_grace_s = settings.kafka.stop_grace_s
    with _profiled(settings.faults.profile):
        worker.execute_from_commandline()


def _agents_check(worker: _Worker | None) -> CheckResult:
    if worker is None or not worker.started:
        return CheckResult(False, "the Faust app is starting (drift agent, table recovery)")
    return CheckResult(True, "the Faust app is started (drift agent, tables recovered)")


@contextlib.contextmanager
def _profiled(path: Path | None) -> Iterator[None]:
    """cProfile the event-loop thread meanwhile (``streamserve bench --profile``) and write
    it to ``path``; nothing when None."""
    if path is None:
        yield
        return
    profile = cProfile.Profile()
    profile.enable()
    try:
        yield
    finally:
        profile.disable()
        profile.dump_stats(path)


def _kafka_check(watch: BrokerWatch | None) -> CheckResult:
    return watch.check() if watch is not None else CheckResult(False, "the cluster was not looked at yet")


class _Worker(faust.Worker):
    """A Faust worker whose stop on SIGTERM waits for its start to finish (30 s at most):
    Faust's table manager raises if stopped while it registers the changelogs, and the
    worker would then exit with an error after an otherwise clean stop. A stop that takes
    longer than ``stop_grace_s`` after that (no broker answers the commit, say) ends the process:
    what was not committed is served again. Repeated client warnings are limited
    (``agents.worker.log_limits``) once Faust has set up logging."""

    _up: asyncio.Event | None = None
    stop_grace_s: float = 25.0

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        super().on_setup_root_logger(logger, level)
        limit_repeats(logger)

    @property
    def started(self) -> bool:
        return self._up is not None and self._up.is_set()

    async def on_startup_finished(self) -> None:
        await super().on_startup_finished()
        self._started_up().set()

    async def _stop_on_signal(self, signal: object) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._started_up().wait(), 30)
        deadline = threading.Timer(self.stop_grace_s, _give_up,
                                   (self.stop_grace_s, asyncio.get_running_loop()))
        deadline.daemon = True
        deadline.start()
        await super()._stop_on_signal(signal)

    def _started_up(self) -> asyncio.Event:
        if self._up is None:
            self._up = asyncio.Event()
        return self._up


def _give_up(grace_s: float, loop: asyncio.AbstractEventLoop) -> None:
    """From a thread of its own: the loop may be stuck waiting on brokers. What each of
    the worker's own tasks and every thread waits on goes to the log first (a stop that
    hangs is the one place that says where a wait without end is), then why it exits."""
    with contextlib.suppress(RuntimeError):  # the task set changed while it was read
        for task in asyncio.all_tasks(loop):
            if waits := _awaiting(task.get_coro()):
                log.error("stop hangs: task %s waits in %s", task.get_name(), waits)
    for thread_id, frame in sys._current_frames().items():
        log.error("stop hangs: thread %s waits in %s", _thread_names().get(thread_id, thread_id),
                  " <- ".join(f"{f.name} ({Path(f.filename).name}:{f.lineno})"
                              for f in reversed(traceback.extract_stack(frame, limit=6))))
    log.error("the worker did not stop within STREAMSERVE_STOP_GRACE_S (%.0f s), brokers "
              "unreachable or slow: exiting now; the requests it had not committed will be "
              "served again", grace_s)
    logging.shutdown()
    os._exit(1)


_ROOT = Path(__file__).resolve().parents[2]
_OWN_CODE = (str(_ROOT / "agents") + os.sep, str(_ROOT / "pipeline") + os.sep)


def _awaiting(coroutine: object) -> str:
    """The chain of awaits a task is suspended in, through the worker's own code
    (``agents``, ``pipeline``), outermost first; empty when it never enters it."""
    frames = []
    while coroutine is not None and len(frames) < 16:
        frame = getattr(coroutine, "cr_frame", None) or getattr(coroutine, "gi_frame", None)
        if frame is None:
            break
        frames.append(frame)
        coroutine = getattr(coroutine, "cr_await", None) or getattr(coroutine, "gi_yieldfrom", None)
    if not any(frame.f_code.co_filename.startswith(_OWN_CODE) for frame in frames):
        return ""
    return " -> ".join(f"{frame.f_code.co_name} ({Path(frame.f_code.co_filename).name}:{frame.f_lineno})"
                       for frame in frames)


def _thread_names() -> dict[int, str]:
    return {thread.ident: thread.name for thread in threading.enumerate() if thread.ident is not None}


async def _beating(heartbeat: Heartbeat, work: Awaitable[T]) -> T:
    """Await ``work`` with ``heartbeat`` beating meanwhile: a start-up step is no hang."""
    beats = asyncio.create_task(heartbeat.run())
    try:
        return await work
    finally:
        beats.cancel()
