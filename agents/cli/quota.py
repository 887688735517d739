"""``streamserve quota set|list|remove``: client quotas the broker enforces, per Kafka
principal (user) and/or client id; each change audited (``streamserve audit --subject quota``)."""

from __future__ import annotations

import argparse
import asyncio

from agents.cli.parsing import Commands, command, group
from pipeline.config import Settings


def register(commands: Commands) -> None:
    actions = group(commands, "quota", "client quotas the broker enforces: bytes per second, "
                                       "request time",
                    "Client quotas the Kafka broker enforces, per principal (user) and/or client "
                    "id: a client over its quota is throttled, not refused.")
    set_ = command(actions, "set", _set, "set values of a quota (values not given stay as they are)")
    _entity_arguments(set_)
    set_.add_argument("--producer-byte-rate", type=int, metavar="N",
                      help="bytes per second it may produce, per broker")
    set_.add_argument("--consumer-byte-rate", type=int, metavar="N",
                      help="bytes per second it may fetch, per broker")
    set_.add_argument("--request-percentage", type=float, metavar="P",
                      help="percent of one request-handler thread's time it may use")
    command(actions, "list", _list, "every quota the broker holds")
    _entity_arguments(command(actions, "remove", _remove, "remove a quota, all of its values"))


def _entity_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--user", metavar="NAME", help="a Kafka principal's name (alice, or "
                                                       "User:alice), or <default> for every user "
                                                       "without a quota of its own")
    parser.add_argument("--client-id", metavar="ID",
                        help="a client id, or <default>; with --user: that user's clients "
                             "with this id")


def _set(settings: Settings, args: argparse.Namespace) -> int:
    from agents.ops.broker_quotas import set_quota
    from pipeline.broker_quotas import describe_entity, entity, quota_values, render

    who = entity(args.user, args.client_id)
    values = quota_values(args.producer_byte_rate, args.consumer_byte_rate, args.request_percentage)
    quota = asyncio.run(set_quota(settings, who, values))
    print(f"set the quota of {describe_entity(who)}\n{render([quota])}")
    return 0


def _list(settings: Settings, args: argparse.Namespace) -> int:
    from agents.ops.broker_quotas import describe_quotas
    from pipeline.broker_quotas import render

    quotas = asyncio.run(describe_quotas(settings))
    print(render(quotas) if quotas else "no quotas: every client may produce and fetch as fast "
                                        "as the broker allows")
    return 0


def _remove(settings: Settings, args: argparse.Namespace) -> int:
    from agents.ops.broker_quotas import remove_quota
    from pipeline.broker_quotas import describe_entity, entity

    who = entity(args.user, args.client_id)
    asyncio.run(remove_quota(settings, who))
    print(f"removed the quota of {describe_entity(who)}")
    return 0
