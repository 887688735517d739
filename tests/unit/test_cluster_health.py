"""What a worker tells of the cluster: one log line per change of state, never one per
look; the gauges; and whether outputs can be written (readiness)."""

import logging

from pipeline.cluster_health import ClusterHealth, ClusterView
from pipeline.topology import TopicState

OUTPUTS = ("t.predictions", "t.deadletter")


def topic(name, partitions=2, in_sync=None, leaders=None, replicas=(1, 2, 3)):
    return TopicState(name, (tuple(replicas),) * partitions,
                      tuple(in_sync or [tuple(replicas)] * partitions),
                      tuple(leaders or [replicas[0]] * partitions))


def view(brokers=(1, 2, 3), **topics):
    default = {name: topic(name) for name in (*OUTPUTS, "t.requests")}
    return ClusterView(frozenset(brokers), {**default, **{k.replace("_", "."): v for k, v in topics.items()}})


def health():
    return ClusterHealth("a:1,b:2,c:3", OUTPUTS, replicas=3)


def test_a_healthy_cluster_is_writable_and_says_nothing():
    watched = health()
    assert watched.writable() == (False, "the cluster was not looked at yet")
    assert watched.observe(view(), 0.0) == []
    assert watched.writable()[0] and watched.unreachable == 0
    assert watched.observe(view(), 5.0) == []


def test_no_broker_answering_is_said_once_and_its_end_once():
    watched = health()
    watched.observe(view(), 0.0)
    [(level, line)] = watched.observe(None, 5.0)
    assert level == logging.WARNING and "no broker of a:1,b:2,c:3 answers" in line
    assert all(watched.observe(None, t) == [] for t in (10.0, 15.0, 300.0))
    assert watched.unreachable == 3
    assert watched.writable() == (False, "no broker of a:1,b:2,c:3 answers: outputs cannot be written")
    [(level, line)] = watched.observe(view(), 305.0)
    assert level == logging.INFO and line == "brokers answer again after 300 s"
    assert watched.writable()[0] and watched.unreachable == 0


def test_a_broker_lost_and_back_is_said_once_each_with_its_partitions():
    watched = health()
    watched.observe(view(), 0.0)
    behind = topic("t.requests", in_sync=[(1, 3), (1, 3)])
    lines = watched.observe(view((1, 3), t_requests=behind), 5.0)
    assert [line for _, line in lines] == [
        "broker 2 left the cluster (down or fenced); up: 1, 3",
        "under-replicated partitions (a replica's broker is down or behind): t.requests [0, 1]"]
    assert watched.unreachable == 1 and watched.under_replicated()["t.requests"] == 2
    assert watched.writable()[0]  # two of three replicas: writes go on
    assert watched.observe(view((1, 3), t_requests=behind), 10.0) == []
    lines = watched.observe(view(), 20.0)
    assert [line for _, line in lines] == ["broker 2 joined the cluster; up: 1, 2, 3",
                                           "every partition is fully replicated again"]
    assert watched.under_replicated()["t.requests"] == 0


def test_an_output_partition_without_a_leader_makes_the_worker_unready():
    watched = health()
    watched.observe(view(), 0.0)
    dead = topic("t.predictions", in_sync=[(), (1,)], leaders=[-1, 1], replicas=(2,))
    lines = watched.observe(view((1, 3), t_predictions=dead), 5.0)
    assert ("partitions without a leader (nothing can be written to or read from them): "
            "t.predictions [0]") in [line for _, line in lines]
    ok, detail = watched.writable()
    assert not ok and detail == "partitions without a leader take no writes: t.predictions partitions [0]"
    assert watched.leaderless()["t.predictions"] == 1


def test_a_topic_with_fewer_replicas_than_wanted_is_said_once_and_counted():
    watched = health()
    short = topic("t.requests", replicas=(1,))
    [(level, line)] = watched.observe(view(t_requests=short), 0.0)
    assert level == logging.WARNING and line.startswith("t.requests has 1 replica, 3 wanted")
    assert watched.observe(view(t_requests=short), 5.0) == []
    assert watched.replicas_missing() == {"t.predictions": 0, "t.deadletter": 0, "t.requests": 2}
