"""Service level objectives, and the Prometheus rules that watch them and the workers.

One module of about 410 lines because the rules file is one document: the objectives, the
expressions every rule shares and the alerts are built together, and ``to_yaml`` (about
50 lines) writes only that document.

Two indicators per model, each a ratio of events over a window:

- **availability**: of the *valid* requests (those the service is answerable for: every
  prediction and every dead letter of a server-side reason), the share answered with a
  prediction. A client-side dead letter (``malformed_json``, ``schema_mismatch``, ...)
  is the right answer to a wrong request: it neither counts nor burns the budget, so a
  misbehaving client can neither page the operators nor dilute a real failure. Since
  ``requests = predictions + dead letters``, valid requests are requests minus client
  errors. Requests never read (a backlog in Kafka) are not in the counters: the
  consumer-lag alert watches those.
- **latency**: of the predictions, the share whose end-to-end latency (request
  timestamp to prediction acknowledged) is at most the objective, read from the
  ``streamserve_e2e_latency_seconds`` bucket whose ``le`` equals it.

Alerts follow the multiwindow, multi-burn-rate pattern of the Google SRE workbook
(chapter "Alerting on SLOs"): page when the error budget of 30 days burns 14.4 times
too fast over 1 h (2% of it gone) and still over the last 5 min, or 6 times over 6 h
and 30 min (5%); open a ticket at 1 time over 3 days and 6 h (10%). The short window
makes an alert stop soon after the burn does.

``rules_document`` builds the whole rules file (recording rules, SLO alerts and the
operational alerts) as the dict Prometheus reads; ``to_yaml`` writes it. Nothing here
reads settings: the CLI (``streamserve ops rules``) passes them in.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pipeline.errors import StreamserveError
from pipeline.rejections import Reason

# Dead-letter reasons that are the service's failures (deadline_exceeded, model_error,
# circuit_open, undeliverable), from the one classification in pipeline.rejections.
SERVER_REASONS: tuple[str, ...] = tuple(str(r) for r in Reason if not r.is_client_error)
_SERVER_REASONS_T = ", ".join(SERVER_REASONS[:-1]) + " or " + SERVER_REASONS[-1]

Severity = Literal["page", "ticket"]


class SloError(StreamserveError, ValueError):
    """An objective that cannot work; the message says which and what to use instead."""


@dataclass(frozen=True, slots=True)
class BurnRate:
    """Alert when the error ratio exceeds ``factor`` times the budget over both windows."""

    long: str
    short: str
    factor: float
    severity: Severity


PAGE_BURNS = (BurnRate("1h", "5m", 14.4, "page"), BurnRate("6h", "30m", 6.0, "page"))
TICKET_BURNS = (BurnRate("3d", "6h", 1.0, "ticket"),)
WINDOWS = ("5m", "30m", "1h", "6h", "3d")  # every window the burn rates read, recorded once


@dataclass(frozen=True, slots=True)
class Objectives:
    """What the service promises, per model, over 30 days.

    ``availability``: share of valid requests answered with a prediction (0.999).
    ``latency_ms``: the latency objective in milliseconds; it must be a bucket of the
    ``streamserve_e2e_latency_seconds`` histogram (checked by ``rules_document``).
    ``latency_target``: share of predictions at most ``latency_ms`` late (0.99).
    """

    availability: float = 0.999
    latency_ms: float = 100.0
    latency_target: float = 0.99

    def __post_init__(self) -> None:
        # The fastest burn must stay below a 100% error ratio, or the page could never fire.
        highest = max(b.factor for b in PAGE_BURNS)
        lowest = 1 - 1 / highest
        for name, target in (("availability", self.availability),
                             ("latency_target", self.latency_target)):
            if not lowest < target < 1:
                raise SloError(
                    f"SLO {name}={target} must lie in ({lowest:.4f}, 1), e.g. 0.999: at or below "
                    f"{lowest:.4f} the budget is so large that burning it {highest}x as fast "
                    f"needs more than every request to fail, so the page could never fire")
        if not 0 < self.latency_ms < math.inf:
            raise SloError(f"SLO latency_ms must be a positive number of milliseconds, e.g. 100, "
                           f"got {self.latency_ms}")

    def latency_bucket(self, buckets_s: Sequence[float]) -> str:
        """The ``le`` label of the bucket equal to ``latency_ms``, as prometheus_client
        writes it; SloError, listing the buckets, when there is none."""
        seconds = self.latency_ms / 1000
        for bucket in buckets_s:
            if math.isclose(bucket, seconds, rel_tol=1e-9):
                return repr(float(bucket))
        choices = ", ".join(f"{b * 1000:g}" for b in buckets_s)
        raise SloError(f"SLO latency_ms={self.latency_ms:g} is not a bucket of "
                       f"streamserve_e2e_latency_seconds, so no series counts the requests under "
                       f"it: use one of {choices} (milliseconds)")


@dataclass(frozen=True, slots=True)
class Alert:
    """One alerting rule; ``runbook`` is its page under the runbook base."""

    name: str
    expr: str
    severity: Severity
    summary: str
    description: str
    runbook: str
    for_: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)

    def rule(self, runbook_base: str) -> dict[str, Any]:
        rule: dict[str, Any] = {"alert": self.name, "expr": self.expr}
        if self.for_:
            rule["for"] = self.for_
        rule["labels"] = {"severity": self.severity, **self.labels}
        rule["annotations"] = {"summary": self.summary, "description": self.description,
                               "runbook_url": f"{runbook_base}{self.runbook}"}
        return rule


# Recorded series (level:metric:operations, as Prometheus recommends).
AVAILABILITY_RECORD = "model:streamserve_availability_errors:ratio_rate"
LATENCY_RECORD = "model:streamserve_latency_slow:ratio_rate"
COST_RECORD = "streamserve:cost_per_1000_predictions"

# Operational thresholds: not objectives, so constants, each with its reason.
LAG_FLOOR = 1000            # requests: below it a growing lag is a burst, not a backlog
DEAD_LETTER_SHARE = 0.05    # of a model's requests, one reason: a client sending wrongly
COST_FACTOR = 2.0           # cost per prediction against the same hour yesterday
WARM_UP = "15m"             # a worker younger than this may still be compiling
# Accuracy on labels: significance of each worker's binomial test, Bonferroni-corrected
# over the workers testing a version (each tests the labels of its own join partitions).
QUALITY_ALPHA = 0.001


def _server_reasons() -> str:
    return "|".join(SERVER_REASONS)


def _zero_fill(expr: str, window: str) -> str:
    """``expr``, or 0 for every model with requests: counters are born at their first
    increment, so a model without server failures has no series to sum."""
    return f"({expr} or 0 * sum by (model) (rate(streamserve_requests_total[{window}])))"


def availability_ratio(window: str) -> str:
    """Server-side dead letters over valid requests (predictions + server dead letters)."""
    bad = _zero_fill("sum by (model) (rate(streamserve_deadletters_total"
                     f'{{reason=~"{_server_reasons()}"}}[{window}]))', window)
    good = _zero_fill(f"sum by (model) (rate(streamserve_predictions_total[{window}]))", window)
    return f"{bad} / ({good} + {bad})"


def latency_ratio(window: str, le: str) -> str:
    """Predictions slower than the objective over all predictions."""
    return (f'1 - sum by (model) (rate(streamserve_e2e_latency_seconds_bucket{{le="{le}"}}'
            f"[{window}])) / sum by (model) (rate(streamserve_e2e_latency_seconds_count[{window}]))")


def cost_per_1000(job: str) -> str:
    """CPU seconds priced per CPU-hour, per worker, over the predictions they made."""
    return (f'1000 * sum(rate(process_cpu_seconds_total{{job="{job}"}}[5m]) * on(job, instance) '
            f'streamserve_price_per_hour{{resource="cpu"}}) / 3600 '
            f'/ sum(rate(streamserve_predictions_total{{job="{job}"}}[5m]))')


def _burn(record: str, budget: str, burns: Sequence[BurnRate]) -> str:
    return " or ".join(f"({record}{b.long} > {b.factor:g} * {budget} and "
                       f"{record}{b.short} > {b.factor:g} * {budget})" for b in burns)


def _happened(metric: str, window: str, job: str) -> str:
    """``metric`` (a counter) rose within ``window``. increase() never sees a series' first
    value, and prometheus_client creates a labelled series at its first increment, so a
    series born within the window counts too: only where the worker was scraped a window
    ago, so that Prometheus' own restart (no history) fires nothing."""
    return (f"(increase({metric}[{window}]) > 0 or ({metric} unless {metric} offset {window}) "
            f'and on(job, instance) (up{{job="{job}"}} offset {window} == 1))')


