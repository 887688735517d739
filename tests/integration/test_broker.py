"""The embedded local Kafka broker, for real: install, start, serve a client, stop."""

from __future__ import annotations

import asyncio
import shutil
import socket
from pathlib import Path

import pytest

from agents.cli.main import main
from agents.dev.broker import BrokerError, LocalBroker, ensure_broker
from agents.dev.broker_process import alive
from agents.dev.fleet import free_port
from pipeline.config import KafkaSettings, Settings
from tests.conftest import shared_libs

pytestmark = pytest.mark.integration



@pytest.fixture(scope="module")
def libs() -> Path:
    libs = shared_libs()
    probe = LocalBroker(libs.parent.parent, libs=libs)
    if not probe.installed and (shutil.which("mvn") is None or shutil.which("java") is None):
        pytest.skip("the local broker needs java and mvn (or jars fetched by scripts/setup.sh)")
    if shutil.which("java") is None:
        pytest.skip("the local broker needs java")
    probe.install()
    return libs


async def test_start_serve_stop(tmp_path: Path, libs: Path) -> None:
    port = free_port(2)
    broker = LocalBroker(tmp_path / "home", port, libs=libs)
    assert not broker.status().running
    try:
        assert broker.start(timeout=90) is True
        status = broker.status()
        assert status.running and status.pid is not None
        assert status.bootstrap == f"127.0.0.1:{port}"
        assert status.home == (tmp_path / "home").absolute()
        pid = status.pid

        # A second start is a no-op, from this object and from a fresh one (another CLI call).
        assert broker.start() is False
        other = LocalBroker(tmp_path / "home", port, libs=libs)
        assert other.start() is False
        assert other.status().pid == pid

        # Right after start() a client can create a topic, produce and consume in a group.
        await _round_trip(broker.bootstrap)

        # Stop from a fresh object, as `streamserve broker stop` would.
        assert other.stop() is True
        assert not alive(pid)
        assert _processes_mentioning(str(broker.config_path)) == []
        assert not broker.pid_path.exists()
        status = broker.status()
        assert not status.running and status.pid is None
        assert broker.stop() is False
    finally:
        broker.stop()


async def _round_trip(bootstrap: str) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic("streamserve-test.requests", 4, 1)])
        assert "streamserve-test.requests" in await admin.list_topics()
    finally:
        await admin.close()

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait("streamserve-test.requests", b'{"id": "r-1"}', key=b"r-1")
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        "streamserve-test.requests",
        bootstrap_servers=bootstrap,
        group_id="streamserve-test",
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        message = await asyncio.wait_for(consumer.getone(), timeout=30)
        assert (message.key, message.value) == (b"r-1", b'{"id": "r-1"}')
        await consumer.commit()
    finally:
        await consumer.stop()


def test_install_without_maven_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    java = shutil.which("java")
    if java is None:
        pytest.skip("needs java, to reach the Maven check")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "java").symlink_to(java)
    monkeypatch.setenv("PATH", str(bin_dir))
    empty = tmp_path / "libs"
    empty.mkdir()
    broker = LocalBroker(tmp_path / "home", free_port(2), libs=empty)
    with pytest.raises(BrokerError) as caught:
        broker.start()
    message = str(caught.value)
    assert "mvn" in message
    assert "docker compose up" in message and "STREAMSERVE_BROKER" in message
    assert "\n" not in message
    assert not broker.pid_path.exists()


def test_install_without_java_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BrokerError, match="Java.*docker compose up"):
        LocalBroker(tmp_path / "home", libs=tmp_path / "libs").install()


def test_controller_port_taken(tmp_path: Path, libs: Path) -> None:
    port = free_port(2)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port + 1))
        squatter.listen()
        broker = LocalBroker(tmp_path / "home", port, libs=libs)
        with pytest.raises(BrokerError, match="controller port.*STREAMSERVE_LOCAL_BROKER_PORT"):
            broker.start()
    assert not broker.pid_path.exists()
    assert _processes_mentioning(str(broker.config_path)) == []


def _processes_mentioning(text: str) -> list[int]:
    """Pids of live processes whose command line contains ``text`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if text.encode() in (entry / "cmdline").read_bytes() and alive(int(entry.name)):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_server_properties_single_node(tmp_path: Path) -> None:
    props = dict(
        line.split("=", 1)
        for line in LocalBroker(tmp_path, 29092).server_properties().splitlines()
        if line and not line.startswith("#")
    )
    assert props["process.roles"] == "broker,controller"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:29093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:29092"
    for key in ("offsets.topic.replication.factor", "transaction.state.log.replication.factor",
                "transaction.state.log.min.isr"):
        assert props[key] == "1"
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert props["log.dirs"] == str((tmp_path / "broker" / "data").absolute())


def test_ensure_broker_leaves_a_configured_cluster_alone(tmp_path: Path) -> None:
    settings = Settings(kafka=KafkaSettings(broker="kafka.example:9092", home=tmp_path))
    assert ensure_broker(settings) is None
    assert not (tmp_path / "broker").exists()


def test_server_properties_of_a_cluster_node(tmp_path: Path) -> None:
    """`broker start --nodes 3`: node 2 of three, its own folder and ports, every node a
    voter, three replicas of every topic and two in sync to take a write."""
    from agents.dev.cluster import LocalCluster

    cluster = LocalCluster(tmp_path, 29100, 3)
    assert cluster.bootstrap == "127.0.0.1:29100,127.0.0.1:29101,127.0.0.1:29102"
    props = dict(line.split("=", 1) for line in cluster.node(2).server_properties().splitlines()
                 if line and not line.startswith("#"))
    assert props["node.id"] == "2"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:29103,2@127.0.0.1:29104,3@127.0.0.1:29105"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:29101,CONTROLLER://127.0.0.1:29104"
    assert props["log.dirs"] == str((tmp_path / "cluster" / "node-2" / "data").absolute())
    for key in ("default.replication.factor", "offsets.topic.replication.factor",
                "transaction.state.log.replication.factor"):
        assert props[key] == "3"
    assert props["min.insync.replicas"] == props["transaction.state.log.min.isr"] == "2"
    # One cluster id for every node, kept for later starts.
    assert LocalCluster(tmp_path, 29100, 3).node(3).node.cluster_id == cluster.node(1).node.cluster_id


def test_the_cluster_commands_refuse_what_cannot_work(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["broker", "start", "--nodes", "3", "--secure"])
    assert "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["broker", "start", "--nodes", "12"])
    assert "'12' is not a number of nodes from 1 to 9" in capsys.readouterr().err
