"""``streamserve topics check [--fix] [--plan FILE]``: every topic streamserve creates, as it
is on the cluster beside how ``pipeline.topology`` wants it, and the fixes Kafka's admin
API allows (create what is missing, add partitions to serving topics, set configs).

More replicas for an existing topic takes a partition reassignment, which moves data
between brokers: that is left to the operator, with the plan written for Kafka's own
``kafka-reassign-partitions.sh --execute``.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewPartitions
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import for_code
from aiokafka.protocol.metadata import MetadataRequest

from agents.kafka.connect import KafkaAccessError
from agents.kafka.topics import admin_client, cluster, ensure_topics, send_request, topic_states
from pipeline.config import Settings
from pipeline.topology import Finding, TopicSpec, TopicState, compare, faust_topic, reassignment, wanted_topics

_DYNAMIC_TOPIC_CONFIG = 1  # DescribeConfigs' config_source of a value set on the topic itself


@dataclass(frozen=True)
class TopicCheck:
    """The cluster's brokers up, and each topic's spec, state (None: missing) and findings."""

    bootstrap: str
    brokers: tuple[int, ...]
    topics: tuple[tuple[TopicSpec, TopicState | None], ...]

    @property
    def findings(self) -> list[Finding]:
        return [finding for spec, state in self.topics for finding in compare(spec, state)]

    def plan(self) -> dict:
        """kafka-reassign-partitions.sh's plan for the topics with too few replicas."""
        partitions = [entry for spec, state in self.topics
                      if state is not None and state.replication < spec.replication
                      for entry in reassignment(spec, state, list(self.brokers))]
        return {"version": 1, "partitions": partitions}


async def check_topics(settings: Settings) -> TopicCheck:
    async with admin_client(settings) as admin:
        facts = await cluster(settings, admin)
        listed = await admin.list_topics()
        specs = wanted_topics(settings, facts.replicas)
        specs += [spec for name in sorted(listed) if (spec := faust_topic(settings, name, facts.replicas))]
        states = await _states(admin, [s for s in specs if s.name in listed])
    return TopicCheck(settings.bootstrap, facts.brokers,
                      tuple((spec, states.get(spec.name)) for spec in specs))


async def fix_topics(settings: Settings, check: TopicCheck) -> list[str]:
    """Mend what can be mended in place; a line per change made."""
    done = []
    if any(state is None for _, state in check.topics):
        await ensure_topics(settings)
        done += [f"created {spec.name}" for spec, state in check.topics if state is None]
    async with admin_client(settings) as admin:
        for spec, state in check.topics:
            if state is None:
                continue
            findings = compare(spec, state)
            if any(f.what == "partitions" and f.fixable for f in findings):
                assert spec.partitions is not None
                await admin.create_partitions({spec.name: NewPartitions(spec.partitions)})
                done.append(f"{spec.name}: partitions {state.partitions} -> {spec.partitions}")
            wrong = {name: value for name, value in spec.configs.items()
                     if state.configs.get(name) != value}
            if wrong:
                await _set_configs(admin, spec.name, wrong)
                done += [f"{spec.name}: {name}={value}" for name, value in wrong.items()]
    return done


def render(check: TopicCheck) -> str:
    rows = [("topic", "partitions", "replicas", "in sync", "leaderless", "configs")]
    for spec, state in check.topics:
        want_parts = str(spec.partitions) if spec.partitions is not None else "-"
        if state is None:
            rows.append((spec.name, f"missing/{want_parts}", f"-/{spec.replication}", "-", "-", "-"))
            continue
        configs = ", ".join(f"{k}={state.configs.get(k, '?')}" for k in spec.configs)
        rows.append((spec.name, f"{state.partitions}/{want_parts}",
                     f"{state.replication}/{spec.replication}",
                     f"{state.partitions - state.under_replicated}/{state.partitions}",
                     str(state.leaderless), configs or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [f"cluster {check.bootstrap}: brokers up {', '.join(map(str, check.brokers))}",
             "partitions and replicas: have/want", ""]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
              for row in rows]
    findings = check.findings
    lines += ["", *(f"- {finding.line()}" for finding in findings)] if findings else ["", "every topic is as wanted"]
    return "\n".join(lines)


async def _states(admin: AIOKafkaAdminClient, specs: list[TopicSpec]) -> dict[str, TopicState]:
    if not specs:
        return {}
    names = [spec.name for spec in specs]
    metadata = (await send_request(admin, MetadataRequest(names, allow_auto_topic_creation=False))).to_object()
    wanted = {spec.name: list(spec.configs) for spec in specs}
    responses = await admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, name, configs=dict.fromkeys(wanted[name]))
         for name in names if wanted[name]])
    configs: dict[str, dict[str, str]] = {}
    for response in responses:
        for resource in response.to_object()["resources"]:
            configs[resource["resource_name"]] = {e["config_names"]: e["config_value"]
                                                  for e in resource["config_entries"]}
    return topic_states(metadata, configs)


async def _set_configs(admin: AIOKafkaAdminClient, topic: str, configs: dict[str, str]) -> None:
    """Set ``configs`` on ``topic``, keeping the others set on it: Kafka's AlterConfigs (the
    one aiokafka has) replaces every value set on a topic with the ones it is sent."""
    [response] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    kept = {e["config_names"]: e["config_value"]
            for resource in response.to_object()["resources"] for e in resource["config_entries"]
            if e["config_source"] == _DYNAMIC_TOPIC_CONFIG}
    responses = await admin.alter_configs(
        [ConfigResource(ConfigResourceType.TOPIC, topic, configs={**kept, **configs})])
    for response in responses:
        for code, message, _type, name in response.resources:
            if code:
                raise KafkaAccessError(f"setting {', '.join(configs)} on {name} was refused: "
                                       f"{for_code(code).__name__} {message or ''}".rstrip())
