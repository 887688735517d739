"""The broker restarts, cleanly and with kill -9, and an output topic refuses writes for a
while: nothing lost, and no offset committed past an output not yet published."""

from __future__ import annotations

import asyncio
import time

import pytest

from agents.broker import LocalBroker
from agents.fleet import free_port
from agents.kafka_io import admin_client
from tests.chaos.harness import DELIVERY_MODES, Fleet, requests
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


@pytest.mark.parametrize("delivery", DELIVERY_MODES)
def test_broker_restarts_clean_and_kill_9_during_traffic_lose_nothing(
        own_broker, registry_dir, tmp_path, delivery):
    fleet = Fleet(own_broker.bootstrap, registry_dir, tmp_path, delivery=delivery)
    n = 4500
    sent = requests(fleet.run_id, n)
    worker = fleet.start()
    try:
        for crash, chunk in ((False, sent[:1500]), (True, sent[1500:3000])):
            traffic = fleet.traffic(chunk, rate=1000)
            time.sleep(0.7)
            own_broker.stop(crash=crash)
            time.sleep(2.0)
            own_broker.start()
            down = time.monotonic()
            traffic.join()
            report, _ = fleet.settle((1 + crash) * 1500, timeout=120)
            recovery_s = time.monotonic() - down
            report_line(f"broker restart ({'kill -9' if crash else 'clean'})", fleet,
                        (1 + crash) * 1500, report, recovery_s)
            assert_ledger(fleet, report)
        fleet.send(sent[3000:])  # and the worker serves on
        report, _ = fleet.settle(n)
        assert worker.process.poll() is None, "the worker did not survive the broker's restarts"
    finally:
        worker.stop()
    assert report.predictions == n
    assert_ledger(fleet, report)


async def _delete_topic(settings, topic: str) -> None:
    async with admin_client(settings) as admin:
        await admin.delete_topics([topic])


@pytest.mark.parametrize("delivery", DELIVERY_MODES)
def test_a_deleted_output_topic_holds_offsets_back_until_it_returns(
        own_broker, registry_dir, tmp_path, delivery):
    """The predictions topic is deleted under a running worker: no output can be
    published, so no offset may be committed. The worker is then killed: had it committed
    offsets past unpublished outputs, their requests would be lost once it restarts."""
    fleet = Fleet(own_broker.bootstrap, registry_dir, tmp_path, delivery=delivery)
    s = fleet.settings
    n = 2000
    worker = fleet.start()
    try:
        asyncio.run(_delete_topic(s, s.topics.predictions))
        fleet.send(requests(fleet.run_id, n), ensure=False)  # ensure_topics would bring it back
        time.sleep(5.0)
        assert "streamserve_predictions_total{" not in worker.metrics()  # none acknowledged
        worker.kill()
        back = time.monotonic()
        worker = fleet.start()  # its start creates the missing topic again
        report, _ = fleet.settle(n, timeout=120)
        recovery_s = time.monotonic() - back
    finally:
        worker.stop()
    report_line("output topic deleted", fleet, n, report, recovery_s)
    assert report.predictions == n
    assert_ledger(fleet, report)
