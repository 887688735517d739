"""Request figures per model (rates, dead letters by reason, p99, breakers), from two
scrapes of each worker's ``/metrics`` or from Prometheus's answers to the same queries.

Rates are per second. A counter that went down between two scrapes was reset (the
worker restarted): its whole value after is the increase, as Prometheus counts it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pipeline.status.errors import StatusError

Labels = tuple[tuple[str, str], ...]
SeriesKey = tuple[str, Labels]  # (sample name, sorted labels)

QUANTILE = 0.99
BREAKER_STATES = {0: "closed", 1: "half-open", 2: "open"}  # streamserve_breaker_state values
NO_MODEL = ""  # the model label of dead letters whose request named no served model

_REQUESTS = "streamserve_requests_total"
_PREDICTIONS = "streamserve_predictions_total"
_DEADLETTERS = "streamserve_deadletters_total"
_LATENCY_BUCKET = "streamserve_e2e_latency_seconds_bucket"
_BREAKER = "streamserve_breaker_state"
_READY = "streamserve_worker_ready"


def series_key(name: str, labels: Mapping[str, str]) -> SeriesKey:
    return name, tuple(sorted(labels.items()))


@dataclass(frozen=True, slots=True)
class Scrape:
    """One read of one worker's ``/metrics``: every sample, and when (monotonic seconds)."""

    source: str
    at: float
    samples: Mapping[SeriesKey, float]


def increase(before: Scrape, after: Scrape) -> dict[SeriesKey, float]:
    """How much each series of ``after`` grew since ``before`` (meaningful for counters,
    histogram buckets and counts). A series new in ``after`` was created in between, so
    all of it is new; one that went down was reset, so its value after is the increase."""
    grown = {}
    for key, value in after.samples.items():
        old = before.samples.get(key, 0.0)
        grown[key] = value - old if value >= old else value
    return grown


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """The ``q`` quantile of cumulative ``(upper bound, count)`` buckets, interpolated
    linearly within its bucket as Prometheus's ``histogram_quantile`` does; the highest
    finite bound when it falls in the ``+Inf`` bucket. None without observations.

    Counts that decrease with the bound (bucket increases taken from scrapes a moment
    apart) are raised to the running maximum, as Prometheus does.
    """
    if not 0 <= q <= 1:
        raise StatusError(f"a quantile is between 0 and 1, e.g. 0.99, got {q!r}")
    ordered = sorted(buckets)
    if not ordered or not math.isinf(ordered[-1][0]):
        raise StatusError("a histogram's buckets must end with the +Inf bucket")
    bounds, counts, running = [], [], 0.0
    for bound, count in ordered:
        running = max(running, count)
        bounds.append(bound)
        counts.append(running)
    total = counts[-1]
    if total <= 0:
        return None
    rank = q * total
    i = next(i for i, c in enumerate(counts) if c >= rank)
    if math.isinf(bounds[i]):
        return bounds[-2] if len(bounds) > 1 else None
    lower, below = (0.0, 0.0) if i == 0 else (bounds[i - 1], counts[i - 1])
    if i == 0 and bounds[0] <= 0:
        return bounds[0]
    return lower + (bounds[i] - lower) * (rank - below) / (counts[i] - below)


@dataclass(frozen=True, slots=True)
class ModelMetrics:
    """One model's figures over the last window. ``model`` is ``NO_MODEL`` for dead
    letters of requests that named no served model (malformed, unknown model)."""

    model: str
    requests_per_s: float = 0.0
    predictions_per_s: float = 0.0
    deadletters_per_s: float = 0.0
    reasons: tuple[tuple[str, float], ...] = ()  # dead letters per second by reason, most first
    p99_s: float | None = None  # None: no prediction in the window
    breakers: tuple[tuple[str, int], ...] = ()  # (version, worst state over the workers)

    @property
    def deadletter_share(self) -> float | None:
        """Dead letters per request in the window; None without requests."""
        return self.deadletters_per_s / self.requests_per_s if self.requests_per_s > 0 else None

    @property
    def unhealthy_breakers(self) -> tuple[tuple[str, int], ...]:
        return tuple((version, state) for version, state in self.breakers if state != 0)


