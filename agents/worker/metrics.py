"""Prometheus metrics of one worker (prefix ``streamserve_``).

The ledger holds in the counters: for every model,
``requests_total = predictions_total + deadletters_total``; ``requests_total`` carries
the outcome so the identity can be checked from one series.
"""

from __future__ import annotations

from collections.abc import Sequence
from wsgiref.simple_server import WSGIServer

import numpy as np
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    make_wsgi_app,
)

from agents.worker.health import HealthChecks, serve_wsgi, with_health
from pipeline.config import LATENCY_BUCKETS_S
from pipeline.quality.scores import DELAY_BOUNDS


class Metrics:
    """All of a worker's metrics, on their own registry (so tests can make several)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter("streamserve_requests", "Requests read, by outcome",
                                ["model", "version", "outcome"], registry=r)
        self.predictions = Counter("streamserve_predictions", "Predictions written",
                                   ["model", "version", "route"], registry=r)
        self.deadletters = Counter("streamserve_deadletters", "Dead letters written, by reason",
                                   ["model", "reason"], registry=r)
        self.samples = Counter("streamserve_samples", "Sampled, redacted requests written",
                               ["model"], registry=r)
        # Labelled by quota (a configured tenant, or "default" for all others): bounded.
        self.quota_rejections = Counter(
            "streamserve_quota_rejections",
            "Requests dead-lettered as quota_exceeded, by tenant quota and limit (rate, inflight)",
            ["tenant", "limit"], registry=r)
        self.e2e_latency = Histogram(
            "streamserve_e2e_latency_seconds",
            "Request timestamp to prediction produced and acknowledged",
            ["model"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.inference_latency = Histogram(
            "streamserve_inference_latency_seconds", "One model call on one padded batch",
            ["model", "version"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.batch_size = Histogram(
            "streamserve_batch_size", "Rows per model call, before padding",
            ["model", "version"], buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024), registry=r)
        self.padding_rows = Counter("streamserve_padding_rows",
                                    "Padding rows computed to fill batches up to their bucket",
                                    ["model", "version"], registry=r)
        # Cost: the worker's CPU seconds (process_cpu_seconds_total, with its start time and
        # memory), model calls on an accelerator, and the configured prices.
        ProcessCollector(registry=r)
        self.accelerator_seconds = Counter(
            "streamserve_accelerator_seconds", "Seconds of model calls on a GPU/TPU (none on CPU)",
            ["model", "version", "device"], registry=r)
        self.price_per_hour = Gauge("streamserve_price_per_hour",
                                    "Configured price of one resource for an hour (cost rules)",
                                    ["resource"], registry=r)
        self.lag = Gauge("streamserve_consumer_lag",
                         "Requests in a partition not yet served (broker's end offset minus the "
                         "next to serve): a backlog waits in Kafka, not in the worker's memory",
                         ["partition"], registry=r)
        self.queued = Gauge("streamserve_queued_requests",
                            "Requests fetched and waiting in the worker for a batch (bounded)",
                            registry=r)
        self.queue_wait = Histogram("streamserve_queue_wait_seconds",
                                    "Time the oldest request of a batch queued in the worker",
                                    buckets=LATENCY_BUCKETS_S, registry=r)
        self.jit_compiles = Counter("streamserve_jit_compiles",
                                    "XLA compilations (all at model load: one per bucket)",
                                    ["model", "version"], registry=r)
        self.drift_psi = Gauge("streamserve_drift_psi", "PSI of the latest closed drift window",
                               ["model", "version", "feature"], registry=r)
        self.drift_kl = Gauge("streamserve_drift_kl", "KL divergence of the latest drift window",
                              ["model", "version", "feature", "direction"], registry=r)
        self.drift_status = Gauge(
            "streamserve_drift_status",
            "Latest drift verdict: -1 insufficient data, 0 stable, 1 drift, 2 alert",
            ["model", "version", "feature"], registry=r)
        self.drift_events = Counter("streamserve_drift_events",
                                    "Drift events (two drifting windows in a row)",
                                    ["model", "version", "feature", "status"], registry=r)
        self.drift_late_rows = Counter(
            "streamserve_drift_late_rows",
            "Served rows that reached their drift windows after those closed (beyond the grace)",
            ["model", "version"], registry=r)
        # Ground truth (agents/worker/quality.py): sums over the join partitions this worker
        # owns, so the fleet's are their sum; every answer kept for the label horizon.
        quality = ["model", "version", "route"]
        self.quality_answers = Gauge("streamserve_quality_answers",
                                     "Answers kept for the join with labels (within the label horizon)",
                                     quality, registry=r)
        self.quality_labelled = Gauge("streamserve_quality_labelled",
                                      "Answers joined with a label (within the label horizon)",
                                      quality, registry=r)
        self.quality_correct = Gauge("streamserve_quality_correct",
                                     "Labelled answers of a classifier whose class was the label's",
                                     quality, registry=r)
        self.quality_log_loss = Gauge("streamserve_quality_log_loss_sum",
                                      "Sum of a classifier's log loss over its labelled answers",
                                      quality, registry=r)
        self.quality_absolute_error = Gauge("streamserve_quality_absolute_error_sum",
                                            "Sum of a regressor's absolute error over its labelled answers",
                                            quality, registry=r)
        self.quality_p_value = Gauge(
            "streamserve_quality_accuracy_p_value",
            "Exact one-sided binomial test of a version's accuracy on the labels of this "
            "worker's join partitions (the latest 24 windows) against its training accuracy "
            "less STREAMSERVE_QUALITY_MARGIN: small means really below", ["model", "version"], registry=r)
        self.labels = Counter("streamserve_labels", "Labels read, by what became of them "
                              "(scored, correction, duplicate, malformed, unknown_id...)",
                              ["model", "outcome"], registry=r)
        self.label_delay = Histogram("streamserve_label_delay_seconds",
                                     "From an answer to its label's outcome", quality,
                                     buckets=DELAY_BOUNDS, registry=r)
        self.breaker_state = Gauge(
            "streamserve_breaker_state",
            "Circuit breaker of a version: 0 closed, 1 half-open (probing), 2 open",
            ["model", "version"], registry=r)
        self.shadow_agreement = Counter(
            "streamserve_shadow_agreement",
            "Shadow answers by whether they agree with the version that answered (the same "
            "label; a regressor's values within 1%)",
            ["model", "version", "agree"], registry=r)
        self.shadow_difference = Histogram(
            "streamserve_shadow_difference",
            "Largest absolute difference of class probabilities (a regressor's values), "
            "shadow against served",
            ["model", "version"], buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0), registry=r)
        self.model_refusals = Counter(
            "streamserve_model_refusals",
            "Versions a worker refused to load (unsigned, tampered, failing to load)",
            ["model", "version", "reason"], registry=r)
        self.control_changes = Counter(
            "streamserve_control_changes",
            "Deployment spec changes applied by this worker, by outcome",
            ["model", "outcome"], registry=r)
        self.given_up = Counter(
            "streamserve_outputs_given_up",
            "Outputs the broker refused for good and nothing could stand in for: side outputs "
            "(samples, shadow answers, drift rows), or an answer whose stand-in was refused too",
            ["kind"], registry=r)
        self.loaded = Gauge("streamserve_model_loaded", "1 for each loaded version and its role",
                            ["model", "version", "role"], registry=r)
        self.brokers_unreachable = Gauge(
            "streamserve_kafka_brokers_unreachable",
            "Brokers seen up since the worker started that its last look did not find (all of "
            "them when none answered)", registry=r)
        self.outputs_writable = Gauge(
            "streamserve_kafka_outputs_writable",
            "1 while a broker answers and every partition of the predictions and dead-letter "
            "topics has a leader (readiness's kafka check)", registry=r)
        self.under_replicated = Gauge(
            "streamserve_kafka_under_replicated_partitions",
            "Partitions of the worker's topics with a replica out of sync", ["topic"], registry=r)
        self.leaderless = Gauge(
            "streamserve_kafka_leaderless_partitions",
            "Partitions of the worker's topics without a leader: nothing can be written to them",
            ["topic"], registry=r)
        self.replicas_missing = Gauge(
            "streamserve_kafka_replicas_missing",
            "Replicas a topic lacks of the wanted replication (STREAMSERVE_REPLICATION_FACTOR "
            "or the cluster's default)", ["topic"], registry=r)
        self.ready = Gauge("streamserve_worker_ready",
                           "1 once models are warm and the worker has partitions assigned",
                           registry=r)

    def serve(self, port: int, health: HealthChecks | None = None) -> WSGIServer:
        """Expose /metrics on ``port`` from a daemon thread, and with ``health`` also
        /healthz and /readyz (``agents.worker.health``); ``shutdown()`` on the result stops it."""
        app = make_wsgi_app(self.registry)
        return serve_wsgi(app if health is None else with_health(health, app), port)


def observe_all(histogram: Histogram, values: Sequence[float]) -> None:
    """``histogram.observe(v)`` for each of ``values`` (finite), in one pass.

    prometheus_client has no bulk observe, and one call per answer cost a twentieth of a
    worker's event loop. This adds to the children ``observe`` adds to (its bucket
    counters and sum, private to prometheus_client 0.26, pinned): a value counts in the
    first bucket whose bound is at least the value, as there. tests/unit/test_metrics.py
    checks the exposition against ``observe``'s, so an upgrade that moves them fails it.
    """
    if not values:
        return
    seen = np.asarray(values, dtype=np.float64)
    counts = np.bincount(np.searchsorted(histogram._upper_bounds, seen, side="left"),
                         minlength=len(histogram._buckets))
    histogram._sum.inc(float(seen.sum()))
    for bucket, count in zip(histogram._buckets, counts.tolist(), strict=True):
        if count:
            bucket.inc(count)
