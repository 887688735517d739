"""Shared fixtures: a real Kafka broker for the session, a trained registry, a worker.

The broker is the embedded KRaft broker on a free port with its own data folder, so a
test run never touches a broker the user runs; set STREAMSERVE_BROKER to use another.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agents.fleet import WorkerProcess

REPO = Path(__file__).resolve().parents[1]


def free_port(consecutive: int = 1) -> int:
    """A port with ``consecutive - 1`` free ports after it (the broker's controller uses port+1)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + consecutive < 65536 and all(_free(port + i) for i in range(1, consecutive)):
            return port
    raise RuntimeError("no free port found")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if os.environ.get("STREAMSERVE_BROKER"):
        yield os.environ["STREAMSERVE_BROKER"]
        return
    from agents.broker import LocalBroker

    home = Path(os.environ.get("STREAMSERVE_HOME", REPO / ".streamserve"))
    broker = LocalBroker(tmp_path_factory.mktemp("kafka"), free_port(2), libs=home / "kafka" / "libs")
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
