import dataclasses
from pathlib import Path

import pytest

from pipeline.config import ConfigError, KafkaSettings, Settings


def test_defaults_use_the_local_broker():
    s = Settings.from_env({})
    assert s.kafka.uses_local_broker and s.bootstrap == "127.0.0.1:9092"
    assert s.topics.requests == "streamserve.requests"
    assert s.topics.deadletter == "streamserve.deadletter"


def test_environment_overrides():
    s = Settings.from_env({"STREAMSERVE_BROKER": "k1:9092,k2:9092", "STREAMSERVE_MAX_BATCH": "128",
                           "STREAMSERVE_REGISTRY": "/models", "STREAMSERVE_TOPIC_PREFIX": "t1"})
    assert not s.kafka.uses_local_broker and s.bootstrap == "k1:9092,k2:9092"
    assert s.batching.max_batch == 128 and s.registry.root == Path("/models")
    assert s.topics.predictions == "t1.predictions"


@pytest.mark.parametrize("env,says", [
    ({"STREAMSERVE_MAX_BATCH": "lots"}, "STREAMSERVE_MAX_BATCH='lots' must be a whole number"),
    ({"STREAMSERVE_MAX_BATCH": "0"}, "STREAMSERVE_MAX_BATCH must be between 1 and 4096"),
    ({"STREAMSERVE_TOPIC_PREFIX": "a b"}, "STREAMSERVE_TOPIC_PREFIX must be non-empty"),
    ({"STREAMSERVE_APP_ID": "a{b}"}, "STREAMSERVE_APP_ID must be non-empty"),
    ({"STREAMSERVE_LOCAL_BROKER_PORT": "70000"}, "STREAMSERVE_LOCAL_BROKER_PORT must be a port"),
    ({"STREAMSERVE_BROKER": "  "}, "STREAMSERVE_BROKER must be host:port"),
    ({"STREAMSERVE_REPLICATION_FACTOR": "0"}, "STREAMSERVE_REPLICATION_FACTOR must be at least 1, or -1"),
    ({"STREAMSERVE_MIN_INSYNC_REPLICAS": "0"}, "STREAMSERVE_MIN_INSYNC_REPLICAS must be at least 1, or -1"),
    ({"STREAMSERVE_REPLICATION_FACTOR": "2", "STREAMSERVE_MIN_INSYNC_REPLICAS": "3"},
     "STREAMSERVE_MIN_INSYNC_REPLICAS must not exceed STREAMSERVE_REPLICATION_FACTOR"),
    ({"STREAMSERVE_STOP_GRACE_S": "0"}, "STREAMSERVE_STOP_GRACE_S must be more than 0 seconds"),
])
def test_invalid_values_name_the_variable(env, says):
    with pytest.raises(ConfigError, match=says.replace("(", r"\(")):
        Settings.from_env(env)


def test_every_setting_is_documented():
    docs = Settings.documentation()
    assert all(env.startswith("STREAMSERVE_") and len(doc) > 20 for env, _, doc in docs)


MODELS_TOML = """
[models.breast_cancer]
drift_window_s = 20
drift_hop_s = 5
drift_alert_psi = 0.3
sample_rate = 0.05
redact = { mean_radius = "hash", mean_area = "drop" }
"""


def test_a_models_file_sets_one_models_policy_over_the_environments(tmp_path):
    path = tmp_path / "models.toml"
    path.write_text(MODELS_TOML)
    s = Settings.from_env({"STREAMSERVE_MODELS_FILE": str(path), "STREAMSERVE_REDACT": "mean_texture=mask",
                           "STREAMSERVE_REDACTION_KEY": "k3y", "STREAMSERVE_SAMPLE_RATE": "0.2"})
    own, other = s.policy("breast_cancer"), s.policy("iris")
    assert (own.drift_window_s, own.drift_hop_s, own.drift.alert_psi, own.sample_rate) == (20, 5, 0.3, 0.05)
    assert dict(own.redactor.rules) == {"mean_texture": "mask", "mean_radius": "hash", "mean_area": "drop"}
    assert (other.drift_window_s, other.drift.alert_psi, other.sample_rate) == (60, 0.25, 0.2)
    assert dict(other.redactor.rules) == {"mean_texture": "mask"}


