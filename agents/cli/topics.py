"""``streamserve topics check [--fix] [--plan FILE]``: the topics streamserve creates, as they
are beside as they must be (``agents.ops.topics``); exit 1 while any differs."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import orjson

from agents.cli.parsing import Commands, command, group
from pipeline.config import Settings


def register(commands: Commands) -> None:
    actions = group(commands, "topics", "the topics streamserve creates: check and fix them",
                    "The topics streamserve creates: partitions, replication and configs.")
    check = command(actions, "check", _check,
                    "show every topic beside how it must be (STREAMSERVE_REPLICATION_FACTOR, "
                    "STREAMSERVE_MIN_INSYNC_REPLICAS, partitions, compaction); exit 1 while any differs")
    check.add_argument("--fix", action="store_true",
                       help="create missing topics, add partitions to serving topics and set "
                            "configs; then check again")
    check.add_argument("--plan", type=Path, metavar="FILE",
                       help="write the reassignment that gives topics with too few replicas "
                            "their replication, for kafka-reassign-partitions.sh "
                            "--reassignment-json-file FILE --execute")


def _check(settings: Settings, args: argparse.Namespace) -> int:
    from agents.ops.topics import check_topics, fix_topics, render

    check = asyncio.run(check_topics(settings))
    if args.fix and check.findings:
        for line in asyncio.run(fix_topics(settings, check)):
            print(f"fixed: {line}")
        check = asyncio.run(check_topics(settings))
    print(render(check))
    if args.plan is not None:
        plan = check.plan()
        args.plan.write_bytes(orjson.dumps(plan, option=orjson.OPT_INDENT_2) + b"\n")
        print(f"wrote the reassignment of {len(plan['partitions'])} partitions to {args.plan}")
    return 1 if check.findings else 0
