"""The topics streamserve needs and how each must be made, compared with what a cluster
has: the pure half of creating topics and of ``streamserve topics check [--fix]``.

Every topic gets the same replication (STREAMSERVE_REPLICATION_FACTOR, or the cluster's
``default.replication.factor``) and, when set, ``min.insync.replicas``. The serving topics
have the requests' partitions and delete old records after the cluster's retention; the
control topic is compacted, in one partition (every reader sees changes in the order they
were made); the audit trail is one partition kept for good. The Faust app's own topics
(its drift table's changelog, its leader topic) are made by Faust with the same
replication: they are checked for it, their partitions are Faust's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from pipeline.config import Settings
from pipeline.errors import StreamserveError

CLUSTER_DEFAULT = -1  # STREAMSERVE_REPLICATION_FACTOR / MIN_INSYNC_REPLICAS: leave it to the cluster


class TopologyError(StreamserveError, ValueError):
    """The wanted replication cannot be had on this cluster; the message says what to set."""


@dataclass(frozen=True)
class TopicSpec:
    """How one topic must be: ``partitions`` None when another (Faust) decides them."""

    name: str
    partitions: int | None
    replication: int
    configs: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TopicState:
    """What one topic is on the cluster: its partitions' replica sets, in-sync replicas and
    leaders (-1: none), and the values in force of the configs the specs name (set on the
    topic or inherited from the cluster)."""

    name: str
    replicas: tuple[tuple[int, ...], ...]
    in_sync: tuple[tuple[int, ...], ...]
    leaders: tuple[int, ...]
    configs: Mapping[str, str] = field(default_factory=dict)

    @property
    def partitions(self) -> int:
        return len(self.replicas)

    @property
    def replication(self) -> int:
        """The fewest replicas of any partition: what the topic can lose is decided by it."""
        return min((len(r) for r in self.replicas), default=0)

    @property
    def under_replicated(self) -> int:
        """Partitions with a replica out of sync (its broker down or behind)."""
        return sum(len(isr) < len(r) for r, isr in zip(self.replicas, self.in_sync, strict=True))

    @property
    def leaderless(self) -> int:
        """Partitions no broker leads: nothing can be written to them or read from them."""
        return sum(leader < 0 for leader in self.leaders)


@dataclass(frozen=True)
class Finding:
    """One way a topic differs from its spec, and whether ``topics check --fix`` mends it."""

    topic: str
    what: str  # missing, partitions, replication, config NAME, under-replicated, leaderless
    have: str
    want: str
    fixable: bool
    how: str  # what --fix does, or what an operator must do

    def line(self) -> str:
        return f"{self.topic}: {self.what} is {self.have}, wanted {self.want}; {self.how}"


def replication(settings: Settings, cluster_default: int) -> int:
    """The replication every topic gets: the setting, or the cluster's default."""
    wanted = settings.kafka.replication_factor
    chosen = cluster_default if wanted == CLUSTER_DEFAULT else wanted
    if settings.kafka.min_insync_replicas > chosen:
        raise TopologyError(
            f"STREAMSERVE_MIN_INSYNC_REPLICAS={settings.kafka.min_insync_replicas} exceeds the "
            f"replication ({chosen}, {_source(settings)}): no write with acks=all could be "
            "acknowledged; lower it")
    return chosen


def check_creatable(settings: Settings, replicas: int, brokers: int) -> None:
    """Refuse, saying what to set, when topics of ``replicas`` cannot be created on a cluster
    of ``brokers`` live brokers (Kafka would refuse them one by one)."""
    if replicas > brokers:
        raise TopologyError(
            f"{_source(settings)} is {replicas} but the cluster at {settings.bootstrap} has "
            f"{brokers} broker{'s' if brokers != 1 else ''} up: set STREAMSERVE_REPLICATION_FACTOR "
            f"to at most {brokers}, or start the missing brokers")


