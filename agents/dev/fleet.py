"""Worker processes started from Python: for the demo, the benchmark and the tests."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import Settings
from pipeline.errors import StreamserveError


class WorkerFailed(StreamserveError, RuntimeError):
    """A worker process exited or did not become ready; the message quotes its log."""


def free_port(consecutive: int = 1) -> int:
    """A free port, with the ``consecutive - 1`` ports after it free too (the local
    broker's controller listens on its port + 1). Below the range the OS takes client
    ports from: a broker restarted on a port of that range may find it taken by some
    client's connection meanwhile (seen: a cluster node's controller port)."""
    low = _ephemeral_low()
    for _ in range(200):
        port = random.randrange(10_000, low - consecutive)
        if all(_free(port + i) for i in range(consecutive)):
            return port
    raise RuntimeError(f"no {consecutive} adjacent free ports found below {low}")


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default; macOS starts at 49152


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@dataclass
class WorkerProcess:
    """One `streamserve worker` process with its metrics endpoint and log file."""

    settings: Settings
    env: dict[str, str]
    metrics_port: int
    process: subprocess.Popen
    log: Path

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def metrics(self) -> str:
        return urllib.request.urlopen(self.metrics_url, timeout=5).read().decode()

    @classmethod
    def start(cls, log: Path, env: Mapping[str, str] | None = None,
              timeout: float = 120, wait: bool = True) -> WorkerProcess:
        """Start a worker with ``env`` over this process's environment; return once it serves
        (with ``wait``; at once without, e.g. for a worker meant to crash)."""
        environment = dict(os.environ, **(env or {}))
        port = free_port()
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "agents.cli.main", "worker", "--metrics-port", str(port)],
                env=environment, stdout=out, stderr=subprocess.STDOUT)
        worker = cls(Settings.from_env(environment), environment, port, process, log)
        if not wait:
            return worker
        try:
            worker._wait_ready(timeout)
        except BaseException:
            worker.stop()
            raise
        return worker

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise WorkerFailed(f"the worker exited with code {self.process.returncode}; "
                                   f"its log ({self.log}) ends:\n{self.log_tail()}")
            try:  # every readiness check passes: models warm, consumer joined, Faust started
                if urllib.request.urlopen(self.metrics_url.replace("/metrics", "/readyz"),
                                          timeout=5).status == 200:
                    return
            except OSError:  # HTTPError (503: not ready yet) included
                pass
            time.sleep(0.3)
        raise WorkerFailed(f"the worker was not ready after {timeout:.0f} s; its log "
                           f"({self.log}) ends:\n{self.log_tail()}")

    def log_tail(self, characters: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-characters:]

    def kill(self) -> None:
        """SIGKILL, as a crash: nothing is finished, flushed or committed."""
        self.process.kill()
        self.process.wait()

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM (the worker finishes its batch and commits), SIGKILL after ``timeout``."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode
