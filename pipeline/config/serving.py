"""Sections for how requests are served: batching, admission, circuit breakers, canary
analysis, service level objectives, cost, and injected faults."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.breaker import BreakerConfig
from pipeline.canary import CanaryPolicy
from pipeline.config.fields import ConfigError, check, derive, derived, setting
from pipeline.faults import FaultPlan, FaultSpecError
from pipeline.slo import Objectives, SloError
from pipeline.tenant_quotas import Quota, QuotaSpecError, parse_quotas

# Bounds of the latency histograms (seconds), 1 ms to 10 s: serving latency sits in the low
# milliseconds, a backlog after a restart in seconds. The latency objective is one of them.
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True, slots=True)
class BatchingSettings:
    """Micro-batching: how many requests one model call takes and how long they wait."""

    # 256, not 64: a backlog drained 1.2 to 1.9 times as fast (streamserve bench,
    # synthetic32): the per-batch work (model call, hand-off, commit bookkeeping) spread
    # over four times the rows. The queueing budget still bounds a light load's wait.
    max_batch: int = setting(
        256, "STREAMSERVE_MAX_BATCH",
        "Most requests in one model call; padding buckets are the powers of two up to it.")
    batch_timeout_ms: int = setting(
        5, "STREAMSERVE_BATCH_TIMEOUT_MS",
        "Queueing budget: the longest a request waits for its batch to fill; heavy "
        "traffic fills batches sooner, light traffic never waits longer.")

    def __post_init__(self) -> None:
        check(1 <= self.max_batch <= 4096, "STREAMSERVE_MAX_BATCH", "must be between 1 and 4096")
        check(1 <= self.batch_timeout_ms <= 10_000, "STREAMSERVE_BATCH_TIMEOUT_MS",
              "must be between 1 and 10000 milliseconds")


@dataclass(frozen=True, slots=True)
class AdmissionSettings:
    """What a request must pass before it is served: size, feature count, tenant quota, repeats."""

    max_message_bytes: int = setting(
        65536, "STREAMSERVE_MAX_MESSAGE_BYTES",
        "Largest request accepted; bigger ones are dead-lettered as too_large unread.")
    max_features: int = setting(
        1024, "STREAMSERVE_MAX_FEATURES",
        "Most features one request may name (tabular 'features' entries or OIP inputs); more "
        "are dead-lettered as too_many_features before any per-feature work. Raise it to "
        "serve a model that takes more.")
    tenant_quotas: str = setting(
        "", "STREAMSERVE_TENANT_QUOTAS",
        "Per-tenant quotas: 'TENANT:rate=R[,burst=B][,inflight=N];...'. rate: requests/s "
        "(a token bucket of burst tokens, default the rate rounded up); inflight: requests "
        "admitted and not yet answered. 'default' is one quota shared by every tenant not "
        "named and by requests without one (without it they are unlimited). Excess is "
        "dead-lettered as quota_exceeded. Each worker enforces its own: the fleet admits up "
        "to a quota times the number of workers (as Envoy's local rate limit). Unset: none.")
    tenant_header: str = setting(
        "", "STREAMSERVE_TENANT_HEADER",
        "Record header that names a request's tenant, set by a trusted gateway (give only the "
        "gateway's principal write access to the requests topic); the body's 'tenant' is then "
        "ignored, and a request without the header is under the default quota. Empty: the "
        "body's 'tenant', which any client may set.")
    dedupe_ids: int = setting(
        50_000, "STREAMSERVE_DEDUPE_IDS",
        "Request ids each worker remembers: a repeat of one within the window is dead-lettered "
        "as duplicate_request rather than predicted twice (0: off). About 300 bytes each.")
    dedupe_window_s: float = setting(
        600.0, "STREAMSERVE_DEDUPE_WINDOW_S",
        "Seconds a served request id is remembered (and at most STREAMSERVE_DEDUPE_IDS of them).")
    tenant_quota_plan: dict[str, Quota] = derived()  # quota name (tenant or default) -> limits

    def __post_init__(self) -> None:
        check(self.max_message_bytes >= 256, "STREAMSERVE_MAX_MESSAGE_BYTES", "must be at least 256")
        check(self.max_features >= 1, "STREAMSERVE_MAX_FEATURES", "must be at least 1")
        check(self.dedupe_ids >= 0, "STREAMSERVE_DEDUPE_IDS", "must be 0 (off) or more")
        check(self.dedupe_window_s > 0, "STREAMSERVE_DEDUPE_WINDOW_S", "must be a positive number of seconds")
        try:
            derive(self, "tenant_quota_plan", parse_quotas(self.tenant_quotas))
        except QuotaSpecError as e:
            raise ConfigError(str(e)) from None


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    """Circuit breakers: when a failing model version's traffic goes to its fallback."""

    failures: int = setting(
        5, "STREAMSERVE_BREAKER_FAILURES",
        "Failures in a row that open a version's circuit breaker (model errors, with a "
        "fallback set only those it serves; deadlines the version is too slow for); its "
        "traffic then goes to the fallback.")
    failure_rate: float = setting(
        0.5, "STREAMSERVE_BREAKER_FAILURE_RATE",
        "Share of failures over a version's last 100 requests that opens its breaker.")
    open_s: float = setting(
        5.0, "STREAMSERVE_BREAKER_OPEN_S",
        "Seconds a breaker stays open before probes try the version again.")
    config: BreakerConfig = derived()

    def __post_init__(self) -> None:
        try:
            derive(self, "config", BreakerConfig(consecutive_failures=self.failures,
                                                 failure_rate=self.failure_rate, open_seconds=self.open_s))
        except ValueError as e:
            raise ConfigError(f"STREAMSERVE_BREAKER_* settings: {e}") from None


