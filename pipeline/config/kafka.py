"""Sections for where things are: Kafka (brokers, topics, delivery, security) and the
model registry (folder, signing keys, compile cache, per-model settings file)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pipeline.config.fields import ConfigError, check, check_choices, derive, derived, secret, setting
from pipeline.security import KafkaSecurity, SaslMechanism, SecurityConfigError, SecurityProtocol

Delivery = Literal["at-least-once", "exactly-once"]


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
    def labels(self) -> str:
        """The true outcomes of requests, sent by clients keyed by request id."""
        return f"{self.prefix}.labels"

    @property
    def label_join(self) -> str:
        """Internal: the answers workers kept and the labels, each in the partition of its
        request id's hash (``pipeline.quality.join_partition``), where they are joined."""
        return f"{self.prefix}.label-join"

    @property
    def quality(self) -> str:
        """Live quality on labels, per model version, route and join partition, keyed by
        model:version."""
        return f"{self.prefix}.quality"

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

    @property
    def serving(self) -> tuple[str, ...]:
        """The topics with the requests' partitions."""
        return (self.requests, self.predictions, self.deadletter, self.drift, self.drift_rows,
                self.samples, self.shadow, self.labels, self.label_join, self.quality)

    @property
    def all(self) -> tuple[str, ...]:
        """Every topic streamserve creates (the Faust app's own are Faust's)."""
        return (*self.serving, self.control, self.audit)


@dataclass(frozen=True, slots=True)
class KafkaSettings:
    """Brokers, topics, consumer group, delivery guarantee and client security."""

    broker: str | None = setting(
        None, "STREAMSERVE_BROKER",
        "Kafka bootstrap servers (host:port[,host:port]). Unset: the embedded local "
        "broker on 127.0.0.1:STREAMSERVE_LOCAL_BROKER_PORT, started on demand.")
    local_broker_port: int = setting(
        9092, "STREAMSERVE_LOCAL_BROKER_PORT", "Port of the embedded local broker.")
    home: Path = setting(
        Path(".streamserve"), "STREAMSERVE_HOME", "Folder for the local broker's jars, data and logs.")
    topic_prefix: str = setting("streamserve", "STREAMSERVE_TOPIC_PREFIX", "Prefix of every topic name.")
    app_id: str = setting(
        "streamserve", "STREAMSERVE_APP_ID",
        "Faust application id: the consumer group that workers share; it names their tables' "
        "topics and folder too (letters, digits, '.', '_' and '-').")
    request_partitions: int = setting(
        4, "STREAMSERVE_REQUEST_PARTITIONS",
        "Partitions of each serving topic when streamserve creates it: the most "
        "workers that can share the load.")
    replication_factor: int = setting(
        -1, "STREAMSERVE_REPLICATION_FACTOR",
        "Replicas of every topic streamserve creates (serving, control, audit, and the "
        "Faust app's changelogs); -1: the cluster's default.replication.factor. At most the "
        "number of brokers. Production: 3, so a broker may be lost.")
    min_insync_replicas: int = setting(
        -1, "STREAMSERVE_MIN_INSYNC_REPLICAS",
        "min.insync.replicas of every topic streamserve creates: how many replicas must hold "
        "a write before it is acknowledged (producers use acks=all); -1: the cluster's "
        "default. Production: 2 of 3 replicas, so one broker may be down while writes go on.")
    stop_grace_s: float = setting(
        25.0, "STREAMSERVE_STOP_GRACE_S",
        "Seconds a worker's stop on SIGTERM may take (finishing and committing the batches "
        "in flight) before it exits anyway, e.g. when no broker answers: what it had not "
        "committed is served again. A worker still starting first finishes its start (30 s "
        "at most): keep both below the orchestrator's grace period (60 s in ops/kubernetes).")
    delivery: Delivery = setting(
        "at-least-once", "STREAMSERVE_DELIVERY",
        "at-least-once: outputs are acknowledged before their offsets are committed; a "
        "crash may repeat some outputs (same answer). exactly-once: outputs and offsets "
        "are committed in one Kafka transaction; read_committed readers see each once.")
    worker_id: str = setting(
        "", "STREAMSERVE_WORKER_ID",
        "This worker's stable name (e.g. a StatefulSet pod name). In exactly-once mode it "
        "names the transactional producer, so a restarted worker fences its predecessor. "
        "Empty: host name and process id (a restart is then not fenced; see the README).")
    security_protocol: SecurityProtocol = setting(
        "PLAINTEXT", "STREAMSERVE_SECURITY_PROTOCOL",
        "How every client (worker, CLI, client library) talks to Kafka: PLAINTEXT, SSL, "
        "SASL_PLAINTEXT or SASL_SSL.")
    sasl_mechanism: SaslMechanism = setting(
        "SCRAM-SHA-512", "STREAMSERVE_SASL_MECHANISM",
        "SASL mechanism when the protocol is SASL_*: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.")
    sasl_username: str = setting(
        "", "STREAMSERVE_SASL_USERNAME", "SASL user name (the Kafka principal User:NAME).")
    sasl_password: str = secret("STREAMSERVE_SASL_PASSWORD", "SASL password.")
    ssl_cafile: Path | None = setting(
        None, "STREAMSERVE_SSL_CAFILE",
        "PEM file of the certificate authorities that sign the brokers' certificates "
        "(unset: the system's).")
    ssl_certfile: Path | None = setting(
        None, "STREAMSERVE_SSL_CERTFILE", "PEM client certificate, for brokers that require one.")
    ssl_keyfile: Path | None = setting(
        None, "STREAMSERVE_SSL_KEYFILE", "PEM private key of STREAMSERVE_SSL_CERTFILE.")
    ssl_key_password: str = secret("STREAMSERVE_SSL_KEY_PASSWORD",
                                   "Password of an encrypted STREAMSERVE_SSL_KEYFILE.")
    ssl_check_hostname: bool = setting(
        True, "STREAMSERVE_SSL_CHECK_HOSTNAME",
        "Check that a broker's certificate names the host connected to: on or off (off only "
        "for tests; it lets anyone with a certificate of the CA pose as the broker).")
    # Derived once in __post_init__: the objects the rest of the code reads.
    topics: Topics = derived()
    security: KafkaSecurity = derived()  # how every client connects, secrets out of repr

    def __post_init__(self) -> None:
        check_choices(self)
        check(self.broker is None or bool(self.broker.strip()), "STREAMSERVE_BROKER",
              "must be host:port[,host:port], or unset for the local broker")
        check(0 < self.local_broker_port < 65536, "STREAMSERVE_LOCAL_BROKER_PORT",
              "must be a port number between 1 and 65535")
        check(self.request_partitions >= 1, "STREAMSERVE_REQUEST_PARTITIONS", "must be at least 1")
        check(self.replication_factor == -1 or self.replication_factor >= 1,
              "STREAMSERVE_REPLICATION_FACTOR", "must be at least 1, or -1 for the cluster's default")
        check(self.min_insync_replicas == -1 or self.min_insync_replicas >= 1,
              "STREAMSERVE_MIN_INSYNC_REPLICAS", "must be at least 1, or -1 for the cluster's default")
        check(self.replication_factor == -1 or self.min_insync_replicas <= self.replication_factor,
              "STREAMSERVE_MIN_INSYNC_REPLICAS",
              f"must not exceed STREAMSERVE_REPLICATION_FACTOR ({self.replication_factor}): no write "
              "with acks=all could ever be acknowledged")
        check(self.stop_grace_s > 0, "STREAMSERVE_STOP_GRACE_S", "must be more than 0 seconds")
        for name, env in ((self.topic_prefix, "STREAMSERVE_TOPIC_PREFIX"),
                          (self.app_id, "STREAMSERVE_APP_ID")):  # the app's tables' topics, its folder
            check(bool(name) and all(c.isalnum() or c in "._-" for c in name), env,
                  "must be non-empty and use only letters, digits, '.', '_' and '-'")
        derive(self, "topics", Topics(self.topic_prefix))
        try:
            derive(self, "security", KafkaSecurity(
                protocol=self.security_protocol, sasl_mechanism=self.sasl_mechanism,
                username=self.sasl_username, password=self.sasl_password,
                cafile=self.ssl_cafile, certfile=self.ssl_certfile, keyfile=self.ssl_keyfile,
                key_password=self.ssl_key_password, check_hostname=self.ssl_check_hostname))
        except SecurityConfigError as e:
            raise ConfigError(str(e)) from None

    @property
    def bootstrap(self) -> str:
        return self.broker or f"127.0.0.1:{self.local_broker_port}"

    @property
    def uses_local_broker(self) -> bool:
        return self.broker is None

    @property
    def exactly_once(self) -> bool:
        return self.delivery == "exactly-once"


