"""The secured local broker end to end: refused logins, the ACL layout's refusals, a worker
serving with the worker's credentials, lifecycle commands for admins only, and no
password in any output."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import subprocess
import sys
import uuid
from pathlib import Path

import orjson
import pytest
from aiokafka.protocol.admin import CreateAclsRequest

from agents.cli.main import main
from agents.client.stream import StreamClient
from agents.dev.fleet import WorkerProcess
from agents.kafka.connect import KafkaAccessError
from agents.kafka.topics import admin_client, ensure_topics, send_request
from pipeline.acl import AclBinding, Operation, PatternType, Permission, ResourceType
from pipeline.config import Settings
from pipeline.tls import server_tls
from tests.conftest import registry_keys, start_worker

pytestmark = pytest.mark.integration

IRIS_ROW = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


class Deployment:
    """One deployment (topic prefix = app id) on the secured broker, and its outputs."""

    def __init__(self, broker, registry: Path) -> None:
        self.broker = broker
        self.registry = registry
        self.prefix = f"s{uuid.uuid4().hex[:10]}"
        self.outputs: list[str] = []  # every CLI output, checked for passwords at the end

    def env(self, user: str) -> dict[str, str]:
        return {**self.broker.environment(user), "STREAMSERVE_HOME": str(self.broker.home),
                "STREAMSERVE_TOPIC_PREFIX": self.prefix, "STREAMSERVE_APP_ID": self.prefix,
                "STREAMSERVE_REGISTRY": str(self.registry), **registry_keys(self.registry)}

    def settings(self, user: str, **overrides: str) -> Settings:
        return Settings.from_env({**self.env(user), **overrides})

    def cli(self, user: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
        """``streamserve ARGS`` as ``user``, in this process (a new one would spend seconds
        importing); only this deployment's STREAMSERVE_* settings apply."""
        out, err = io.StringIO(), io.StringIO()
        with pytest.MonkeyPatch.context() as patch:
            for name in [name for name in os.environ if name.startswith("STREAMSERVE_")]:
                patch.delenv(name)
            for name, value in self.env(user).items():
                patch.setenv(name, value)
            patch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin.encode())))
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = main(list(args))
        self.outputs += [out.getvalue(), err.getvalue()]
        return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())

    def refused(self, user: str, *args: str, stdin: str = "") -> str:
        result = self.cli(user, *args, stdin=stdin)
        assert result.returncode == 2, result.stdout + result.stderr
        assert "Traceback" not in result.stderr, result.stderr
        return result.stderr.strip().splitlines()[-1]

    def passwords(self) -> list[str]:
        return [(self.broker.credentials_dir / f"{user}.password").read_text().strip()
                for user in ("admin", "worker", "client", "broker")]


@pytest.fixture(scope="module")
def deployment(secure_broker, registry_dir: Path) -> Deployment:
    return Deployment(secure_broker, registry_dir)


@pytest.fixture(scope="module")
def worker(deployment: Deployment, tmp_path_factory: pytest.TempPathFactory):
    applied = deployment.cli("admin", "acl", "apply")
    assert applied.returncode == 0, applied.stderr
    assert f"added    User:client WRITE topic {deployment.prefix}.requests" in applied.stdout
    env = deployment.env("worker")
    handle = start_worker(env["STREAMSERVE_BROKER"], deployment.registry,
                          tmp_path_factory.mktemp("secure-worker") / "worker.log", **env)
    try:
        yield handle
    finally:
        handle.stop()


def test_secrets_are_readable_by_their_owner_only(deployment: Deployment) -> None:
    broker = deployment.broker
    secret = [broker.config_path, broker.tls_dir / "broker.pem",
              *broker.credentials_dir.glob("*.password")]
    assert len(secret) == 6
    for path in secret:
        assert path.stat().st_mode & 0o777 == 0o600, path
    env = broker.env_file("client").read_text()
    assert "STREAMSERVE_SASL_PASSWORD_FILE=" in env and "STREAMSERVE_SASL_PASSWORD=" not in env


def test_a_login_without_credentials_is_refused(deployment: Deployment) -> None:
    plain = deployment.settings("client", STREAMSERVE_SECURITY_PROTOCOL="PLAINTEXT",
                                STREAMSERVE_SSL_CAFILE="")
    with pytest.raises(KafkaAccessError, match="closed the connection: is it a Kafka listener that speaks "
                                                  "STREAMSERVE_SECURITY_PROTOCOL=PLAINTEXT"):
        asyncio.run(ensure_topics(plain))


def test_a_wrong_password_is_refused(deployment: Deployment) -> None:
    wrong = deployment.settings("client", STREAMSERVE_SASL_PASSWORD_FILE="",
                                STREAMSERVE_SASL_PASSWORD="not-the-password")
    with pytest.raises(KafkaAccessError, match="refused the login of User:client"):
        asyncio.run(ensure_topics(wrong))


