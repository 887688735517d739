"""Worker crashes, shutdowns and a rebalance during traffic: the ledger holds in both
delivery modes. One fleet per mode goes through the faults in turn, both modes at once;
each phase has its own request ids, so each is accounted for on its own."""

from __future__ import annotations

import random
import time

import pytest

from pipeline.faults import CRASH_POINTS
from tests.chaos.harness import Fleet, at_once, requests

pytestmark = pytest.mark.integration


def report_line(name, fleet, n, report, recovery_s):
    print(f"\nCHAOS {name} [{fleet.delivery}]: sent {n}, predictions {report.predictions}, "
          f"dead letters {report.dead_letters}, lost {len(report.lost)}, both {len(report.both)}, "
          f"duplicated {len(report.duplicated)}, recovery {recovery_s:.1f} s")


def assert_ledger(fleet, report):
    assert report.holds, report
    if fleet.delivery == "exactly-once":
        assert not report.duplicated, report


def test_sigkill_sigterm_and_a_rebalance_lose_nothing(every_mode):
    at_once(every_mode, _crashes_shutdowns_and_a_rebalance)


def _crashes_shutdowns_and_a_rebalance(fleet: Fleet) -> None:
    # 1. SIGKILL at the named points (a batch served, nothing sent; outputs acknowledged,
    #    offsets not committed; just committed), then at a random moment, restarting the
    #    worker each time, with requests arriving throughout.
    phase, n = f"{fleet.run_id}-kill", 5000
    chunks = iter(requests(phase, n)[i:i + 1000] for i in range(0, n, 1000))
    for point in CRASH_POINTS:
        # Not waiting for readiness: with a backlog it may crash before it is ready.
        worker = fleet.start(wait=False, STREAMSERVE_FAULTS=f"crash_at={point}")
        traffic = fleet.traffic(next(chunks), rate=500)
        assert worker.process.wait(60) == -9, f"the worker did not crash at {point}"
        assert f"injected fault: crashing at {point}" in worker.log_tail()
        traffic.join()
    worker = fleet.start()
    traffic = fleet.traffic(next(chunks), rate=1000)
    time.sleep(random.Random(7).uniform(0.2, 0.9))
    worker.kill()
    traffic.join()
    worker = fleet.start()
    fleet.send(next(chunks))
    report, recovery_s = fleet.settle_prefix(phase, n)
    report_line("sigkill x4 (3 named points, 1 random)", fleet, n, report, recovery_s)
    assert report.predictions == n
    assert_ledger(fleet, report)

    # 2. SIGTERM: the batches in flight are finished and committed, the worker exits soon,
    #    and its successor repeats nothing.
    phase, n = f"{fleet.run_id}-term", 3000
    traffic = fleet.traffic(requests(phase, n), rate=2000)
    time.sleep(0.7)
    stopping = time.monotonic()
    assert worker.stop(timeout=30) == 0
    shutdown_s = time.monotonic() - stopping
    assert shutdown_s < 15, f"the worker took {shutdown_s:.1f} s to stop"
    worker = fleet.start()
    traffic.join()
    report, recovery_s = fleet.settle_prefix(phase, n)
    report_line(f"sigterm (stopped in {shutdown_s:.1f} s)", fleet, n, report, recovery_s)
    assert report.exactly_once, report  # a clean stop commits what it served: no repeats

    # 3. Two workers, one killed: its partitions move to the other.
    phase, n = f"{fleet.run_id}-move", 3000
    second = fleet.start("w2")
    took_all = worker.log_tail(10**6).count("serving partitions [0, 1, 2, 3]")
    traffic = fleet.traffic(requests(phase, n), rate=1500)
    time.sleep(0.7)
    second.kill()
    traffic.join()
    report, recovery_s = fleet.settle_prefix(phase, n, timeout=120)
    # The survivor took all partitions back.
    assert worker.log_tail(10**6).count("serving partitions [0, 1, 2, 3]") > took_all
    report_line("two workers, one killed", fleet, n, report, recovery_s)
    assert report.predictions == n
    assert_ledger(fleet, report)
