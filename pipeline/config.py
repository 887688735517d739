"""The one settings object: every knob, its environment variable, default and meaning.

Settings are read once (``Settings.from_env()``), validated, and then frozen. Each
field's metadata names its environment variable and says what it does, so
``streamserve --help`` and the README are generated from the same place.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, get_args

from pipeline.breaker import BreakerConfig
from pipeline.canary import CanaryPolicy
from pipeline.drift import DriftConfig
from pipeline.errors import StreamserveError
from pipeline.faults import FaultPlan, FaultSpecError
from pipeline.tenant_quotas import Quota, QuotaSpecError, parse_quotas
from pipeline.redaction import RedactionError, Redactor, parse_rules
from pipeline.security import KafkaSecurity, SecurityConfigError
from pipeline.slo import Objectives, SloError


# Bounds of the latency histograms (seconds), 1 ms to 10 s: serving latency sits in the low
# milliseconds, a backlog after a restart in seconds. The latency objective is one of them.
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


Delivery = Literal["at-least-once", "exactly-once"]


class ConfigError(StreamserveError, ValueError):
    """A setting has a value that cannot work; the message names the variable."""


def _setting(default: Any, env: str, doc: str) -> Any:
    return field(default=default, metadata={"env": env, "doc": doc})


def _derived() -> Any:
    """A field computed from the settings in ``__post_init__``, not read from the environment."""
    return field(default=None, init=False, repr=False, compare=False)


def _secret(env: str, doc: str) -> Any:
    """A secret: read from ``env`` or from the file ``env``_FILE names; never shown."""
    return field(default="", repr=False,
                 metadata={"env": env, "doc": f"{doc} Or {env}_FILE: a file holding it.",
                           "secret": True})


@dataclass(frozen=True, slots=True)
class Topics:
    """The topic names (contract), all under one prefix."""

    prefix: str

    @property
    def requests(self) -> str:
        return f"{self.prefix}.requests"

    @property
    def predictions(self) -> str:
        return f"{self.prefix}.predictions"

    @property
    def deadletter(self) -> str:
        return f"{self.prefix}.deadletter"

    @property
    def drift(self) -> str:
        return f"{self.prefix}.drift"

    @property
    def drift_rows(self) -> str:
        """Internal: served rows as drift codes (``CodedRows``), keyed by model:version."""
        return f"{self.prefix}.drift-rows"

    @property
    def samples(self) -> str:
        return f"{self.prefix}.samples"

    @property
    def shadow(self) -> str:
        """Shadow versions' outputs: never on the predictions topic."""
        return f"{self.prefix}.shadow"

    @property
    def control(self) -> str:
        """Compacted: each model's deployment spec, keyed by model name."""
        return f"{self.prefix}.control"

    @property
    def audit(self) -> str:
        """Every control-plane change and model load refusal, in order."""
        return f"{self.prefix}.audit"


@dataclass(frozen=True, slots=True)
class ModelPolicy:
    """The settings that apply to one model: its drift windows and verdict, sampling, redaction."""

    drift_window_s: int
    drift_hop_s: int
    drift_grace_s: int
    drift: DriftConfig
    sample_rate: float
    redactor: Redactor


# What a [models.NAME] table of STREAMSERVE_MODELS_FILE may set, and the type of each.
_PER_MODEL: dict[str, type] = {
    "drift_window_s": int, "drift_hop_s": int, "drift_grace_s": int, "drift_min_window": int, "drift_alpha": float,
    "drift_psi_floor": float, "drift_alert_psi": float, "drift_consecutive": int,
    "sample_rate": float, "redact": dict}


