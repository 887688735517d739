"""How every streamserve Kafka client authenticates and encrypts: one value, checked once.

The worker, the CLI and the client library all connect with the ``KafkaSecurity`` of the
same settings (``Settings.kafka.security``): SASL (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512)
over plaintext or TLS, or TLS alone with an optional client certificate. Secrets are
held out of ``repr`` so that a logged settings object never shows them. The TLS context
itself is built by the I/O shell (``agents.kafka.connect.connection``): this module stays pure.
The same settings map to aiokafka's keyword arguments and to librdkafka's properties.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from pipeline.errors import StreamserveError

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
PROTOCOLS: tuple[str, ...] = get_args(SecurityProtocol)
MECHANISMS: tuple[str, ...] = get_args(SaslMechanism)


def local_env_file(home: Path, user: str) -> Path:
    """The settings file that logs in to the local secured broker as ``user``, under
    STREAMSERVE_HOME: `streamserve broker start --secure` writes it, and refusals name it."""
    return Path(home) / "broker-secure" / "credentials" / f"{user}.env"


class SecurityConfigError(StreamserveError, ValueError):
    """The Kafka security settings cannot work together; the message names the variable."""


@dataclass(frozen=True, slots=True)
class KafkaSecurity:
    """A Kafka client's security: protocol, SASL login, TLS trust and identity."""

    protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism = "SCRAM-SHA-512"
    username: str = ""
    password: str = field(default="", repr=False)
    cafile: Path | None = None
    certfile: Path | None = None
    keyfile: Path | None = None
    key_password: str = field(default="", repr=False)
    check_hostname: bool = True

    def __post_init__(self) -> None:
        _require(self.protocol in PROTOCOLS, "STREAMSERVE_SECURITY_PROTOCOL",
                 f"must be one of {', '.join(PROTOCOLS)}, got {self.protocol!r}")
        if self.uses_sasl:
            _require(self.sasl_mechanism in MECHANISMS, "STREAMSERVE_SASL_MECHANISM",
                     f"must be one of {', '.join(MECHANISMS)}, got {self.sasl_mechanism!r}")
            _require(bool(self.username), "STREAMSERVE_SASL_USERNAME",
                     f"must be set: {self.protocol} logs in with a user name and password")
            _require(bool(self.password), "STREAMSERVE_SASL_PASSWORD",
                     "(or STREAMSERVE_SASL_PASSWORD_FILE) must be set: "
                     f"{self.protocol} logs in with a user name and password")
        tls_files = {"STREAMSERVE_SSL_CAFILE": self.cafile, "STREAMSERVE_SSL_CERTFILE": self.certfile,
                     "STREAMSERVE_SSL_KEYFILE": self.keyfile}
        if not self.uses_tls:
            given = [env for env, path in tls_files.items() if path is not None]
            _require(not given, ", ".join(given),
                     f"only apply to TLS: set STREAMSERVE_SECURITY_PROTOCOL to SSL or SASL_SSL "
                     f"(it is {self.protocol})")
        _require((self.certfile is None) == (self.keyfile is None),
                 "STREAMSERVE_SSL_CERTFILE and STREAMSERVE_SSL_KEYFILE",
                 "go together: a client certificate needs its private key")
        for env, path in tls_files.items():
            if path is not None:
                _require(os.access(path, os.R_OK), f"{env}={path}",
                         "cannot be read: point it at a PEM file this process may read")

    @property
    def uses_sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    @property
    def uses_tls(self) -> bool:
        return self.protocol.endswith("SSL")

    @property
    def principal(self) -> str:
        """The Kafka principal this client acts as (what ACLs name); with TLS client
        certificates and no SASL the broker names it after the certificate's subject."""
        if self.uses_sasl:
            return f"User:{self.username}"
        return "User:<certificate subject>" if self.certfile else "User:ANONYMOUS"

    def aiokafka_options(self) -> dict[str, Any]:
        """aiokafka client keyword arguments, but for ``ssl_context`` (the shell builds it)."""
        options: dict[str, Any] = {"security_protocol": self.protocol}
        if self.uses_sasl:
            options |= {"sasl_mechanism": self.sasl_mechanism,
                        "sasl_plain_username": self.username,
                        "sasl_plain_password": self.password}
        return options

    def librdkafka_options(self) -> dict[str, str]:
        """The same security as librdkafka (confluent-kafka) configuration properties:
        the serving path's consumer and producer are librdkafka clients."""
        options = {"security.protocol": self.protocol}
        if self.uses_sasl:
            options |= {"sasl.mechanism": self.sasl_mechanism, "sasl.username": self.username,
                        "sasl.password": self.password}
        if self.uses_tls:
            files = {"ssl.ca.location": self.cafile, "ssl.certificate.location": self.certfile,
                     "ssl.key.location": self.keyfile}
            options |= {name: str(path) for name, path in files.items() if path is not None}
            if self.key_password:
                options["ssl.key.password"] = self.key_password
            options["ssl.endpoint.identification.algorithm"] = "https" if self.check_hostname else "none"
        return options


def _require(ok: bool, env: str, message: str) -> None:
    if not ok:
        raise SecurityConfigError(f"{env} {message}")