@dataclass(frozen=True, slots=True)
class FleetMetrics:
    """The figures of every model, from one source (or two, merged).

    ``source`` says where they come from, e.g. "2 workers' /metrics, 2.0 s apart".
    ``workers`` and ``ready`` are None when the source cannot tell.
    """

    source: str
    models: Mapping[str, ModelMetrics]
    workers: int | None = None
    ready: int | None = None
    problems: tuple[str, ...] = ()


class _Figures:
    """Per-model sums, turned into ``ModelMetrics`` at the end."""

    def __init__(self) -> None:
        self.requests: dict[str, float] = defaultdict(float)
        self.predictions: dict[str, float] = defaultdict(float)
        self.dead: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self.p99: dict[str, float | None] = {}
        self.breakers: dict[str, dict[str, int]] = defaultdict(dict)

    def breaker(self, model: str, version: str, state: float) -> None:
        if math.isfinite(state):
            known = self.breakers[model].get(version, 0)
            self.breakers[model][version] = max(known, int(state))

    def models(self) -> dict[str, ModelMetrics]:
        names = (set(self.requests) | set(self.predictions) | set(self.dead) | set(self.p99)
                 | set(self.breakers))
        out = {}
        for model in sorted(names):
            reasons = sorted(((r, v) for r, v in self.dead.get(model, {}).items() if v > 0),
                             key=lambda rv: (-rv[1], rv[0]))
            out[model] = ModelMetrics(
                model=model, requests_per_s=self.requests.get(model, 0.0),
                predictions_per_s=self.predictions.get(model, 0.0),
                deadletters_per_s=sum(v for _, v in reasons), reasons=tuple(reasons),
                p99_s=self.p99.get(model),
                breakers=tuple(sorted(self.breakers.get(model, {}).items(),
                                      key=lambda vs: version_key(vs[0]))))
        return out


def metrics_from_scrapes(pairs: Sequence[tuple[Scrape, Scrape]], *, quantile: float = QUANTILE,
                         failed: Sequence[str] = ()) -> FleetMetrics:
    """The fleet's figures from two scrapes of each worker (``(before, after)`` per
    worker): each worker's rates over its own interval, summed; the quantile of the
    latency bucket increases of all workers together; each breaker's worst state in the
    ``after`` scrapes. ``failed`` names the problems of workers that could not be scraped."""
    figures = _Figures()
    buckets: dict[str, dict[float, float]] = defaultdict(lambda: defaultdict(float))
    problems = list(failed)
    intervals = []
    ready = 0
    used = 0
    for before, after in pairs:
        elapsed = after.at - before.at
        if elapsed <= 0:
            problems.append(f"{after.source}: scraped twice at the same time; no rate")
            continue
        used += 1
        intervals.append(elapsed)
        for (name, labels), grown in increase(before, after).items():
            label = dict(labels)
            model = label.get("model", NO_MODEL)
            if name == _REQUESTS:
                figures.requests[model] += grown / elapsed
            elif name == _PREDICTIONS:
                figures.predictions[model] += grown / elapsed
            elif name == _DEADLETTERS:
                figures.dead[model][label.get("reason", "?")] += grown / elapsed
            elif name == _LATENCY_BUCKET and "le" in label:
                buckets[model][_bound(label["le"])] += grown
        for (name, labels), value in after.samples.items():
            if name == _BREAKER:
                label = dict(labels)
                figures.breaker(label.get("model", NO_MODEL), label.get("version", "?"), value)
            elif name == _READY and value >= 1:
                ready += 1
    for model, by_bound in buckets.items():
        if math.inf in by_bound:
            figures.p99[model] = histogram_quantile(quantile, list(by_bound.items()))
    if intervals:
        span = f"{min(intervals):.1f} s" if max(intervals) - min(intervals) < 0.05 else \
            f"{min(intervals):.1f}-{max(intervals):.1f} s"
        whose = "worker's" if used == 1 else "workers'"
        source = f"{used} {whose} /metrics, rates over {span}"
    else:
        source = "no worker's /metrics could be read twice"
    return FleetMetrics(source, figures.models(), workers=used, ready=ready,
                        problems=tuple(problems))


