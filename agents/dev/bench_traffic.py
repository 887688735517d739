"""What the bench's cases send and read back: the open-loop schedule, the request rows,
the peer processes, the workers' counters, and the output topics read back and matched
to the requests (each request answered exactly once?).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from confluent_kafka import (
    Consumer as _Consumer,
    Producer as _Producer,
    TopicPartition as _TopicPartition,
)

from agents.dev.bench_results import Answers
from agents.dev.fleet import WorkerProcess
from agents.kafka import librdkafka
from agents.kafka.connect import connection
from pipeline.config import Settings
from pipeline.registry import Manifest
from pipeline.schema import Feature

PARTITIONS = 4  # of every topic the bench makes


class Schedule:
    """Open-loop load: ``0 .. count-1``, each at its time at ``rate`` per second, whatever
    the answers do. ``achieved_rps``: the rate the sender kept (lower when it could not)."""

    def __init__(self, rate: float, count: int) -> None:
        self.rate, self.count = rate, count
        self.achieved_rps = 0.0

    async def __aiter__(self) -> AsyncIterator[int]:
        started = time.monotonic()
        for i in range(self.count):
            if (delay := started + i / self.rate - time.monotonic()) > 0:
                await asyncio.sleep(delay)
            yield i
        # On schedule the last send is (count - 1) / rate after the first: the 1 / rate added
        # makes a schedule kept exactly come out at ``rate``.
        self.achieved_rps = self.count / (time.monotonic() - started + 1 / self.rate)


@dataclass(frozen=True, slots=True)
class Peer:
    """A peer process (agents/dev/bench_peers.py) and its log."""

    process: subprocess.Popen
    log: Path


def start_peer(kind: str, s: Settings, model: str, log: Path) -> Peer:
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "agents.dev.bench_peers", kind, "--bootstrap", s.bootstrap,
               "--prefix", s.kafka.topic_prefix, "--group", s.kafka.app_id, "--registry", str(s.registry.root),
               "--model", model]
    with log.open("wb") as out:
        return Peer(subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT), log)


def kill_peer(process: subprocess.Popen) -> None:
    """The answers are in and the counters read: a graceful stop would take seconds to measure nothing."""
    process.kill()
    process.wait()


def feature_rows(manifest: Manifest, n: int) -> list[dict[str, float | np.ndarray]]:
    """``n`` rows of feature values drawn uniformly from the ranges the model was trained on
    (a standard normal where it names none: a model registered without a reference, or a
    tensor, whose rows are arrays of its shape)."""
    rng = np.random.default_rng(0)

    def column(f: Feature) -> list[float] | np.ndarray:
        if f.shape:
            return rng.normal(0, 1, (n, *f.shape)).astype(np.float32)
        if np.isfinite(f.minimum) and np.isfinite(f.maximum):
            return rng.uniform(f.minimum, f.maximum, n).astype(np.float32).tolist()
        return rng.normal(0, 1, n).astype(np.float32).tolist()

    columns = {f.name: column(f) for f in manifest.inputs.features}
    return [{name: values[i] for name, values in columns.items()} for i in range(n)]


def worker_counters(workers: Sequence[WorkerProcess]) -> dict[str, float]:
    """Every sample of the workers' metrics, summed over labels and workers."""
    from prometheus_client.parser import text_string_to_metric_families

    totals: Counter[str] = Counter()
    for worker in workers:
        for family in text_string_to_metric_families(worker.metrics()):
            for sample in family.samples:
                totals[sample.name] += sample.value
    return dict(totals)