@pytest.mark.parametrize("toml,says", [
    ("[models.iris]\nwindow = 5\n", r"\[models.iris\] window is not a per-model setting; use one of drift_window_s"),
    ("[models.iris]\nsample_rate = 'high'\n", r"sample_rate must be a number, got 'high'"),
    ("[models.iris]\ndrift_window_s = 25\ndrift_hop_s = 10\n", r"drift_window_s must be a whole multiple"),
    ("[models.iris]\nsample_rate = 1.5\n", r"\[models.iris\] sample_rate must lie in \[0, 1\]"),
    ("[models.iris]\nredact = { petal_length = 'hash' }\n", "STREAMSERVE_REDACTION_KEY"),
    ("[models.iris]\nredact = { petal_length = 'blur' }\n", "unknown action 'blur'; use drop, hash or mask"),
    ("[models.iris]\ndrift_alert_psi = 0.05\n", "drift settings of iris: need 0 <= psi_floor <= alert_psi"),
    ("[iris]\n", r"may hold only \[models.NAME\] tables"),
    ("[models.iris\n", "is not valid TOML"),
])
def test_a_bad_models_file_is_refused_at_start_naming_the_key(tmp_path, toml, says):
    path = tmp_path / "models.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=says):
        Settings.from_env({"STREAMSERVE_MODELS_FILE": str(path)})


def test_the_redaction_key_is_read_from_a_file_and_never_shown(tmp_path):
    (tmp_path / "key").write_text("s3cret-value\n")
    s = Settings.from_env({"STREAMSERVE_REDACTION_KEY_FILE": str(tmp_path / "key"),
                           "STREAMSERVE_REDACT": "petal_length=hash"})
    assert s.redaction.key == "s3cret-value" and "s3cret" not in repr(s)
    assert "s3cret" not in repr(s.policy("iris"))
    with pytest.raises(ConfigError, match="STREAMSERVE_REDACTION_KEY_FILE=.*cannot be read"):
        Settings.from_env({"STREAMSERVE_REDACTION_KEY_FILE": str(tmp_path / "missing")})


@pytest.mark.parametrize("env,says", [
    ({"STREAMSERVE_SAMPLE_RATE": "often"}, "STREAMSERVE_SAMPLE_RATE='often' must be a number"),
    ({"STREAMSERVE_SAMPLE_RATE": "2"}, r"STREAMSERVE_SAMPLE_RATE must lie in \[0, 1\]"),
    ({"STREAMSERVE_DRIFT_WINDOW_S": "25"}, "STREAMSERVE_DRIFT_WINDOW_S must be a whole multiple"),
    ({"STREAMSERVE_REDACT": "a=hash"}, "set STREAMSERVE_REDACTION_KEY"),
])
def test_invalid_policy_values_name_the_variable(env, says):
    with pytest.raises(ConfigError, match=says):
        Settings.from_env(env)


SECTIONS = [f.name for f in dataclasses.fields(Settings) if f.init]


def test_every_variable_belongs_to_one_section_and_is_listed_once():
    by_section = Settings.documentation_by_section()
    assert [name for name, _, _ in by_section] == SECTIONS
    assert {"kafka", "registry", "batching", "admission", "drift", "breaker", "canary", "slo",
            "cost", "faults"} <= set(SECTIONS)
    variables = [env for env, _, _ in Settings.documentation()]
    assert len(variables) == len(set(variables)) == 72
    assert variables == [env for _, _, rows in by_section for env, _, _ in rows]


@pytest.mark.parametrize("section", SECTIONS)
def test_each_section_is_frozen(section):
    part = getattr(Settings(), section)
    field = next(f.name for f in dataclasses.fields(part) if f.init)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(part, field, getattr(part, field))
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(Settings(), section, part)