def prometheus_queries(window: str = "1m", quantile: float = QUANTILE) -> dict[str, str]:
    """The PromQL instant queries for the figures, by what they answer. ``window`` is a
    PromQL duration (at least two scrape intervals of the workers, e.g. 1m)."""
    if not window or not window[0].isdigit() or window[-1] not in "smhdwy":
        raise StatusError(f"a rate window is a PromQL duration such as 30s, 1m or 5m, "
                          f"got {window!r}")
    rate = f"[{window}]"
    return {
        "requests": f"sum by (model) (rate({_REQUESTS}{rate}))",
        "predictions": f"sum by (model) (rate({_PREDICTIONS}{rate}))",
        "deadletters": f"sum by (model, reason) (rate({_DEADLETTERS}{rate}))",
        "p99": f"histogram_quantile({quantile}, "
               f"sum by (le, model) (rate({_LATENCY_BUCKET}{rate})))",
        "breakers": f"max by (model, version) ({_BREAKER})",
        "ready": f"sum({_READY})",
        "workers": f"count({_READY})",
    }


Vector = Sequence[tuple[Mapping[str, str], float]]  # an instant vector: labels and value


def metrics_from_prometheus(results: Mapping[str, Vector], source: str,
                            problems: Sequence[str] = ()) -> FleetMetrics:
    """The figures from the answers to ``prometheus_queries`` (by the same names; a query
    that failed is missing, and its problem is in ``problems``)."""
    figures = _Figures()
    for labels, value in results.get("requests", ()):
        figures.requests[labels.get("model", NO_MODEL)] += _finite(value)
    for labels, value in results.get("predictions", ()):
        figures.predictions[labels.get("model", NO_MODEL)] += _finite(value)
    for labels, value in results.get("deadletters", ()):
        figures.dead[labels.get("model", NO_MODEL)][labels.get("reason", "?")] += _finite(value)
    for labels, value in results.get("p99", ()):
        figures.p99[labels.get("model", NO_MODEL)] = value if math.isfinite(value) else None
    for labels, value in results.get("breakers", ()):
        figures.breaker(labels.get("model", NO_MODEL), labels.get("version", "?"), value)

    def scalar(name: str) -> int | None:
        vector = results.get(name)
        return int(vector[0][1]) if vector and math.isfinite(vector[0][1]) else (
            0 if vector is not None else None)

    return FleetMetrics(source, figures.models(), workers=scalar("workers"), ready=scalar("ready"),
                        problems=tuple(problems))


def merge_metrics(first: FleetMetrics | None, second: FleetMetrics | None) -> FleetMetrics | None:
    """One source per model: ``first``'s figures for the models it has, ``second``'s for
    the others (never a sum: both may count the same workers)."""
    if first is None or second is None:
        return first or second
    models = {**second.models, **first.models}
    return FleetMetrics(f"{first.source}; for the models it lacks, {second.source}",
                        dict(sorted(models.items())), workers=first.workers, ready=first.ready,
                        problems=first.problems + second.problems)


def _bound(le: str) -> float:
    return math.inf if le in ("+Inf", "Inf", "inf") else float(le)


def _finite(value: float) -> float:
    return value if math.isfinite(value) else 0.0


def version_key(version: str) -> tuple[int, int | str]:
    """Numeric versions in numeric order ("2" before "10"), then the others by name."""
    return (0, int(version)) if version.isdigit() else (1, version)
