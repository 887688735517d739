"""``streamserve replay capture|run|diff|gate``: the Kafka and file side of ``pipeline.replay``.

- ``capture``: read a topic range (read_committed) into a recording file, zstd-compressed
  when its name ends in ``.zst``.
- ``replay``: send a recording again on its schedule, rewritten, tagged with the run id.
- ``load_side``: one run's replies for the diff, from a capture file of the predictions and
  dead-letter topics, or by run id from the topics themselves.
- ``run_gate``: replay through the baseline and the candidate version, one run after the
  other, wait for every reply, and diff.

Replies are matched to the requests they answer by their ``streamserve-source-*``
headers (topic, partition, offset), as the ledger does, so a request without a readable
id is matched too.
"""

from __future__ import annotations

import asyncio
import datetime
import io
import os
import secrets
import sys
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import zstandard
from aiokafka import ConsumerRecord

from agents.kafka.io import (
    ensure_topics,
    partition_offsets,
    read_partitions,
    read_topic,
    require_topic,
    start_producer,
)
from pipeline.config import Settings
from pipeline.replay import (
    INDEX_HEADER,
    REPLAY_HEADER,
    Bound,
    DiffReport,
    GateLimits,
    GateVerdict,
    Recorded,
    RecordingHeader,
    ReplayError,
    Rewrite,
    ScheduledRecord,
    Side,
    TimeBound,
    answer_of,
    belongs_to_run,
    capture_range,
    check_run_id,
    describe_bound,
    diff,
    gate,
    in_time_range,
    key_replies,
    new_run_id,
    plan,
    replay_order,
    request_features,
    request_models,
    strip_run,
)
from pipeline.replies import SourcePosition, source_position

_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_ZSTD_LEVEL = 10  # JSON lines shrink ~10x; level 10 still writes ~50 MB/s


# ------------------------------------------------------------------------------- files


def write_recording(path: Path, header: RecordingHeader, records: Iterable[Recorded]) -> int:
    """Write ``records`` after ``header``; zstd when ``path`` ends in ``.zst``. Written to a
    temporary name first, so a failed capture leaves no half file behind."""
    partial = path.with_name(path.name + ".partial")
    count = 0
    try:
        with partial.open("wb") as raw:
            out: IO[bytes] = raw
            compressor = None
            if path.suffix == ".zst":
                compressor = zstandard.ZstdCompressor(level=_ZSTD_LEVEL).stream_writer(
                    raw, closefd=False)
                out = compressor
            out.write(header.to_line() + b"\n")
            for record in records:
                out.write(record.to_line() + b"\n")
                count += 1
            if compressor is not None:
                compressor.close()
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return count


def read_recording(path: Path) -> tuple[RecordingHeader, list[Recorded]]:
    """A recording's header and records (compressed or not: told by its first bytes)."""
    if not path.is_file():
        raise ReplayError(f"{path} is not a file; record one with `streamserve replay capture "
                          f"--out {path}`")
    with path.open("rb") as raw:
        lines = _lines(raw)
        try:
            header = RecordingHeader.from_line(next(lines, b""), str(path))
            records = [Recorded.from_line(line, f"{path}:{n}")
                       for n, line in enumerate(lines, start=2) if line.strip()]
        except zstandard.ZstdError as e:  # a damaged file
            raise ReplayError(f"{path} cannot be read ({e}); capture it again") from None
    if header.records is not None and header.records != len(records):
        raise ReplayError(f"{path} holds {len(records)} records but was written with "
                          f"{header.records}: it is truncated; capture it again")
    return header, records


def _lines(raw: IO[bytes]) -> Iterator[bytes]:
    magic = raw.read(4)
    raw.seek(0)
    if magic == _ZSTD_MAGIC:
        yield from io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw))
    else:
        yield from raw


# ----------------------------------------------------------------------------- capture


@dataclass(frozen=True, slots=True)
class CaptureResult:
    path: Path
    records: int
    per_topic: dict[str, int]


