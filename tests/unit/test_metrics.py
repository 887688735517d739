"""``observe_all``: a batch's observations in one pass, exposed exactly as ``observe``'s."""

import random

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from agents.worker.metrics import observe_all
from pipeline.config import LATENCY_BUCKETS_S


def exposition(observe) -> list[str]:
    """The histogram's exposition lines after ``observe(child)``; the sum to 9 digits."""
    registry = CollectorRegistry()
    histogram = Histogram("h_seconds", "h", ["model"], buckets=LATENCY_BUCKETS_S, registry=registry)
    observe(histogram.labels("m"))
    lines = generate_latest(registry).decode().splitlines()
    return [f"{line.rsplit(' ', 1)[0]} {float(line.rsplit(' ', 1)[1]):.9g}"
            if line.startswith("h_seconds_sum") else line
            for line in lines if not line.startswith("h_seconds_created")]


def test_a_batch_observed_at_once_is_exposed_as_each_observed_alone():
    rng = random.Random(7)
    # Every bucket's bound itself (a value equal to a bound counts in that bucket), zero,
    # values beyond the last finite bound, and many in between.
    values = [*LATENCY_BUCKETS_S, 0.0, 1e6, *(rng.expovariate(10) for _ in range(500))]

    def one_by_one(child):
        for v in values:
            child.observe(v)

    assert exposition(lambda child: observe_all(child, values)) == exposition(one_by_one)
    assert f'h_seconds_count{{model="m"}} {len(values)}.0' in exposition(lambda child: observe_all(child, values))


def test_nothing_observed_changes_nothing():
    assert exposition(lambda child: observe_all(child, [])) == exposition(lambda child: None)
