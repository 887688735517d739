"""Shared fixtures: a real Kafka broker for the session, a trained registry, a worker.

The broker is the embedded KRaft broker on a free port with its own data folder, so a
test run never touches a broker the user runs; set STREAMSERVE_BROKER to use another.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agents.fleet import WorkerProcess, free_port

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
    from agents.broker import LocalBroker

    broker = LocalBroker(tmp_path_factory.mktemp("kafka"), free_port(2), libs=shared_libs())
    broker.start()
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def registry_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from models.train import train_and_register
    from pipeline.registry import Registry

    root = tmp_path_factory.mktemp("registry")
    for name in ("iris", "breast_cancer"):
        train_and_register(name, Registry(root))
    return root


def start_worker(bootstrap: str, registry: Path, log: Path, **env: str) -> WorkerProcess:
    """A worker on topics and a consumer group of its own."""
    prefix = f"t{uuid.uuid4().hex[:10]}"
    return WorkerProcess.start(log, dict(STREAMSERVE_BROKER=bootstrap, STREAMSERVE_REGISTRY=str(registry),
                                         STREAMSERVE_TOPIC_PREFIX=prefix, STREAMSERVE_APP_ID=prefix, **env))


@pytest.fixture(scope="module")
def worker(kafka_bootstrap: str, registry_dir: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    handle = start_worker(kafka_bootstrap, registry_dir,
                          tmp_path_factory.mktemp("worker") / "worker.log")
    try:
        yield handle
    finally:
        handle.stop()