@dataclass(frozen=True, slots=True)
class Settings:
    broker: str | None = _setting(
        None,
        "STREAMSERVE_BROKER",
        "Kafka bootstrap servers (host:port[,host:port]). Unset: the embedded local "
        "broker on 127.0.0.1:STREAMSERVE_LOCAL_BROKER_PORT, started on demand.",
    )
    local_broker_port: int = _setting(
        9092, "STREAMSERVE_LOCAL_BROKER_PORT", "Port of the embedded local broker."
    )
    security_protocol: str = _setting(
        "PLAINTEXT", "STREAMSERVE_SECURITY_PROTOCOL",
        "How every client (worker, CLI, client library) talks to Kafka: PLAINTEXT, SSL, "
        "SASL_PLAINTEXT or SASL_SSL.")
    sasl_mechanism: str = _setting(
        "SCRAM-SHA-512", "STREAMSERVE_SASL_MECHANISM",
        "SASL mechanism when the protocol is SASL_*: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.")
    sasl_username: str = _setting(
        "", "STREAMSERVE_SASL_USERNAME", "SASL user name (the Kafka principal User:NAME).")
    sasl_password: str = _secret("STREAMSERVE_SASL_PASSWORD", "SASL password.")
    ssl_cafile: Path | None = _setting(
        None, "STREAMSERVE_SSL_CAFILE",
        "PEM file of the certificate authorities that sign the brokers' certificates "
        "(unset: the system's).")
    ssl_certfile: Path | None = _setting(
        None, "STREAMSERVE_SSL_CERTFILE", "PEM client certificate, for brokers that require one.")
    ssl_keyfile: Path | None = _setting(
        None, "STREAMSERVE_SSL_KEYFILE", "PEM private key of STREAMSERVE_SSL_CERTFILE.")
    ssl_key_password: str = _secret("STREAMSERVE_SSL_KEY_PASSWORD",
                                    "Password of an encrypted STREAMSERVE_SSL_KEYFILE.")
    ssl_check_hostname: bool = _setting(
        True, "STREAMSERVE_SSL_CHECK_HOSTNAME",
        "Check that a broker's certificate names the host connected to: on or off (off only "
        "for tests; it lets anyone with a certificate of the CA pose as the broker).")
    home: Path = _setting(
        Path(".streamserve"),
        "STREAMSERVE_HOME",
        "Folder for the local broker's jars, data and logs.",
    )
    registry: Path = _setting(
        Path("registry"), "STREAMSERVE_REGISTRY", "Root folder of the model registry."
    )
    signing_key: Path = _setting(
        Path(".streamserve/keys/signing.key"), "STREAMSERVE_SIGNING_KEY",
        "Private Ed25519 key (PEM) that training and `streamserve models sign` sign model "
        "versions with; created with its public key (.pub beside it) when missing. Keep it "
        "outside the registry.")
    trusted_keys: Path = _setting(
        Path(".streamserve/keys"), "STREAMSERVE_TRUSTED_KEYS",
        "Public keys trusted to sign model versions: a .pub file, or a folder whose *.pub "
        "files are all trusted. Outside the registry, so writing a model cannot add trust.")
    allow_unsigned: bool = _setting(
        False, "STREAMSERVE_ALLOW_UNSIGNED",
        "Load model versions without a valid signature (unsigned, or signed by an untrusted "
        "key): on or off. Development only; parameters must still match their manifest.")
    topic_prefix: str = _setting(
        "streamserve", "STREAMSERVE_TOPIC_PREFIX", "Prefix of every topic name."
    )
    app_id: str = _setting(
        "streamserve",
        "STREAMSERVE_APP_ID",
        "Faust application id: the consumer group that workers share.",
    )
    request_partitions: int = _setting(
        4,
        "STREAMSERVE_REQUEST_PARTITIONS",
        "Partitions of each serving topic when streamserve creates it: the most "
        "workers that can share the load.",
    )
    max_batch: int = _setting(
        64,
        "STREAMSERVE_MAX_BATCH",
        "Most requests in one model call; padding buckets are the powers of two up to it.",
    )
    batch_timeout_ms: int = _setting(
        5,
        "STREAMSERVE_BATCH_TIMEOUT_MS",
        "Queueing budget: the longest a request waits for its batch to fill; heavy "
        "traffic fills batches sooner, light traffic never waits longer.",
    )
    max_message_bytes: int = _setting(
        65536,
        "STREAMSERVE_MAX_MESSAGE_BYTES",
        "Largest request accepted; bigger ones are dead-lettered as too_large unread.",
    )
    max_features: int = _setting(
        1024, "STREAMSERVE_MAX_FEATURES",
        "Most features one request may name (tabular 'features' entries or OIP inputs); more "
        "are dead-lettered as too_many_features before any per-feature work. Raise it to "
        "serve a model that takes more.")
    tenant_quotas: str = _setting(
        "", "STREAMSERVE_TENANT_QUOTAS",
        "Per-tenant quotas: 'TENANT:rate=R[,burst=B][,inflight=N];...'. rate: requests/s "
        "(a token bucket of burst tokens, default the rate rounded up); inflight: requests "
        "admitted and not yet answered. 'default' is one quota shared by every tenant not "
        "named and by requests without one (without it they are unlimited). Excess is "
        "dead-lettered as quota_exceeded. Each worker enforces its own: the fleet admits up "
        "to a quota times the number of workers (as Envoy's local rate limit). Unset: none.")
    slo_availability: float = _setting(
        0.999, "STREAMSERVE_SLO_AVAILABILITY",
        "Availability objective: the share of requests answered with a prediction or a "
        "client-error dead letter (server failures: deadline_exceeded, model_error, "
        "circuit_open, undeliverable). `streamserve ops rules` turns it into burn-rate alerts.")
    slo_latency_ms: float = _setting(
        100.0, "STREAMSERVE_SLO_LATENCY_MS",
        "Latency objective: a request is fast when answered within this many milliseconds of "
        "its timestamp. One of the latency histogram's bucket bounds.")
    slo_latency_target: float = _setting(
        0.99, "STREAMSERVE_SLO_LATENCY_TARGET",
        "Share of requests that must be fast (within STREAMSERVE_SLO_LATENCY_MS).")
    price_cpu_hour: float = _setting(
        0.04, "STREAMSERVE_PRICE_CPU_HOUR",
        "Price of one CPU core for an hour, for the cost per 1,000 predictions (exported as "
        "streamserve_price_per_hour{resource=\"cpu\"}).")
    price_gpu_hour: float = _setting(
        2.5, "STREAMSERVE_PRICE_GPU_HOUR",
        "Price of one accelerator (GPU/TPU) for an hour, for the cost per 1,000 predictions.")
    replay_monitoring: bool = _setting(
        False, "STREAMSERVE_REPLAY_MONITORING",
        "Let replayed requests (header streamserve-replay, from `streamserve replay`) count in "
        "drift statistics and canary analysis: on or off.")
    dedupe_ids: int = _setting(
        50_000, "STREAMSERVE_DEDUPE_IDS",
        "Request ids each worker remembers: a repeat of one within the window is dead-lettered "
        "as duplicate_request rather than predicted twice (0: off). About 300 bytes each.")
    dedupe_window_s: float = _setting(
        600.0, "STREAMSERVE_DEDUPE_WINDOW_S",
        "Seconds a served request id is remembered (and at most STREAMSERVE_DEDUPE_IDS of them).")
    compile_cache: str = _setting(
        ".streamserve/jax-cache", "STREAMSERVE_COMPILE_CACHE",
        "Folder where compiled model executables are kept across restarts (JAX's persistent "
        "compilation cache): a restarted worker loads them instead of compiling again "
        "(measured: 18 s -> 1.5 s for two models). off: compile every time.")
    delivery: Delivery = _setting(
        "at-least-once", "STREAMSERVE_DELIVERY",
        "at-least-once: outputs are acknowledged before their offsets are committed; a "
        "crash may repeat some outputs (same answer). exactly-once: outputs and offsets "
        "are committed in one Kafka transaction; read_committed readers see each once.")
    worker_id: str = _setting(
        "", "STREAMSERVE_WORKER_ID",
        "This worker's stable name (e.g. a StatefulSet pod name). In exactly-once mode it "
        "names the transactional producer, so a restarted worker fences its predecessor. "
        "Empty: host name and process id (a restart is then not fenced; see the README).")
    faults: str = _setting(
        "", "STREAMSERVE_FAULTS",
        "Injected faults, for chaos tests only: crash_at=POINT[:N], poison=VALUE, slow_ms=MS "
        "(pipeline/faults.py). Never set it in production.")

    drift: bool = _setting(
        True, "STREAMSERVE_DRIFT",
        "Count served batches for drift monitoring: on or off (off only to measure its cost).")
    drift_window_s: int = _setting(
        60, "STREAMSERVE_DRIFT_WINDOW_S",
        "Drift window size in whole seconds of event time (a multiple of the hop).")
    drift_hop_s: int = _setting(
        10, "STREAMSERVE_DRIFT_HOP_S",
        "Drift window hop in whole seconds: a report per model version and feature every hop.")
    drift_grace_s: int = _setting(
        10, "STREAMSERVE_DRIFT_GRACE_S",
        "How long past its end a drift window waits for rows out of order (whole hops): "
        "partitions are read side by side, so a backlog can run ahead of another.")
    drift_min_window: int = _setting(
        200, "STREAMSERVE_DRIFT_MIN_WINDOW",
        "Fewest values in a window for a drift verdict (also at least 20 per bin).")
    drift_alpha: float = _setting(
        0.05, "STREAMSERVE_DRIFT_ALPHA",
        "Significance of the drift test (Bonferroni-corrected over a model's features).")
    drift_psi_floor: float = _setting(
        0.1, "STREAMSERVE_DRIFT_PSI_FLOOR",
        "Smallest PSI that counts as drift, however large the window.")
    drift_alert_psi: float = _setting(
        0.25, "STREAMSERVE_DRIFT_ALERT_PSI", "PSI from which drift is reported as an alert.")
    drift_consecutive: int = _setting(
        2, "STREAMSERVE_DRIFT_CONSECUTIVE",
        "Drifting windows in a row before a drift event is raised.")

    sample_rate: float = _setting(
        0.01, "STREAMSERVE_SAMPLE_RATE",
        "Share of each model's served requests (chosen by a hash of the request id, so a "
        "replay chooses alike) written with their predictions to <prefix>.samples; 0 is off.")
    redact: str = _setting(
        "", "STREAMSERVE_REDACT",
        "Request fields redacted before anything leaves the worker (samples, dead letters), "
        "for every model: 'field=drop|hash|mask,...'. hash is a keyed HMAC-SHA256.")
    redaction_key: str = _secret(
        "STREAMSERVE_REDACTION_KEY", "Secret key of the keyed hash that 'hash' redaction uses.")
    models_file: Path | None = _setting(
        None, "STREAMSERVE_MODELS_FILE",
        "TOML file of per-model settings: a [models.NAME] table may set drift_window_s, "
        "drift_hop_s, drift_grace_s, drift_min_window, drift_alpha, drift_psi_floor, drift_alert_psi, "
        "drift_consecutive, sample_rate and redact (a table of field = \"drop|hash|mask\").")
    breaker_failures: int = _setting(
        5, "STREAMSERVE_BREAKER_FAILURES",
        "Failures in a row (model errors, missed deadlines) that open a version's circuit "
        "breaker; its traffic then goes to the model's fallback version.")
    breaker_failure_rate: float = _setting(
        0.5, "STREAMSERVE_BREAKER_FAILURE_RATE",
        "Share of failures over a version's last 100 requests that opens its breaker.")
    breaker_open_s: float = _setting(
        5.0, "STREAMSERVE_BREAKER_OPEN_S",
        "Seconds a breaker stays open before probes try the version again.")
    canary_min_requests: int = _setting(
        200, "STREAMSERVE_CANARY_MIN_REQUESTS",
        "Requests each of canary and stable must have served before the canary is judged.")
    canary_max_error_increase: float = _setting(
        0.05, "STREAMSERVE_CANARY_MAX_ERROR_INCREASE",
        "Rollback when the canary's failure rate exceeds stable's by more than this.")
    canary_max_p99_ratio: float = _setting(
        2.0, "STREAMSERVE_CANARY_MAX_P99_RATIO",
        "Rollback when the canary's p99 model time exceeds this many times stable's (+5 ms).")
    canary_max_output_psi: float = _setting(
        0.25, "STREAMSERVE_CANARY_MAX_OUTPUT_PSI",
        "Rollback when the PSI between the canary's and stable's predicted classes exceeds this.")
    canary_promote_after: int = _setting(
        0, "STREAMSERVE_CANARY_PROMOTE_AFTER",
        "Promote a canary automatically after this many healthy requests (0: never).")
    # Derived from the settings above once, in __post_init__ (checked there, so a value
    # that cannot work stops the start): the objects the rest of the code reads.
    topics: Topics = _derived()
    kafka_security: KafkaSecurity = _derived()
    objectives: Objectives = _derived()
    tenant_quota_plan: dict[str, Quota] = _derived()  # quota name (tenant or default) -> limits
    fault_plan: FaultPlan = _derived()
    breaker: BreakerConfig = _derived()
    canary: CanaryPolicy = _derived()
    _models: dict[str, dict[str, Any]] = _derived()  # the [models.NAME] tables of models_file

    @property
    def bootstrap(self) -> str:
        return self.broker or f"127.0.0.1:{self.local_broker_port}"

    @property
    def uses_local_broker(self) -> bool:
        return self.broker is None

    def __post_init__(self) -> None:
        _check(0 < self.local_broker_port < 65536, "STREAMSERVE_LOCAL_BROKER_PORT",
               "must be a port number between 1 and 65535")
        _check(self.request_partitions >= 1, "STREAMSERVE_REQUEST_PARTITIONS", "must be at least 1")
        _check(1 <= self.max_batch <= 4096, "STREAMSERVE_MAX_BATCH", "must be between 1 and 4096")
        _check(1 <= self.batch_timeout_ms <= 10_000, "STREAMSERVE_BATCH_TIMEOUT_MS",
               "must be between 1 and 10000 milliseconds")
        _check(self.max_message_bytes >= 256, "STREAMSERVE_MAX_MESSAGE_BYTES", "must be at least 256")
        _check(self.max_features >= 1, "STREAMSERVE_MAX_FEATURES", "must be at least 1")
        try:
            self._derive("tenant_quota_plan", parse_quotas(self.tenant_quotas))
        except QuotaSpecError as e:
            raise ConfigError(str(e)) from None
        _check(bool(self.topic_prefix) and all(c.isalnum() or c in "._-" for c in self.topic_prefix),
               "STREAMSERVE_TOPIC_PREFIX", "must be non-empty and use only letters, digits, '.', '_' and '-'")
        self._derive("topics", Topics(self.topic_prefix))
        try:
            self._derive("objectives", Objectives(
                availability=self.slo_availability, latency_ms=self.slo_latency_ms,
                latency_target=self.slo_latency_target))
        except SloError as e:
            raise ConfigError(f"STREAMSERVE_SLO_* settings: {e}") from None
        _check(self.slo_latency_ms / 1000 in LATENCY_BUCKETS_S, "STREAMSERVE_SLO_LATENCY_MS",
               "must be a bound of the latency histogram, one of "
               + ", ".join(f"{b * 1000:g}" for b in LATENCY_BUCKETS_S) + f" (ms); got {self.slo_latency_ms:g}")
        _check(self.price_cpu_hour >= 0 and self.price_gpu_hour >= 0, "STREAMSERVE_PRICE_*_HOUR",
               "must not be negative")
        _check(self.dedupe_ids >= 0, "STREAMSERVE_DEDUPE_IDS", "must be 0 (off) or more")
        _check(self.dedupe_window_s > 0, "STREAMSERVE_DEDUPE_WINDOW_S", "must be a positive number of seconds")
        _check(self.delivery in get_args(Delivery), "STREAMSERVE_DELIVERY",
               f"must be one of {', '.join(get_args(Delivery))}, got {self.delivery!r}")
        try:
            self._derive("fault_plan", FaultPlan.parse(self.faults))
        except FaultSpecError as e:
            raise ConfigError(f"STREAMSERVE_FAULTS {e}") from None
        _check(self.broker is None or bool(self.broker.strip()), "STREAMSERVE_BROKER",
               "must be host:port[,host:port], or unset for the local broker")
        try:
            self._derive("kafka_security", KafkaSecurity(
                protocol=self.security_protocol.upper(), sasl_mechanism=self.sasl_mechanism.upper(),
                username=self.sasl_username, password=self.sasl_password,
                cafile=self.ssl_cafile, certfile=self.ssl_certfile, keyfile=self.ssl_keyfile,
                key_password=self.ssl_key_password, check_hostname=self.ssl_check_hostname))
        except SecurityConfigError as e:
            raise ConfigError(str(e)) from None
        registry = Path(os.path.abspath(self.registry))
        _check(not Path(os.path.abspath(self.signing_key)).is_relative_to(registry),
               "STREAMSERVE_SIGNING_KEY", f"must lie outside the registry ({self.registry}): "
               "whoever can read the registry could sign models")
        _check(self.signing_key.suffix != ".pub", "STREAMSERVE_SIGNING_KEY",
               f"must name the private key, not the public key {self.signing_key}")
        _check(not Path(os.path.abspath(self.trusted_keys)).is_relative_to(registry),
               "STREAMSERVE_TRUSTED_KEYS", f"must lie outside the registry ({self.registry}): "
               "whoever can write the registry could add a trusted key")
        try:
            self._derive("breaker", BreakerConfig(
                consecutive_failures=self.breaker_failures,
                failure_rate=self.breaker_failure_rate, open_seconds=self.breaker_open_s))
            self._derive("canary", CanaryPolicy(
                min_requests=self.canary_min_requests, window=max(1000, self.canary_min_requests),
                max_error_rate_increase=self.canary_max_error_increase,
                max_p99_ratio=self.canary_max_p99_ratio, max_output_psi=self.canary_max_output_psi,
                promote_after=self.canary_promote_after or None))
        except ValueError as e:
            raise ConfigError(f"STREAMSERVE_BREAKER_* / STREAMSERVE_CANARY_* settings: {e}") from None
        self._derive("_models", _read_models_file(self.models_file))
        for model in ["", *self._models]:
            self.policy(model)  # every policy is checked at start, not at first use

    def _derive(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)  # frozen: only __post_init__ sets derived fields

    @property
    def exactly_once(self) -> bool:
        return self.delivery == "exactly-once"

    def policy(self, model: str) -> ModelPolicy:
        """``model``'s settings: its [models.NAME] table in STREAMSERVE_MODELS_FILE over the
        environment's. Its redaction rules add to (and override) STREAMSERVE_REDACT's."""
        own = self._models.get(model, {})
        def where(key: str) -> str:  # the setting to mend when a value cannot work
            return f"{self.models_file} [models.{model}] {key}" if key in own else _env_of(key)

        def value(key: str) -> Any:
            return own.get(key, getattr(self, key))

        window, hop = value("drift_window_s"), value("drift_hop_s")
        _check(hop >= 1 and window >= hop and window % hop == 0, where("drift_window_s"),
               f"must be a whole multiple of the hop ({hop} s, at least 1 second), got {window}")
        grace = value("drift_grace_s")
        _check(grace >= 0 and grace % hop == 0, where("drift_grace_s"),
               f"must be a whole multiple of the hop ({hop} s), 0 included, got {grace}")
        rate = value("sample_rate")
        _check(0 <= rate <= 1, where("sample_rate"), f"must lie in [0, 1], got {rate}")
        try:
            drift = DriftConfig(alpha=value("drift_alpha"), psi_floor=value("drift_psi_floor"),
                                alert_psi=value("drift_alert_psi"),
                                min_window=value("drift_min_window"),
                                consecutive=value("drift_consecutive"))
        except ValueError as e:
            raise ConfigError(f"drift settings of {model or 'every model'}: {e}") from None
        try:
            rules = parse_rules(self.redact, "STREAMSERVE_REDACT")
            rules.update(parse_rules(",".join(f"{k}={v}" for k, v in own.get("redact", {}).items()),
                                     where("redact")))
            redactor = Redactor(rules, self.redaction_key.encode())
        except RedactionError as e:
            raise ConfigError(str(e)) from None
        return ModelPolicy(window, hop, grace, drift, rate, redactor)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ, **overrides: Any) -> Settings:
        """Read every setting from its environment variable, then apply ``overrides``."""
        values: dict[str, Any] = {}
        for f in _public(cls):
            env = f.metadata["env"]
            raw = environ.get(env)
            if not raw and f.metadata.get("secret") and environ.get(f"{env}_FILE"):
                raw = _read_secret(f"{env}_FILE", Path(environ[f"{env}_FILE"]))
            if raw is not None and raw != "":
                values[f.name] = _parse(env, f.type, raw)
        return replace(cls(**values), **overrides) if overrides else cls(**values)

    @classmethod
    def documentation(cls) -> list[tuple[str, str, str]]:
        """(variable, default, meaning) for each setting, for help texts and docs."""
        return [(f.metadata["env"], str(f.default), f.metadata["doc"]) for f in _public(cls)]


