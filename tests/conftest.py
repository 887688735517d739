"""Shared fixtures: a real Kafka broker for the session, a trained registry, a worker.

The broker is the embedded KRaft broker on a free port with its own data folder, so a
test run never touches a broker the user runs; set STREAMSERVE_BROKER to use another.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.config import Settings

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


@dataclass
class Worker:
    settings: Settings
    env: dict[str, str]
    metrics_url: str
    process: subprocess.Popen
    log: Path

    def metrics(self) -> str:
        return urllib.request.urlopen(self.metrics_url, timeout=5).read().decode()


def start_worker(bootstrap: str, registry: Path, log: Path, **env: str) -> Worker:
    """A `streamserve worker` process on its own topics; returns once it serves."""
    prefix = f"t{uuid.uuid4().hex[:10]}"
    port = free_port()
    environment = dict(os.environ, STREAMSERVE_BROKER=bootstrap, STREAMSERVE_REGISTRY=str(registry),
                       STREAMSERVE_TOPIC_PREFIX=prefix, STREAMSERVE_APP_ID=prefix, **env)
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "agents.cli", "worker", "--metrics-port",
                                    str(port)], env=environment, stdout=out,
                                   stderr=subprocess.STDOUT, cwd=REPO)
    worker = Worker(Settings.from_env(environment), environment,
                    f"http://127.0.0.1:{port}/metrics", process, log)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"worker exited ({process.returncode}):\n{log.read_text()[-3000:]}")
        try:
            if "streamserve_worker_ready 1.0" in worker.metrics():
                return worker
        except OSError:
            pass
        time.sleep(0.3)
    stop_worker(worker)
    raise RuntimeError(f"worker not ready after 120 s:\n{log.read_text()[-3000:]}")


def stop_worker(worker: Worker, timeout: float = 30) -> int:
    if worker.process.poll() is None:
        worker.process.send_signal(signal.SIGTERM)
        try:
            worker.process.wait(timeout)
        except subprocess.TimeoutExpired:
            worker.process.kill()
            worker.process.wait()
    return worker.process.returncode


@pytest.fixture(scope="module")
def worker(kafka_bootstrap: str, registry_dir: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    handle = start_worker(kafka_bootstrap, registry_dir,
                          tmp_path_factory.mktemp("worker") / "worker.log")
    try:
        yield handle
    finally:
        stop_worker(handle)
