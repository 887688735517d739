"""The embedded local Kafka broker, one KRaft node (broker + controller) in a JVM, and its
manager (install, start, stop, status), one module because every step works the same
folders, pid file and lock (the OS and network probes are ``agents.dev.broker_process``;
a cluster of such nodes is ``agents.dev.cluster``).

``streamserve broker start|stop|status`` and ``streamserve demo`` use it when
``STREAMSERVE_BROKER`` is unset. Everything lives under one home folder
(``STREAMSERVE_HOME``, default ``.streamserve``)::

    <home>/kafka/libs/         Kafka 3.9 jars, fetched once from Maven Central (agents/dev/kafka/pom.xml)
    <home>/broker/server.properties
    <home>/broker/data/        KRaft metadata and topic data
    <home>/broker/logs/        server.log (log4j, WARN and up) and broker.out (JVM stdout/stderr)
    <home>/broker/broker.pid

``broker start --secure`` runs a second, secured broker from ``<home>/broker-secure/``
(same layout, its own data) on the local port + 2: TLS with a throwaway CA, SCRAM logins,
and the KRaft ACL authorizer denying whatever no ACL allows. Its CA, users, credentials
files and listener properties are ``agents.dev.secure_broker``.

Light to import (aiokafka and cryptography are imported when used). Readiness is
checked with a Kafka Metadata request, so ``start()`` returns only once the broker
serves clients (not merely once its port accepts TCP connections, which happens before
the broker processes requests).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from agents.dev.broker_process import alive, kafka_ready, locked, port_open, terminate
from agents.dev.secure_broker import SUPER_USER, BrokerSecrets, write_private
from pipeline.errors import StreamserveError
from pipeline.security import local_env_file

if TYPE_CHECKING:  # pipeline.config is pure too, but keep this module importable alone
    from pipeline.config import Settings

__all__ = ["BrokerError", "BrokerStatus", "ClusterNode", "LocalBroker", "ensure_broker"]

KAFKA_DIR = Path(__file__).resolve().parent / "kafka"
POM = KAFKA_DIR / "pom.xml"
LOG4J = KAFKA_DIR / "log4j.properties"

HOST = "127.0.0.1"
HEAP = "-Xmx512m"
STAMP = ".streamserve-complete"  # written into libs/ once every jar is there
DOCKER_HINT = "or run `docker compose up` and set STREAMSERVE_BROKER=127.0.0.1:9092"


class BrokerError(StreamserveError, RuntimeError):
    """The local broker cannot be installed, started or stopped; the message says what to do."""


@dataclass(frozen=True)
class BrokerStatus:
    running: bool
    pid: int | None
    bootstrap: str
    home: Path


@dataclass(frozen=True)
class ClusterNode:
    """One node's place in a local cluster of ``size`` combined KRaft nodes
    (``agents.dev.cluster``): its id, controller port and the quorum's voters."""

    id: int
    controller_port: int
    voters: str  # "1@host:port,2@host:port,..."
    size: int
    cluster_id: str = ""

    @property
    def replication(self) -> int:
        return min(3, self.size)

    @property
    def min_insync(self) -> int:
        """Two of three replicas: one node may be down and writes with acks=all go on."""
        return max(1, self.replication - 1)


