"""``streamserve bench``: streamserve beside its ceilings and its alternatives, in one run.

One broker, one machine, the cases one after the other, each on topics of its own
(4 partitions) and in a consumer group of its own:

1. ``kafka_ceiling``: a raw aiokafka pass-through, no decoding, no model (agents/bench_peers.py).
2. ``model_ceiling``: ``ServingModel.predict`` in this process at its best padding bucket,
   beside the FLOP bound: a jitted 2048x2048 float32 matmul's GFLOP/s over the model's
   2·Σ(in·out) flops per row.
3. ``streamserve``: one worker with the configured settings (the defaults, unless set).
4. ``streamserve_per_record``: the same with ``STREAMSERVE_MAX_BATCH=1``.
5. ``handwritten_aiokafka`` and ``quix_streams``: the same job written by a user.
6. latency: open-loop load at 25, 50 and 75 % of case 3's throughput, on case 3's worker.
7. ``streamserve_two_workers``: two workers in one consumer group.

Throughput is answers / (last output's timestamp - first's), the timestamps being those
the broker stores with each output record. The requests are produced before the process
that serves them starts, so neither producing nor start-up competes with serving. Case 7
is the exception: a worker joining a group that already serves waits for the next
heartbeat (up to 3 s) to get partitions, so both workers start on an empty topic, the
requests follow once both serve, and only outputs stamped after the last request was
acknowledged count.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from agents.fleet import WorkerProcess
from agents.kafka_io import ensure_topics, start_producer
from pipeline.config import Settings

PARTITIONS = 4
LATENCY_SHARES = (25, 50, 75)
_STALL_SECONDS = 30.0  # no new answer for this long: the case has failed
_MATMUL = 2048


class BenchError(RuntimeError):
    """A case could not be measured; the message says which and where its log is."""


@dataclass(frozen=True, slots=True)
class Sizes:
    requests: int  # per throughput case
    latency_seconds: float  # of load per latency point
    timing_seconds: float  # per in-process measurement


QUICK = Sizes(requests=2_000, latency_seconds=3.0, timing_seconds=0.2)
FULL = Sizes(requests=25_000, latency_seconds=10.0, timing_seconds=1.0)


@dataclass(frozen=True, slots=True)
class Answers:
    """How the outputs of one throughput case match its requests."""

    requests: int
    answered_once: int
    missing: int
    duplicates: int  # answers beyond the first for an id, and answers to unknown ids
    deadletters: int

    @property
    def complete(self) -> bool:
        return self.answered_once == self.requests and not self.duplicates


@dataclass(frozen=True, slots=True)
class WorkerStats:
    """Counter deltas of a worker from the moment it was ready to the end of a case."""

    jit_compiles: float
    padding_rows: float | None  # None: the worker exports no streamserve_padding_rows_total
    rows: float
    batches: float

    @classmethod
    def between(cls, before: dict[str, float], after: dict[str, float]) -> WorkerStats:
        def delta(name: str) -> float:
            return after.get(name, 0.0) - before.get(name, 0.0)

        padding = "streamserve_padding_rows_total"
        return cls(delta("streamserve_jit_compiles_total"),
                   delta(padding) if padding in after else None,
                   delta("streamserve_batch_size_sum"), delta("streamserve_batch_size_count"))

    def __add__(self, other: WorkerStats) -> WorkerStats:
        padding = (None if self.padding_rows is None or other.padding_rows is None
                   else self.padding_rows + other.padding_rows)
        return WorkerStats(self.jit_compiles + other.jit_compiles, padding,
                           self.rows + other.rows, self.batches + other.batches)

    @property
    def padding_waste(self) -> float | None:
        """Share of the rows computed that were padding."""
        if self.padding_rows is None or self.padding_rows + self.rows == 0:
            return None
        return self.padding_rows / (self.padding_rows + self.rows)

    @property
    def mean_batch(self) -> float | None:
        return self.rows / self.batches if self.batches else None


@dataclass(frozen=True, slots=True)
class Case:
    title: str
    throughput_rps: float
    seconds: float  # the measured window
    answers: Answers | None = None
    workers: WorkerStats | None = None
    extra: tuple[tuple[str, float], ...] = ()  # further facts, in the JSON and the notes

    def to_json(self) -> dict:
        out: dict = {"throughput_rps": self.throughput_rps, "seconds": self.seconds}
        if self.answers is not None:
            a = self.answers
            out |= {"requests": a.requests, "answered_once": a.answered_once, "missing": a.missing,
                    "duplicates": a.duplicates, "deadletters": a.deadletters,
                    "every_request_answered_once": a.complete}
        if self.workers is not None:
            w = self.workers
            out |= {"mean_batch": w.mean_batch, "padding_waste": w.padding_waste,
                    "jit_compiles_after_warmup": w.jit_compiles}
        return out | dict(self.extra)


@dataclass(frozen=True, slots=True)
class LatencyPoint:
    share: int  # percent of case 3's throughput
    rate_rps: float
    requests: int
    answered: int
    p50: float  # milliseconds, request produced -> prediction received
    p95: float
    p99: float


@dataclass(frozen=True, slots=True)
class Handle:
    """A process the bench started (a worker or a peer) and its log."""

    process: subprocess.Popen
    log: Path


@dataclass(frozen=True, slots=True)
class Report:
    device: str
    model: str
    sizes: Sizes
    cases: dict[str, Case]
    latency: dict[int, LatencyPoint]
    workers: WorkerStats  # summed over every streamserve worker and case

    def ratios(self) -> dict[str, float]:
        rps = {name: case.throughput_rps for name, case in self.cases.items()}
        flop_bound = dict(self.cases["model_ceiling"].extra)["flop_bound_rps"]
        return {"vs_kafka_ceiling": rps["streamserve"] / rps["kafka_ceiling"],
                "vs_per_record": rps["streamserve"] / rps["streamserve_per_record"],
                "vs_handwritten": rps["streamserve"] / rps["handwritten_aiokafka"],
                "vs_quix": rps["streamserve"] / rps["quix_streams"],
                "two_workers": rps["streamserve_two_workers"] / rps["streamserve"],
                "model_vs_flop_bound": rps["model_ceiling"] / flop_bound}

    def streamserve_cases(self) -> list[Case]:
        return [case for case in self.cases.values() if case.workers is not None]

    def to_json(self) -> dict:
        return {
            "device": self.device,
            "cases": {name: case.to_json() for name, case in self.cases.items()},
            "latency_ms": {str(p.share): {"p50": p.p50, "p95": p.p95, "p99": p.p99, "rate_rps": p.rate_rps,
                                          "requests": p.requests, "answered": p.answered}
                           for p in self.latency.values()},
            "ratios": self.ratios(),
            "jit_compiles_after_warmup": round(self.workers.jit_compiles),
            "padding_waste": self.workers.padding_waste,
        }

    def table(self, quick: bool) -> str:
        lines = [(f"streamserve bench{' --quick' if quick else ''}: model {self.model}, "
                  f"{self.sizes.requests} requests per throughput case, JAX on {self.device}, "
                  f"{os.cpu_count()} CPUs"),
                 "",
                 f"{'CASE':<34}{'THROUGHPUT':>14}  {'ANSWERED ONCE':<15}NOTES"]
        for case in self.cases.values():
            answered = f"{case.answers.answered_once}/{case.answers.requests}" if case.answers else ""
            lines.append(f"{case.title:<34}{case.throughput_rps:>12,.0f}/s  {answered:<15}{_notes(case)}")
        lines += ["", (f"{'LATENCY (open loop, case 3 worker)':<34}{'OFFERED':>14}  {'ANSWERED':<15}"
                       f"{'P50':>9}{'P95':>10}{'P99':>10}")]
        for p in self.latency.values():
            lines.append(f"{f'  {p.share} % of case 3':<34}{p.rate_rps:>12,.0f}/s  "
                         f"{f'{p.answered}/{p.requests}':<15}{p.p50:>6.1f} ms{p.p95:>7.1f} ms{p.p99:>7.1f} ms")
        lines += ["", "RATIOS"]
        lines += [f"  {name:<22}{value:>8.3f}" for name, value in self.ratios().items()]
        waste = self.workers.padding_waste
        lines += ["", f"jit compiles after warm-up: {self.workers.jit_compiles:.0f}",
                  "padding waste: " + (f"{100 * waste:.1f} % of the rows computed" if waste is not None
                                       else "n/a (the workers export no streamserve_padding_rows_total)")]
        return "\n".join(lines)


def _notes(case: Case) -> str:
    notes = []
    if case.workers is not None and case.workers.mean_batch is not None:
        notes.append(f"mean batch {case.workers.mean_batch:.1f}")
    if case.answers is not None and case.answers.deadletters:
        notes.append(f"{case.answers.deadletters} dead letters")
    if case.answers is not None and case.answers.duplicates:
        notes.append(f"{case.answers.duplicates} DUPLICATES")
    extra = dict(case.extra)
    if "flop_bound_rps" in extra:
        notes.append(f"rows/s at bucket {extra['best_bucket']:.0f} ({extra['bucket_1_rps']:,.0f} at 1); "
                     f"FLOP bound {extra['flop_bound_rps']:,.0f} at {extra['gflops']:.1f} GFLOP/s")
    return ", ".join(notes)


class Progress:
    """One line per case on stderr, rewritten in place while it runs (on a terminal)."""

    def __init__(self) -> None:
        self._live = sys.stderr.isatty()
        self.title = ""

    def start(self, title: str) -> None:
        self.title = title
        self.status("starting")

    def status(self, text: str) -> None:
        if self._live:
            print(f"\r\033[K{self.title}: {text}", end="", file=sys.stderr, flush=True)

    def done(self, text: str) -> None:
        print(f"\r\033[K{self.title}: {text}" if self._live else f"{self.title}: {text}",
              file=sys.stderr, flush=True)


def run_bench(settings: Settings, model: str, quick: bool, json_path: Path | None) -> int:
    """Run every case; print the table; 1 when a streamserve case lost or duplicated an answer."""
    from agents.broker import LocalBroker

    broker = LocalBroker(settings.home, settings.local_broker_port) if settings.uses_local_broker else None
    started = broker is not None and broker.start()
    try:
        bench = Bench(settings, model, QUICK if quick else FULL)
        report = asyncio.run(bench.run())
    finally:
        if started:
            broker.stop()
    print(report.table(quick))
    if json_path is not None:
        json_path.write_bytes(orjson.dumps(report.to_json(), option=orjson.OPT_INDENT_2) + b"\n")
    lost = [c.title for c in report.streamserve_cases() if not c.answers.complete]
    if lost:
        print(f"streamserve: error: not every request was answered exactly once in: {', '.join(lost)}",
              file=sys.stderr)
    return 1 if lost else 0


class Bench:
    def __init__(self, settings: Settings, model: str, sizes: Sizes) -> None:
        from models.datasets import DATASETS, load

        if model not in DATASETS:
            raise BenchError(f"--model {model!r} is not a built-in model; use one of {', '.join(DATASETS)}")
        self.settings = replace(settings, request_partitions=PARTITIONS)
        self.model = model
        self.sizes = sizes
        self.run_id = f"bench-{time.strftime('%H%M%S')}-{uuid.uuid4().hex[:6]}"
        self.logs = settings.home / "bench" / self.run_id
        data = load(model)
        self._rows = [dict(zip(data.features, row.tolist(), strict=True)) for row in data.X[:1000]]
        self._cases = 0
        self.progress = Progress()
        self.worker_stats: list[WorkerStats] = []

    async def run(self) -> Report:
        import jax

        self._train_missing()
        device = ", ".join(f"{d.device_kind} ({d!r})" for d in jax.devices())
        print(f"JAX device: {device}", file=sys.stderr)
        try:
            cases = {"kafka_ceiling": await self.peer_case("1 Kafka ceiling (pass-through)", "passthrough"),
                     "model_ceiling": self.model_ceiling()}
            cases["streamserve"], latency = await self.streamserve_and_latency()
            cases["streamserve_per_record"] = await self.worker_case(
                "4 streamserve, max_batch=1", "per-record", {"STREAMSERVE_MAX_BATCH": "1"})
            cases["handwritten_aiokafka"] = await self.peer_case("5a hand-written aiokafka loop",
                                                                 "handwritten")
            cases["quix_streams"] = await self.peer_case("5b Quix Streams", "quix")
            cases["streamserve_two_workers"] = await self.two_workers()
        finally:
            await self._delete_topics()
        total = sum(self.worker_stats[1:], self.worker_stats[0])
        return Report(device, self.model, self.sizes, cases, latency, total)

    # ------------------------------------------------------------------ setup

    def _train_missing(self) -> None:
        from models.train import train_and_register
        from pipeline.registry import Registry

        registry = Registry(self.settings.registry)
        for name in dict.fromkeys((self.model, "iris")):
            if registry.latest(name) is None:
                print(f"training {name} into {self.settings.registry} ...", file=sys.stderr)
                train_and_register(name, registry)

    def _fresh(self, slug: str) -> Settings:
        self._cases += 1
        prefix = f"{self.run_id}-{self._cases}-{slug}"
        return replace(self.settings, topic_prefix=prefix, app_id=prefix)

    def _env(self, s: Settings, **extra: str) -> dict[str, str]:
        return {"STREAMSERVE_BROKER": s.bootstrap, "STREAMSERVE_REGISTRY": str(s.registry),
                "STREAMSERVE_TOPIC_PREFIX": s.topic_prefix, "STREAMSERVE_APP_ID": s.app_id,
                "STREAMSERVE_REQUEST_PARTITIONS": str(PARTITIONS), **extra}

    def _request(self, request_id: str, i: int) -> bytes:
        return orjson.dumps({"id": request_id, "model": self.model,
                             "features": self._rows[i % len(self._rows)]})

    # ------------------------------------------------------------------ cases

    def model_ceiling(self) -> Case:
        from models.runtime import ServingModel
        from pipeline.batching import buckets_for
        from pipeline.registry import Registry

        self.progress.start("2 model ceiling (in-process)")
        registry = Registry(self.settings.registry)
        version = registry.latest(self.model)
        served = ServingModel.load(registry, self.model, version, buckets_for(self.settings.max_batch))
        rows = np.array([list(r.values()) for r in self._rows], np.float32)
        rates = {b: self._rows_per_second(served, np.resize(rows, (b, rows.shape[1])))
                 for b in served.buckets}
        best = max(rates, key=rates.__getitem__)
        gflops = self._matmul_gflops()
        params = registry.load_params(self.model, version)
        flops_per_row = 2 * sum(w.shape[0] * w.shape[1] for k, w in params.items() if k.startswith("w"))
        flop_bound = gflops * 1e9 / flops_per_row
        self.progress.done(f"{rates[best]:,.0f} rows/s at bucket {best}; FLOP bound "
                           f"{flop_bound:,.0f} rows/s ({gflops:.1f} GFLOP/s)")
        return Case("2 model ceiling (in-process)", rates[best], self.sizes.timing_seconds,
                    extra=(("best_bucket", best), ("bucket_1_rps", rates[1]),
                           ("flop_bound_rps", flop_bound), ("gflops", gflops),
                           ("flops_per_row", flops_per_row)))

    def _rows_per_second(self, served, x: np.ndarray) -> float:
        served.predict(x)
        calls, started = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - started) < self.sizes.timing_seconds:
            served.predict(x)
            calls += 1
        return calls * x.shape[0] / elapsed

    def _matmul_gflops(self) -> float:
        import jax
        import jax.numpy as jnp

        a = jax.random.normal(jax.random.key(0), (_MATMUL, _MATMUL), jnp.float32)
        matmul = jax.jit(jnp.matmul)
        matmul(a, a).block_until_ready()
        reps, started = 0, time.perf_counter()
        while reps < 2 or time.perf_counter() - started < self.sizes.timing_seconds:
            matmul(a, a).block_until_ready()
            reps += 1
        return reps * 2 * _MATMUL**3 / (time.perf_counter() - started) / 1e9

    async def peer_case(self, title: str, kind: str) -> Case:
        self.progress.start(title)
        s = self._fresh(kind)
        n = self.sizes.requests
        await self._preload(s, n)
        self.progress.status("starting the consumer")
        peer = _start_peer(kind, s, self.model, self.logs / f"{s.topic_prefix}.log")
        try:
            await self._await_answers(s, n, [peer])
        finally:
            peer.process.terminate()
            try:
                peer.process.wait(15)
            except subprocess.TimeoutExpired:
                peer.process.kill()
                peer.process.wait()
        return await self._throughput(title, s, n)

    async def worker_case(self, title: str, slug: str, env: dict[str, str]) -> Case:
        self.progress.start(title)
        s = self._fresh(slug)
        n = self.sizes.requests
        await self._preload(s, n)
        async with self._workers(s, env, 1) as workers:
            before = _counters(workers)
            await self._await_answers(s, n, workers)
            stats = WorkerStats.between(before, _counters(workers))
        self.worker_stats.append(stats)
        return await self._throughput(title, s, n, workers=stats)

    async def streamserve_and_latency(self) -> tuple[Case, dict[int, LatencyPoint]]:
        title = "3 streamserve"
        self.progress.start(title)
        s = self._fresh("streamserve")
        n = self.sizes.requests
        await self._preload(s, n)
        async with self._workers(s, {}, 1) as workers:
            before = _counters(workers)
            await self._await_answers(s, n, workers)
            after = _counters(workers)
            stats = WorkerStats.between(before, after)
            case = await self._throughput(title, s, n, workers=stats)
            latency = {}
            for share in LATENCY_SHARES:
                self.progress.start(f"6 latency at {share}%")
                latency[share] = await self._latency_point(s, share, case.throughput_rps * share / 100)
                self.progress.done(f"{latency[share].rate_rps:,.0f} req/s: p50 {latency[share].p50:.1f} ms, "
                                   f"p95 {latency[share].p95:.1f} ms, p99 {latency[share].p99:.1f} ms")
            self.worker_stats += [stats, WorkerStats.between(after, _counters(workers))]
        return case, latency

    async def two_workers(self) -> Case:
        title = "7 streamserve, 2 workers"
        self.progress.start(title)
        s = self._fresh("two-workers")
        n = self.sizes.requests
        await ensure_topics(s)
        async with self._workers(s, {}, 2) as workers:
            before = _counters(workers)
            preloaded_ms = await self._preload(s, n)
            await self._await_answers(s, n, workers)
            stats = WorkerStats.between(before, _counters(workers))
        self.worker_stats.append(stats)
        return await self._throughput(title, s, n, workers=stats, since_ms=preloaded_ms)

    # ------------------------------------------------------------------ traffic

    async def _preload(self, s: Settings, n: int) -> int:
        """Produce ``n`` requests, ids ``<prefix>-<i>``; return when all are acknowledged (ms)."""
        await ensure_topics(s)
        producer = await start_producer(s)
        try:
            for i in range(n):
                request_id = f"{s.topic_prefix}-{i}"
                await producer.send(s.topics.requests, self._request(request_id, i),
                                    key=request_id.encode())
                if i % 1000 == 0:
                    self.progress.status(f"producing requests {i}/{n}")
            await producer.flush()
        finally:
            await producer.stop()
        return int(time.time() * 1000)

    @asynccontextmanager
    async def _workers(self, s: Settings, env: dict[str, str],
                       count: int) -> AsyncIterator[list[WorkerProcess]]:
        """``count`` workers in one group, started together; each is ready when this yields."""
        self.progress.status(f"starting {'a worker' if count == 1 else f'{count} workers'}")
        logs = [self.logs / f"{s.topic_prefix}-worker{i}.log" for i in range(count)]
        started = await asyncio.gather(*(asyncio.to_thread(WorkerProcess.start, log, self._env(s, **env))
                                         for log in logs), return_exceptions=True)
        workers = [w for w in started if isinstance(w, WorkerProcess)]
        try:
            failed = [e for e in started if isinstance(e, BaseException)]
            if failed:
                first = str(failed[0]).splitlines()[0].removesuffix(" ends:")
                raise BenchError(f"{self.progress.title}: {first}") from failed[0]
            yield workers
        finally:
            await asyncio.gather(*(asyncio.to_thread(w.stop) for w in workers))

    async def _await_answers(self, s: Settings, n: int,
                             handles: Sequence[Handle | WorkerProcess]) -> None:
        """Wait until the output topics hold ``n`` records (predictions plus dead letters)."""
        partitions = _output_partitions(s)
        consumer = AIOKafkaConsumer(bootstrap_servers=s.bootstrap, group_id=None)
        await consumer.start()
        try:
            count, changed = 0, time.monotonic()
            while count < n:
                for h in handles:
                    if h.process.poll() is not None:
                        raise BenchError(f"{self.progress.title}: a process exited with code "
                                         f"{h.process.returncode}; see its log {h.log}")
                now_count = sum((await consumer.end_offsets(partitions)).values())
                if now_count > count:
                    count, changed = now_count, time.monotonic()
                elif time.monotonic() - changed > _STALL_SECONDS:
                    raise BenchError(f"{self.progress.title}: no answer for {_STALL_SECONDS:.0f} s "
                                     f"after {count}/{n}; see the logs in {self.logs}")
                self.progress.status(f"answered {count}/{n}")
                await asyncio.sleep(0.25)
        finally:
            await consumer.stop()

    async def _throughput(self, title: str, s: Settings, n: int, workers: WorkerStats | None = None,
                          since_ms: int | None = None) -> Case:
        """Read every output back; check them against the ids; time the window they span."""
        self.progress.status("reading the answers back")
        outputs = await _read_all(s)
        stamps = sorted(t for _, t, _ in outputs if since_ms is None or t >= since_ms)
        if len(stamps) < 2 or stamps[-1] == stamps[0]:
            raise BenchError(f"{title}: too few answers ({len(stamps)}) to time; raise the request count")
        seconds = (stamps[-1] - stamps[0]) / 1000
        answers = _check(s.topic_prefix, n, outputs, s.topics.deadletter)
        case = Case(title, len(stamps) / seconds, seconds, answers, workers)
        self.progress.done(f"{case.throughput_rps:,.0f} req/s, {answers.answered_once}/{n} answered once")
        return case

    async def _latency_point(self, s: Settings, share: int, rate: float) -> LatencyPoint:
        """Send on an open-loop schedule for ``latency_seconds``; time each answer's arrival."""
        count = max(1, int(rate * self.sizes.latency_seconds))
        keys = [f"{s.topic_prefix}-lat{share}-{i}" for i in range(count)]
        values = [self._request(k, i) for i, k in enumerate(keys)]
        sent: dict[bytes, float] = {}
        received: dict[bytes, float] = {}
        consumer = AIOKafkaConsumer(bootstrap_servers=s.bootstrap, group_id=None,
                                    enable_auto_commit=False)
        await consumer.start()
        partitions = _output_partitions(s)
        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)
        for tp in partitions:
            await consumer.position(tp)  # fix the start now, before anything is sent
        reader = asyncio.create_task(_receive(consumer, received))
        producer = AIOKafkaProducer(bootstrap_servers=s.bootstrap, linger_ms=0)
        await producer.start()
        try:
            started = time.monotonic()
            for i, (key, value) in enumerate(zip(keys, values, strict=True)):
                delay = started + i / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                sent[key.encode()] = time.monotonic()
                await producer.send(s.topics.requests, value, key=key.encode())
                if i % 500 == 0:
                    self.progress.status(f"{rate:,.0f} req/s: sent {i}/{count}, answered {len(received)}")
            await producer.flush()
            deadline = time.monotonic() + _STALL_SECONDS
            while len(received) < count and time.monotonic() < deadline:
                self.progress.status(f"{rate:,.0f} req/s: sent {count}, answered {len(received)}")
                await asyncio.sleep(0.1)
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            await producer.stop()
            await consumer.stop()
        ms = np.array([received[k] - t for k, t in sent.items() if k in received]) * 1000
        if not len(ms):
            raise BenchError(f"6 latency at {share}%: no answer arrived; see the logs in {self.logs}")
        p50, p95, p99 = np.percentile(ms, [50, 95, 99]).tolist()
        return LatencyPoint(share, rate, count, len(ms), p50, p95, p99)

    async def _delete_topics(self) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.settings.bootstrap)
        await admin.start()
        try:
            mine = [t for t in await admin.list_topics() if t.startswith(self.run_id)]
            if mine:
                await admin.delete_topics(mine)
        finally:
            await admin.close()