def _percent(share: float) -> str:
    return f"{share * 100:.10g}%"


# Pieces of annotations (Go templates, filled in by Prometheus).
_MODEL_T = "{{ $labels.model }}"
_SHARE_T = "{{ $value | humanizePercentage }}"
# Dead letters of requests naming no served model have no model label (an empty value).
_REQUESTS_T = ("{{ if $labels.model }}requests to {{ $labels.model }}{{ else }}requests naming "
               "no served model{{ end }}")


def slo_alerts(objectives: Objectives) -> list[Alert]:
    a_budget = f"(1 - {objectives.availability!r})"
    l_budget = f"(1 - {objectives.latency_target!r})"
    a_goal, l_goal = _percent(objectives.availability), _percent(objectives.latency_target)
    ms = f"{objectives.latency_ms:g} ms"
    fast = "at this rate the 30-day budget lasts under 5 days."
    return [
        Alert("StreamserveAvailabilityBudgetBurn", _burn(AVAILABILITY_RECORD, a_budget, PAGE_BURNS),
              "page", f"{_MODEL_T}: server-side failures are burning the availability budget fast",
              f"{_SHARE_T} of valid requests to {_MODEL_T} became {_SERVER_REASONS_T} dead "
              f"letters (objective {a_goal} answered): {fast}",
              "error-rate-rise.md", labels={"slo": "availability"}),
        Alert("StreamserveAvailabilityBudgetBurnSlow",
              _burn(AVAILABILITY_RECORD, a_budget, TICKET_BURNS), "ticket",
              f"{_MODEL_T}: the availability budget is burning faster than it lasts",
              f"{_SHARE_T} of valid requests to {_MODEL_T} failed server-side over 3 days "
              f"(objective {a_goal}): the 30-day budget runs out early.",
              "error-rate-rise.md", labels={"slo": "availability"}),
        Alert("StreamserveLatencyBudgetBurn", _burn(LATENCY_RECORD, l_budget, PAGE_BURNS), "page",
              f"{_MODEL_T}: predictions slower than {ms} are burning the latency budget fast",
              f"{_SHARE_T} of {_MODEL_T}'s predictions took longer than {ms} end to end "
              f"(objective {l_goal} within it): {fast}",
              "latency-spike.md", labels={"slo": "latency"}),
        Alert("StreamserveLatencyBudgetBurnSlow", _burn(LATENCY_RECORD, l_budget, TICKET_BURNS),
              "ticket", f"{_MODEL_T}: predictions slower than {ms} burn the latency budget",
              f"{_SHARE_T} of {_MODEL_T}'s predictions over 3 days took longer than {ms} "
              f"(objective {l_goal} within it).",
              "latency-spike.md", labels={"slo": "latency"}),
    ]