@pytest.mark.parametrize("env,choices", [
    ("STREAMSERVE_SECURITY_PROTOCOL", "PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL"),
    ("STREAMSERVE_SASL_MECHANISM", "PLAIN, SCRAM-SHA-256, SCRAM-SHA-512"),
    ("STREAMSERVE_DELIVERY", "at-least-once, exactly-once"),
])
def test_a_choice_outside_its_literal_is_refused_naming_the_variable_and_the_choices(env, choices):
    with pytest.raises(ConfigError, match=f"^{env} must be one of {choices}, got 'kerberos'$"):
        Settings.from_env({env: "kerberos"})


def test_a_literal_is_checked_when_a_section_is_made_in_code_too():
    with pytest.raises(ConfigError, match="STREAMSERVE_DELIVERY must be one of at-least-once, exactly-once"):
        KafkaSettings(delivery="once")  # type: ignore[arg-type]


def test_choices_are_read_in_any_case_and_kept_in_their_own():
    s = Settings.from_env({"STREAMSERVE_SECURITY_PROTOCOL": "sasl_ssl",
                           "STREAMSERVE_SASL_MECHANISM": "scram-sha-256",
                           "STREAMSERVE_SASL_USERNAME": "u", "STREAMSERVE_SASL_PASSWORD": "p",
                           "STREAMSERVE_DELIVERY": "Exactly-Once"})
    assert (s.kafka.security_protocol, s.kafka.sasl_mechanism, s.kafka.delivery) == \
        ("SASL_SSL", "SCRAM-SHA-256", "exactly-once")
    assert s.kafka.security.protocol == "SASL_SSL" and s.exactly_once


def test_derived_objects_are_built_once_when_the_settings_are_made(tmp_path):
    path = tmp_path / "models.toml"
    path.write_text(MODELS_TOML)
    s = Settings.from_env({"STREAMSERVE_TENANT_QUOTAS": "acme:rate=5", "STREAMSERVE_FAULTS": "slow_ms=1",
                           "STREAMSERVE_MODELS_FILE": str(path), "STREAMSERVE_REDACTION_KEY": "k"})
    derived = [s.topics, s.kafka.security, s.admission.tenant_quota_plan, s.breaker.config,
               s.canary.policy, s.slo.objectives, s.faults.plan, s.policy("breast_cancer"), s.policy("")]
    again = [s.topics, s.kafka.security, s.admission.tenant_quota_plan, s.breaker.config,
             s.canary.policy, s.slo.objectives, s.faults.plan, s.policy("breast_cancer"), s.policy("")]
    assert all(a is b for a, b in zip(derived, again, strict=True))
    assert s.topics is s.kafka.topics and s.policy("iris") is s.policy("")  # no table: every model's
    assert s.faults.plan.active and "acme" in s.admission.tenant_quota_plan


def test_a_section_is_replaced_whole_and_checked_again():
    s = Settings()
    moved = dataclasses.replace(s, kafka=dataclasses.replace(s.kafka, topic_prefix="t2"))
    assert moved.topics.requests == "t2.requests" and s.topics.requests == "streamserve.requests"
    with pytest.raises(ConfigError, match="STREAMSERVE_TOPIC_PREFIX must be non-empty"):
        dataclasses.replace(s.kafka, topic_prefix="a b")


def test_secrets_stay_out_of_every_sections_repr():
    s = Settings.from_env({"STREAMSERVE_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "STREAMSERVE_SASL_USERNAME": "u",
                           "STREAMSERVE_SASL_PASSWORD": "pw-s3cret",
                           "STREAMSERVE_REDACTION_KEY": "key-s3cret"})
    assert "s3cret" not in repr(s) and "s3cret" not in repr(s.kafka) and "s3cret" not in repr(s.redaction)


@pytest.mark.parametrize("variable", ["STREAMSERVE_LABEL_HORIZON", "STREAMSERVE_LABEL_WAIT_S",
                                      "STREAMSERVE_QUALITY_REPORT_S", "STREAMSERVE_QUALITY_WINDOW_S"])
def test_label_join_durations_must_be_positive(variable):
    with pytest.raises(ConfigError, match=f"{variable} must be positive"):
        Settings.from_env({variable: "0"})