def test_an_untrusted_broker_certificate_is_refused(deployment: Deployment, tmp_path: Path) -> None:
    other_ca = tmp_path / "other-ca.pem"
    other_ca.write_bytes(server_tls("elsewhere").ca_cert)
    with pytest.raises(KafkaAccessError, match="certificate this client does not trust"):
        asyncio.run(ensure_topics(deployment.settings("client", STREAMSERVE_SSL_CAFILE=str(other_ca))))


def test_the_worker_serves_with_its_own_credentials(deployment: Deployment,
                                                    worker: WorkerProcess) -> None:
    async def predict() -> dict:
        async with StreamClient(deployment.settings("client"), timeout=60) as client:
            return await client.predict("iris", IRIS_ROW)

    reply = asyncio.run(predict())
    assert reply.label == "setosa"


def test_the_client_may_not_write_predictions(deployment: Deployment, worker: WorkerProcess) -> None:
    line = deployment.refused("client", "produce", "--topic", f"{deployment.prefix}.predictions",
                              stdin='{"id": "forged"}\n')
    assert line.startswith(f"streamserve: error: User:client may not write topic "
                           f"{deployment.prefix}.predictions: the streamserve ACL layout lets "
                           "User:admin and User:worker do that")


@pytest.mark.parametrize("topic", ["samples", "audit"])
def test_the_client_may_not_read_samples_or_audit(deployment: Deployment, worker: WorkerProcess,
                                                  topic: str) -> None:
    line = deployment.refused("client", "consume", "--topic", f"{deployment.prefix}.{topic}",
                              "--from-beginning", "--timeout", "1")
    assert f"User:client may not read topic {deployment.prefix}.{topic}" in line
    assert "User:admin do that" in line and "admin.env" in line


@pytest.mark.parametrize("user", ["client", "worker"])
def test_lifecycle_commands_need_admin_credentials(deployment: Deployment, worker: WorkerProcess,
                                                   user: str) -> None:
    line = deployment.refused(user, "deploy", "iris", "1")
    assert line == (f"streamserve: error: User:{user} may not write topic {deployment.prefix}.control: "
                    "lifecycle commands need admin credentials (`set -a; . "
                    f"{deployment.broker.env_file('admin')}`)")


def test_an_admin_deploys_and_reads_the_audit(deployment: Deployment, worker: WorkerProcess) -> None:
    deployed = deployment.cli("admin", "deploy", "iris", "1")
    assert deployed.returncode == 0, deployed.stderr
    audit = deployment.cli("admin", "audit", "--model", "iris")
    assert audit.returncode == 0 and "deploy" in audit.stdout, audit.stderr


def test_the_secured_brokers_start_is_audited(deployment: Deployment) -> None:
    from agents.kafka.audit import read_entries

    admin = deployment.settings("admin", STREAMSERVE_TOPIC_PREFIX="streamserve")
    [entry] = [e for e in asyncio.run(read_entries(admin)) if e.action == "broker_start"]
    assert entry.subject == f"broker:{deployment.broker.bootstrap}"
    assert entry.principal == "User:admin" and entry.source == "cli" and entry.host
    assert entry.details["security"] == "SASL_SSL"
    assert all(password not in entry.command for password in deployment.passwords())


def test_acl_apply_converges_and_only_admins_may(deployment: Deployment, worker: WorkerProcess) -> None:
    assert "already as laid out" in deployment.cli("admin", "acl", "apply").stdout
    stale = AclBinding("User:client", ResourceType.TOPIC, f"{deployment.prefix}.samples",
                       Operation.READ)

    async def grant() -> None:
        async with admin_client(deployment.settings("admin")) as admin:
            await send_request(admin, CreateAclsRequest(
                stale.resource_type, stale.name, PatternType.LITERAL, stale.principal, "*",
                stale.operation, Permission.ALLOW))

    asyncio.run(grant())
    converged = deployment.cli("admin", "acl", "apply")
    assert converged.stdout.splitlines()[0] == f"removed  {stale.describe()}", converged.stderr
    assert "already as laid out" in deployment.cli("admin", "acl", "apply").stdout
    audited = deployment.cli("admin", "audit", "--subject", "acl", "--json").stdout.splitlines()
    assert [orjson.loads(line)["details"]["removed"] for line in audited][-1] == [stale.describe()]
    listed = deployment.cli("admin", "acl", "list").stdout
    assert f"User:client READ topic {deployment.prefix}.predictions" in listed
    assert "ACLs are read and changed with admin credentials" in deployment.refused("client", "acl", "list")


def test_no_password_in_any_output(deployment: Deployment, worker: WorkerProcess) -> None:
    logs = [worker.log, *(deployment.broker.dir / "logs").iterdir()]
    shown = "\n".join(deployment.outputs + [log.read_text(errors="replace") for log in logs])
    assert deployment.outputs
    for password in deployment.passwords():
        assert password not in shown
