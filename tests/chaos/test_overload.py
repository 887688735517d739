"""A burst ten times over saturation: the backlog waits in Kafka, not in the worker."""

from __future__ import annotations

import re
import threading
import time

import numpy as np
import pytest

from tests.chaos.harness import Fleet, requests
from tests.integration.clients import collect, run

pytestmark = pytest.mark.integration


def memory_kib(pid: int) -> tuple[int, int]:
    """(resident now, peak resident) of a process, in KiB."""
    status = open(f"/proc/{pid}/status").read()
    return (int(re.search(r"VmRSS:\s+(\d+)", status)[1]), int(re.search(r"VmHWM:\s+(\d+)", status)[1]))


def gauge_max(text: str, name: str) -> float:
    values = [float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M)]
    return max(values, default=0.0)


def predictions_served(worker) -> float:
    return sum(float(v) for v in re.findall(r"^streamserve_predictions_total\{[^}]*\} (\S+)$",
                                            worker.metrics(), re.M))


def wait_served(worker, target: float, timeout: float) -> None:
    """Wait until the worker's counter says ``target`` predictions were served."""
    deadline = time.monotonic() + timeout
    while predictions_served(worker) < target:
        if time.monotonic() > deadline:
            raise AssertionError(f"{target} predictions not reached in {timeout} s")
        time.sleep(0.05)


def drain_rate(worker, target: float, timeout: float = 120) -> float:
    """Predictions per second from the first to the ``target``-th, from the worker's counter."""
    start = predictions_served(worker)
    first = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        served = predictions_served(worker)
        if first is None and served > start:
            first = (time.monotonic(), served)
        if served >= target:
            return (served - first[1]) / (time.monotonic() - first[0])
        time.sleep(0.05)
    raise AssertionError(f"{target} predictions not reached in {timeout} s")


def test_a_burst_ten_times_over_saturation_drains_with_bounded_memory(
        kafka_bootstrap, registry_dir, tmp_path):
    fleet = Fleet(kafka_bootstrap, registry_dir, tmp_path)
    worker = fleet.start()
    try:
        # Saturation: how fast this worker drains requests arriving faster than it serves.
        warmup = requests(f"{fleet.run_id}-sat", 6000)
        measuring = threading.Thread(target=fleet.send, args=(warmup,))
        measuring.start()
        saturation = drain_rate(worker, len(warmup))
        measuring.join()
        rss_before, _ = memory_kib(worker.process.pid)

        # Ten seconds' worth of saturation, produced as fast as the producer can.
        burst = requests(f"{fleet.run_id}-burst", int(10 * saturation))
        lag_seen, queued_seen = [], []
        stop = threading.Event()

        def watch():
            while not stop.is_set():
                text = worker.metrics()
                lag_seen.append(sum(float(v) for v in re.findall(
                    r"^streamserve_consumer_lag\{[^}]*\} (\S+)$", text, re.M)))
                queued_seen.append(gauge_max(text, "streamserve_queued_requests"))
                time.sleep(0.25)
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        burst_started = time.monotonic()
        fleet.send(burst)
        produced_s = time.monotonic() - burst_started
        fleet.settle_prefix(f"{fleet.run_id}-burst", len(burst), timeout=180)
        drained_s = time.monotonic() - burst_started
        stop.set()
        watcher.join()
        rss_after, peak = memory_kib(worker.process.pid)

        # Latency afterwards: a light load is answered as fast as before the burst. Its
        # answers are read once all are served: reading the whole topic meanwhile took
        # this process a core while the worker served them (p99 336 ms once in CI).
        served = predictions_served(worker)
        trickle = requests(f"{fleet.run_id}-after", 200)
        fleet.send(trickle, rate=100)  # paced: often all served by the time it returns
        wait_served(worker, served + len(trickle), timeout=60)
        answered = run(collect(fleet.bootstrap, [fleet.settings.topics.predictions], expected=200,
                               timeout=60, where=lambda r: r.value["id"].startswith(f"{fleet.run_id}-after")))
    finally:
        worker.stop()
    latencies = np.array([r.value["parameters"]["latency_ms"] for r in answered])
    p99 = float(np.percentile(latencies, 99))
    print(f"\nOVERLOAD saturation {saturation:.0f}/s; burst of {len(burst)} (10 s of saturation) "
          f"produced in {produced_s:.1f} s ({len(burst) / produced_s / saturation:.1f}x the "
          f"saturation rate), drained in {drained_s:.1f} s; "
          f"peak lag {max(lag_seen):.0f}, peak queue {max(queued_seen):.0f}; RSS {rss_before // 1024} -> "
          f"{rss_after // 1024} MiB (peak {peak // 1024} MiB); p99 after {p99:.1f} ms")
    assert len(answered) == 200
    # The backlog showed as consumer lag. Its peak is a share of the burst that shrinks as
    # the worker gets faster against the producer beside it: 23-25 % in two runs at 1.7x
    # and 2.5x the measured saturation (30 % was asked before, and failed once).
    assert max(lag_seen) > 0.1 * len(burst)
    assert max(queued_seen) <= 2 * 1024  # the worker's own queue stays bounded
    assert (rss_after - rss_before) < 200 * 1024, "the burst grew the worker's memory"
    assert p99 < 250, f"latency after the burst did not recover: p99 {p99:.1f} ms"
