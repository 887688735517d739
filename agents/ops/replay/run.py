"""``streamserve replay run``: send a recording again on its schedule, rewritten, tagged
with the run id, and say where each record landed (the diff and the gate match replies
to those positions)."""

from __future__ import annotations

import asyncio
import datetime
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from agents.kafka.connect import start_producer
from agents.kafka.topics import ensure_topics, require_topic
from agents.ops.replay.progress import ProgressBar
from pipeline.config import Settings
from pipeline.replay import Recorded, Rewrite, ScheduledRecord, new_run_id, plan
from pipeline.replies import SourcePosition


@dataclass(frozen=True, slots=True)
class RunResult:
    run_id: str
    topic: str
    sent: int
    seconds: float
    """From the start to the last record acknowledged."""
    positions: tuple[SourcePosition, ...]
    """Where each record landed (topic, partition, offset), in the recording's order."""

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else float("inf")


async def replay(settings: Settings, records: Sequence[Recorded], *, topic: str | None = None,
                 speed: float | None = 1.0, rewrite: Rewrite | None = None,
                 run_id: str | None = None, progress: bool = True) -> RunResult:
    """Send ``records`` again to ``topic`` (default the requests topic): each after its
    inter-arrival time divided by ``speed`` (None: as fast as possible), stamped with the
    time it is sent (latency is measured from it), rewritten by ``rewrite``."""
    rewrite = rewrite or Rewrite()
    run_id = run_id or rewrite.prefix or new_run_id(datetime.datetime.now(datetime.UTC),
                                                   secrets.token_hex(2))
    outgoing = plan(records, rewrite, run_id, speed)  # every error before the first send
    topic = topic or settings.topics.requests
    await ensure_topics(settings)
    await require_topic(settings, topic)
    shown = ProgressBar(f"replay {run_id}", len(outgoing)) if progress else None
    producer = await start_producer(settings)
    futures = []
    try:
        started = time.monotonic()
        for out in outgoing:
            wait = started + out.at_s - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            futures.append(await _send(producer, topic, out))
            if shown is not None:
                shown.update(len(futures))
        await producer.flush()
        landed = await asyncio.gather(*futures)
        seconds = time.monotonic() - started
    finally:
        await producer.stop()
        if shown is not None:
            shown.finish()
    return RunResult(run_id, topic, len(outgoing), seconds,
                     tuple(SourcePosition(topic, m.partition, m.offset) for m in landed))


async def _send(producer: Any, topic: str, out: ScheduledRecord) -> asyncio.Future:
    return await producer.send(topic, value=out.value, key=out.key, headers=list(out.headers),
                               timestamp_ms=time.time_ns() // 1_000_000)
