"""``streamserve status``, the pure part: figures from metrics, lag from offsets, drift
verdicts, and the fleet they describe together.

The shell (``agents/ops/status.py``) reads; these functions compute, without I/O:

    increase(before, after)             each series' growth between two scrapes of a worker
    histogram_quantile(q, buckets)      Prometheus's interpolation in cumulative buckets
    metrics_from_scrapes(pairs)         rates, p99 and breakers per model from workers' /metrics
    prometheus_queries(window)          the PromQL for the same figures, and
    metrics_from_prometheus(results)    the figures from its answers
    merge_metrics(first, second)        one source's figures per model, the first's preferred
    group_lag(...)                      a consumer group's lag per partition
    fold_verdicts(latest, reports)      the latest drift verdict per model/version/feature
    summarize_drift(verdicts)           one line per model version
    assemble(...)                       the fleet: every model, its routes, figures and drift

Rates are per second. A counter that went down between two scrapes was reset (the
worker restarted): its whole value after is the increase, as Prometheus counts it.

Modules: ``metrics`` (figures from scrapes or Prometheus), ``lag`` (consumer group lag),
``drift`` (drift verdicts), ``fleet`` (the whole, assembled), ``errors``.
"""

from pipeline.status.drift import (
    DRIFT_SEVERITY,
    DriftSummary,
    FeatureVerdict,
    VerdictKey,
    fold_verdicts,
    summarize_drift,
)
from pipeline.status.errors import StatusError
from pipeline.status.fleet import FleetStatus, ModelStatus, assemble
from pipeline.status.lag import GroupLag, PartitionLag, group_lag
from pipeline.status.metrics import (
    BREAKER_STATES,
    NO_MODEL,
    QUANTILE,
    FleetMetrics,
    Labels,
    ModelMetrics,
    Scrape,
    SeriesKey,
    Vector,
    histogram_quantile,
    increase,
    merge_metrics,
    metrics_from_prometheus,
    metrics_from_scrapes,
    prometheus_queries,
    series_key,
)

__all__ = [
    "BREAKER_STATES",
    "DRIFT_SEVERITY",
    "NO_MODEL",
    "QUANTILE",
    "DriftSummary",
    "FeatureVerdict",
    "FleetMetrics",
    "FleetStatus",
    "GroupLag",
    "Labels",
    "ModelMetrics",
    "ModelStatus",
    "PartitionLag",
    "Scrape",
    "SeriesKey",
    "StatusError",
    "Vector",
    "VerdictKey",
    "assemble",
    "fold_verdicts",
    "group_lag",
    "histogram_quantile",
    "increase",
    "merge_metrics",
    "metrics_from_prometheus",
    "metrics_from_scrapes",
    "prometheus_queries",
    "series_key",
    "summarize_drift",
]
