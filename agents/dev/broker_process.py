"""The local broker's JVM process as the OS and the network see it: whether a pid still
runs, ending a process group, advisory locks, whether a port takes connections and whether
a Kafka broker there serves clients.

Apart from ``agents.dev.broker`` (which decides when to start, stop and wait) because none
of it knows the broker's folders or settings: pids, paths, hosts and ports in, facts out.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pipeline.config is pure too, but keep this module light to import
    from pipeline.config import Settings


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock, so concurrent start/stop/install calls take turns."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs; reaps it when it is our exited child, and counts zombies as gone."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return True


def terminate(pid: int, timeout: float, graceful: bool = True) -> bool:
    """End process ``pid`` and its group: SIGTERM, then SIGKILL after ``timeout`` seconds
    (at once without ``graceful``). Whether it is gone."""
    if graceful:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)  # start_new_session: the pid leads its group
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if alive(pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
    return not alive(pid)


def port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def kafka_ready(host: str, port: int, timeout: float, login: Settings | None = None) -> bool:
    """Whether a Kafka broker at host:port answers a metadata request listing a live broker.

    A KRaft broker binds its port early but serves requests only once it has caught
    up with the metadata log and is unfenced, so an answer here means a client can
    create topics and produce right away. ``login``: the settings (security) to connect
    with, for a secured broker.
    """
    # A thread of its own, so callers inside a running event loop can use this too.
    with ThreadPoolExecutor(max_workers=1) as thread:
        return thread.submit(asyncio.run, _answers_metadata(f"{host}:{port}", timeout, login)).result()


async def _answers_metadata(bootstrap: str, timeout: float, login: Settings | None) -> bool:
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaError

    from agents.kafka.connect import connection

    options = {"bootstrap_servers": bootstrap} if login is None else connection(login)

    # Refused connections are the expected answer while the broker starts: keep them quiet.
    aiokafka_log = logging.getLogger("aiokafka")
    level = aiokafka_log.level
    aiokafka_log.setLevel(logging.CRITICAL)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            admin = AIOKafkaAdminClient(**options, request_timeout_ms=2000)
            try:
                await admin.start()
                cluster = await admin.describe_cluster()
                if cluster["brokers"] and cluster["controller_id"] >= 0:
                    return True
            except (KafkaError, OSError):
                pass
            finally:
                await admin.close()
            await asyncio.sleep(0.2)
        return False
    finally:
        aiokafka_log.setLevel(level)
