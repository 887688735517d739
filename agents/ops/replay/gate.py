"""``streamserve replay gate``: replay through the baseline and the candidate version, one
run after the other, wait for every reply, diff and judge.

Replies are collected while the runs are sent, matched by the request position each
names (its ``streamserve-source-*`` headers), so a request without a readable id counts.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from agents.kafka.read import read_topic
from agents.kafka.topics import ensure_topics
from agents.ops.replay.progress import ProgressBar
from agents.ops.replay.run import RunResult, replay
from agents.ops.replay.sides import features_of
from pipeline.config import Settings
from pipeline.replay import (
    DiffReport,
    GateLimits,
    GateVerdict,
    Recorded,
    ReplayError,
    Rewrite,
    Side,
    accuracy,
    answer_of,
    diff,
    gate,
    gated,
    key_replies,
)
from pipeline.replies import SourcePosition, source_position


@dataclass(frozen=True, slots=True)
class GateResult:
    report: DiffReport
    verdict: GateVerdict
    runs: tuple[RunResult, RunResult]


class _Replies:
    """Every prediction and dead letter produced after ``start``, by source position: its
    value, and whether it is a dead letter."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.by_source: dict[SourcePosition, tuple[bytes | None, bool]] = {}
        self._ready = [asyncio.Event(), asyncio.Event()]
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        topics = self.settings.topics
        self._tasks = [asyncio.create_task(self._read(topic, ready, dead_letter))
                       for topic, ready, dead_letter in
                       zip((topics.predictions, topics.deadletter), self._ready, (False, True),
                           strict=True)]
        waiting = asyncio.gather(*(e.wait() for e in self._ready))
        done, _ = await asyncio.wait([asyncio.ensure_future(waiting), *self._tasks],
                                     return_when=asyncio.FIRST_COMPLETED)
        for task in self._tasks:
            if task in done:
                task.result()  # a reader failed to start: raise its error

    async def _read(self, topic: str, ready: asyncio.Event, dead_letter: bool) -> None:
        async for record in read_topic(self.settings, topic, from_beginning=False, ready=ready):
            source = source_position(record.headers)
            if source is not None:
                self.by_source.setdefault(source, (record.value, dead_letter))

    async def wait_for(self, positions: Sequence[SourcePosition], timeout: float,
                       label: str) -> None:
        shown = ProgressBar(f"replies {label}", len(positions))
        deadline = time.monotonic() + timeout
        try:
            while True:
                answered = sum(p in self.by_source for p in positions)
                shown.update(answered)
                if answered == len(positions) or time.monotonic() > deadline:
                    return
                for task in self._tasks:
                    if task.done():
                        task.result()
                await asyncio.sleep(0.1)
        finally:
            shown.finish()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def check_pinnable(settings: Settings, model: str, versions: Sequence[str]) -> None:
    """Refuse a gate whose versions the workers would not serve when pinned (a request may
    pin the stable, canary or fallback version), naming the command that fixes it."""
    from agents.kafka.control import read_specs  # imported when a gate runs: it loads JAX

    spec = (await read_specs(settings)).get(model)
    if spec is None:
        raise ReplayError(
            f"{model} has no deployment spec, so workers serve only its newest version; deploy "
            f"the baseline and make the candidate pinnable first: streamserve deploy {model} "
            f"{versions[0]} && streamserve fallback {model} {versions[1]}")
    missing = [v for v in versions if v not in spec.serving_versions()]
    if missing:
        raise ReplayError(
            f"{model} version {missing[0]} is not served ({spec.describe()}); a replay can pin "
            f"only the stable, canary or fallback version: e.g. streamserve fallback {model} "
            f"{missing[0]} (it then answers only pinned requests and breaker fallbacks)")


async def run_gate(settings: Settings, records: Sequence[Recorded], *, baseline: str,
                   candidate: str, limits: GateLimits, model: str | None = None,
                   retarget: bool = False, speed: float | None = 1.0, timeout: float = 60.0,
                   top: int = 10, truth: Mapping[str, str] | None = None) -> GateResult:
    """Replay ``records`` (of ``model``, or all sent to it with ``retarget``:
    ``pipeline.replay.gated``) pinned to ``baseline``, wait for every reply (or ``timeout``
    seconds after the last request), then the same pinned to ``candidate``; diff; judge
    (with ``truth``, the labels of the recorded requests by id, on accuracy too)."""
    if baseline == candidate:
        raise ReplayError(f"--baseline and --candidate are both {baseline}; a gate compares two "
                          "versions")
    if not records:
        raise ReplayError("the recording holds no records; capture a time range with traffic")
    records, model = gated(records, model, retarget)
    await ensure_topics(settings)
    await check_pinnable(settings, model, (baseline, candidate))
    token = secrets.token_hex(3)
    replies = _Replies(settings)
    await replies.start()
    runs = []
    try:
        for role, version in (("baseline", baseline), ("candidate", candidate)):
            run_id = f"gate-{token}-{role}"
            result = await replay(settings, records, speed=speed, run_id=run_id,
                                  rewrite=Rewrite(prefix=run_id, model=model if retarget else None,
                                                  version=version))
            await replies.wait_for(result.positions, timeout, f"{role} {version}")
            runs.append(result)
    finally:
        await replies.stop()
    sides = []
    for result, version in zip(runs, (baseline, candidate), strict=True):
        entries = []
        for index, position in enumerate(result.positions):
            found = replies.by_source.get(position)
            answer = (answer_of(found[0], result.run_id, dead_letter=found[1])
                      if found is not None else None)
            if answer is not None:
                entries.append((position, answer, f"#{index}"))
        sides.append(Side(f"{model} version {version} (run {result.run_id})",
                          key_replies(entries), requests=result.sent))
    report = diff(sides[0], sides[1], features_of(records), top)
    accuracies = None if truth is None else (accuracy(sides[0], truth), accuracy(sides[1], truth))
    return GateResult(report, gate(report, limits, accuracies), (runs[0], runs[1]))