def operational_alerts(job: str) -> list[Alert]:
    up = f'up{{job="{job}"}}'
    return [
        Alert("StreamserveConsumerLagGrowing",
              f"streamserve_consumer_lag > {LAG_FLOOR} and delta(streamserve_consumer_lag[10m]) > 0",
              "page", "Partition {{ $labels.partition }}: the backlog keeps growing",
              "{{ $value }} requests wait in partition {{ $labels.partition }} (worker "
              "{{ $labels.instance }}) and the backlog has grown for 20 minutes: workers read "
              "slower than requests arrive, or stopped reading.",
              "consumer-lag-growing.md", for_="10m"),
        Alert("StreamserveDeadLetterRate",
              "sum by (model, reason) (rate(streamserve_deadletters_total[15m])) / on(model) "
              "group_left() sum by (model) (rate(streamserve_requests_total[15m])) "
              f"> {DEAD_LETTER_SHARE:g}", "ticket",
              "Many {{ $labels.reason }} dead letters for " + _REQUESTS_T,
              f"{_SHARE_T} of {_REQUESTS_T} were dead-lettered as "
              "{{ $labels.reason }} over 15 minutes.", "dead-letters.md", for_="10m"),
        Alert("StreamserveFeatureDrift",
              _happened("streamserve_drift_events_total", "30m", job)
              + " or min_over_time(streamserve_drift_status[15m]) == 2", "ticket",
              "{{ $labels.model }}:{{ $labels.version }}: feature {{ $labels.feature }} drifted",
              "The inputs of {{ $labels.model }} version {{ $labels.version }} no longer look like "
              "its training data in {{ $labels.feature }} (a drift event in the last 30 minutes, "
              "or PSI at the alert tier for 15): predictions may be silently wrong.",
              "silent-prediction-drift.md"),
        Alert("StreamserveAccuracyBelowTraining",
              "min by (model, version) (streamserve_quality_accuracy_p_value) * count by "
              f"(model, version) (streamserve_quality_accuracy_p_value) < {QUALITY_ALPHA}",
              "ticket", "{{ $labels.model }}:{{ $labels.version }}: accuracy on labels below training",
              "The answers of {{ $labels.model }} version {{ $labels.version }} are right less "
              "often than its training accuracy (less STREAMSERVE_QUALITY_MARGIN) allows, on the "
              "labels of the last 24 windows: an exact binomial test says so at p = {{ $value }} "
              f"(Bonferroni over the workers), below {QUALITY_ALPHA}.",
              "accuracy-below-training.md", for_="10m"),
        Alert("StreamserveCircuitBreakerOpen",
              "max_over_time(streamserve_breaker_state[5m]) == 2", "ticket",
              "{{ $labels.model }}:{{ $labels.version }}: circuit breaker keeps opening",
              "The breaker of {{ $labels.model }} version {{ $labels.version }} on "
              "{{ $labels.instance }} has opened in every 5 minutes for 5 minutes: its traffic "
              "goes to the fallback version, or becomes circuit_open dead letters (the "
              "availability alert pages for those).",
              "circuit-breaker-open.md", for_="5m"),
        Alert("StreamserveCanaryRolledBack",
              'count by (model, version) ((streamserve_model_loaded{role="canary"} offset 5m) '
              "unless on(job, instance, model, version) "
              'streamserve_model_loaded{role=~"canary|stable"} '
              "and on(job, instance) (streamserve_worker_ready == 1)) > 0", "ticket",
              "{{ $labels.model }}: canary version {{ $labels.version }} was rolled back",
              "Version {{ $labels.version }} of {{ $labels.model }} served as canary 5 minutes "
              "ago and is neither canary nor stable now: canary analysis or an operator "
              "rolled it back, or replaced it.", "failed-deployment.md",
              for_="1m"),  # a scrape between a worker's gauge reset and its refill is no rollback
        Alert("StreamserveModelRefused", _happened("streamserve_model_refusals_total", "15m", job),
              "ticket", "{{ $labels.model }}:{{ $labels.version }}: a worker refused to load it",
              "A worker refused {{ $labels.model }} version {{ $labels.version }} "
              "({{ $labels.reason }}) in the last 15 minutes; the previous deployment keeps "
              "serving.", "failed-deployment.md"),
        Alert("StreamserveJitCompilesAfterWarmup",
              "increase(streamserve_jit_compiles_total[10m]) > 0 "
              f'unless on(job, instance) (time() - process_start_time_seconds{{job="{job}"}} < '
              f"{_seconds(WARM_UP)}) unless on(job, instance) "
              + _happened("streamserve_control_changes_total", "15m", job), "ticket",
              "{{ $labels.model }}:{{ $labels.version }}: XLA compiled on a warm worker",
              "{{ $labels.instance }}, up over " + WARM_UP + ", compiled {{ $value }} executables "
              "of {{ $labels.model }}:{{ $labels.version }} in 10 minutes with no deployment "
              "change: compiles belong to model load, and one while serving stalls requests.",
              "cold-starts.md"),
        Alert("StreamserveNoTraffic",
              "(sum(rate(streamserve_requests_total[15m])) or vector(0)) == 0 "
              f"and on() count({up} == 1) > 0", "ticket",
              "No requests read for 15 minutes",
              "Workers are up but read no request in 15 minutes: producers stopped, or write "
              "to another topic or cluster.", "no-traffic.md"),
        Alert("StreamserveWorkerDown", f"{up} == 0", "ticket",
              "Worker {{ $labels.instance }} is down",
              "Prometheus could not scrape {{ $labels.instance }} for 5 minutes; its partitions "
              "move to the other workers.", "worker-down.md", for_="5m"),
        Alert("StreamserveNoWorkerUp", f"sum({up}) == 0 or absent({up})", "page",
              "No streamserve worker is up",
              f"No target of job {job} answered for 2 minutes: nothing serves requests.",
              "worker-down.md", for_="2m"),
        Alert("StreamserveWorkerNotReady", "streamserve_worker_ready == 0", "ticket",
              "Worker {{ $labels.instance }} is not ready",
              "{{ $labels.instance }} runs but has not been ready for 10 minutes: models not "
              "loaded and warm, or its consumer has not joined the group.",
              "worker-not-ready.md", for_="10m"),
        Alert("StreamserveKafkaOutputsBlocked", "streamserve_kafka_outputs_writable == 0", "page",
              "Worker {{ $labels.instance }} cannot write its outputs",
              "For 2 minutes no broker answered {{ $labels.instance }}, or a partition of the "
              "predictions or dead-letter topic had no leader: requests wait in Kafka unanswered.",
              "kafka-cluster.md", for_="2m"),
        Alert("StreamserveKafkaBrokerUnreachable",
              "max by (job) (streamserve_kafka_brokers_unreachable) > 0", "ticket",
              "{{ $value }} Kafka broker(s) unreachable for 5 minutes",
              "Workers have not found {{ $value }} of the brokers they saw up for 5 minutes: the "
              "cluster serves on with fewer replicas, and one more loss may stop writes.",
              "kafka-cluster.md", for_="5m"),
        Alert("StreamserveKafkaUnderReplicated",
              "max by (job, topic) (streamserve_kafka_under_replicated_partitions) > 0", "ticket",
              "{{ $labels.topic }}: {{ $value }} partitions under-replicated",
              "{{ $value }} partitions of {{ $labels.topic }} have had a replica out of sync for "
              "10 minutes: a broker is down or cannot keep up.", "kafka-cluster.md", for_="10m"),
        Alert("StreamserveTopicReplicasMissing",
              "max by (job, topic) (streamserve_kafka_replicas_missing) > 0", "ticket",
              "{{ $labels.topic }} lacks {{ $value }} replicas",
              "{{ $labels.topic }} has fewer replicas than wanted (STREAMSERVE_REPLICATION_FACTOR or "
              "the cluster's default): losing a broker can lose its records.",
              "kafka-cluster.md", for_="15m"),
        Alert("StreamserveCostRunaway",
              f"avg_over_time({COST_RECORD}[1h]) > {COST_FACTOR:g} * "
              f"avg_over_time({COST_RECORD}[1h] offset 1d)", "ticket",
              "Cost per prediction doubled",
              "The last hour's CPU cost per 1000 predictions ({{ printf \"%.3g\" $value }}) is over "
              f"{COST_FACTOR:g} times that of the same hour yesterday.",
              "cost-runaway.md", for_="30m"),
    ]


