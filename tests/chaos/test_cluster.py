"""A 3-broker cluster (replication 3, min.insync.replicas 2) under both delivery modes'
fleets at once: the broker that leads the request partitions and coordinates the serving
groups killed with -9 mid-stream, then restarted; the leader paused (SIGSTOP) for 10 s;
every broker lost for a while, one worker riding it out and one stopped by SIGTERM in the
middle of it; and the output topic deleted under a running worker. After each, the ledger
holds: nothing lost, and no duplicates in exactly-once mode.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
import urllib.error
import urllib.request

import orjson
import pytest
from aiokafka.admin import NewTopic
from aiokafka.errors import KafkaError

from agents.dev.bench_traffic import worker_counters
from agents.dev.cluster import LocalCluster
from agents.dev.fleet import free_port
from agents.kafka.topics import admin_client, ensure_topics
from agents.client.stream import StreamClient
from tests.chaos.harness import DELIVERY_MODES, IRIS, Fleet, at_once, requests
from tests.chaos.test_crashes import assert_ledger, report_line
from tests.conftest import shared_libs

pytestmark = pytest.mark.integration

NODES = 3
GRACE_S = 5  # the at-least-once worker's STREAMSERVE_STOP_GRACE_S
OUTAGE_S = 8  # every broker down this long before the SIGTERM


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = LocalCluster(tmp_path_factory.mktemp("cluster"), free_port(2 * NODES), NODES,
                           libs=shared_libs())
    cluster.start()
    try:
        yield cluster
    finally:
        for node in cluster.brokers:  # throwaway data: no clean shutdown to wait for
            node.stop(crash=True)


@pytest.fixture
def fleets(cluster, registry_dir, tmp_path):
    """One fleet per delivery mode whose serving groups share a coordinator, which also
    leads every request partition: the broker ``target`` to kill."""
    target, chosen = None, []
    for mode in DELIVERY_MODES:
        (tmp_path / mode).mkdir()
        for _ in range(100):  # a group's coordinator is one of 4 offsets partitions' leaders
            fleet = Fleet(cluster.bootstrap, registry_dir, tmp_path / mode, delivery=mode)
            node = asyncio.run(_coordinator(fleet))
            target = node if target is None else target
            if node == target:
                break
        else:
            raise AssertionError(f"no group id found whose coordinator is node {target}")
        asyncio.run(_requests_led_by(fleet, target))
        chosen.append(fleet)
    yield target, chosen
    for fleet in chosen:
        fleet.close()


def test_a_killed_paused_or_lost_broker_loses_nothing(cluster, fleets):
    target, every_mode = fleets
    at_once(every_mode, lambda fleet: fleet.start(
        STREAMSERVE_STOP_GRACE_S=str(GRACE_S if fleet.delivery == "at-least-once" else 25)))
    assert all(state.replication == NODES for fleet in every_mode
               for state in asyncio.run(_states(fleet)).values()), "a topic lacks replicas"

    # 1. kill -9 the leader of the request partitions and the groups' coordinator.
    def kill_the_leader() -> None:
        cluster.node(target).stop(crash=True)
        time.sleep(4)
        cluster.node(target).start()

    clients = [_ClientTraffic(fleet) for fleet in every_mode]
    _phase(every_mode, "kill", kill_the_leader, f"leader and coordinator (node {target}) kill -9")
    for client in clients:  # the client library rode through too: every reply came
        assert client.answered() == _ClientTraffic.N

    # 2. A broker that is slow, not dead: the requests' leader paused for 10 s.
    paused = asyncio.run(_leader(every_mode[0]))

    def pause_the_leader() -> None:
        pid = cluster.node(paused).pid()
        os.kill(pid, signal.SIGSTOP)
        time.sleep(10)
        os.kill(pid, signal.SIGCONT)

    _phase(every_mode, "pause", pause_the_leader, f"leader (node {paused}) paused 10 s")

    # 3. Every broker lost for a while: the exactly-once worker rides it out; the
    #    at-least-once one is stopped by SIGTERM meanwhile and exits within its grace.
    def lose_every_broker() -> None:
        marks = {fleet.run_id: len(fleet.workers[-1].log.read_bytes().splitlines()) for fleet in every_mode}
        for node in cluster.brokers:
            node.stop(crash=True)
        lost = time.monotonic()
        for fleet in every_mode:  # each worker's next look (every 5 s) finds no broker
            worker = fleet.workers[-1]
            _wait_for(lambda: _readiness(worker)["failing"] == ["kafka"]
                      and _gauge(worker, "streamserve_kafka_brokers_unreachable") == NODES,
                      f"{fleet.delivery}: readiness failing on kafka, {NODES} brokers unreachable")
            assert "no broker of" in _readiness(worker)["checks"]["kafka"]["detail"]
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - lost)))
        for fleet in every_mode:
            worker = fleet.workers[-1]
            lines = len(worker.log.read_bytes().splitlines()) - marks[fleet.run_id]
            print(f"\nCHAOS every broker lost [{fleet.delivery}]: {lines} log lines in "
                  f"{time.monotonic() - lost:.0f} s")
            assert lines < 80, worker.log_tail(6000)  # was about 2,000 a second
        leaving = every_mode[0].workers[-1]
        stopping = time.monotonic()
        leaving.process.send_signal(signal.SIGTERM)
        code = leaving.process.wait(GRACE_S + 10)
        took = time.monotonic() - stopping
        print(f"\nCHAOS sigterm without brokers [at-least-once]: exited {code} after {took:.1f} s")
        assert "did not stop within STREAMSERVE_STOP_GRACE_S" in leaving.log_tail()
        cluster.start()
        every_mode[0].start()

    _phase(every_mode, "lost", lose_every_broker, "every broker lost")
    at_once(every_mode, _without_the_output_topic)


def _phase(every_mode: list[Fleet], name: str, fault, title: str, n: int = 600) -> None:
    """``n`` requests per fleet at 300/s, ``fault()`` after 1.5 s; every one answered."""
    watches = {fleet.run_id: _Answers(fleet) for fleet in every_mode}
    traffics = [fleet.traffic(requests(f"{fleet.run_id}-{name}", n), rate=300) for fleet in every_mode]
    time.sleep(1.5)
    back = time.monotonic()
    fault()
    back = time.monotonic() - back
    for traffic in traffics:
        traffic.join(180)

    def settled(fleet: Fleet) -> None:
        report, waited = fleet.settle_prefix(f"{fleet.run_id}-{name}", n, timeout=180)
        stall = watches[fleet.run_id].stop()
        report_line(f"{title}, answers stopped {stall:.1f} s", fleet, n, report, back + waited)
        assert report.predictions == n
        assert_ledger(fleet, report)

    at_once(every_mode, settled)


class _ClientTraffic:
    """The client library's predictions from a thread: ``N`` rows, in batches every half
    second, started before the fault and waited for after it."""

    N, BATCH = 200, 20

    def __init__(self, fleet: Fleet) -> None:
        self._answers: list = []
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run(fleet.settings)), daemon=True)
        self._thread.start()

    async def _run(self, settings) -> None:
        rows = [dict(zip(IRIS.features, row, strict=True)) for row in IRIS.X[:self.BATCH].tolist()]
        async with StreamClient(settings, timeout=120) as client:
            batches = []
            for _ in range(self.N // self.BATCH):
                batches.append(asyncio.create_task(client.predict_many("iris", rows)))
                await asyncio.sleep(0.5)
            for batch in batches:
                self._answers += await batch

    def answered(self) -> int:
        self._thread.join(180)
        assert not self._thread.is_alive(), "the client's predictions did not finish"
        assert all(answer.label in IRIS.labels for answer in self._answers)
        return len(self._answers)


class _Answers:
    """The longest stretch without a new prediction, from the fleet's workers' counters."""

    def __init__(self, fleet: Fleet) -> None:
        self._fleet, self._done = fleet, threading.Event()
        self._stall, self._last = 0.0, (time.monotonic(), -1.0)
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._done.wait(0.2):
            try:
                count = _gauge(self._fleet.workers[-1], "streamserve_predictions_total")
            except (OSError, ValueError):
                continue  # a worker between lives
            now = time.monotonic()
            if count != self._last[1]:
                self._stall = max(self._stall, now - self._last[0])
                self._last = (now, count)

    def stop(self) -> float:
        self._done.set()
        self._thread.join()
        return self._stall


def _without_the_output_topic(fleet: Fleet) -> None:
    """The predictions topic is deleted under the running worker: no output can be
    published, so no offset may be committed. The worker is then killed: had it committed
    offsets past unpublished outputs, their requests would be lost."""
    phase, n = f"{fleet.run_id}-gone", 1000
    worker, s = fleet.workers[-1], fleet.settings
    asyncio.run(_delete(fleet, s.topics.predictions))
    acknowledged = _gauge(worker, "streamserve_predictions_total")
    fleet.send(requests(phase, n), ensure=False)  # ensure_topics would bring it back
    time.sleep(4.0)
    assert _gauge(worker, "streamserve_predictions_total") == acknowledged, \
        "predictions acknowledged with their topic gone"
    worker.kill()
    back = time.monotonic()
    fleet.start()  # its start creates the missing topic again, with three replicas
    report, _ = fleet.settle_prefix(phase, n, timeout=120)
    report_line("output topic deleted", fleet, n, report, time.monotonic() - back)
    assert report.predictions == n
    assert_ledger(fleet, report)
    assert asyncio.run(_states(fleet))[s.topics.predictions].replication == NODES


def _wait_for(condition, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not seen in {timeout:.0f} s: {what}"
        time.sleep(0.25)


def _gauge(worker, name: str) -> float:
    """The sum of a metric's samples on ``worker``."""
    return worker_counters([worker]).get(name, 0.0)


