"""Drift windows in the Faust app: coded rows in, a report per window and feature out.

The serving hot path sends the rows it served, coded against the reference bins
(``CodedRows``), to the internal ``<prefix>.drift-rows`` topic every half second, one
message per model version, keyed ``model:version`` (so one partition, hence one
worker, owns a version's windows). This agent reads them one event at a time (a few
per second: Faust's per-event cost does not matter here, and tables can be written),
counts each request once into the panes of its event time, keeps each version's
``DriftMonitor`` state (panes, trackers and the offsets counted) in a Faust table
whose changelog carries it through restarts and rebalances, and sends a report per
closed window and feature to ``<prefix>.drift`` and to Prometheus. Windows close by
event time, when rows for a later pane arrive; each model's windows and verdict
follow its ``ModelPolicy``.

Counted once: the offsets counted ride in the same table value as the counts, so a
message read again after this agent's crash, or rows a worker serves again after its
own, are recognised and skipped. Counted at all: the value also holds the offset of
the last coded-rows message counted for its key, so messages Faust skipped around a
rebalance (``DeliveryRuns``) are found and read again before the next one is counted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import faust
import orjson

from agents.kafka.read import read_partitions
from agents.worker.metrics import Metrics
from pipeline.config import Settings
from pipeline.drift import (
    CodedRows,
    DeliveryRuns,
    DriftError,
    DriftMonitor,
    FeatureWindow,
    WindowReport,
)
from pipeline.registry import RegistryError
from pipeline.topology import changelog_configs

log = logging.getLogger(__name__)

_STATUS_VALUE = {"insufficient": -1, "stable": 0, "drift": 1, "alert": 2}


def add_drift_agent(app: faust.App, settings: Settings,
                    reference_of: Callable[[str, str], dict[str, Any] | None],
                    metrics: Metrics) -> None:
    """Wire the drift agent into ``app``; ``reference_of(model, version)`` gives a version's
    reference statistics (None: trained without)."""
    topics = settings.topics
    rows_topic = app.topic(topics.drift_rows, key_type=bytes, value_type=bytes,
                             key_serializer="raw", value_serializer="raw",
                             partitions=settings.kafka.request_partitions)
    reports_topic = app.topic(topics.drift, key_type=bytes, value_type=bytes,
                              key_serializer="raw", value_serializer="raw")
    # Raw bytes (the app's serializers): Faust rebuilds typed values from the changelog
    # with ``value_type.from_data``, which a plain dict lacks, so recovery would fail.
    state = app.Table("drift-windows", default=None, key_type=bytes, value_type=bytes,
                      partitions=settings.kafka.request_partitions,
                      extra_topic_configs=changelog_configs(settings))

    # Live monitors of the partitions this worker holds, with the offset of the last
    # message counted for each; the table is their durable copy, read again after a
    # rebalance (another worker may have moved them on meanwhile).
    monitors: dict[str, _Monitored] = {}
    runs = DeliveryRuns()

    @app.on_partitions_revoked.connect
    async def forget(sender: faust.App, revoked: object, **kwargs: object) -> None:
        monitors.clear()
        runs.clear()

    def monitor_for(key: str, model: str, version: str) -> _Monitored | None:
        if key in monitors:
            return monitors[key]
        try:
            reference = reference_of(model, version)
        except (RegistryError, OSError):  # unregistered, unsigned, tampered or unreadable
            reference = None
        if not reference:
            return None
        policy = settings.policy(model)

        def fresh() -> DriftMonitor:
            return DriftMonitor.from_manifest_reference(reference, policy.drift_window_s,
                                                        policy.drift_hop_s, policy.drift,
                                                        policy.drift_grace_s)

        monitored = _Monitored(fresh())
        snapshot = state.get(key.encode())
        if snapshot is not None:
            try:
                stored = orjson.loads(snapshot)
                monitored.monitor.restore(stored["monitor"])
                monitored.last_offset = stored["rows_offset"]
            except (ValueError, KeyError, TypeError, IndexError) as e:
                # Another release's state (or a damaged one): a crash here would restart
                # the agent into the same value forever. The windows start afresh instead.
                log.error("drift state of %s unreadable (%s: %s); counting afresh from here",
                          key, type(e).__name__, e)
                monitored = _Monitored(fresh())
        monitors[key] = monitored
        return monitored

    async def count(key: str, model: str, version: str, monitored: _Monitored,
                    offset: int, value: bytes) -> list[WindowReport]:
        """Count one coded-rows message; the windows it closed."""
        monitor = monitored.monitor
        monitored.last_offset = offset
        late = monitor.window.late_rows
        try:
            closed = monitor.on_rows(CodedRows.from_bytes(value))
        except DriftError as e:  # a worker of another release, or another reference: say
            # so and keep going (raised here, the agent would restart past the message)
            log.error("drift rows for %s at offset %d cannot be counted, skipped: %s", key,
                      offset, e)
            return []
        if monitor.window.late_rows > late:
            metrics.drift_late_rows.labels(model, version).inc(monitor.window.late_rows - late)
        return closed

    @app.agent(rows_topic, concurrency=1)
    async def aggregate(stream: faust.StreamT) -> None:
        async for event in stream.events():
            key = event.key.decode()
            model, _, version = key.rpartition(":")
            monitored = monitor_for(key, model, version)
            if monitored is None:
                log.warning("drift rows for %s, which this worker does not serve; skipped", key)
                continue
            message = event.message
            missed = runs.deliver(message.partition, message.offset, monitored.last_offset)
            if monitored.last_offset is not None and message.offset <= monitored.last_offset:
                continue  # counted before this worker's restart or the last rebalance
            closed = []
            if missed:  # or transaction markers, which take offsets too (exactly-once mode)
                async for record in read_partitions(settings, rows_topic.get_topic_name(),
                                                    {message.partition: (missed.start, missed.stop)}):
                    if record.key == event.key:
                        log.warning("drift rows of %s at offset %d of partition %d were skipped "
                                    "by the stream; counted now", key, record.offset,
                                    message.partition)
                        closed += await count(key, model, version, monitored, record.offset,
                                              record.value)
            closed += await count(key, model, version, monitored, message.offset, event.value)
            await _store(state, event, key.encode(), stored_state(monitored.monitor, monitored.last_offset))
            for report in closed:
                for feature in report.features:
                    await reports_topic.send(key=f"{key}:{feature.report.feature}".encode(),
                                             value=orjson.dumps(_report_json(model, version, report,
                                                                             feature)))
                    _export(metrics, model, version, feature)


def stored_state(monitor: DriftMonitor, last_offset: int | None) -> bytes:
    """A version's table value: its monitor's state and the offset of the last coded-rows
    message counted into it."""
    return orjson.dumps({"monitor": monitor.snapshot(), "rows_offset": last_offset})


class _Monitored:
    """A version's monitor and the offset of the last coded-rows message it counted."""

    def __init__(self, monitor: DriftMonitor) -> None:
        self.monitor = monitor
        self.last_offset: int | None = None


async def _store(table: faust.Table, event: faust.EventT, key: bytes, value: bytes) -> None:
    """``table[key] = value``, returning once its changelog record is acknowledged.

    Faust commits an event's offset once the agent moves past it, and its flush before a
    commit gives up on records still queued after 0.1 s: a crash could then lose a
    table change whose input is committed. So the record is sent directly (not through
    Faust's send-soon buffer) and awaited: changelog delivered, then the event done.
    """
    table.data[key] = value
    sent = await table.changelog_topic.send(key=key, value=value, partition=event.message.partition)
    await sent  # Faust's send returns once the record is queued; this is the broker's ack


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
