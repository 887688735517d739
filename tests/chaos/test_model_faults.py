"""A model that raises on some rows, and one slower than the requests' deadlines."""

from __future__ import annotations

import re

import pytest

from tests.chaos.harness import Fleet, at_once, requests
from tests.chaos.test_crashes import report_line

pytestmark = pytest.mark.integration


def test_rows_the_model_raises_on_become_model_error_and_the_rest_is_served(every_mode):
    at_once(every_mode, _poisoned_rows)


def _poisoned_rows(fleet: Fleet) -> None:
    n, poisoned = 2000, 2000 // 100
    worker = fleet.start(STREAMSERVE_FAULTS="poison=-999")
    try:
        fleet.send(requests(fleet.run_id, n, poison_every=100))
        report, recovery_s = fleet.settle(n)
        dead = worker.metrics()
    finally:
        worker.stop()
    report_line("model raises on 1 % of rows", fleet, n, report, recovery_s)
    assert report.exactly_once, report
    assert (report.predictions, report.dead_letters) == (n - poisoned, poisoned)
    assert f'streamserve_deadletters_total{{model="iris",reason="model_error"}} {poisoned}.0' in dead


def test_a_model_slower_than_the_deadlines_dead_letters_them_and_keeps_its_partitions(
        kafka_bootstrap, registry_dir, tmp_path):
    # Deadlines are checked before any output is sent, the same in both delivery modes.
    fleet = Fleet(kafka_bootstrap, registry_dir, tmp_path)
    n = 600
    worker = fleet.start(STREAMSERVE_FAULTS="slow_ms=400")
    try:
        fleet.send(requests(fleet.run_id, n, deadline_ms=150), rate=100)
        report, recovery_s = fleet.settle(n, timeout=120)
        log = worker.log_tail(10**7)
        metrics = worker.metrics()
    finally:
        worker.stop()
    report_line("model slower than deadlines", fleet, n, report, recovery_s)
    assert report.holds, report
    assert report.dead_letters >= n * 2 // 3, report  # once the cost model has seen the delay
    # Dead-lettered for their deadlines: deadline_exceeded when the worker took one in time
    # but could not answer in time, arrived_late when it was already late when taken (a
    # worker that has fallen behind, as one on loaded cores does, sees only those). The
    # slowness also opens the version's breaker (circuit_open) for a while; nothing else
    # (a model_error here was a worker failing its batches).
    reasons = set(re.findall(r'streamserve_deadletters_total\{model="iris",reason="(\w+)"\}', metrics))
    assert reasons & {"deadline_exceeded", "arrived_late"}, reasons
    assert reasons <= {"deadline_exceeded", "arrived_late", "circuit_open"}, reasons
    # Serving a slow model never stalls the consumer's heartbeats: one assignment, no
    # rebalance while it served.
    assert log.count("serving partitions") == 1, log
    assert "Heartbeat failed" not in log