def _readiness(worker) -> dict:
    try:
        with urllib.request.urlopen(worker.metrics_url.replace("/metrics", "/readyz"), timeout=5) as r:
            return orjson.loads(r.read())
    except urllib.error.HTTPError as e:
        return orjson.loads(e.read())


async def _coordinator(fleet: Fleet) -> int:
    """The broker that coordinates the fleet's serving group (it exists before the group)."""
    async with admin_client(fleet.settings) as admin:
        for _ in range(100):
            try:
                return await admin.find_coordinator(fleet.settings.kafka.app_id)
            except KafkaError:  # the offsets topic is being made
                await asyncio.sleep(0.2)
    raise AssertionError("no coordinator found")


async def _requests_led_by(fleet: Fleet, node: int) -> None:
    """The fleet's requests topic with ``node`` first in every partition's replicas (its
    preferred leader), then the rest of its topics as a worker makes them."""
    s = fleet.settings
    others = [n for n in range(1, NODES + 1) if n != node]
    async with admin_client(s) as admin:
        await admin.create_topics([NewTopic(
            s.topics.requests, -1, -1,
            replica_assignments={p: [node, *others] for p in range(s.kafka.request_partitions)})])
    await ensure_topics(s)


async def _leader(fleet: Fleet) -> int:
    return (await _states(fleet))[fleet.settings.topics.requests].leaders[0]


async def _states(fleet: Fleet):
    from agents.ops.topics import check_topics

    check = await check_topics(fleet.settings)
    return {spec.name: state for spec, state in check.topics if state is not None}


async def _delete(fleet: Fleet, topic: str) -> None:
    async with admin_client(fleet.settings) as admin:
        await admin.delete_topics([topic])
