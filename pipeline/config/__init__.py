"""The one settings object: every knob, its environment variable, default and meaning.

``Settings.from_env()`` reads the environment once; the result is frozen and checked, a
section per concern (``settings.kafka``, ``settings.batching``, ...; ``streamserve --help``
lists them). Each field's metadata names its environment variable and documents it, so the
help text and the README come from the same place. Choices are ``Literal`` types (read in
any case), secrets are held out of ``repr``, and the objects the code reads (topics, Kafka
security, quota plan, breaker, canary and SLO policies, fault plan, per-model policies) are
built once, when the settings are made.

Modules: ``fields`` (declaring, reading and checking a setting), ``kafka`` (Kafka and the
model registry), ``serving`` (batching, admission, breaker, canary, SLO, cost, faults),
``monitoring`` (drift, sampling, redaction, replay), ``settings`` (``Settings`` and the
per-model policies of STREAMSERVE_MODELS_FILE).
"""

from pipeline.config.fields import ConfigError
from pipeline.config.kafka import Delivery, KafkaSettings, RegistrySettings, Topics
from pipeline.config.monitoring import (
    DriftSettings,
    QualitySettings,
    RedactionSettings,
    ReplaySettings,
    SamplingSettings,
)
from pipeline.config.serving import (
    LATENCY_BUCKETS_S,
    AdmissionSettings,
    BatchingSettings,
    BreakerSettings,
    CanarySettings,
    CostSettings,
    FaultSettings,
    SloSettings,
)
from pipeline.config.settings import ModelPolicy, Settings

__all__ = [
    "LATENCY_BUCKETS_S",
    "AdmissionSettings",
    "BatchingSettings",
    "BreakerSettings",
    "CanarySettings",
    "ConfigError",
    "CostSettings",
    "Delivery",
    "DriftSettings",
    "FaultSettings",
    "KafkaSettings",
    "ModelPolicy",
    "RedactionSettings",
    "RegistrySettings",
    "QualitySettings",
    "ReplaySettings",
    "SamplingSettings",
    "Settings",
    "SloSettings",
    "Topics",
]
