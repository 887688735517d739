"""Shared fixtures: a real Kafka broker for the session, a trained registry, a worker.

The broker is the embedded KRaft broker on a free port with its own data folder, so a
test run never touches a broker the user runs; set STREAMSERVE_BROKER to use another.

The registry's versions are signed with a test key kept beside (never inside) the
registry; ``registry_keys(registry)`` is the environment that signs with and trusts it,
and ``start_worker`` passes its STREAMSERVE_TRUSTED_KEYS to every worker.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agents.dev.fleet import WorkerProcess, free_port

REPO = Path(__file__).resolve().parents[1]


def shared_libs() -> Path:
    """The Kafka jars `scripts/setup.sh` fetched, shared by every test broker."""
    home = Path(os.environ.get("STREAMSERVE_HOME") or ".streamserve")
    return (home if home.is_absolute() else REPO / home) / "kafka" / "libs"


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if os.environ.get("STREAMSERVE_BROKER"):
        yield os.environ["STREAMSERVE_BROKER"]
        return
    from agents.dev.broker import LocalBroker

    broker = LocalBroker(tmp_path_factory.mktemp("kafka"), free_port(2), libs=shared_libs())
    broker.start()
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def secure_broker(tmp_path_factory: pytest.TempPathFactory):
    """The secured local broker (TLS, SCRAM users admin, worker and client, ACLs enforced)
    on a free port, in a home of its own; ``environment(user)`` logs in as ``user``."""
    from agents.dev.broker import LocalBroker
    from agents.cli.main import main

    # Started as a user starts it, `streamserve broker start --secure` (which also audits the
    # start), on the shared jars; its port is the local broker's + 2.
    home, port = tmp_path_factory.mktemp("kafka-secure"), free_port(4)
    (home / "kafka").mkdir()
    (home / "kafka" / "libs").symlink_to(shared_libs())
    with pytest.MonkeyPatch.context() as patch:
        for name in [name for name in os.environ if name.startswith("STREAMSERVE_")]:
            patch.delenv(name)
        patch.setenv("STREAMSERVE_HOME", str(home))
        patch.setenv("STREAMSERVE_LOCAL_BROKER_PORT", str(port))
        assert main(["broker", "start", "--secure"]) == 0
    broker = LocalBroker(home, port + 2, secure=True)
    try:
        yield broker
    finally:
        broker.stop()


def registry_keys(registry: Path) -> dict[str, str]:
    """STREAMSERVE_SIGNING_KEY and STREAMSERVE_TRUSTED_KEYS for the test key of ``registry``:
    a folder beside it (``<registry>-keys``) holding ``signing.key`` and ``signing.pub``."""
    keys = registry.parent / f"{registry.name}-keys"
    return {"STREAMSERVE_SIGNING_KEY": str(keys / "signing.key"), "STREAMSERVE_TRUSTED_KEYS": str(keys)}


def iris_registry(registry_dir: Path, folder: Path) -> tuple[Path, dict[str, str]]:
    """A copy of the session's registry with iris alone (every worker loads every model:
    one fewer to compile) at ``folder``/registry, with the session's test key beside it;
    returns the copy and its ``registry_keys``."""
    root = folder / "registry"
    shutil.copytree(registry_dir, root, ignore=shutil.ignore_patterns("breast_cancer"))
    keys = registry_keys(root)
    shutil.copytree(registry_keys(registry_dir)["STREAMSERVE_TRUSTED_KEYS"],
                    keys["STREAMSERVE_TRUSTED_KEYS"])
    return root, keys


def register_tampered(root: Path, model: str = "iris", version: str = "1") -> str:
    """A copy of ``model:version`` registered in ``root`` and signed with its test key, then
    one byte of its parameters flipped on disk: a new version every worker must refuse
    (``tampered_parameters``). Returns that version."""
    from pipeline.registry import ManifestDraft, Registry
    from pipeline.signing import load_private_key, register_signed

    registry = Registry(root)
    source = registry.manifest(model, version)
    draft = ManifestDraft(**{f.name: getattr(source, f.name)
                             for f in dataclasses.fields(ManifestDraft)})
    key = load_private_key(Path(registry_keys(root)["STREAMSERVE_SIGNING_KEY"]))
    copy = register_signed(registry, draft, registry.load_params(model, version), key)
    params_file = next(p for p in registry.folder(model, copy.version).iterdir()
                       if p.suffix == ".npz")
    data = bytearray(params_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    params_file.write_bytes(bytes(data))
    return copy.version


@pytest.fixture(scope="session")
def registry_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """iris and breast_cancer version 1, signed with the key of ``registry_keys(root)``."""
    from models.train import train_and_register
    from pipeline.registry import Registry

    root = tmp_path_factory.mktemp("registry")
    key = Path(registry_keys(root)["STREAMSERVE_SIGNING_KEY"])
    for name in ("iris", "breast_cancer"):
        train_and_register(name, Registry(root), signing_key=key)
    return root


def start_worker(bootstrap: str, registry: Path, log: Path, **env: str) -> WorkerProcess:
    """A worker on topics and a consumer group of its own, trusting the registry's test key."""
    prefix = f"t{uuid.uuid4().hex[:10]}"
    trust = {"STREAMSERVE_TRUSTED_KEYS": registry_keys(registry)["STREAMSERVE_TRUSTED_KEYS"]}
    return WorkerProcess.start(log, {**trust, "STREAMSERVE_BROKER": bootstrap,
                                     "STREAMSERVE_REGISTRY": str(registry),
                                     "STREAMSERVE_TOPIC_PREFIX": prefix, "STREAMSERVE_APP_ID": prefix,
                                     **env})


@pytest.fixture(scope="module")
def worker(kafka_bootstrap: str, registry_dir: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    handle = start_worker(kafka_bootstrap, registry_dir,
                          tmp_path_factory.mktemp("worker") / "worker.log")
    try:
        yield handle
    finally:
        handle.stop()