_BOOLEANS = {"on": True, "true": True, "1": True, "yes": True,
             "off": False, "false": False, "0": False, "no": False}


def _parse(env: str, type_name: str, raw: str) -> Any:
    if type_name == "bool":
        if raw.lower() not in _BOOLEANS:
            raise ConfigError(f"{env}={raw!r} must be on or off")
        return _BOOLEANS[raw.lower()]
    if type_name == "float":
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"{env}={raw!r} must be a number, e.g. 0.05") from None
    if "int" in type_name:
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"{env}={raw!r} must be a whole number") from None
    if "Path" in type_name:
        return Path(raw)
    return raw


def _check(ok: bool, env: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{env} {message}")


def _public(cls: type) -> list:
    """The fields read from the environment (all but the derived ones)."""
    return [f for f in fields(cls) if "env" in f.metadata]


def _env_of(name: str) -> str:
    return next(f.metadata["env"] for f in _public(Settings) if f.name == name)


def _read_secret(env: str, path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError as e:
        raise ConfigError(f"{env}={path} cannot be read ({e.strerror}); point it at the "
                          "file that holds the secret") from None


def _read_models_file(path: Path | None) -> dict[str, dict[str, Any]]:
    """The [models.NAME] tables of the per-model settings file, with their keys checked."""
    if path is None:
        return {}
    try:
        document = tomllib.loads(path.read_text())
    except OSError as e:
        raise ConfigError(f"STREAMSERVE_MODELS_FILE={path} cannot be read ({e.strerror})") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"STREAMSERVE_MODELS_FILE={path} is not valid TOML: {e}") from None
    unknown = set(document) - {"models"}
    _check(not unknown and isinstance(document.get("models", {}), dict),
           f"STREAMSERVE_MODELS_FILE={path}",
           f"may hold only [models.NAME] tables, found {sorted(unknown) or 'models = ...'}")
    models = document.get("models", {})
    for model, table in models.items():
        _check(isinstance(table, dict), f"{path} models.{model}", "must be a table: [models.NAME]")
        for key, value in table.items():
            expected = _PER_MODEL.get(key)
            _check(expected is not None, f"{path} [models.{model}] {key}",
                   f"is not a per-model setting; use one of {', '.join(_PER_MODEL)}")
            ok = (isinstance(value, dict) and all(isinstance(v, str) for v in value.values())
                  if expected is dict else
                  isinstance(value, (int, float)) and not isinstance(value, bool)
                  if expected is float else isinstance(value, int) and not isinstance(value, bool))
            _check(ok, f"{path} [models.{model}] {key}",
                   "must be a table of field = \"drop|hash|mask\"" if expected is dict
                   else f"must be a {'number' if expected is float else 'whole number'}, got {value!r}")
    return models
