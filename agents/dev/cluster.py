"""A local Kafka cluster of several KRaft nodes (each broker and controller) from the same
jars as the single local broker: ``streamserve broker start --nodes 3``, and the chaos
tests that kill, restart and pause one broker of three.

Node ``i`` (from 1) listens for clients on ``port + i - 1`` and for its controller peers on
``port + nodes + i - 1``; its folders are ``<home>/cluster/node-<i>/`` (the layout of
``agents.dev.broker``). Every node is formatted with one cluster id, kept in
``<home>/cluster/cluster.id``. Topics get three replicas (fewer on a smaller cluster) and
``min.insync.replicas`` 2, so one node may be down while writes with acks=all go on.
"""

from __future__ import annotations

from pathlib import Path

from agents.dev.broker import HOST, BrokerError, BrokerStatus, ClusterNode, LocalBroker, new_cluster_id

__all__ = ["CLUSTER_PORT_OFFSET", "LocalCluster"]

CLUSTER_PORT_OFFSET = 10  # `broker start --nodes N`: ports 9102 and up, beside 9092-9095


class LocalCluster:
    """``nodes`` KRaft nodes on consecutive ports from ``port`` (see the module's doc)."""

    def __init__(self, home: Path, port: int, nodes: int = 3, libs: Path | None = None) -> None:
        if nodes < 1:
            raise BrokerError(f"a cluster needs at least one node, not {nodes}")
        if not (0 < port and port + 2 * nodes <= 65535):
            raise BrokerError(f"ports {port}..{port + 2 * nodes - 1} are not usable: pick a lower port")
        self.home = Path(home).absolute()
        controllers = [port + nodes + i for i in range(nodes)]
        voters = ",".join(f"{i + 1}@{HOST}:{p}" for i, p in enumerate(controllers))
        self._id_path = self.home / "cluster" / "cluster.id"
        self.brokers = [
            LocalBroker(self.home, port + i, libs,
                        node=ClusterNode(i + 1, controllers[i], voters, nodes, self._cluster_id))
            for i in range(nodes)]

    @property
    def bootstrap(self) -> str:
        """Every node, as STREAMSERVE_BROKER takes them."""
        return ",".join(broker.bootstrap for broker in self.brokers)

    def node(self, node_id: int) -> LocalBroker:
        return self.brokers[node_id - 1]

    def start(self, timeout: float = 120) -> bool:
        """Start every node that does not run, and return once all serve clients.
        Whether any was started."""
        self.brokers[0].install()  # once, before the nodes race for it
        started = [broker.start(timeout, wait=False) for broker in self.brokers]
        for broker in self.brokers:
            broker.wait_ready(timeout)
        return any(started)

    def stop(self, timeout: float = 30) -> bool:
        """Stop every node; whether any was running."""
        return any([broker.stop(timeout) for broker in self.brokers])

    def status(self) -> list[BrokerStatus]:
        return [broker.status() for broker in self.brokers]

    @property
    def _cluster_id(self) -> str:
        """The id every node is formatted with: made once, then read from its file."""
        try:
            return self._id_path.read_text().strip()
        except FileNotFoundError:
            self._id_path.parent.mkdir(parents=True, exist_ok=True)
            self._id_path.write_text(new_cluster_id() + "\n")
            return self._id_path.read_text().strip()