def worker_means(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """The mean wait in a worker's queue and the mean model call (ms) between two readings
    of ``worker_counters``, where the workers served anything meanwhile."""
    means = {}
    for leg, histogram in (("worker_queue_mean", "streamserve_queue_wait_seconds"),
                           ("model_call_mean", "streamserve_inference_latency_seconds")):
        count = after.get(f"{histogram}_count", 0) - before.get(f"{histogram}_count", 0)
        if count > 0:
            means[leg] = 1000 * (after[f"{histogram}_sum"] - before.get(f"{histogram}_sum", 0)) / count
    return means


def output_partitions(s: Settings) -> list[TopicPartition]:
    return [TopicPartition(topic, p) for topic in (s.topics.predictions, s.topics.deadletter)
            for p in range(PARTITIONS)]


async def read_outputs(s: Settings, seen: dict[TopicPartition, int]) -> list[tuple[bytes | None, int, str]]:
    """(key, broker timestamp in ms, topic) of every output record, at least up to ``seen``."""
    partitions = output_partitions(s)
    # From the beginning by the reset policy: a seek_to_beginning right after assign() races
    # with the policy's own reset, and can lose.
    consumer = AIOKafkaConsumer(**connection(s), group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        consumer.assign(partitions)
        end = {tp: max(offset, seen[tp]) for tp, offset in (await consumer.end_offsets(partitions)).items()}
        out = []
        while [tp for tp in partitions if await consumer.position(tp) < end[tp]]:
            fetched = await consumer.getmany(timeout_ms=500, max_records=10_000)
            out += [(r.key, r.timestamp, r.topic) for records in fetched.values() for r in records]
        return out
    finally:
        await consumer.stop()


@dataclass(frozen=True, slots=True)
class Arrival:
    """An answer as the bench's reader got it: when (monotonic and epoch seconds), the
    broker's append time (ms, the output topics are stamped LogAppendTime) and its bytes."""

    monotonic: float
    epoch: float
    appended_ms: int
    value: bytes | None


class AnswerReader:
    """The latency cases' reader: librdkafka's consumer, in a thread of its own, from the
    output topics' ends as they are when it starts, keeps each answer's first arrival
    (``received``, by key). The load generator's reader and producer are librdkafka's so
    that they take as little of the cores the worker shares as they can: on aiokafka they
    took most of one at 75 % of saturation, and the requests queued in the generator."""

    def __init__(self, s: Settings) -> None:
        self.received: dict[bytes, Arrival] = {}
        self._consumer = _Consumer({**librdkafka.config(s), "group.id": f"{s.kafka.topic_prefix}-reader",
                                    "enable.auto.commit": False})
        self._partitions = output_partitions(s)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="bench-reader", daemon=True)

    async def __aenter__(self) -> AnswerReader:
        await asyncio.to_thread(self._assign_at_ends)
        self._thread.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        self._stop.set()
        await asyncio.to_thread(self._thread.join)
        await asyncio.to_thread(self._consumer.close)

    def _assign_at_ends(self) -> None:
        # Each end fixed now, before anything is sent: "the end" resolved later could skip
        # the first answers.
        self._consumer.assign([_TopicPartition(tp.topic, tp.partition,
                                               librdkafka.end_offset(self._consumer, tp.topic, tp.partition))
                               for tp in self._partitions])

    def _read(self) -> None:
        while not self._stop.is_set():
            # consume(n, t) waits for all n records or t: one record waited for, then the rest
            # that are there, so each arrival is timed as it comes.
            if (first := self._consumer.poll(0.1)) is None:
                continue
            messages = [first, *self._consumer.consume(10_000, 0)]
            now, epoch = time.monotonic(), time.time()
            for m in messages:
                if m.error() is None and (key := m.key()) not in self.received:
                    self.received[key] = Arrival(now, epoch, m.timestamp()[1], m.value())


class RequestSender:
    """The bench's producer of requests (the backlogs and the latency cases): librdkafka's,
    as a client of it is by default (5 ms linger), partitioned by key as Java clients and
    aiokafka do; ``send`` waits only while librdkafka's queue is full."""

    def __init__(self, s: Settings) -> None:
        # Not less: with linger 0 librdkafka sends a request per record, and at 4,000 a
        # second on this machine's shared cores its acks took 134 ms at p50; with 1 ms, the
        # broker's load of tiny requests tipped some runs at 25 % of saturation into a
        # backlog of 600 ms at p50 for a whole point (both measured here).
        self._producer = _Producer({**librdkafka.config(s), "linger.ms": 5,
                                    "partitioner": "murmur2_random"})
        self.failed: list[str] = []

    def send(self, topic: str, key: bytes, value: bytes) -> None:
        while True:
            try:
                self._producer.produce(topic, value, key, on_delivery=self._delivered)
                break
            except BufferError:  # its queue is full: let it send
                self._producer.poll(0.05)
        self._producer.poll(0)

    def flush(self, timeout: float) -> list[str]:
        """Wait (blocking) until every request is acknowledged; the errors of those not written."""
        if left := self._producer.flush(timeout):
            self.failed.append(f"{left} not acknowledged in {timeout:.0f} s")
        return self.failed

    def _delivered(self, error: object, _message: object) -> None:
        if error is not None:
            self.failed.append(str(error))


def latency_legs(sent_epoch: dict[bytes, float], received: dict[bytes, Arrival]) -> dict[str, float]:
    """Where an answer's time went, each leg's median (ms) over the predictions: from the
    send to the worker's answer (the broker, the worker's fetch, queue and model call:
    a prediction's ``latency_ms`` counts from its request's timestamp, the send), from
    there to the broker's append of the answer (the producer), and on to the reader."""
    legs: dict[str, list[float]] = {"send_to_answer": [], "answer_to_broker": [], "broker_to_reader": []}
    for key, arrival in received.items():
        if key not in sent_epoch or arrival.value is None:
            continue
        parameters = orjson.loads(arrival.value).get("parameters")
        if not isinstance(parameters, dict) or "latency_ms" not in parameters:
            continue  # a dead letter
        answered_ms = 1000 * sent_epoch[key] + parameters["latency_ms"]
        legs["send_to_answer"].append(parameters["latency_ms"])
        legs["answer_to_broker"].append(arrival.appended_ms - answered_ms)
        legs["broker_to_reader"].append(1000 * arrival.epoch - arrival.appended_ms)
    return {leg: float(np.median(ms)) for leg, ms in legs.items() if ms}


def match_answers(s: Settings, n: int, outputs: Sequence[tuple[bytes | None, int, str]]) -> Answers:
    counts = Counter(key for key, _, _ in outputs)
    expected = [f"{s.kafka.topic_prefix}-{i}".encode() for i in range(n)]
    missing = sum(1 for key in expected if counts[key] == 0)
    return Answers(n, answered_once=sum(1 for key in expected if counts[key] == 1), missing=missing,
                   duplicates=len(outputs) - (n - missing),
                   deadletters=sum(1 for _, _, topic in outputs if topic == s.topics.deadletter))