def wanted_topics(settings: Settings, replicas: int) -> list[TopicSpec]:
    """Every topic streamserve creates itself, as it must be."""
    topics, partitions = settings.topics, settings.kafka.request_partitions
    common = _insync(settings)
    serving = [TopicSpec(name, partitions, replicas, {"cleanup.policy": "delete", **common})
               for name in topics.serving]
    return serving + [
        TopicSpec(topics.control, 1, replicas, {"cleanup.policy": "compact", **common}),
        TopicSpec(topics.audit, 1, replicas, {"cleanup.policy": "delete", "retention.ms": "-1", **common}),
    ]


def faust_topic(settings: Settings, name: str, replicas: int) -> TopicSpec | None:
    """The spec of one of the Faust app's topics (``<app id>.faust-...``), else None."""
    if not name.startswith(f"{settings.kafka.app_id}.faust-"):
        return None
    return TopicSpec(name, None, replicas, _insync(settings))


def changelog_configs(settings: Settings) -> dict[str, str]:
    """The configs the Faust app's changelogs are made with (their replication is Faust's
    ``topic_replication_factor``)."""
    return _insync(settings)


def compare(spec: TopicSpec, state: TopicState | None) -> list[Finding]:
    """How ``state`` differs from ``spec`` (None: the topic does not exist)."""
    if state is None:
        return [Finding(spec.name, "missing", "absent", f"{spec.partitions or 'its'} partitions x "
                        f"{spec.replication} replicas", True, "--fix creates it")]
    found = []
    if spec.partitions is not None and state.partitions != spec.partitions:
        more = state.partitions < spec.partitions and spec.configs.get("cleanup.policy") == "delete"
        found.append(Finding(
            spec.name, "partitions", str(state.partitions), str(spec.partitions), more,
            "--fix adds partitions (records of one key go to another partition from then on)" if more
            else "fewer partitions cannot be had in place: leave it, or recreate the topic empty"))
    if state.replication < spec.replication:
        found.append(Finding(
            spec.name, "replication", str(state.replication), str(spec.replication), False,
            "add replicas with kafka-reassign-partitions.sh (`topics check --plan` writes its plan)"))
    for name, value in spec.configs.items():
        if state.configs.get(name) != value:
            found.append(Finding(spec.name, f"config {name}", state.configs.get(name, "the default"),
                                 value, True, "--fix sets it"))
    if state.leaderless:
        found.append(Finding(spec.name, "leaderless partitions", str(state.leaderless), "0", False,
                             "start the brokers that hold their replicas"))
    elif state.under_replicated:
        found.append(Finding(spec.name, "under-replicated partitions", str(state.under_replicated), "0",
                             False, "a replica's broker is down or behind: start it, or wait"))
    return found


def reassignment(spec: TopicSpec, state: TopicState, brokers: list[int]) -> list[dict]:
    """kafka-reassign-partitions.sh's plan that gives every partition of ``state``
    ``spec.replication`` replicas: each keeps its replicas (its leader first) and takes the
    brokers that hold the fewest of the topic's replicas so far."""
    load = {broker: 0 for broker in brokers}
    for replicas in state.replicas:
        for broker in replicas:
            load[broker] = load.get(broker, 0) + 1
    plan = []
    for partition, replicas in enumerate(state.replicas):
        kept = list(replicas)
        for broker in sorted(brokers, key=lambda b: (load[b], b)):
            if len(kept) >= spec.replication:
                break
            if broker not in kept:
                kept.append(broker)
                load[broker] += 1
        plan.append({"topic": spec.name, "partition": partition, "replicas": kept})
    return plan


def _source(settings: Settings) -> str:
    return ("STREAMSERVE_REPLICATION_FACTOR" if settings.kafka.replication_factor != CLUSTER_DEFAULT
            else "the cluster's default.replication.factor")


def _insync(settings: Settings) -> dict[str, str]:
    wanted = settings.kafka.min_insync_replicas
    return {} if wanted == CLUSTER_DEFAULT else {"min.insync.replicas": str(wanted)}