async def capture(settings: Settings, topics: Sequence[str], start: Bound | None,
                  stop: Bound | None, out: Path, run_id: str | None = None) -> CaptureResult:
    """Record ``topics`` between ``start`` and ``stop`` into ``out``.

    Replayed requests (those with the ``streamserve-replay`` header) are left out unless
    ``run_id`` is given: then only that run's requests and the replies to them are kept.
    """
    if not out.parent.is_dir():
        raise ReplayError(f"cannot write {out}: folder {out.parent} does not exist; create it "
                          "(mkdir -p) or choose another --out path")
    if run_id is not None:
        check_run_id(run_id)
    await ensure_topics(settings)
    records: list[Recorded] = []
    per_topic: dict[str, int] = {}
    for topic in topics:
        found = [r async for r in _read_range(settings, topic, start, stop)
                 if (belongs_to_run(r, run_id) if run_id is not None
                     else r.header(REPLAY_HEADER) is None)]
        per_topic[topic] = len(found)
        records += found
    records = replay_order(records)
    header = RecordingHeader(tuple(topics), describe_bound(start), describe_bound(stop),
                             datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                             run_id, len(records))
    write_recording(out, header, records)
    return CaptureResult(out, len(records), per_topic)


async def _read_range(settings: Settings, topic: str, start: Bound | None,
                      stop: Bound | None) -> AsyncIterator[Recorded]:
    times = tuple(b.ms for b in (start, stop) if isinstance(b, TimeBound))
    offsets = await partition_offsets(settings, topic, times)
    ranges = {}
    for partition, (beginning, end, at_times) in offsets.items():
        at = iter(at_times)
        start_at = next(at) if isinstance(start, TimeBound) else None
        stop_at = next(at) if isinstance(stop, TimeBound) else None
        ranges[partition] = capture_range(partition, beginning, end, start, stop, start_at, stop_at)
    async for record in read_partitions(settings, topic, ranges):
        if in_time_range(record.timestamp, start, stop):
            yield _recorded(record)


def _recorded(record: ConsumerRecord) -> Recorded:
    return Recorded(record.topic, record.partition, record.offset, record.timestamp, record.key,
                    record.value, tuple((name, value) for name, value in record.headers))


# ------------------------------------------------------------------------------- replay


class ProgressBar:
    """A progress line on stderr, redrawn at most ten times a second on a terminal; elsewhere
    (a CI log) one line per tenth of the way."""

    def __init__(self, label: str, total: int, stream: IO[str] | None = None) -> None:
        self.label, self.total = label, total
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self._drawn = 0.0
        self._tenth = 0
        self._started = time.monotonic()

    def update(self, sent: int, note: str = "") -> None:
        now = time.monotonic()
        tenth = 10 * sent // max(1, self.total)
        if self.tty and (now - self._drawn >= 0.1 or sent == self.total):
            self._drawn = now
            width = 30
            done = width * sent // max(1, self.total)
            rate = sent / max(now - self._started, 1e-9)
            print(f"\r{self.label} [{'#' * done}{'.' * (width - done)}] {sent}/{self.total} "
                  f"{rate:,.0f}/s {note}", end="", file=self.stream, flush=True)
        elif not self.tty and tenth > self._tenth:
            self._tenth = tenth
            print(f"{self.label}: {sent}/{self.total} {note}".rstrip(), file=self.stream, flush=True)

    def finish(self) -> None:
        if self.tty:
            print(file=self.stream, flush=True)


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


# --------------------------------------------------------------------------------- diff


def features_of(records: Iterable[Recorded], run_id: str | None = None) -> dict[str, dict]:
    """Requests' features by id (run prefix stripped), the first request of each id."""
    features: dict[str, dict] = {}
    for record in records:
        found = request_features(record.value)
        if found is not None:
            features.setdefault(strip_run(found[0], run_id), found[1])
    return features


async def load_side(settings: Settings, spec: str) -> tuple[Side, dict[str, dict]]:
    """One run's replies and its requests' features: ``spec`` is a capture file of the
    predictions and dead-letter topics, or a run id read from the topics."""
    path = Path(spec)
    if path.is_file():
        return _side_from_file(path), {}
    try:
        run_id = check_run_id(spec)
    except ReplayError:
        raise ReplayError(f"{spec!r} is neither a file nor a run id; give a capture of the "
                          "predictions and dead-letter topics, or the run id `replay run` "
                          "printed") from None
    return await _side_from_topics(settings, run_id)


