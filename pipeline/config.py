"""The one settings object: every knob, its environment variable, default and meaning.

Settings are read once (``Settings.from_env()``), validated, and then frozen. Each
field's metadata names its environment variable and says what it does, so
``streamserve --help`` and the README are generated from the same place.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A setting has a value that cannot work; the message names the variable."""


def _setting(default: Any, env: str, doc: str) -> Any:
    return field(default=default, metadata={"env": env, "doc": doc})


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
    def drift_counts(self) -> str:
        """Internal: each served batch's drift counts, keyed by model:version."""
        return f"{self.prefix}.drift-counts"


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
    home: Path = _setting(
        Path(".streamserve"),
        "STREAMSERVE_HOME",
        "Folder for the local broker's jars, data and logs.",
    )
    registry: Path = _setting(
        Path("registry"), "STREAMSERVE_REGISTRY", "Root folder of the model registry."
    )
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

    drift: bool = _setting(
        True, "STREAMSERVE_DRIFT",
        "Count served batches for drift monitoring: on or off (off only to measure its cost).")
    drift_window_s: int = _setting(
        60, "STREAMSERVE_DRIFT_WINDOW_S",
        "Drift window size in whole seconds of event time (a multiple of the hop).")
    drift_hop_s: int = _setting(
        10, "STREAMSERVE_DRIFT_HOP_S",
        "Drift window hop in whole seconds: a report per model version and feature every hop.")

    @property
    def bootstrap(self) -> str:
        return self.broker or f"127.0.0.1:{self.local_broker_port}"

    @property
    def uses_local_broker(self) -> bool:
        return self.broker is None

    @property
    def topics(self) -> Topics:
        return Topics(self.topic_prefix)

    def __post_init__(self) -> None:
        _check(0 < self.local_broker_port < 65536, "STREAMSERVE_LOCAL_BROKER_PORT",
               "must be a port number between 1 and 65535")
        _check(self.request_partitions >= 1, "STREAMSERVE_REQUEST_PARTITIONS", "must be at least 1")
        _check(1 <= self.max_batch <= 4096, "STREAMSERVE_MAX_BATCH", "must be between 1 and 4096")
        _check(1 <= self.batch_timeout_ms <= 10_000, "STREAMSERVE_BATCH_TIMEOUT_MS",
               "must be between 1 and 10000 milliseconds")
        _check(self.drift_hop_s >= 1 and self.drift_window_s >= self.drift_hop_s
               and self.drift_window_s % self.drift_hop_s == 0, "STREAMSERVE_DRIFT_WINDOW_S",
               "must be a whole multiple of STREAMSERVE_DRIFT_HOP_S (at least 1 second)")
        _check(self.max_message_bytes >= 256, "STREAMSERVE_MAX_MESSAGE_BYTES", "must be at least 256")
        _check(bool(self.topic_prefix) and all(c.isalnum() or c in "._-" for c in self.topic_prefix),
               "STREAMSERVE_TOPIC_PREFIX", "must be non-empty and use only letters, digits, '.', '_' and '-'")
        _check(self.broker is None or bool(self.broker.strip()), "STREAMSERVE_BROKER",
               "must be host:port[,host:port], or unset for the local broker")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ, **overrides: Any) -> Settings:
        """Read every setting from its environment variable, then apply ``overrides``."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = environ.get(f.metadata["env"])
            if raw is not None and raw != "":
                values[f.name] = _parse(f.metadata["env"], f.type, raw)
        return replace(cls(**values), **overrides) if overrides else cls(**values)

    @classmethod
    def documentation(cls) -> list[tuple[str, str, str]]:
        """(variable, default, meaning) for each setting, for help texts and docs."""
        return [(f.metadata["env"], str(f.default), f.metadata["doc"]) for f in fields(cls)]


_BOOLEANS = {"on": True, "true": True, "1": True, "yes": True,
             "off": False, "false": False, "0": False, "no": False}


def _parse(env: str, type_name: str, raw: str) -> Any:
    if type_name == "bool":
        if raw.lower() not in _BOOLEANS:
            raise ConfigError(f"{env}={raw!r} must be on or off")
        return _BOOLEANS[raw.lower()]
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
