"""Kafka security settings: validated at start, secrets never shown, one set of options."""

import pytest

from pipeline.config import ConfigError, Settings
from pipeline.security import KafkaSecurity


def test_plaintext_by_default_as_anonymous():
    security = Settings().kafka.security
    assert security.protocol == "PLAINTEXT"
    assert security.principal == "User:ANONYMOUS"
    assert security.aiokafka_options() == {"security_protocol": "PLAINTEXT"}


def test_sasl_options_carry_the_login_and_the_principal_names_the_user():
    s = Settings.from_env({"STREAMSERVE_SECURITY_PROTOCOL": "sasl_plaintext",
                           "STREAMSERVE_SASL_MECHANISM": "scram-sha-256",
                           "STREAMSERVE_SASL_USERNAME": "worker", "STREAMSERVE_SASL_PASSWORD": "s3cret"})
    assert s.kafka.security.principal == "User:worker"
    assert s.kafka.security.aiokafka_options() == {
        "security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-256",
        "sasl_plain_username": "worker", "sasl_plain_password": "s3cret"}
    assert s.kafka.security.librdkafka_options() == {
        "security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "SCRAM-SHA-256",
        "sasl.username": "worker", "sasl.password": "s3cret"}


def test_the_password_is_read_from_a_file_and_never_shown(tmp_path):
    (tmp_path / "password").write_text("hunter2-from-file\n")
    s = Settings.from_env({"STREAMSERVE_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                           "STREAMSERVE_SASL_USERNAME": "client",
                           "STREAMSERVE_SASL_PASSWORD_FILE": str(tmp_path / "password")})
    assert s.kafka.security.password == "hunter2-from-file"
    assert "hunter2" not in repr(s) and "hunter2" not in repr(s.kafka.security)


@pytest.mark.parametrize(("env", "says"), [
    ({"STREAMSERVE_SECURITY_PROTOCOL": "KERBEROS"}, "STREAMSERVE_SECURITY_PROTOCOL must be one of"),
    ({"STREAMSERVE_SECURITY_PROTOCOL": "SASL_SSL"}, "STREAMSERVE_SASL_USERNAME must be set"),
    ({"STREAMSERVE_SECURITY_PROTOCOL": "SASL_SSL", "STREAMSERVE_SASL_USERNAME": "u"},
     "STREAMSERVE_SASL_PASSWORD .*must be set"),
    ({"STREAMSERVE_SECURITY_PROTOCOL": "SASL_SSL", "STREAMSERVE_SASL_USERNAME": "u",
      "STREAMSERVE_SASL_PASSWORD": "p", "STREAMSERVE_SASL_MECHANISM": "GSSAPI"},
     "STREAMSERVE_SASL_MECHANISM must be one of"),
    ({"STREAMSERVE_SSL_CAFILE": "/etc/hostname"}, "STREAMSERVE_SSL_CAFILE only apply to TLS"),
    ({"STREAMSERVE_SECURITY_PROTOCOL": "SSL", "STREAMSERVE_SSL_CAFILE": "/no/such/ca.pem"},
     "STREAMSERVE_SSL_CAFILE=/no/such/ca.pem cannot be read"),
    ({"STREAMSERVE_SECURITY_PROTOCOL": "SSL", "STREAMSERVE_SSL_CERTFILE": "/etc/hostname"},
     "STREAMSERVE_SSL_CERTFILE and STREAMSERVE_SSL_KEYFILE go together"),
    ({"STREAMSERVE_SASL_PASSWORD_FILE": "/no/such/file"}, "STREAMSERVE_SASL_PASSWORD_FILE=.*cannot be read"),
])
def test_settings_that_cannot_work_are_refused_at_start_naming_the_variable(env, says):
    with pytest.raises(ConfigError, match=says):
        Settings.from_env(env)


def test_tls_alone_needs_no_login():
    security = KafkaSecurity(protocol="SSL")
    assert security.uses_tls and not security.uses_sasl
    assert security.aiokafka_options() == {"security_protocol": "SSL"}
    assert security.librdkafka_options() == {"security.protocol": "SSL",
                                             "ssl.endpoint.identification.algorithm": "https"}


def test_tls_files_and_the_hostname_check_map_to_librdkafka(tmp_path):
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / name).write_text("PEM")
    security = KafkaSecurity(protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512", username="w",
                             password="p", cafile=tmp_path / "ca.pem", certfile=tmp_path / "cert.pem",
                             keyfile=tmp_path / "key.pem", key_password="k", check_hostname=False)
    assert security.librdkafka_options() == {
        "security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "w",
        "sasl.password": "p", "ssl.ca.location": str(tmp_path / "ca.pem"),
        "ssl.certificate.location": str(tmp_path / "cert.pem"),
        "ssl.key.location": str(tmp_path / "key.pem"), "ssl.key.password": "k",
        "ssl.endpoint.identification.algorithm": "none"}
