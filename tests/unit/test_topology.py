"""The topics streamserve needs, their replication, and how a cluster's topics differ."""

import pytest

from pipeline.config import Settings
from pipeline.topology import (TopicState, TopologyError, changelog_configs, check_creatable, compare,
                               faust_topic, reassignment, replication, wanted_topics)


def settings(**env):
    return Settings.from_env({"STREAMSERVE_TOPIC_PREFIX": "t", "STREAMSERVE_APP_ID": "t", **env})


def state(name, replicas, configs=None, in_sync=None, leaders=None):
    return TopicState(name, tuple(map(tuple, replicas)), tuple(map(tuple, in_sync or replicas)),
                      tuple(leaders or [r[0] for r in replicas]), configs or {})


def test_the_replication_is_the_setting_or_the_clusters_default():
    assert replication(settings(), cluster_default=3) == 3
    assert replication(settings(STREAMSERVE_REPLICATION_FACTOR="2"), cluster_default=3) == 2


def test_min_insync_above_the_clusters_default_replication_is_refused_saying_what_to_lower():
    with pytest.raises(TopologyError, match="STREAMSERVE_MIN_INSYNC_REPLICAS=2 exceeds the replication "
                                            r"\(1, the cluster's default.replication.factor\)"):
        replication(settings(STREAMSERVE_MIN_INSYNC_REPLICAS="2"), cluster_default=1)


def test_more_replicas_than_brokers_up_is_refused_naming_the_setting_and_the_count():
    s = settings(STREAMSERVE_REPLICATION_FACTOR="3", STREAMSERVE_BROKER="a:1")
    with pytest.raises(TopologyError, match="STREAMSERVE_REPLICATION_FACTOR is 3 but the cluster at a:1 "
                                            "has 1 broker up: set STREAMSERVE_REPLICATION_FACTOR to at most 1"):
        check_creatable(s, 3, brokers=1)
    check_creatable(s, 3, brokers=3)


def test_every_topic_gets_the_replication_and_min_insync_the_control_topic_is_compacted():
    specs = {spec.name: spec for spec in wanted_topics(settings(STREAMSERVE_MIN_INSYNC_REPLICAS="2"), 3)}
    assert set(specs) == set(settings().topics.all)
    assert {spec.replication for spec in specs.values()} == {3}
    assert all(spec.configs["min.insync.replicas"] == "2" for spec in specs.values())
    assert specs["t.control"].configs["cleanup.policy"] == "compact" and specs["t.control"].partitions == 1
    assert specs["t.audit"].configs["retention.ms"] == "-1" and specs["t.audit"].partitions == 1
    assert specs["t.requests"].partitions == 4 and specs["t.requests"].configs["cleanup.policy"] == "delete"
    assert "min.insync.replicas" not in wanted_topics(settings(), 3)[0].configs  # the cluster's own
    assert changelog_configs(settings(STREAMSERVE_MIN_INSYNC_REPLICAS="2")) == {"min.insync.replicas": "2"}


def test_the_faust_apps_topics_are_checked_for_replication_only():
    spec = faust_topic(settings(), "t.faust-drift-windows-changelog", 3)
    assert spec is not None and spec.partitions is None and spec.replication == 3
    assert faust_topic(settings(), "other.faust-x", 3) is None
    assert compare(spec, state(spec.name, [[1, 2, 3]] * 2)) == []


def test_a_topic_as_wanted_has_no_finding_and_a_missing_one_is_created():
    spec = wanted_topics(settings(), 3)[0]
    assert compare(spec, state(spec.name, [[1, 2, 3]] * 4, {"cleanup.policy": "delete"})) == []
    [missing] = compare(spec, None)
    assert (missing.what, missing.fixable) == ("missing", True)


def test_too_few_replicas_needs_a_reassignment_a_config_and_more_partitions_are_fixed():
    spec = wanted_topics(settings(), 3)[0]
    found = {f.what: f for f in compare(spec, state(spec.name, [[1], [2]], {"cleanup.policy": "compact"}))}
    assert found["replication"].have == "1" and not found["replication"].fixable
    assert "kafka-reassign-partitions.sh" in found["replication"].how
    assert found["partitions"].fixable and (found["partitions"].have, found["partitions"].want) == ("2", "4")
    assert found["config cleanup.policy"].fixable and found["config cleanup.policy"].want == "delete"
    assert "t.requests: replication is 1, wanted 3" in found["replication"].line()


def test_fewer_partitions_are_not_fixed_on_compacted_topics_nor_by_removing_any():
    control = next(s for s in wanted_topics(settings(), 1) if s.name == "t.control")
    [more] = compare(control, state("t.control", [[1], [1]], {"cleanup.policy": "compact"}))
    assert more.what == "partitions" and not more.fixable


def test_leaderless_and_under_replicated_partitions_are_findings_an_operator_mends():
    spec = wanted_topics(settings(), 3)[0]
    configs = {"cleanup.policy": "delete"}
    lagging = state(spec.name, [[1, 2, 3]] * 4, configs, in_sync=[[1, 2]] + [[1, 2, 3]] * 3)
    [finding] = compare(spec, lagging)
    assert (finding.what, finding.have, finding.fixable) == ("under-replicated partitions", "1", False)
    dead = state(spec.name, [[1, 2, 3]] * 4, configs, in_sync=[[]] + [[1, 2, 3]] * 3, leaders=[-1, 1, 2, 3])
    [finding] = compare(spec, dead)
    assert (finding.what, finding.have) == ("leaderless partitions", "1")


def test_the_reassignment_keeps_each_partitions_replicas_and_spreads_the_new_ones():
    spec = wanted_topics(settings(), 3)[0]
    plan = reassignment(spec, state(spec.name, [[3], [1], [2], [3]]), [1, 2, 3])
    assert [entry["replicas"][0] for entry in plan] == [3, 1, 2, 3]  # the leader stays first
    assert all(sorted(entry["replicas"]) == [1, 2, 3] for entry in plan)
    assert [entry["partition"] for entry in plan] == [0, 1, 2, 3]
