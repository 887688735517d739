"""The broker restarts, cleanly and with kill -9, and the output topic disappears for a
while: nothing lost, and no offset committed past an output not yet published."""

from __future__ import annotations

import asyncio
import re
import time

import pytest

from agents.dev.broker import LocalBroker
from agents.dev.fleet import free_port
from agents.kafka.topics import admin_client
from tests.chaos.harness import Fleet, at_once, fleets, requests
from tests.chaos.test_crashes import assert_ledger, report_line
from tests.conftest import shared_libs

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def own_broker(tmp_path_factory):
    """A broker of this module's own: restarting it must not disturb the other tests."""
    broker = LocalBroker(tmp_path_factory.mktemp("chaos-kafka"), free_port(2), libs=shared_libs())
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def every_mode(own_broker, registry_dir, tmp_path):
    yield from fleets(own_broker.bootstrap, registry_dir, tmp_path)


async def _delete_topic(settings, topic: str) -> None:
    async with admin_client(settings) as admin:
        await admin.delete_topics([topic])


def test_broker_restarts_and_a_deleted_output_topic_lose_nothing(every_mode, own_broker):
    """Both delivery modes' fleets ride out the same broker restarts side by side."""
    workers = at_once(every_mode, lambda fleet: fleet.start())
    # 1. The broker restarts under traffic, cleanly, then killed with -9; the workers ride
    #    both out.
    for crash in (False, True):
        phase, n = "kill" if crash else "stop", 1500
        traffics = [fleet.traffic(requests(f"{fleet.run_id}-{phase}", n), rate=1000)
                    for fleet in every_mode]
        time.sleep(0.7)
        own_broker.stop(crash=crash)
        time.sleep(2.0)
        own_broker.start()
        back = time.monotonic()
        for traffic in traffics:
            traffic.join()

        def settled(fleet: Fleet, phase: str = phase, n: int = n, crash: bool = crash) -> None:
            report, _ = fleet.settle_prefix(f"{fleet.run_id}-{phase}", n, timeout=120)
            recovery_s = time.monotonic() - back
            report_line(f"broker restart ({'kill -9' if crash else 'clean'})", fleet, n, report,
                        recovery_s)
            assert report.predictions == n
            assert_ledger(fleet, report)

        at_once(every_mode, settled)
    for worker in workers:
        assert worker.process.poll() is None, "a worker did not survive the broker's restarts"
    worker_of = {fleet.run_id: worker for fleet, worker in zip(every_mode, workers, strict=True)}
    at_once(every_mode, lambda fleet: _without_the_output_topic(fleet, worker_of[fleet.run_id]))


def _without_the_output_topic(fleet: Fleet, worker) -> None:
    """2. The predictions topic is deleted under the running worker: no output can be
    published, so no offset may be committed. The worker is then killed: had it committed
    offsets past unpublished outputs, their requests would be lost."""
    phase, n = f"{fleet.run_id}-gone", 1500
    s = fleet.settings
    asyncio.run(_delete_topic(s, s.topics.predictions))
    acknowledged = _predictions(worker)
    fleet.send(requests(phase, n), ensure=False)  # ensure_topics would bring it back
    time.sleep(4.0)
    assert _predictions(worker) == acknowledged, "predictions acknowledged with their topic gone"
    worker.kill()
    back = time.monotonic()
    fleet.start()  # its start creates the missing topic again
    report, _ = fleet.settle_prefix(phase, n, timeout=120)
    recovery_s = time.monotonic() - back
    report_line("output topic deleted", fleet, n, report, recovery_s)
    assert report.predictions == n
    assert_ledger(fleet, report)


def _predictions(worker) -> float:
    """The predictions the worker has had acknowledged, from its counter."""
    return sum(float(v) for v in re.findall(r"^streamserve_predictions_total\{[^}]*\} (\S+)$",
                                            worker.metrics(), re.M))
