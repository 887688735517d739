"""Drift windows in the Faust app: batch counts in, a report per window and feature out.

The serving hot path sends one counts message per batch and model version to the
internal ``<prefix>.drift-counts`` topic (keyed ``model:version``, so one partition,
hence one worker, owns a version's windows). This agent reads them one event at a
time (a few per second: Faust's per-event cost does not matter here, and tables can
be written), keeps each version's ``DriftMonitor`` state (panes and trackers) in a
Faust table whose changelog carries it through restarts and rebalances, and sends a
report per closed window and feature to ``<prefix>.drift`` and to Prometheus.
Windows close by event time, when counts for a later pane arrive.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import faust
import orjson

from agents.metrics import Metrics
from pipeline.config import Settings
from pipeline.drift import DriftMonitor, FeatureWindow, MatrixCounts, WindowReport

log = logging.getLogger(__name__)

_STATUS_VALUE = {"insufficient": -1, "stable": 0, "drift": 1, "alert": 2}


def add_drift_agent(app: faust.App, settings: Settings,
                    references: Mapping[tuple[str, str], dict[str, Any]], metrics: Metrics) -> None:
    """Wire the drift agent for the served versions' ``references`` into ``app``."""
    topics = settings.topics
    counts_topic = app.topic(topics.drift_counts, key_type=bytes, value_type=bytes,
                             key_serializer="raw", value_serializer="raw",
                             partitions=settings.request_partitions)
    reports_topic = app.topic(topics.drift, key_type=bytes, value_type=bytes,
                              key_serializer="raw", value_serializer="raw")
    # Raw bytes (the app's serializers): Faust rebuilds typed values from the changelog
    # with ``value_type.from_data``, which a plain dict lacks, so recovery would fail.
    state = app.Table("drift-monitors", default=None, key_type=bytes, value_type=bytes,
                      partitions=settings.request_partitions)

    # Live monitors of the partitions this worker holds; the table is their durable copy,
    # read again after a rebalance (another worker may have moved them on meanwhile).
    monitors: dict[str, DriftMonitor] = {}

    @app.on_partitions_revoked.connect
    async def forget(sender: faust.App, revoked: object, **kwargs: object) -> None:
        monitors.clear()

    def monitor_for(key: str, model: str, version: str) -> DriftMonitor | None:
        if key in monitors:
            return monitors[key]
        reference = references.get((model, version))
        if not reference:
            return None
        monitor = DriftMonitor.from_manifest_reference(reference, settings.drift_window_s,
                                                       settings.drift_hop_s)
        snapshot = state.get(key.encode())
        if snapshot is not None:
            monitor.restore(orjson.loads(snapshot))
        monitors[key] = monitor
        return monitor

    @app.agent(counts_topic, concurrency=1)
    async def aggregate(stream: faust.StreamT) -> None:
        async for event in stream.events():
            key = event.key.decode()
            message = orjson.loads(event.value)
            model, version = message["model"], message["version"]
            monitor = monitor_for(key, model, version)
            if monitor is None:
                log.warning("drift counts for %s, which this worker does not serve; skipped", key)
                continue
            closed = monitor.on_counts(message["timestamp"], MatrixCounts.from_json(message["counts"]))
            state[key.encode()] = orjson.dumps(monitor.snapshot())
            for report in closed:
                for feature in report.features:
                    await reports_topic.send(key=f"{key}:{feature.report.feature}".encode(),
                                             value=orjson.dumps(_report_json(model, version, report,
                                                                             feature)))
                    _export(metrics, model, version, feature)


def _report_json(model: str, version: str, window: WindowReport, feature: FeatureWindow) -> dict:
    r, comparison = feature.report, feature.report.comparison
    return {
        "model": model, "version": version, "feature": r.feature, "kind": r.kind,
        "window_start": window.start_s, "window_end": window.end_s, "window_size": r.window_size,
        "psi": None if comparison is None else comparison.psi,
        "kl_ref_cur": None if comparison is None else comparison.kl_ref_cur,
        "kl_cur_ref": None if comparison is None else comparison.kl_cur_ref,
        "js_distance": None if comparison is None else comparison.js_distance,
        "missing_rate": r.missing_rate, "non_finite": r.non_finite,
        "out_of_range_share": r.out_of_range_share, "unseen_share": r.unseen_share,
        "verdict": feature.verdict.to_json(),
        "event": None if feature.event is None else feature.event.to_json(),
    }


def _export(metrics: Metrics, model: str, version: str, feature: FeatureWindow) -> None:
    name, comparison = feature.report.feature, feature.report.comparison
    metrics.drift_status.labels(model, version, name).set(_STATUS_VALUE[feature.verdict.status])
    if comparison is not None:
        metrics.drift_psi.labels(model, version, name).set(comparison.psi)
        metrics.drift_kl.labels(model, version, name, "ref_cur").set(comparison.kl_ref_cur)
        metrics.drift_kl.labels(model, version, name, "cur_ref").set(comparison.kl_cur_ref)
    if feature.event is not None:
        metrics.drift_events.labels(model, version, name, feature.event.status).inc()