def _start_peer(kind: str, s: Settings, model: str, log: Path) -> Handle:
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "agents.bench_peers", kind, "--bootstrap", s.bootstrap,
               "--prefix", s.topic_prefix, "--group", s.app_id, "--registry", str(s.registry),
               "--model", model]
    with log.open("wb") as out:
        return Handle(subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT), log)


def _counters(workers: Sequence[WorkerProcess]) -> dict[str, float]:
    """Every sample of the workers' metrics, summed over labels and workers."""
    from prometheus_client.parser import text_string_to_metric_families

    totals: Counter[str] = Counter()
    for worker in workers:
        for family in text_string_to_metric_families(worker.metrics()):
            for sample in family.samples:
                totals[sample.name] += sample.value
    return dict(totals)


def _output_partitions(s: Settings) -> list[TopicPartition]:
    return [TopicPartition(topic, p) for topic in (s.topics.predictions, s.topics.deadletter)
            for p in range(PARTITIONS)]


async def _read_all(s: Settings) -> list[tuple[bytes | None, int, str]]:
    """(key, broker timestamp in ms, topic) of every record in the output topics."""
    partitions = _output_partitions(s)
    consumer = AIOKafkaConsumer(bootstrap_servers=s.bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(partitions)
        end = await consumer.end_offsets(partitions)
        await consumer.seek_to_beginning(*partitions)
        out = []
        while [tp for tp in partitions if await consumer.position(tp) < end[tp]]:
            fetched = await consumer.getmany(timeout_ms=500, max_records=10_000)
            out += [(r.key, r.timestamp, r.topic) for records in fetched.values() for r in records]
        return out
    finally:
        await consumer.stop()


async def _receive(consumer: AIOKafkaConsumer, received: dict[bytes, float]) -> None:
    while True:
        fetched = await consumer.getmany(timeout_ms=100)
        now = time.monotonic()
        for records in fetched.values():
            for r in records:
                received.setdefault(r.key, now)


def _check(prefix: str, n: int, outputs: Sequence[tuple[bytes | None, int, str]],
           deadletter_topic: str) -> Answers:
    counts = Counter(key for key, _, _ in outputs)
    expected = [f"{prefix}-{i}".encode() for i in range(n)]
    once = sum(1 for key in expected if counts[key] == 1)
    missing = sum(1 for key in expected if counts[key] == 0)
    return Answers(n, once, missing, duplicates=len(outputs) - (n - missing),
                   deadletters=sum(1 for _, _, topic in outputs if topic == deadletter_topic))
