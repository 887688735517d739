"""The secured local broker's secrets and settings: its throwaway CA and TLS keystore, the
SCRAM users and their passwords, the credentials files that log in as each, and the
broker properties that turn on TLS, SASL and the ACL authorizer.

``broker start --secure`` runs it beside the plain broker (``agents.dev.broker``, which
starts and stops both) on the local port + 2, from ``<home>/broker-secure/``. Apart from
the process manager because this is what the plain broker never needs::

    <home>/broker-secure/tls/ca.pem              the CA clients trust (its key is not kept)
    <home>/broker-secure/tls/broker.pem          the broker's key and certificate (0600)
    <home>/broker-secure/credentials/NAME.password   SCRAM passwords (0600): admin, worker,
                                                 client, and broker (its own inter-broker
                                                 and controller login)
    <home>/broker-secure/credentials/NAME.env    STREAMSERVE_* settings logging in as NAME

Listeners: clients and inter-broker traffic on SASL_SSL (SCRAM-SHA-256/512; the broker
logs in to itself as User:broker), the controller on SASL_SSL with PLAIN (KRaft controllers
cannot check SCRAM, whose credentials live in the metadata they serve), its one user
User:broker defined in the broker's JAAS settings. Super users: User:admin and User:broker.

Light to import: cryptography (``pipeline.tls``) is imported when a CA is made.
"""

from __future__ import annotations

import os
import secrets
import shlex
from pathlib import Path

from pipeline.security import local_env_file

SECURE_PORT_OFFSET = 2  # the secured broker beside the plain one: ports 9094 and 9095
PRINCIPALS = ("admin", "worker", "client")  # the secured broker's SCRAM users, with an env file each
SUPER_USER = "admin"
BROKER_USER = "broker"  # the broker's own login: controller and inter-broker connections
MECHANISM = "SCRAM-SHA-512"  # what the env files use; SCRAM-SHA-256 works too
SCRAM_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512")
USERS = (*PRINCIPALS, BROKER_USER)  # every SCRAM user, each with a password file


class BrokerSecrets:
    """The secret files of the secured broker in ``dir`` (``tls/``, ``credentials/``),
    serving at ``bootstrap``; ``home`` is STREAMSERVE_HOME, where the env files live."""

    def __init__(self, dir: Path, home: Path, bootstrap: str) -> None:
        self.home = home
        self.bootstrap = bootstrap
        self.tls_dir = dir / "tls"
        self.credentials_dir = dir / "credentials"
        self.cafile = self.tls_dir / "ca.pem"
        self.keystore = self.tls_dir / "broker.pem"

    def password_path(self, user: str) -> Path:
        return self.credentials_dir / f"{user}.password"

    def password(self, user: str) -> str:
        return self.password_path(user).read_text().strip()

    def environment(self, user: str) -> dict[str, str]:
        """The STREAMSERVE_* settings that log in to the secured broker as ``user``."""
        return {"STREAMSERVE_BROKER": self.bootstrap, "STREAMSERVE_SECURITY_PROTOCOL": "SASL_SSL",
                "STREAMSERVE_SASL_MECHANISM": MECHANISM, "STREAMSERVE_SASL_USERNAME": user,
                "STREAMSERVE_SASL_PASSWORD_FILE": str(self.password_path(user)),
                "STREAMSERVE_SSL_CAFILE": str(self.cafile)}

    def create(self) -> None:
        """A fresh CA, broker certificate and passwords (before the first start: the SCRAM
        users are made with these passwords when the storage is formatted)."""
        from pipeline.tls import server_tls

        tls = server_tls(f"streamserve local broker {self.bootstrap}")
        write_private(self.keystore, tls.keystore)
        self.cafile.write_bytes(tls.ca_cert)  # public; the CA's key is dropped here
        for user in USERS:
            write_private(self.password_path(user), secrets.token_urlsafe(24).encode())

    def missing(self) -> Path | None:
        """The first secret file that is not there, or None."""
        needed = [self.keystore, self.cafile, *map(self.password_path, USERS)]
        return next((path for path in needed if not path.is_file()), None)

    def write_env_files(self) -> None:
        """One settings file per principal (``set -a; . FILE`` logs in as it)."""
        for user in PRINCIPALS:
            write_private(local_env_file(self.home, user), "".join(
                f"{name}={shlex.quote(value)}\n"
                for name, value in self.environment(user).items()).encode())

    def scram_arguments(self) -> list[str]:
        """The storage tool's arguments that make every SCRAM user (KIP-900: they exist
        from the first start, before any client connects)."""
        return [arg for user in USERS for mechanism in SCRAM_MECHANISMS
                for arg in ("--add-scram",
                            f"{mechanism}=[name={user},password={self.password(user)}]")]

    def server_properties(self, host: str, port: int, controller_port: int) -> dict[str, str]:
        """TLS everywhere, SCRAM for clients, PLAIN for the controller, ACLs enforced: what
        the secured broker adds to (and overrides in) the plain one's properties."""
        password = self.password(BROKER_USER)
        login = f'username="{BROKER_USER}" password="{password}"'
        scram = "org.apache.kafka.common.security.scram.ScramLoginModule required"
        plain = "org.apache.kafka.common.security.plain.PlainLoginModule required"
        return {
            "listeners": f"SASL_SSL://{host}:{port},CONTROLLER://{host}:{controller_port}",
            "advertised.listeners": f"SASL_SSL://{host}:{port}",
            "inter.broker.listener.name": "SASL_SSL",
            "listener.security.protocol.map": "SASL_SSL:SASL_SSL,CONTROLLER:SASL_SSL",
            "listener.name.sasl_ssl.sasl.enabled.mechanisms": ",".join(SCRAM_MECHANISMS),
            "sasl.mechanism.inter.broker.protocol": MECHANISM,
            **{f"listener.name.sasl_ssl.{mechanism.lower()}.sasl.jaas.config": f"{scram} {login};"
               for mechanism in SCRAM_MECHANISMS},
            "listener.name.controller.sasl.enabled.mechanisms": "PLAIN",
            "sasl.mechanism.controller.protocol": "PLAIN",
            "listener.name.controller.plain.sasl.jaas.config":
                f'{plain} {login} user_{BROKER_USER}="{password}";',
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(self.keystore),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(self.cafile),
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "allow.everyone.if.no.acl.found": "false",
            "super.users": f"User:{SUPER_USER};User:{BROKER_USER}",
        }


def write_private(path: Path, data: bytes) -> None:
    """Write ``path`` readable by its owner alone (mode 0600, whatever the umask)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)
