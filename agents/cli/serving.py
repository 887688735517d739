"""``streamserve worker|produce|consume``: serve, and send and read a topic's JSON lines."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import TextIO

import orjson

from agents.cli.parsing import Commands, command
from pipeline.config import Settings


def register(commands: Commands) -> None:
    worker = command(commands, "worker", _worker, "run one serving worker in the foreground")
    worker.add_argument("--metrics-port", type=int, default=None,
                        help="serve Prometheus metrics on this port")

    produce = command(commands, "produce", _produce,
                      "send JSON lines (a file or stdin) to a topic")
    produce.add_argument("file", nargs="?", type=Path, help="JSON lines file (default stdin)")
    produce.add_argument("--topic", help="topic (default the requests topic)")

    consume = command(commands, "consume", _consume, "print a topic's messages as JSON lines")
    consume.add_argument("--topic", help="topic (default the predictions topic)")
    consume.add_argument("--from-beginning", action="store_true",
                         help="start at the oldest message, not the newest")
    consume.add_argument("--max", type=int, default=None, help="stop after N messages")
    consume.add_argument("--timeout", type=float, default=None,
                         help="stop after S seconds without a message")


def _worker(settings: Settings, args: argparse.Namespace) -> int:
    from agents.worker.run import run_worker

    run_worker(settings, args.metrics_port)
    return 0


def _produce(settings: Settings, args: argparse.Namespace) -> int:
    topic = args.topic or settings.topics.requests
    if args.file is not None:
        with args.file.open("rb") as lines:
            sent = asyncio.run(_produce_lines(settings, topic, lines))
    else:
        sent = asyncio.run(_produce_lines(settings, topic, sys.stdin.buffer))
    print(f"sent {sent} messages to {topic}", file=sys.stderr)
    return 0


async def _produce_lines(settings: Settings, topic: str, lines) -> int:
    from agents.kafka.connect import refusals, start_producer
    from agents.kafka.topics import ensure_topics
    from pipeline.acl import Operation

    await ensure_topics(settings)
    producer = await start_producer(settings)
    deliveries = []
    try:
        with refusals(settings, Operation.WRITE):
            for line in lines:
                value = line.rstrip(b"\r\n")
                if not value.strip():
                    continue
                deliveries.append(await producer.send(topic, value=value, key=_request_key(value)))
            # A refused or failed write shows only in its delivery: check every one.
            failed = [r for r in await asyncio.gather(*deliveries, return_exceptions=True)
                      if isinstance(r, BaseException)]
            if failed:
                raise failed[0]
    finally:
        await producer.stop()
    return len(deliveries)


def _request_key(value: bytes) -> bytes | None:
    """The request id as key when the line is a JSON object with a string id; else no key."""
    try:
        body = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    request_id = body.get("id") if isinstance(body, dict) else None
    return request_id.encode() if isinstance(request_id, str) else None


def _consume(settings: Settings, args: argparse.Namespace) -> int:
    asyncio.run(_consume_lines(settings, args.topic or settings.topics.predictions,
                               args.from_beginning, args.max, args.timeout, sys.stdout))
    return 0


async def _consume_lines(settings: Settings, topic: str, from_beginning: bool, limit: int | None,
                         timeout: float | None, out: TextIO) -> None:
    from agents.kafka.connect import refusals
    from agents.kafka.read import read_topic
    from agents.kafka.topics import ensure_topics
    from pipeline.acl import Operation

    await ensure_topics(settings)
    count = 0
    if limit is not None and limit <= 0:
        return
    with refusals(settings, Operation.READ):
        async for record in read_topic(settings, topic, from_beginning=from_beginning,
                                       idle_timeout=timeout):
            out.write((record.value or b"").decode("utf-8", errors="replace") + "\n")
            out.flush()
            count += 1
            if limit is not None and count >= limit:
                return
