"""Worker crashes and shutdowns during traffic: the ledger holds in both delivery modes."""

from __future__ import annotations

import random
import time

import pytest

from pipeline.faults import CRASH_POINTS
from tests.chaos.harness import DELIVERY_MODES, Fleet, requests

pytestmark = pytest.mark.integration


@pytest.fixture(params=DELIVERY_MODES)
def fleet(request, kafka_bootstrap, registry_dir, tmp_path) -> Fleet:
    return Fleet(kafka_bootstrap, registry_dir, tmp_path, delivery=request.param)


def report_line(name, fleet, n, report, recovery_s):
    print(f"\nCHAOS {name} [{fleet.delivery}]: sent {n}, predictions {report.predictions}, "
          f"dead letters {report.dead_letters}, lost {len(report.lost)}, both {len(report.both)}, "
          f"duplicated {len(report.duplicated)}, recovery {recovery_s:.1f} s")


def assert_ledger(fleet, report):
    assert report.holds, report
    if fleet.delivery == "exactly-once":
        assert not report.duplicated, report


def test_crashes_at_each_named_point_then_at_random_points(fleet):
    """SIGKILL at the named points (a batch served, nothing sent; outputs acknowledged,
    offsets not committed; just committed), then at random moments, restarting the
    worker each time, with requests arriving throughout."""
    n = 6000
    sent = requests(fleet.run_id, n)
    chunks = iter(sent[i:i + 1000] for i in range(0, n, 1000))
    for point in CRASH_POINTS:
        worker = fleet.start(STREAMSERVE_FAULTS=f"crash_at={point}:3")
        traffic = fleet.traffic(next(chunks), rate=500)
        assert worker.process.wait(60) == -9, f"the worker did not crash at {point}"
        assert f"injected fault: crashing at {point}" in worker.log_tail()
        traffic.join()
    rng = random.Random(7)
    for _ in range(2):
        worker = fleet.start()
        traffic = fleet.traffic(next(chunks), rate=1000)
        time.sleep(rng.uniform(0.2, 0.9))
        worker.kill()
        traffic.join()
    worker = fleet.start()
    try:
        fleet.send(next(chunks))
        report, recovery_s = fleet.settle(n)
    finally:
        worker.stop()
    report_line("sigkill x5", fleet, n, report, recovery_s)
    assert report.predictions == n
    assert_ledger(fleet, report)


def test_sigterm_finishes_the_batch_in_flight_and_repeats_nothing(fleet):
    n = 4000
    worker = fleet.start()
    traffic = fleet.traffic(requests(fleet.run_id, n), rate=2000)
    time.sleep(1.0)
    stopping = time.monotonic()
    assert worker.stop(timeout=30) == 0
    shutdown_s = time.monotonic() - stopping
    assert shutdown_s < 15, f"the worker took {shutdown_s:.1f} s to stop"
    worker = fleet.start()
    try:
        traffic.join()
        report, recovery_s = fleet.settle(n)
    finally:
        worker.stop()
    report_line(f"sigterm (stopped in {shutdown_s:.1f} s)", fleet, n, report, recovery_s)
    assert report.exactly_once, report  # a clean stop commits what it served: no repeats


def test_two_workers_one_killed_its_partitions_move_to_the_other(fleet):
    n = 4000
    first, second = fleet.start("w1"), fleet.start("w2")
    traffic = fleet.traffic(requests(fleet.run_id, n), rate=1500)
    try:
        time.sleep(1.0)
        second.kill()
        traffic.join()
        report, recovery_s = fleet.settle(n, timeout=120)
        assert "serving partitions [0, 1, 2, 3]" in first.log_tail(10**6)  # it took them all
    finally:
        first.stop()
    report_line("two workers, one killed", fleet, n, report, recovery_s)
    assert report.predictions == n
    assert_ledger(fleet, report)