def _side_from_file(path: Path) -> Side:
    header, records = read_recording(path)
    entries = []
    for record in records:
        # A capture of both reply topics: a dead letter is told by its body.
        answer = answer_of(record.value, header.run_id, dead_letter=None)
        if answer is None:
            continue
        position = (source_position(record.headers)
                    or SourcePosition(record.topic, record.partition, record.offset))
        entries.append((position, answer, "?{}:{}:{}".format(*position)))
    if not entries:
        raise ReplayError(f"{path} holds no predictions or dead letters; capture the replies: "
                          "streamserve replay capture --topic <prefix>.predictions --topic "
                          "<prefix>.deadletter --run-id RUN ...")
    name = f"{path.name}" + (f" (run {header.run_id})" if header.run_id else "")
    return Side(name, key_replies(entries))


async def _side_from_topics(settings: Settings, run_id: str) -> tuple[Side, dict[str, dict]]:
    await ensure_topics(settings)
    topics = settings.topics
    requests: dict[SourcePosition, tuple[str, Recorded]] = {}
    async for r in read_topic(settings, topics.requests, from_beginning=True, to_end=True):
        tags = dict(r.headers)
        if tags.get(REPLAY_HEADER) == run_id.encode():
            index = tags.get(INDEX_HEADER, b"").decode(errors="replace")
            requests[SourcePosition(r.topic, r.partition, r.offset)] = (f"#{index}", _recorded(r))
    if not requests:
        raise ReplayError(f"no requests of replay run {run_id!r} on {topics.requests}; check the "
                          "run id `streamserve replay run` printed, and STREAMSERVE_TOPIC_PREFIX")
    entries = []
    for topic in (topics.predictions, topics.deadletter):
        dead_letter = topic == topics.deadletter
        async for r in read_topic(settings, topic, from_beginning=True, to_end=True):
            source = source_position(r.headers)
            if source in requests and (
                    answer := answer_of(r.value, run_id, dead_letter=dead_letter)) is not None:
                entries.append((source, answer, requests[source][0]))
    side = Side(f"run {run_id}", key_replies(entries), requests=len(requests))
    return side, features_of((record for _, record in requests.values()), run_id)


async def diff_sides(settings: Settings, baseline: str, candidate: str,
                     recording: Path | None = None, top: int = 10) -> DiffReport:
    base, base_features = await load_side(settings, baseline)
    cand, cand_features = await load_side(settings, candidate)
    features = {**cand_features, **base_features}
    if recording is not None:
        header, records = read_recording(recording)
        features = {**features, **features_of(records, header.run_id)}
    return diff(base, cand, features, top)


# --------------------------------------------------------------------------------- gate


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


async def check_pinnable(settings: Settings, models: Iterable[str], versions: Sequence[str]) -> None:
    """Refuse a gate whose versions the workers would not serve when pinned (a request may
    pin the stable, canary or fallback version), naming the command that fixes it."""
    from agents.kafka.control import read_specs  # imported when a gate runs: it loads JAX

    specs = await read_specs(settings)
    for model in sorted(models):
        spec = specs.get(model)
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
                   speed: float | None = 1.0, timeout: float = 60.0, top: int = 10) -> GateResult:
    """Replay ``records`` pinned to ``baseline``, wait for every reply (or ``timeout``
    seconds after the last request), then the same pinned to ``candidate``; diff; judge."""
    if baseline == candidate:
        raise ReplayError(f"--baseline and --candidate are both {baseline}; a gate compares two "
                          "versions")
    if not records:
        raise ReplayError("the recording holds no records; capture a time range with traffic")
    models = {model} if model is not None else request_models(r.value for r in records)
    if not models:
        raise ReplayError("no request in the recording names a model; pass --model")
    if len(models) > 1:
        raise ReplayError(f"the recording holds requests for {', '.join(sorted(models))}; a gate "
                          "pins one model's versions: pass --model")
    await ensure_topics(settings)
    await check_pinnable(settings, models, (baseline, candidate))
    token = secrets.token_hex(3)
    replies = _Replies(settings)
    await replies.start()
    runs = []
    try:
        for role, version in (("baseline", baseline), ("candidate", candidate)):
            run_id = f"gate-{token}-{role}"
            result = await replay(settings, records, speed=speed, run_id=run_id,
                                  rewrite=Rewrite(prefix=run_id, model=model, version=version))
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
        sides.append(Side(f"{'/'.join(sorted(models))} version {version} (run {result.run_id})",
                          key_replies(entries), requests=result.sent))
    report = diff(sides[0], sides[1], features_of(records), top)
    return GateResult(report, gate(report, limits), (runs[0], runs[1]))