@dataclass(frozen=True, slots=True)
class RegistrySettings:
    """The model registry: where versions live, who may sign them, how they are compiled."""

    root: Path = setting(Path("registry"), "STREAMSERVE_REGISTRY", "Root folder of the model registry.")
    signing_key: Path = setting(
        Path(".streamserve/keys/signing.key"), "STREAMSERVE_SIGNING_KEY",
        "Private Ed25519 key (PEM) that training and `streamserve models sign` sign model "
        "versions with; created with its public key (.pub beside it) when missing. Keep it "
        "outside the registry.")
    trusted_keys: Path = setting(
        Path(".streamserve/keys"), "STREAMSERVE_TRUSTED_KEYS",
        "Public keys trusted to sign model versions: a .pub file, or a folder whose *.pub "
        "files are all trusted. Outside the registry, so writing a model cannot add trust.")
    allow_unsigned: bool = setting(
        False, "STREAMSERVE_ALLOW_UNSIGNED",
        "Load model versions without a valid signature (unsigned, or signed by an untrusted "
        "key): on or off. Development only; parameters must still match their manifest.")
    compile_cache: str = setting(
        ".streamserve/jax-cache", "STREAMSERVE_COMPILE_CACHE",
        "Folder where compiled model executables are kept across restarts (JAX's persistent "
        "compilation cache): a restarted worker loads them instead of compiling again "
        "(measured: 18 s -> 1.5 s for two models). off: compile every time.")
    models_file: Path | None = setting(
        None, "STREAMSERVE_MODELS_FILE",
        "TOML file of per-model settings: a [models.NAME] table may set drift_window_s, "
        "drift_hop_s, drift_grace_s, drift_min_window, drift_alpha, drift_psi_floor, drift_alert_psi, "
        "drift_consecutive, sample_rate and redact (a table of field = \"drop|hash|mask\").")

    def __post_init__(self) -> None:
        # Links resolved: a key folder that links into the registry is inside it.
        registry = Path(os.path.realpath(self.root))
        check(not Path(os.path.realpath(self.signing_key)).is_relative_to(registry),
              "STREAMSERVE_SIGNING_KEY", f"must lie outside the registry ({self.root}): "
              "whoever can read the registry could sign models")
        check(self.signing_key.suffix != ".pub", "STREAMSERVE_SIGNING_KEY",
              f"must name the private key, not the public key {self.signing_key}")
        check(not Path(os.path.realpath(self.trusted_keys)).is_relative_to(registry),
              "STREAMSERVE_TRUSTED_KEYS", f"must lie outside the registry ({self.root}): "
              "whoever can write the registry could add a trusted key")
