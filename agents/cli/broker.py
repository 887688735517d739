"""``streamserve broker start|stop|status [--secure | --nodes N]``: the embedded single-node
Kafka broker (``agents.dev.broker``), or a local cluster of N nodes (``agents.dev.cluster``)."""

from __future__ import annotations

import argparse
import asyncio

from agents.cli.parsing import Commands, command, group
from pipeline.config import ConfigError, Settings


def register(commands: Commands) -> None:
    actions = group(commands, "broker", "the embedded single-node Kafka broker",
                    "The embedded single-node Kafka broker (KRaft).")
    for action, run, help in (("start", _start, "start it (a no-op when it already runs)"),
                              ("stop", _stop, "stop it and leave no process behind"),
                              ("status", _status, "say whether it runs")):
        parser = command(actions, action, run, help)
        which = parser.add_mutually_exclusive_group()
        which.add_argument(
            "--secure", action="store_true",
            help="the secured broker instead (port STREAMSERVE_LOCAL_BROKER_PORT + 2): TLS, SCRAM "
                 "users admin, worker and client, ACLs enforced; settings files per user in "
                 "STREAMSERVE_HOME/broker-secure/credentials")
        which.add_argument(
            "--nodes", type=_nodes, default=1, metavar="N",
            help="a local cluster of N KRaft nodes instead (3 to try replication: every topic "
                 "on three brokers, min.insync.replicas 2), on ports "
                 "STREAMSERVE_LOCAL_BROKER_PORT + 10 and up; point STREAMSERVE_BROKER at it")


def _nodes(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 9:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of nodes from 1 to 9")
    return int(text)


def _cluster(settings: Settings, args: argparse.Namespace):
    """The local cluster of ``--nodes`` nodes, or None for the single broker."""
    if args.nodes == 1:
        return None
    from agents.dev.cluster import CLUSTER_PORT_OFFSET, LocalCluster

    return LocalCluster(settings.kafka.home, settings.kafka.local_broker_port + CLUSTER_PORT_OFFSET,
                        args.nodes)


def _local_broker(settings: Settings, args: argparse.Namespace):
    """The local broker (``--secure``: the secured one) of ``settings``; refused when
    STREAMSERVE_BROKER names another cluster."""
    from agents.dev.broker import LocalBroker
    from agents.dev.secure_broker import SECURE_PORT_OFFSET

    port = settings.kafka.local_broker_port + (SECURE_PORT_OFFSET if args.secure else 0)
    broker = LocalBroker(settings.kafka.home, port, secure=args.secure)
    # A sourced credentials file names the secured broker itself: that one is managed here.
    if not settings.kafka.uses_local_broker and settings.kafka.broker != broker.bootstrap:
        raise ConfigError(f"STREAMSERVE_BROKER={settings.kafka.broker} points at an existing cluster; "
                          "unset it to manage the local broker")
    return broker


def _start(settings: Settings, args: argparse.Namespace) -> int:
    if cluster := _cluster(settings, args):
        started = cluster.start()
        print(f"cluster of {args.nodes} nodes {'started' if started else 'already running'}; "
              f"use it with: export STREAMSERVE_BROKER={cluster.bootstrap}")
        return 0
    broker = _local_broker(settings, args)
    started = broker.start()
    print(f"broker {'started' if started else 'already running'} on {broker.bootstrap}")
    if broker.secure:
        print(f"TLS (CA {broker.cafile}), SCRAM logins, ACLs enforced; log in with `set -a; . "
              f"{broker.env_file('NAME')}`, NAME one of admin, worker, client; then, as admin, "
              "`streamserve acl apply`")
    if broker.secure and started:
        from agents.dev.secure_broker import PRINCIPALS
        from agents.kafka.audit import record

        admin = Settings.from_env({**broker.environment("admin"),
                                   "STREAMSERVE_TOPIC_PREFIX": settings.kafka.topic_prefix})
        asyncio.run(record(admin, action="broker_start", subject=f"broker:{broker.bootstrap}",
                           details={"security": "SASL_SSL", "users": list(PRINCIPALS),
                                    "ca": str(broker.cafile)}))
    return 0


def _stop(settings: Settings, args: argparse.Namespace) -> int:
    cluster = _cluster(settings, args)
    what = "cluster" if cluster else "broker"
    stopped = cluster.stop() if cluster else _local_broker(settings, args).stop()
    print(f"{what} stopped" if stopped else f"no {what} was running")
    return 0


def _status(settings: Settings, args: argparse.Namespace) -> int:
    """Exit 0 when it runs (a cluster: every node), 3 when it does not."""
    if cluster := _cluster(settings, args):
        nodes = cluster.status()
        for node_id, status in enumerate(nodes, 1):
            print(f"node {node_id}: {'running (pid ' + str(status.pid) + ')' if status.running else 'stopped'} "
                  f"on {status.bootstrap}")
        return 0 if all(status.running for status in nodes) else 3
    status = _local_broker(settings, args).status()
    print(f"broker {'running (pid ' + str(status.pid) + ')' if status.running else 'stopped'} "
          f"on {status.bootstrap}, data in {status.home}")
    return 0 if status.running else 3
