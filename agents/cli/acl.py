"""``streamserve acl apply|list``: least-privilege Kafka ACLs for one deployment."""

from __future__ import annotations

import argparse
import asyncio

from agents.cli.parsing import Commands, command, group
from pipeline.acl import Principals
from pipeline.config import ConfigError, Settings


def register(commands: Commands) -> None:
    actions = group(commands, "acl", "least-privilege Kafka ACLs for clients, workers and admins",
                    "Least-privilege Kafka ACLs for the deployment of STREAMSERVE_TOPIC_PREFIX "
                    "and STREAMSERVE_APP_ID; run with admin credentials.")
    apply = command(actions, "apply", _apply,
                    "create the serving topics and converge the ACLs on the layout: add what is "
                    "missing, remove these principals' stale bindings; prints what changed")
    defaults = Principals()
    for role, rights in (("client", "writes requests, reads predictions and dead letters"),
                         ("worker", "serves: reads requests and control, writes the rest"),
                         ("admin", "may do anything with the deployment's topics")):
        apply.add_argument(f"--{role}", default=getattr(defaults, role), metavar="PRINCIPAL",
                           help=f"the {role} principal, who {rights} (default %(default)s)")
    apply.add_argument("--workers-decide-canaries", action="store_true",
                       help="let workers write the control topic, so that the canary judge "
                            "they run rolls back or promotes by itself (without it, an admin "
                            "does: the refused decision is logged and audited)")
    command(actions, "list", _list, "every ACL binding the cluster holds")


def _apply(settings: Settings, args: argparse.Namespace) -> int:
    from agents.ops.acl import apply_layout
    from agents.kafka.audit import record

    try:
        principals = Principals(client=args.client, worker=args.worker, admin=args.admin)
    except ValueError as e:
        raise ConfigError(f"--client/--worker/--admin: {e}") from None
    changes = asyncio.run(apply_layout(
        settings, principals, workers_decide_canaries=args.workers_decide_canaries))
    for binding in changes.add:
        print(f"added    {binding.describe()}")
    for binding in changes.remove:
        print(f"removed  {binding.describe()}")
    what = (f"{len(changes.add)} added, {len(changes.remove)} removed" if not changes.empty
            else "already as laid out")
    print(f"ACLs of topics {settings.kafka.topic_prefix}.* and app id {settings.kafka.app_id}: {what}")
    if not changes.empty:
        asyncio.run(record(settings, action="acl_apply", subject="acl", details={
            "topics": f"{settings.kafka.topic_prefix}.*", "app_id": settings.kafka.app_id,
            "added": [b.describe() for b in changes.add],
            "removed": [b.describe() for b in changes.remove]}))
    return 0


def _list(settings: Settings, args: argparse.Namespace) -> int:
    from agents.ops.acl import list_acls

    bindings = asyncio.run(list_acls(settings))
    for binding in bindings:
        print(binding.describe())
    if not bindings:
        print("no ACL bindings")
    return 0
