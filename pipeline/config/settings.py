"""``Settings``: one frozen object of sections, read from the environment once and checked.

Each section (``settings.kafka``, ``settings.batching``, ...) is a frozen dataclass of the
settings a reader looks for together, each field naming its environment variable, default
and meaning. Every check runs, and every derived object is built, when the sections are
made: a value that cannot work stops the start with a message naming the variable.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from pipeline.config.fields import ConfigError, check, derive, derived, env_fields, env_of, read_section
from pipeline.config.kafka import KafkaSettings, RegistrySettings, Topics
from pipeline.config.monitoring import (
    DriftSettings,
    QualitySettings,
    RedactionSettings,
    ReplaySettings,
    SamplingSettings,
)
from pipeline.config.serving import (
    AdmissionSettings,
    BatchingSettings,
    BreakerSettings,
    CanarySettings,
    CostSettings,
    FaultSettings,
    SloSettings,
)
from pipeline.drift import DriftConfig
from pipeline.redaction import RedactionError, Redactor, parse_rules


@dataclass(frozen=True, slots=True)
class ModelPolicy:
    """The settings that apply to one model: its drift windows and verdict, sampling, redaction."""

    drift_window_s: int
    drift_hop_s: int
    drift_grace_s: int
    drift: DriftConfig
    sample_rate: float
    redactor: Redactor


# What a [models.NAME] table of STREAMSERVE_MODELS_FILE may set: its type, and the section
# field it overrides. The keys are the file's format: they do not follow the sections' names.
_PER_MODEL: dict[str, tuple[type, str, str]] = {
    "drift_window_s": (int, "drift", "window_s"), "drift_hop_s": (int, "drift", "hop_s"),
    "drift_grace_s": (int, "drift", "grace_s"), "drift_min_window": (int, "drift", "min_window"),
    "drift_alpha": (float, "drift", "alpha"), "drift_psi_floor": (float, "drift", "psi_floor"),
    "drift_alert_psi": (float, "drift", "alert_psi"), "drift_consecutive": (int, "drift", "consecutive"),
    "sample_rate": (float, "sampling", "rate"), "redact": (dict, "redaction", "rules")}


@dataclass(frozen=True, slots=True)
class Settings:
    """Every setting, by section. ``topics``, ``bootstrap`` and ``exactly_once`` are read so
    often that they are here too, as shortcuts to ``kafka``'s."""

    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    registry: RegistrySettings = field(default_factory=RegistrySettings)
    batching: BatchingSettings = field(default_factory=BatchingSettings)
    admission: AdmissionSettings = field(default_factory=AdmissionSettings)
    breaker: BreakerSettings = field(default_factory=BreakerSettings)
    canary: CanarySettings = field(default_factory=CanarySettings)
    slo: SloSettings = field(default_factory=SloSettings)
    cost: CostSettings = field(default_factory=CostSettings)
    drift: DriftSettings = field(default_factory=DriftSettings)
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    redaction: RedactionSettings = field(default_factory=RedactionSettings)
    replay: ReplaySettings = field(default_factory=ReplaySettings)
    quality: QualitySettings = field(default_factory=QualitySettings)
    faults: FaultSettings = field(default_factory=FaultSettings)
    # Every model's policy, built (and so checked) at start: "" and each model of the models file.
    _policies: dict[str, ModelPolicy] = derived()

    def __post_init__(self) -> None:
        tables = _read_models_file(self.registry.models_file)
        derive(self, "_policies", {model: self._policy(model, tables.get(model, {}))
                                   for model in ["", *tables]})

    @property
    def topics(self) -> Topics:
        return self.kafka.topics

    @property
    def bootstrap(self) -> str:
        return self.kafka.bootstrap

    @property
    def exactly_once(self) -> bool:
        return self.kafka.exactly_once

    @property
    def configured_models(self) -> list[str]:
        """The models STREAMSERVE_MODELS_FILE has a table for, served here or not."""
        return [model for model in self._policies if model]

    def policy(self, model: str) -> ModelPolicy:
        """``model``'s settings: its [models.NAME] table in STREAMSERVE_MODELS_FILE over the
        environment's. Its redaction rules add to (and override) STREAMSERVE_REDACT's."""
        return self._policies.get(model) or self._policies[""]

    def _policy(self, model: str, own: dict[str, Any]) -> ModelPolicy:
        def where(key: str) -> str:  # the setting to mend when a value cannot work
            _, section, name = _PER_MODEL[key]
            return (f"{self.registry.models_file} [models.{model}] {key}" if key in own
                    else env_of(type(getattr(self, section)), name))

        def value(key: str) -> Any:
            _, section, name = _PER_MODEL[key]
            return own.get(key, getattr(getattr(self, section), name))

        window, hop = value("drift_window_s"), value("drift_hop_s")
        check(hop >= 1 and window >= hop and window % hop == 0, where("drift_window_s"),
              f"must be a whole multiple of the hop ({hop} s, at least 1 second), got {window}")
        grace = value("drift_grace_s")
        check(grace >= 0 and grace % hop == 0, where("drift_grace_s"),
              f"must be a whole multiple of the hop ({hop} s), 0 included, got {grace}")
        rate = value("sample_rate")
        check(0 <= rate <= 1, where("sample_rate"), f"must lie in [0, 1], got {rate}")
        try:
            drift = DriftConfig(alpha=value("drift_alpha"), psi_floor=value("drift_psi_floor"),
                                alert_psi=value("drift_alert_psi"), min_window=value("drift_min_window"),
                                consecutive=value("drift_consecutive"))
        except ValueError as e:
            raise ConfigError(f"drift settings of {model or 'every model'}: {e}") from None
        try:
            rules = parse_rules(self.redaction.rules, "STREAMSERVE_REDACT")
            rules.update(parse_rules(",".join(f"{k}={v}" for k, v in own.get("redact", {}).items()),
                                     where("redact")))
            redactor = Redactor(rules, self.redaction.key.encode())
        except RedactionError as e:
            raise ConfigError(str(e)) from None
        return ModelPolicy(window, hop, grace, drift, rate, redactor)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        """Read every section from its environment variables (unset or empty: the default)."""
        return cls(**{f.name: read_section(_section_type(f), environ) for f in _sections()})

    @classmethod
    def documentation(cls) -> list[tuple[str, str, str]]:
        """(variable, default, meaning) for each setting, section by section."""
        return [row for _, _, rows in cls.documentation_by_section() for row in rows]

    @classmethod
    def documentation_by_section(cls) -> list[tuple[str, str, list[tuple[str, str, str]]]]:
        """(section, what it holds, its (variable, default, meaning) rows), for help texts."""
        return [(f.name, (_section_type(f).__doc__ or "").strip().splitlines()[0],
                 [(s.metadata["env"], str(s.default), s.metadata["doc"])
                  for s in env_fields(_section_type(f))])
                for f in _sections()]


def _sections() -> list:
    return [f for f in fields(Settings) if f.init]


def _section_type(f: Any) -> type:
    return f.default_factory


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
    check(not unknown and isinstance(document.get("models", {}), dict),
          f"STREAMSERVE_MODELS_FILE={path}",
          f"may hold only [models.NAME] tables, found {sorted(unknown) or 'models = ...'}")
    models = document.get("models", {})
    for model, table in models.items():
        check(isinstance(table, dict), f"{path} models.{model}", "must be a table: [models.NAME]")
        for key, value in table.items():
            expected = _PER_MODEL.get(key, (None,))[0]
            check(expected is not None, f"{path} [models.{model}] {key}",
                  f"is not a per-model setting; use one of {', '.join(_PER_MODEL)}")
            ok = (isinstance(value, dict) and all(isinstance(v, str) for v in value.values())
                  if expected is dict else
                  isinstance(value, (int, float)) and not isinstance(value, bool)
                  if expected is float else isinstance(value, int) and not isinstance(value, bool))
            check(ok, f"{path} [models.{model}] {key}",
                  "must be a table of field = \"drop|hash|mask\"" if expected is dict
                  else f"must be a {'number' if expected is float else 'whole number'}, got {value!r}")
    return models