class LocalBroker:
    """A single-node KRaft Kafka broker run from jars under ``home``.

    The broker listens on ``127.0.0.1:port`` (PLAINTEXT; with ``secure``, SASL_SSL) and
    its controller on ``127.0.0.1:port+1``. ``libs`` overrides where the jars live (tests
    share one download); it defaults to ``home/kafka/libs``.
    """

    def __init__(self, home: Path, port: int = 9092, libs: Path | None = None, *,
                 secure: bool = False, node: ClusterNode | None = None) -> None:
        if not 0 < port < 65535:
            raise BrokerError(f"broker port {port} is not usable: pick a port between 1 and 65534")
        self.home = Path(home).absolute()
        self.port = port
        self.node = node
        self.controller_port = node.controller_port if node else port + 1
        self.secure = secure
        self.libs = Path(libs).absolute() if libs is not None else self.home / "kafka" / "libs"
        self.dir = (self.home / "cluster" / f"node-{node.id}" if node
                    else self.home / ("broker-secure" if secure else "broker"))
        self._secrets = BrokerSecrets(self.dir, self.home, self.bootstrap)
        self.tls_dir = self._secrets.tls_dir
        self.credentials_dir = self._secrets.credentials_dir
        self.data_dir = self.dir / "data"
        self.logs_dir = self.dir / "logs"
        self.config_path = self.dir / "server.properties"
        self.pid_path = self.dir / "broker.pid"
        self.log_path = self.logs_dir / "server.log"
        self.out_path = self.logs_dir / "broker.out"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_marks: dict[Path, int] = {}  # log sizes at launch: quote only this run's lines

    # ------------------------------------------------------------------ facts

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def installed(self) -> bool:
        stamp = self.libs / STAMP
        return stamp.is_file() and stamp.read_text().strip() == _pom_digest()

    @property
    def cafile(self) -> Path:
        return self._secrets.cafile

    def env_file(self, user: str) -> Path:
        """The secured broker's settings file for ``user`` (``set -a; . FILE`` to use it)."""
        return local_env_file(self.home, user)

    def environment(self, user: str) -> dict[str, str]:
        """The STREAMSERVE_* settings that log in to the secured broker as ``user``."""
        if not self.secure:
            raise BrokerError("only the secured broker (`streamserve broker start --secure`) "
                              "has users to log in as")
        return self._secrets.environment(user)

    def status(self) -> BrokerStatus:
        pid = self._running_pid()
        running = pid is not None or self._ready(timeout=2.0)
        return BrokerStatus(running=running, pid=pid, bootstrap=self.bootstrap, home=self.home)

    def server_properties(self) -> str:
        """The broker's configuration: one KRaft node with every topic on one replica, or a
        node of a local cluster (``node``) whose topics get a replica on every node (three
        at most) and take writes while one of them is down."""
        node = self.node or ClusterNode(1, self.controller_port, f"1@{HOST}:{self.controller_port}", 1)
        replicas, in_sync = str(node.replication), str(node.min_insync)
        props = {
            "process.roles": "broker,controller",
            "node.id": str(node.id),
            "controller.quorum.voters": node.voters,
            "listeners": f"PLAINTEXT://{HOST}:{self.port},CONTROLLER://{HOST}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{HOST}:{self.port}",
            "inter.broker.listener.name": "PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.data_dir),
            "num.partitions": "1",
            "default.replication.factor": replicas,
            "min.insync.replicas": in_sync,
            "offsets.topic.replication.factor": replicas,
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": replicas,
            "transaction.state.log.min.isr": in_sync,
            "transaction.state.log.num.partitions": "4",
            "group.initial.rebalance.delay.ms": "0",
            # Topics are created on purpose (streamserve and faust both declare theirs), never
            # by a typo in a client.
            "auto.create.topics.enable": "false",
            "log.retention.hours": "24",
            # The compacted control topic needs the cleaner; its default 128 MiB
            # buffer would take a quarter of the 512 MiB heap.
            "log.cleaner.dedupe.buffer.size": str(32 * 1024 * 1024),
        }
        if self.secure:
            props |= self._secrets.server_properties(HOST, self.port, self.controller_port)
        body = "".join(f"{k}={v}\n" for k, v in props.items())
        return "# Written by streamserve (agents/dev/broker.py) on every start; edits are lost.\n" + body

    # ---------------------------------------------------------------- install

    def install(self) -> None:
        """Fetch the Kafka jars with Maven once; a no-op when a complete install is present."""
        if shutil.which("java") is None:
            raise BrokerError(
                "the local Kafka broker needs Java (11 or newer) on PATH: install a JRE "
                f"(e.g. `apt-get install default-jre-headless`), {DOCKER_HINT}"
            )
        if self.installed:
            return
        mvn = shutil.which("mvn")
        if mvn is None:
            raise BrokerError(
                f"the local Kafka broker's jars are not in {self.libs} and fetching them needs "
                f"Maven (`mvn`) on PATH: install Maven (e.g. `apt-get install maven`), {DOCKER_HINT}"
            )
        self.libs.parent.mkdir(parents=True, exist_ok=True)
        with locked(self.libs.parent / ".install.lock"):
            if self.installed:  # another process finished while we waited
                return
            partial = self.libs.with_name(self.libs.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            cmd = [mvn, "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
                   "-DincludeScope=runtime", f"-DoutputDirectory={partial}"]
            _progress(f"fetching the Kafka broker's jars into {self.libs} (once)")
            result = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
            jars = list(partial.glob("kafka_2.13-*.jar")) if partial.is_dir() else []
            if result.returncode != 0 or not jars:
                shutil.rmtree(partial, ignore_errors=True)
                tail = _tail_text((result.stdout or "") + (result.stderr or ""), 4)
                raise BrokerError(
                    f"Maven could not fetch the Kafka jars (exit {result.returncode}; needs Maven "
                    f"Central or a filled ~/.m2): {tail or 'no output'}; {DOCKER_HINT}"
                )
            (partial / STAMP).write_text(_pom_digest() + "\n")
            shutil.rmtree(self.libs, ignore_errors=True)
            partial.rename(self.libs)

    # ------------------------------------------------------------ start, stop

    def start(self, timeout: float = 90, *, wait: bool = True) -> bool:
        """Start the broker and return once it serves clients.

        Returns False, doing nothing, when a broker already runs on this port.
        Raises BrokerError (with the last lines of the broker's log) when it
        exits early or is not ready within ``timeout`` seconds. ``wait=False`` returns
        once it is launched, for the nodes of a cluster: none serves before a majority of
        the quorum runs, so all are launched before ``wait_ready`` is called on each.
        """
        self.dir.mkdir(parents=True, exist_ok=True)
        with locked(self.dir / ".lock"):
            pid = self._running_pid()
            if pid is not None:
                # Ours, perhaps still starting (another `broker start` raced us).
                if wait:
                    self._wait_ready(pid, time.monotonic() + timeout, stop_on_timeout=False)
                return False
            if port_open(HOST, self.port):
                if self._ready(timeout=min(timeout, 10.0)):
                    return False
                raise BrokerError(
                    f"port {self.port} is in use by something that does not answer as a Kafka "
                    "broker: stop it, or set STREAMSERVE_LOCAL_BROKER_PORT to a free port"
                )
            if port_open(HOST, self.controller_port):
                raise BrokerError(
                    f"port {self.controller_port} (the local broker's controller port) "
                    "is in use: free it, or set STREAMSERVE_LOCAL_BROKER_PORT to another port"
                )
            self.install()
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self.logs_dir.mkdir(parents=True, exist_ok=True)
            if self.secure:
                self._make_secrets()
            write_private(self.config_path, self.server_properties().encode())  # passwords, secure
            self._format_storage()
            pid = self._launch()
            if wait:
                self._wait_started(pid, timeout)
            return True

    def wait_ready(self, timeout: float = 90) -> None:
        """Return once the broker launched by ``start(wait=False)`` serves clients; stop it
        and raise BrokerError when it exits or is not ready within ``timeout`` seconds."""
        pid = self._running_pid()
        if pid is None:
            raise BrokerError(f"the local Kafka broker on {self.bootstrap} is not running "
                              f"(logs in {self.logs_dir}): {self._log_tail()}")
        self._wait_started(pid, timeout)

    def pid(self) -> int | None:
        """The broker's process id while it runs (the chaos tests pause it)."""
        return self._running_pid()

    def stop(self, timeout: float = 30, *, crash: bool = False) -> bool:
        """Stop the broker started from this home: SIGTERM, then SIGKILL after ``timeout``;
        with ``crash``, SIGKILL at once (kill -9: nothing flushed; the chaos tests).

        Returns False when none was running. A broker on this port that was not
        started from this home (no pid file) is left alone.
        """
        if not self.dir.is_dir():
            return False
        with locked(self.dir / ".lock"):
            pid = self._running_pid()
            if pid is None:
                return False
            self._terminate(pid, 0 if crash else timeout, graceful=not crash)
            self.pid_path.unlink(missing_ok=True)
            return True

    # -------------------------------------------------------------- internals

    def _java(self, *args: str) -> list[str]:
        java = shutil.which("java")
        if java is None:
            raise BrokerError(f"the local Kafka broker needs Java on PATH: install a JRE, {DOCKER_HINT}")
        return [java, *args]

    def _classpath(self) -> str:
        return str(self.libs / "*")  # the JVM expands this wildcard itself

    @property
    def _formatted(self) -> bool:
        return (self.data_dir / "meta.properties").is_file()

    def _format_storage(self) -> None:
        if self._formatted:
            return
        users = self._secrets.scram_arguments() if self.secure else []
        cluster_id = self.node.cluster_id if self.node and self.node.cluster_id else new_cluster_id()
        tool = ["kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(self.config_path),
                "--ignore-formatted", *users]
        # The tool takes passwords only as arguments: they go in a private argument file
        # (`java @FILE`), so that the process list shows none.
        arguments = self.dir / ".format-arguments"
        write_private(arguments, "".join(f'"{arg}"\n' for arg in tool).encode())
        cmd = self._java(
            "-Xmx256m", f"-Dlog4j.configuration={LOG4J.as_uri()}", f"-Dkafka.logs.dir={self.logs_dir}",
            "-cp", self._classpath(), f"@{arguments}")
        try:
            result = subprocess.run(cmd, cwd=self.dir, stdin=subprocess.DEVNULL,
                                    capture_output=True, text=True, timeout=120)
        finally:
            arguments.unlink(missing_ok=True)
        if result.returncode != 0:
            tail = _tail_text(result.stdout + result.stderr, 4)
            raise BrokerError(
                f"formatting the broker's storage in {self.data_dir} failed: {tail or 'no output'}; "
                f"delete {self.data_dir} to start afresh"
            )

    def _make_secrets(self) -> None:
        """A fresh CA, broker certificate and passwords before the first start; later starts
        keep them (the SCRAM users were made with these passwords). Writes the env files."""
        if not self._formatted:
            self._secrets.create()
        if missing := self._secrets.missing():
            raise BrokerError(f"{missing} is missing, and the secured broker's data in "
                              f"{self.data_dir} was made with it: delete {self.dir} to start "
                              "afresh (new CA, new passwords, no topics)")
        self._secrets.write_env_files()

    def _ready(self, timeout: float) -> bool:
        """Whether the broker serves clients; the secured one is asked as its admin."""
        if not self.secure:
            return kafka_ready(HOST, self.port, timeout)
        if not self._secrets.password_path(SUPER_USER).is_file():
            return False  # never started from here: nothing to log in with
        from pipeline.config import Settings

        return kafka_ready(HOST, self.port, timeout, Settings.from_env(self.environment(SUPER_USER)))

    def _launch(self) -> int:
        self._log_marks = {p: p.stat().st_size for p in (self.log_path, self.out_path) if p.exists()}
        cmd = self._java(
            HEAP, "-Xms128m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j.configuration={LOG4J.as_uri()}", f"-Dkafka.logs.dir={self.logs_dir}",
            "-cp", self._classpath(), "kafka.Kafka", str(self.config_path),
        )
        with open(self.out_path, "ab") as out:
            out.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(cmd)}\n".encode())
            out.flush()
            self._proc = subprocess.Popen(
                cmd, cwd=self.dir, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, close_fds=True,
            )
        self.pid_path.write_text(f"{self._proc.pid}\n")
        return self._proc.pid

    def _wait_started(self, pid: int, timeout: float) -> None:
        try:
            self._wait_ready(pid, time.monotonic() + timeout, stop_on_timeout=True)
        except BrokerError:
            self._terminate(pid, 10)
            self.pid_path.unlink(missing_ok=True)
            raise

    def _wait_ready(self, pid: int, deadline: float, stop_on_timeout: bool) -> None:
        while True:
            if not alive(pid):
                raise BrokerError(
                    f"the local Kafka broker exited during start-up (logs in {self.logs_dir}): "
                    f"{self._log_tail()}"
                )
            if self._ready(timeout=2.0):
                return
            if time.monotonic() >= deadline:
                what = "was stopped" if stop_on_timeout else "is still starting"
                raise BrokerError(
                    f"the local Kafka broker was not ready on {self.bootstrap} in time and {what} "
                    f"(logs in {self.logs_dir}): {self._log_tail()}"
                )
            time.sleep(0.2)

    def _terminate(self, pid: int, timeout: float, graceful: bool = True) -> None:
        if not terminate(pid, timeout, graceful):
            raise BrokerError(f"broker process {pid} did not exit after SIGKILL; check it with `ps {pid}`")
        if self._proc is not None and self._proc.pid == pid:
            with contextlib.suppress(Exception):
                self._proc.wait(timeout=1)
            self._proc = None

    def _running_pid(self) -> int | None:
        """The pid of the broker started from this home, when it still runs; drops stale pid files."""
        try:
            pid = int(self.pid_path.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        if alive(pid) and self._is_our_broker(pid):
            return pid
        with contextlib.suppress(FileNotFoundError):
            self.pid_path.unlink()
        return None

    def _is_our_broker(self, pid: int) -> bool:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except FileNotFoundError:
            # On Linux the process is gone; without /proc (macOS) trust the pid file.
            return not Path("/proc/self").exists()
        except OSError:
            return True
        return b"kafka.Kafka" in cmdline and str(self.config_path).encode() in cmdline

    def _log_tail(self, lines: int = 4) -> str:
        """The most telling last lines of the broker's logs, on one line."""
        picked: list[str] = []
        for path in (self.log_path, self.out_path):
            try:
                with open(path, "rb") as handle:
                    handle.seek(self._log_marks.get(path, 0))
                    text = handle.read().decode(errors="replace").splitlines()[-200:]
            except FileNotFoundError:
                continue
            text = [t for t in text if t.strip() and not t.startswith("--- ")]
            errors = [t for t in text if any(w in t for w in ("ERROR", "FATAL", "Exception", "Error:"))]
            picked.extend((errors or text)[-lines:])
            if errors:
                break
        return _tail_text("\n".join(picked), lines) or "the logs are empty"


def ensure_broker(settings: Settings) -> LocalBroker | None:
    """Start the embedded broker when ``settings`` use it (STREAMSERVE_BROKER unset).

    Returns the broker (already running or just started), or None when
    STREAMSERVE_BROKER names another cluster.
    """
    if not settings.kafka.uses_local_broker:
        return None
    broker = LocalBroker(settings.kafka.home, settings.kafka.local_broker_port)
    broker.start()
    return broker


# ------------------------------------------------------------------ helpers


def _progress(message: str) -> None:
    print(f"streamserve: {message}", file=sys.stderr, flush=True)


def _pom_digest() -> str:
    return hashlib.sha256(POM.read_bytes()).hexdigest()


def _tail_text(text: str, lines: int) -> str:
    kept = [line.strip() for line in text.replace("\x1b[0m", "").splitlines() if line.strip()]
    return " | ".join(line[:300] for line in kept[-lines:])


def new_cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding (as Kafka's Uuid)."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not text.startswith("-"):
            return text
