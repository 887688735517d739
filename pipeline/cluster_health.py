"""What a worker knows of the Kafka cluster from one look to the next, and the log lines
of its changes: one line per change of state (no broker answers, they answer again, a
broker lost or back, partitions without a leader or out of sync), never one per retry.

A look (``ClusterView``) is the metadata of the worker's topics; None when no broker
answered it. ``ClusterHealth`` keeps what the last look showed for the metrics (brokers
unreachable, under-replicated and leaderless partitions and missing replicas per topic)
and for readiness: outputs can be written while a broker answers and every partition of
the output topics has a leader.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from pipeline.topology import TopicState


@dataclass(frozen=True)
class ClusterView:
    """One look at the cluster: the brokers up (KRaft lists only live, unfenced ones) and
    the state of each of the worker's topics that exists."""

    brokers: frozenset[int]
    topics: Mapping[str, TopicState]


class ClusterHealth:
    """The cluster as the worker's looks saw it; ``observe`` returns the log lines (level,
    text) of what changed. ``outputs``: the topics readiness needs writable; ``replicas``:
    the replication every topic should have."""

    def __init__(self, bootstrap: str, outputs: Collection[str], replicas: int) -> None:
        self._bootstrap = bootstrap
        self._outputs = tuple(outputs)
        self._replicas = replicas
        self._known: set[int] = set()  # every broker seen up since the start
        self._view: ClusterView | None = None
        self._answered = True  # the last look got an answer
        self._lost_since: float | None = None
        self._warned_short: set[str] = set()

    # ---------------------------------------------------------------- facts

    @property
    def unreachable(self) -> int:
        """Brokers seen up since the start that the last look did not find (all of them
        when no broker answered)."""
        if not self._answered:
            return max(1, len(self._known))
        return len(self._known - self._view.brokers) if self._view else 0

    def under_replicated(self) -> dict[str, int]:
        return self._per_topic(lambda state: state.under_replicated)

    def leaderless(self) -> dict[str, int]:
        return self._per_topic(lambda state: state.leaderless)

    def replicas_missing(self) -> dict[str, int]:
        """Per topic, how many replicas it lacks of the wanted replication (a topic made
        with fewer, by an older release or by hand)."""
        return self._per_topic(lambda state: max(0, self._replicas - state.replication))

    def writable(self) -> tuple[bool, str]:
        """Whether outputs can be written now, and what was seen."""
        if not self._answered:
            return False, f"no broker of {self._bootstrap} answers: outputs cannot be written"
        if self._view is None:
            return False, "the cluster was not looked at yet"
        blocked = [f"{topic} {_partitions(state.leaders, lambda leader: leader < 0)}"
                   for topic in self._outputs
                   if (state := self._view.topics.get(topic)) is not None and state.leaderless]
        if blocked:
            return False, f"partitions without a leader take no writes: {'; '.join(blocked)}"
        return True, f"brokers up {sorted(self._view.brokers)}; every output partition has a leader"

    # ---------------------------------------------------------------- looks

    def observe(self, view: ClusterView | None, now: float) -> list[tuple[int, str]]:
        """Take one look's result (None: no broker answered); the lines to log."""
        if view is None:
            if not self._answered:
                return []
            self._answered, self._lost_since = False, now
            return [(logging.WARNING, f"no broker of {self._bootstrap} answers: serving waits for "
                                      "one (requests stay in Kafka; nothing is committed meanwhile)")]
        lines: list[tuple[int, str]] = []
        if not self._answered:
            away = now - self._lost_since if self._lost_since is not None else 0.0
            lines.append((logging.INFO, f"brokers answer again after {away:.0f} s"))
            self._answered = True
        before = self._view
        if before is not None:
            if lost := sorted(before.brokers - view.brokers):
                lines.append((logging.WARNING, f"broker{'s' if len(lost) > 1 else ''} "
                              f"{_ids(lost)} left the cluster (down or fenced); up: {_ids(sorted(view.brokers))}"))
            if back := sorted(view.brokers - before.brokers):
                lines.append((logging.INFO, f"broker{'s' if len(back) > 1 else ''} {_ids(back)} "
                              f"joined the cluster; up: {_ids(sorted(view.brokers))}"))
        self._known |= view.brokers
        lines += _changed("partitions without a leader (nothing can be written to or read from them)",
                          "every partition has a leader again", before, view, lambda leader, *_: leader < 0)
        lines += _changed("under-replicated partitions (a replica's broker is down or behind)",
                          "every partition is fully replicated again", before, view,
                          lambda leader, replicas, in_sync: leader >= 0 and len(in_sync) < len(replicas))
        for topic, state in sorted(view.topics.items()):
            if state.replication < self._replicas and topic not in self._warned_short:
                self._warned_short.add(topic)
                lines.append((logging.WARNING, f"{topic} has {state.replication} replica"
                              f"{'s' if state.replication != 1 else ''}, {self._replicas} wanted: "
                              "losing a broker can lose its records (see `streamserve topics check`)"))
        self._view = view
        return lines

    def _per_topic(self, count) -> dict[str, int]:
        if self._view is None:
            return {}
        return {topic: count(state) for topic, state in self._view.topics.items()}


def _changed(what: str, mended: str, before: ClusterView | None, after: ClusterView,
             picks) -> list[tuple[int, str]]:
    """One line when the set of partitions ``picks`` chooses differs from the last look's."""
    old, new = _picked(before, picks), _picked(after, picks)
    if old == new:
        return []
    if not new:
        return [(logging.INFO, mended)]
    listed = "; ".join(f"{topic} {sorted(parts)}" for topic, parts in sorted(new.items()))
    return [(logging.WARNING, f"{what}: {listed}")]


def _picked(view: ClusterView | None, picks) -> dict[str, frozenset[int]]:
    if view is None:
        return {}
    found = {}
    for topic, state in view.topics.items():
        chosen = frozenset(p for p, entry in enumerate(zip(state.leaders, state.replicas, state.in_sync,
                                                           strict=True)) if picks(*entry))
        if chosen:
            found[topic] = chosen
    return found


def _partitions(values, picks) -> str:
    return f"partitions {[p for p, value in enumerate(values) if picks(value)]}"


def _ids(ids: list[int]) -> str:
    return ", ".join(map(str, ids))