@dataclass(frozen=True, slots=True)
class CanarySettings:
    """Canary analysis: when a canary version is rolled back or promoted."""

    min_requests: int = setting(
        200, "STREAMSERVE_CANARY_MIN_REQUESTS",
        "Requests each of canary and stable must have served before the canary is judged.")
    max_error_increase: float = setting(
        0.05, "STREAMSERVE_CANARY_MAX_ERROR_INCREASE",
        "Rollback when the canary's failure rate exceeds stable's by more than this.")
    max_p99_ratio: float = setting(
        2.0, "STREAMSERVE_CANARY_MAX_P99_RATIO",
        "Rollback when the canary's p99 model time exceeds this many times stable's (+5 ms).")
    min_slow_calls: int = setting(
        3, "STREAMSERVE_CANARY_MIN_SLOW_CALLS",
        "Model calls of the canary slower than that p99 bound before it is rolled back for "
        "latency: a call's time is every request's of its batch, and one slow call is one event.")
    max_output_psi: float = setting(
        0.25, "STREAMSERVE_CANARY_MAX_OUTPUT_PSI",
        "Rollback when the PSI between the canary's and stable's predicted classes exceeds this.")
    promote_after: int = setting(
        0, "STREAMSERVE_CANARY_PROMOTE_AFTER",
        "Promote a canary automatically after this many healthy requests (0: never).")
    min_labels: int = setting(
        100, "STREAMSERVE_CANARY_MIN_LABELS",
        "With STREAMSERVE_LABELS on: labelled answers each of canary and stable need on a "
        "worker (since the canary's first window) before the canary is judged on labels; "
        "rollback when a one-sided Fisher exact test finds it less accurate (p < 0.01).")
    policy: CanaryPolicy = derived()

    def __post_init__(self) -> None:
        check(self.min_labels >= 1, "STREAMSERVE_CANARY_MIN_LABELS", f"must be at least 1, got {self.min_labels}")
        try:
            derive(self, "policy", CanaryPolicy(
                min_requests=self.min_requests, window=max(1000, self.min_requests),
                max_error_rate_increase=self.max_error_increase, max_p99_ratio=self.max_p99_ratio,
                min_slow_calls=self.min_slow_calls,
                max_output_psi=self.max_output_psi, promote_after=self.promote_after or None))
        except ValueError as e:
            raise ConfigError(f"STREAMSERVE_CANARY_* settings: {e}") from None


@dataclass(frozen=True, slots=True)
class SloSettings:
    """Service level objectives: availability and latency, the source of the burn-rate alerts."""

    availability: float = setting(
        0.999, "STREAMSERVE_SLO_AVAILABILITY",
        "Availability objective: the share of requests answered with a prediction or a "
        "client-error dead letter (server failures: deadline_exceeded, model_error, "
        "circuit_open, undeliverable). `streamserve ops rules` turns it into burn-rate alerts.")
    latency_ms: float = setting(
        100.0, "STREAMSERVE_SLO_LATENCY_MS",
        "Latency objective: a request is fast when answered within this many milliseconds of "
        "its timestamp. One of the latency histogram's bucket bounds.")
    latency_target: float = setting(
        0.99, "STREAMSERVE_SLO_LATENCY_TARGET",
        "Share of requests that must be fast (within STREAMSERVE_SLO_LATENCY_MS).")
    objectives: Objectives = derived()

    def __post_init__(self) -> None:
        try:
            derive(self, "objectives", Objectives(availability=self.availability, latency_ms=self.latency_ms,
                                                  latency_target=self.latency_target))
        except SloError as e:
            raise ConfigError(f"STREAMSERVE_SLO_* settings: {e}") from None
        check(self.latency_ms / 1000 in LATENCY_BUCKETS_S, "STREAMSERVE_SLO_LATENCY_MS",
              "must be a bound of the latency histogram, one of "
              + ", ".join(f"{b * 1000:g}" for b in LATENCY_BUCKETS_S) + f" (ms); got {self.latency_ms:g}")


@dataclass(frozen=True, slots=True)
class CostSettings:
    """Prices, for the cost per 1,000 predictions."""

    price_cpu_hour: float = setting(
        0.04, "STREAMSERVE_PRICE_CPU_HOUR",
        "Price of one CPU core for an hour, for the cost per 1,000 predictions (exported as "
        "streamserve_price_per_hour{resource=\"cpu\"}).")
    price_gpu_hour: float = setting(
        2.5, "STREAMSERVE_PRICE_GPU_HOUR",
        "Price of one accelerator (GPU/TPU) for an hour, for the cost per 1,000 predictions.")

    def __post_init__(self) -> None:
        check(self.price_cpu_hour >= 0 and self.price_gpu_hour >= 0, "STREAMSERVE_PRICE_*_HOUR",
              "must not be negative")


@dataclass(frozen=True, slots=True)
class FaultSettings:
    """Development hooks: injected faults (the chaos tests) and a profile (the bench)."""

    spec: str = setting(
        "", "STREAMSERVE_FAULTS",
        "Injected faults, for chaos tests only: crash_at=POINT[:N], poison=VALUE, slow_ms=MS "
        "(pipeline/faults.py). Never set it in production.")
    profile: Path | None = setting(
        None, "STREAMSERVE_PROFILE",
        "Development only (`streamserve bench --profile`): a cProfile of the worker's "
        "event-loop thread, from the end of warm-up to its stop, written to this file.")
    plan: FaultPlan = derived()

    def __post_init__(self) -> None:
        try:
            derive(self, "plan", FaultPlan.parse(self.spec))
        except FaultSpecError as e:
            raise ConfigError(f"STREAMSERVE_FAULTS {e}") from None