def _seconds(duration: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    return int(duration[:-1]) * units[duration[-1]]


def recording_rules(le: str, job: str) -> list[dict[str, str]]:
    """The SLO error ratios per window (``le``: the latency bucket) and the cost per prediction."""
    rules = [{"record": f"{AVAILABILITY_RECORD}{w}", "expr": availability_ratio(w)} for w in WINDOWS]
    rules += [{"record": f"{LATENCY_RECORD}{w}", "expr": latency_ratio(w, le)} for w in WINDOWS]
    rules.append({"record": COST_RECORD, "expr": cost_per_1000(job)})
    return rules


def alerts(objectives: Objectives, job: str = "streamserve") -> list[Alert]:
    return slo_alerts(objectives) + operational_alerts(job)


def rules_document(objectives: Objectives, latency_buckets_s: Sequence[float], *,
                   job: str = "streamserve", runbook_base: str = "runbooks/") -> dict[str, Any]:
    """The Prometheus rules file: recording rules, then the SLO and operational alerts.

    ``latency_buckets_s``: the buckets of ``streamserve_e2e_latency_seconds`` (the
    latency objective must be one). ``job``: the scrape job of the workers.
    ``runbook_base``: prefix of every ``runbook_url`` (a repository path or a URL).
    """
    le = objectives.latency_bucket(latency_buckets_s)
    return {"groups": [
        {"name": "streamserve-recording", "rules": recording_rules(le, job)},
        {"name": "streamserve-slo", "rules": [a.rule(runbook_base) for a in slo_alerts(objectives)]},
        {"name": "streamserve-operations",
         "rules": [a.rule(runbook_base) for a in operational_alerts(job)]},
    ]}


# --- YAML, without a YAML library: block style, scalars quoted whenever in doubt. ------

_PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_./-]*")
_YAML_WORDS = {"true", "false", "null", "yes", "no", "on", "off", "y", "n"}


def to_yaml(document: Mapping[str, Any], header: str = "") -> str:
    """``document`` (dicts, lists, strings, numbers, booleans) as block-style YAML."""
    comment = "".join(f"# {line}".rstrip() + "\n" for line in header.splitlines())
    return comment + "\n".join(_block(document, 0)) + "\n"


def _block(value: Mapping[str, Any] | Sequence[Any], indent: int) -> list[str]:
    pad, lines = " " * indent, []
    if isinstance(value, Mapping):
        for key, item in value.items():
            if _nested(item):
                lines.append(f"{pad}{_scalar(key)}:")
                lines += _block(item, indent + 2)
            else:
                lines.append(f"{pad}{_scalar(key)}: {_scalar(item)}")
        return lines
    for item in value:
        if _nested(item):
            inner = _block(item, indent + 2)
            lines.append(f"{pad}- {inner[0].lstrip()}")
            lines += inner[1:]
        else:
            lines.append(f"{pad}- {_scalar(item)}")
    return lines


def _nested(value: Any) -> bool:
    return isinstance(value, (Mapping, list, tuple)) and len(value) > 0


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise ValueError(f"YAML here holds finite numbers only, got {value}")
        return repr(value)
    if isinstance(value, Mapping):
        return "{}"
    if isinstance(value, (list, tuple)):
        return "[]"
    if not isinstance(value, str):
        raise TypeError(f"cannot write {type(value).__name__} as YAML: use str, int, float or bool")
    if _PLAIN.fullmatch(value) and value.lower() not in _YAML_WORDS:
        return value
    if value.isprintable():
        return "'" + value.replace("'", "''") + "'"
    return json.dumps(value)  # JSON escapes are valid in YAML double-quoted strings
