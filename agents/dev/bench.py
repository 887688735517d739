"""``streamserve bench``: streamserve beside its ceilings and its alternatives, in one run.

One module of about 630 lines because ``Bench`` is one sequence of cases sharing a broker, a
run id and a report, each documented below; what the cases send and read back is in
``agents.dev.bench_traffic``, the profile's stages in ``agents.dev.bench_profile``.

One broker, one machine, the cases one after the other, each on topics of its own
(4 partitions) and in a consumer group of its own:

0. warm-ups, not counted: a pass-through and a worker's drain of a quarter backlog each.
1. ``kafka_ceiling``: a raw aiokafka pass-through, no decoding, no model (agents/dev/bench_peers.py).
1b. ``kafka_ceiling_compiled``: the same with confluent-kafka (librdkafka): what a compiled
   client gets from the same broker and cores.
2. ``model_ceiling``: ``ServingModel.predict`` in this process at its best padding bucket,
   beside the FLOP bound: a jitted 2048x2048 float32 matmul's GFLOP/s over the model's
   2·Σ(in·out) flops per row (models with weight matrices); and, for a model registered
   from another library's file (still there, unchanged), that library's own batched
   predictor on the same rows.
2b. the serving step in this process, without Kafka (``agents.dev.bench_step``): the CPU a
   worker's decode, admission, model call and outputs cost per request, at batches of 1,
   16 and 256; and drift monitoring's share of it: the drift codes the step computes at
   its flushes, and the drift agent's counting of them (``drift_share_of_serving``).
3. ``streamserve``: one worker with the configured settings (the defaults, unless set).
3b. ``streamserve_drift_off``: the same with drift counting off (``STREAMSERVE_DRIFT=off``),
   in drains on and off in turn (three pairs, every other one off first; one pair with
   ``--quick``): the ratio is the median pair's, the case the off drain of that pair.
3c. ``streamserve_builtin`` (``--model`` other than the built-in ``synthetic32``): the same
   worker settings and backlog serving the built-in MLP instead, so a model of one's own
   is measured beside it in one run (is the model the bottleneck?).
4. ``streamserve_per_record``: the same with ``STREAMSERVE_MAX_BATCH=1``.
5. ``handwritten_aiokafka`` and ``quix_streams``: the same job as a user would write it.
6. latency: open-loop load at 25, 50 and 75 % of case 3's throughput, on case 3's worker
   (after a fifth of a point's load at 25 %, not counted: the first seconds run slower),
   from a raw producer and reader (librdkafka's: the generator's own cost kept low); and the
   25 % load through the client library (``StreamClient.stream``, on librdkafka),
   each round trip as a client sees it: beside the raw figures, the client's own cost.
6f. the latency floor: the same loads answered by a compiled pass-through that sends each
   request back as soon as it reads it (``echo_confluent``): what the broker, the two hops
   and the load generator cost a round trip on this machine, below which no worker goes.
7. ``streamserve_two_workers``: two workers in one consumer group.

Throughput is answers / (last output's timestamp - first's); CPU per request is the serving
processes' CPU time (user and system) from their first answer to their last, over the
answers between, and for one process, split by thread: its main thread (a worker's event
loop), librdkafka's threads, the rest. The output topics stamp
records with the broker's append time (LogAppendTime), so the clock is the same for every
case whatever timestamps a client sets (Quix Streams copies the request's). The peers'
requests are produced before the peer starts. Workers start on an empty topic and the
requests follow once they serve (a librdkafka producer writes them several times faster
than a worker serves; a worker is ready seconds after it starts serving, and a fast model
drained a backlog written before it started before its CPU could be read; a worker that
joins a group already serving waits for the next heartbeat, up to 3 s, for partitions):
only outputs stamped after the last request was acknowledged count.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import hashlib
import importlib.util
import logging
import os
import shutil
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import NewTopic

from agents.dev.bench_profile import Profile
from agents.dev.bench_step import StepCosts, serving_step
from agents.dev.bench_results import (
    Case,
    CaseProgress,
    LatencyPoint,
    Report,
    Sizes,
    WorkerStats,
)
from agents.dev.bench_traffic import (
    PARTITIONS,
    AnswerReader,
    Peer,
    RequestSender,
    Schedule,
    feature_rows,
    kill_peer,
    latency_legs,
    match_answers,
    output_partitions,
    read_outputs,
    start_peer,
    worker_counters,
    worker_means,
)
from agents.client.stream import StreamClient
from agents.dev.fleet import WorkerProcess
from agents.kafka.connect import connection
from agents.kafka.topics import admin_client, cluster
from agents.worker.app import data_folder
from models.runtime import ServingModel
from pipeline.batching import buckets_for
from pipeline.client import PredictRequest
from pipeline.config import Settings
from pipeline.errors import StreamserveError
from pipeline.registry import Manifest, Registry

BUILTIN = "synthetic32"  # the built-in MLP: the bench's default model, and 3c's
LATENCY_SHARES = (25, 50, 75)
CLIENT_SHARE = 25  # low enough that the worker answers promptly: the client's cost shows
_STALL_SECONDS = 30.0  # no new answer for this long: the case has failed
_MATMUL = 2048


class BenchError(StreamserveError, RuntimeError):
    """A case could not be measured, or a request was not answered exactly once; the
    message says which and where its log is. ``streamserve bench`` exits 1 on it."""

    exit_code = 1


QUICK = Sizes(requests=2_000, per_record_requests=500, latency_seconds=2.0, timing_seconds=0.1,
              drift_pairs=1)
# 100,000 a drain (4 to 5 s of streamserve): drains of 30,000 (about 1.3 s) gave the same
# worker 19,700 and 29,800 req/s within minutes, a pause of the broker's JVM or the
# other core's work counting for a third of a drain.
FULL = Sizes(requests=100_000, per_record_requests=5_000, latency_seconds=10.0, timing_seconds=1.0,
             drift_pairs=3)


# ---------------------------------------------------------------------- results


def cpu_seconds(pids: Sequence[int]) -> float | None:
    """User and system CPU seconds the processes used so far; None outside Linux."""
    total = 0
    try:
        for pid in pids:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    except (OSError, IndexError, ValueError):
        return None
    return total / os.sysconf("SC_CLK_TCK")


def thread_cpu_seconds(pid: int) -> dict[str, float] | None:
    """CPU seconds of a process's main thread (a worker's event loop) and of librdkafka's
    threads (named ``rdk:*``) so far; None outside Linux. The rest of the process's time is
    its other threads' (the model's, the consume and commit threads, XLA's)."""
    ticks = {"main thread": 0, "librdkafka": 0}
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                stat = (task / "stat").read_text()
            except OSError:  # the thread ended meanwhile
                continue
            name, fields = stat[stat.index("(") + 1:stat.rindex(")")], stat.rsplit(")", 1)[1].split()
            group = ("main thread" if task.name == str(pid)
                     else "librdkafka" if name.startswith("rdk:") else None)
            if group is not None:
                ticks[group] += int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return None
    return {group: t / os.sysconf("SC_CLK_TCK") for group, t in ticks.items()}


def _by_thread(first: dict[str, float] | None, last: dict[str, float] | None,
               per_request: float | None, answers: int) -> dict[str, float] | None:
    """A worker's CPU µs per request split by thread group (``thread_cpu_seconds``), the
    other threads' the rest of ``per_request``."""
    if first is None or last is None or per_request is None or answers <= 0:
        return None
    split = {group: (last[group] - first[group]) / answers * 1e6 for group in first}
    return split | {"other threads": max(0.0, per_request - sum(split.values()))}


# The OS counts CPU time in clock ticks (10 ms on Linux): a drain that took fewer than ten
# has no figure worth printing (a quick run's 2,000 pass-throughs took 0 ticks on CI).
_MIN_CPU_SECONDS = 0.1


def _per_answer(first: tuple[int, float | None] | None, answered: int, cpu: float | None) -> float | None:
    """µs of CPU per answer since ``first`` (answers, CPU seconds then); None when too
    little CPU was spent since to measure."""
    if first is None or first[1] is None or cpu is None or answered <= first[0]:
        return None
    if cpu - first[1] < _MIN_CPU_SECONDS:
        return None
    return (cpu - first[1]) / (answered - first[0]) * 1e6


def run_bench(settings: Settings, model: str, quick: bool, json_path: Path | None,
              profile: bool = False) -> int:
    """Run every case and print the table; BenchError when a request was not answered
    exactly once (after the table and the JSON file)."""
    from agents.dev.broker import LocalBroker

    if importlib.util.find_spec("quixstreams") is None:
        raise BenchError("the bench compares streamserve with Quix Streams, which is not installed: "
                         "pip install -e '.[bench]'")
    # aiokafka logs what the bench reports itself (unreachable servers) and retries it survives
    # (a new topic's leader settling): the progress lines and one error line say enough.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    kafka = settings.kafka
    broker = LocalBroker(kafka.home, kafka.local_broker_port) if kafka.uses_local_broker else None
    started = broker is not None and broker.start()
    try:
        report = asyncio.run(Bench(settings, model, QUICK if quick else FULL, profile).run())
    finally:
        if started:
            broker.stop()
    print(report.table(quick))
    if json_path is not None:
        json_path.write_bytes(orjson.dumps(report.to_json(), option=orjson.OPT_INDENT_2) + b"\n")
    if incomplete := report.incomplete():
        raise BenchError(f"not every request was answered exactly once in: {', '.join(incomplete)}")
    return 0


class Bench:
    def __init__(self, settings: Settings, model: str, sizes: Sizes, profile: bool = False) -> None:
        self.load = os.getloadavg()[0]
        self.settings = replace(settings, kafka=replace(settings.kafka, request_partitions=PARTITIONS))
        self.model = model
        self.sizes = sizes
        self.run_id = f"bench-{time.strftime('%H%M%S')}-{uuid.uuid4().hex[:6]}"
        self.logs = settings.kafka.home / "bench" / self.run_id
        self.rows = feature_rows(self._registered(), 1000)
        self._rows_of = {model: self.rows}
        self.progress = CaseProgress()
        self.worker_stats: list[WorkerStats] = []
        self._cases = 0
        self._case_settings: list[Settings] = []  # each case's, for the state it leaves
        self._profile = profile

    async def run(self) -> Report:
        import jax

        device = ", ".join(f"{d.device_kind} ({d!r})" for d in jax.devices())
        print(f"JAX device: {device}", file=sys.stderr)
        async with admin_client(self.settings):
            pass  # Kafka answers: the cases can start
        try:
            # The broker's JVM compiles its hot paths during the first seconds of traffic, and
            # a worker's (group commits, idempotent writes, read_committed fetches) too: the
            # first worker's drain ran 10-15 % slower than the next ones on the same backlog.
            await self.peer("0 broker warm-up (not counted)", "passthrough", self.sizes.requests // 4)
            await self.variant("0b worker warm-up (not counted)", "warm-up", {}, self.sizes.requests // 4)
            cases = {"kafka_ceiling": await self.peer("1 Kafka ceiling, aiokafka", "passthrough"),
                     "kafka_ceiling_compiled": await self.peer("1b Kafka ceiling, confluent-kafka",
                                                               "passthrough_confluent"),
                     "model_ceiling": self.model_ceiling()}
            step = await self.serving_step()
            cases["streamserve"], latency, client = await self.streamserve_and_latency()
            floor = await self.latency_floor({share: p.rate_rps for share, p in latency.items()})
            cases["streamserve_per_record"] = await self.variant(
                "4 streamserve, max_batch=1", "per-record", {"STREAMSERVE_MAX_BATCH": "1"},
                self.sizes.per_record_requests)
            cases["streamserve_drift_off"], drift_pairs = await self.drift_cost()
            if self.model != BUILTIN:
                cases["streamserve_builtin"] = await self.variant(
                    "3c streamserve, built-in MLP", "builtin", {}, self.sizes.requests,
                    model=BUILTIN)
            cases["handwritten_aiokafka"] = await self.peer("5a hand-written aiokafka loop", "handwritten")
            cases["quix_streams"] = await self.peer("5b Quix Streams", "quix")
            cases["streamserve_two_workers"] = await self.two_workers()
            profile = await self.profiled() if self._profile else None
        finally:
            await self._delete_topics()
            for case in self._case_settings:  # each case's worker state; its logs stay
                shutil.rmtree(data_folder(case), ignore_errors=True)
        return Report(device, self.model, self.sizes, cases, step, latency, floor, client,
                      sum(self.worker_stats[1:], self.worker_stats[0]), self.load, drift_pairs, profile)

    def _registered(self) -> Manifest:
        """The served model's manifest, after training it and iris when the registry lacks them."""
        from models.train import servable_version
        from pipeline.signing import TrustedKeys

        registry = Registry(self.settings.registry.root)
        trusted = TrustedKeys.load(self.settings.registry.trusted_keys)
        self._versions = {name: servable_version(name, registry, self.settings.registry.signing_key,
                                                 trusted)  # signed versions, trained if none
                          for name in dict.fromkeys(("iris", BUILTIN, self.model))}
        self.version = self._versions[self.model]
        return registry.manifest(self.model, self.version)

    async def _fresh(self, slug: str) -> Settings:
        """Settings for a case of its own: topics (created here) and a consumer group."""
        self._cases += 1
        prefix = f"{self.run_id}-{self._cases}-{slug}"
        s = replace(self.settings, kafka=replace(self.settings.kafka, topic_prefix=prefix, app_id=prefix))
        stamped = {"message.timestamp.type": "LogAppendTime"}
        async with admin_client(self.settings) as admin:
            # The replication every streamserve topic gets: a bench on a cluster pays for it.
            replicas = (await cluster(self.settings, admin)).replicas
            response = await admin.create_topics(
                [NewTopic(s.topics.requests, PARTITIONS, replicas)]
                + [NewTopic(name, PARTITIONS, replicas, topic_configs=stamped)
                   for name in (s.topics.predictions, s.topics.deadletter)])
        if errors := [f"{topic} (error code {code})" for topic, code, *_ in response.topic_errors if code]:
            raise BenchError(f"{self.progress.title}: cannot create its topics ({'; '.join(errors)})")
        self._case_settings.append(s)
        return s

    def _request(self, request_id: str, i: int, model: str | None = None) -> bytes:
        model = model or self.model
        if model not in self._rows_of:
            manifest = Registry(self.settings.registry.root).manifest(model, self._versions[model])
            self._rows_of[model] = feature_rows(manifest, 1000)
        rows = self._rows_of[model]
        return PredictRequest(model, rows[i % len(rows)], id=request_id).encode()

    # ---------------------------------------------------------------- cases

    @functools.cached_property
    def _served(self) -> ServingModel:
        """The bench's model version compiled as a worker compiles it, for the in-process
        cases (2 and 2b), once."""
        return ServingModel.load(Registry(self.settings.registry.root), self.model, self.version,
                                 buckets_for(self.settings.batching.max_batch))

    def model_ceiling(self) -> Case:
        self.progress.start("2 model ceiling (in-process)")
        registry = Registry(self.settings.registry.root)
        version = self.version
        served = self._served
        rows = np.array([np.concatenate([np.ravel(v) for v in r.values()]) for r in self.rows],
                        np.float32)
        rates = {b: self._rows_per_second(served.predict, np.resize(rows, (b, rows.shape[1])))
                 for b in served.buckets}
        best = max(rates, key=rates.__getitem__)
        params = registry.load_params(self.model, version)
        # The weight matrices of mlp and linear models; trees and foreign graphs have none.
        flops_per_row = 2 * sum(w.shape[0] * w.shape[1] for k, w in params.items()
                                if k.startswith("w") and w.ndim == 2)
        gflops = self._matmul_gflops() if flops_per_row else None
        flop_bound = gflops * 1e9 / flops_per_row if gflops else None
        library = self._library_rate(served.manifest, np.resize(rows, (best, rows.shape[1])))
        self.progress.done(
            f"{rates[best]:,.0f} rows/s at bucket {best}"
            + (f"; FLOP bound {flop_bound:,.0f} rows/s ({gflops:.1f} GFLOP/s)" if flop_bound else "")
            + (f"; {library[0]}'s own predictor {library[1]:,.0f} rows/s" if library else ""))
        return Case(self.progress.title, rates[best], self.sizes.timing_seconds,
                    extra={"best_bucket": best, "bucket_1_rps": rates[1], "flop_bound_rps": flop_bound,
                           "gflops": gflops, "flops_per_row": flops_per_row,
                           "library": library and library[0], "library_rps": library and library[1]})

    async def serving_step(self) -> StepCosts:
        self.progress.start("2b serving step, in-process (no Kafka)")
        costs = await serving_step(self.settings, self._served, self.rows, self.sizes.timing_seconds)
        share = costs.drift_share
        self.progress.done(", ".join(f"{us:,.1f} µs a request at {size}" for size, us in costs.per_request_us.items())
                           + ("" if share is None else f"; drift monitoring {100 * share:.1f} % of it"))
        return costs

    def _library_rate(self, manifest: Manifest, x: np.ndarray) -> tuple[str, float] | None:
        """A registered model's own library on the same rows (its batched predictor, with the
        library's default threads), when the file it was registered from is still there,
        unchanged; None for streamserve's own models, jax exports (the function is served
        as it is) and moved files."""
        from models.formats import convert_file

        source, digest = manifest.lineage.get("source"), manifest.lineage.get("source_sha256")
        if manifest.hyperparameters.get("format") in (None, "jax") or not (source and digest):
            return None
        path = Path(source)
        if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            return None
        converted = convert_file(path, manifest.hyperparameters["format"])
        return converted.library, self._rows_per_second(converted.predict, x)

    def _rows_per_second(self, predict: Callable[[np.ndarray], object], x: np.ndarray) -> float:
        predict(x)
        calls, started = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - started) < self.sizes.timing_seconds:
            predict(x)
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

    async def peer(self, title: str, kind: str, n: int | None = None) -> Case:
        self.progress.start(title)
        s = await self._fresh(kind)
        n = n or self.sizes.requests
        await self._preload(s, n)
        self.progress.status("starting the consumer")
        peer = start_peer(kind, s, self.model, self.logs / f"{s.kafka.topic_prefix}.log")
        try:
            drained = await self._await_answers(s, n, [peer])
        finally:
            kill_peer(peer.process)
        return await self._throughput(s, n, drained)

    async def streamserve_and_latency(self) -> tuple[Case, dict[int, LatencyPoint], LatencyPoint]:
        self.progress.start("3 streamserve")
        s = await self._fresh("streamserve")
        n = self.sizes.requests
        async with self._workers(s, {}, 1) as workers:
            before = worker_counters(workers)
            preloaded_ms = await self._preload(s, n)
            drained = await self._await_answers(s, n, workers)
            after = worker_counters(workers)
            self.worker_stats.append(WorkerStats.between(before, after))
            case = await self._throughput(s, n, drained, self.worker_stats[-1], since_ms=preloaded_ms)
            # This process's heap (JAX, the model ceiling's) is no load generator's: a full
            # collection over it paused the senders for 200 ms. Collections from here on
            # look only at what the load makes.
            gc.collect()
            gc.freeze()
            # The first seconds of small batches after the drain answer slower (the first
            # point's p99 was twice the same point's again): load not counted comes first.
            await self._latency_point(s, LATENCY_SHARES[0], case.throughput_rps * LATENCY_SHARES[0] / 100,
                                      workers, warm_up=True)
            latency = {share: await self._latency_point(s, share, case.throughput_rps * share / 100,
                                                        workers)
                       for share in LATENCY_SHARES}
            client = await self._client_point(s, CLIENT_SHARE, latency[CLIENT_SHARE].rate_rps)
            self.worker_stats.append(WorkerStats.between(after, worker_counters(workers)))
        return case, latency, client

    async def latency_floor(self, rates: dict[int, float]) -> dict[int, LatencyPoint]:
        """Case 6f: each share's load (``rates``) answered by the compiled pass-through."""
        s = await self._fresh("latency-floor")
        peer = start_peer("echo_confluent", s, self.model, self.logs / f"{s.kafka.topic_prefix}.log")
        try:
            first = min(rates)  # its load, not counted, also waits for the peer to join its group
            await self._latency_point(s, first, rates[first], [], warm_up=True, floor=True)
            return {share: await self._latency_point(s, share, rate, [], floor=True)
                    for share, rate in rates.items()}
        finally:
            kill_peer(peer.process)

    async def variant(self, title: str, slug: str, env: dict[str, str], n: int,
                      model: str | None = None) -> Case:
        """One worker like case 3's but with ``env`` set: the same backlog drained (of
        requests to ``model``, default the bench's)."""
        self.progress.start(title)
        s = await self._fresh(slug)
        async with self._workers(s, env, 1) as workers:
            before = worker_counters(workers)
            preloaded_ms = await self._preload(s, n, model)
            drained = await self._await_answers(s, n, workers)
            self.worker_stats.append(WorkerStats.between(before, worker_counters(workers)))
        return await self._throughput(s, n, drained, self.worker_stats[-1], since_ms=preloaded_ms)

    async def drift_cost(self) -> tuple[Case, tuple[tuple[float, float], ...]]:
        """Case 3b: case 3's backlog drained with drift counting on and off in turn; the off
        drain of the pair whose on/off ratio is the median, and every pair's throughputs.
        Pairs, because one drain apart from the other says nothing here: on two shared
        cores one drain runs up to a third faster than the next of the same worker (single
        drains gave on/off 0.69 where three pairs of the same code gave 1.20, 1.11, 1.00).
        Every other pair runs off first: the drains of a run often speed up as it goes on
        (26,955 to 44,903 req/s over six), which would favour whichever runs second."""
        pairs = []
        for i in range(1, self.sizes.drift_pairs + 1):
            order = ("on", "off") if i % 2 else ("off", "on")
            drained = {state: await self.variant(f"3b drift counting {state}, pair {i} of "
                                                 f"{self.sizes.drift_pairs}", f"drift-{state}",
                                                 {"STREAMSERVE_DRIFT": state}, self.sizes.requests)
                       for state in order}
            pairs.append((drained["on"], drained["off"]))
        by_ratio = sorted(pairs, key=lambda pair: pair[0].throughput_rps / pair[1].throughput_rps)
        median_off = by_ratio[(len(by_ratio) - 1) // 2][1]
        return (replace(median_off, title="3b streamserve, drift counting off"),
                tuple((on.throughput_rps, off.throughput_rps) for on, off in pairs))

    async def two_workers(self) -> Case:
        self.progress.start("7 streamserve, 2 workers")
        s = await self._fresh("two-workers")
        n = self.sizes.requests
        async with self._workers(s, {}, 2) as workers:
            before = worker_counters(workers)
            preloaded_ms = await self._preload(s, n)
            drained = await self._await_answers(s, n, workers)
            self.worker_stats.append(WorkerStats.between(before, worker_counters(workers)))
        return await self._throughput(s, n, drained, self.worker_stats[-1], since_ms=preloaded_ms)

    async def profiled(self) -> Profile:
        """Case 3's backlog drained again by a worker under cProfile, stopped with SIGTERM
        (its profile is written as it stops): ``agents.dev.bench_profile``."""
        self.progress.start("3p streamserve under cProfile")
        s = await self._fresh("profiled")
        n = self.sizes.requests
        path = self.logs / "worker.pstats"
        await self._preload(s, n)
        async with self._workers(s, {"STREAMSERVE_PROFILE": str(path)}, 1) as workers:
            await self._await_answers(s, n, workers)
            # Warm-up calls are not observed: the sum is the serving's.
            model_s = worker_counters(workers).get("streamserve_inference_latency_seconds_sum", 0.0)
            await asyncio.to_thread(workers[0].stop)
        profile = Profile.read(path, model_s, n)
        self.progress.done(f"{sum(profile.us_per_request().values()):,.0f} µs per request, profiled")
        return profile

    # ---------------------------------------------------------------- traffic

    async def _preload(self, s: Settings, n: int, model: str | None = None) -> int:
        """Produce ``n`` requests to ``model`` (default the bench's) with ids ``<prefix>-<i>``;
        the time all were acknowledged (ms). With librdkafka, several times faster than a
        worker serves: a backlog forms while ready workers serve, and their drain after it
        is timed (a backlog written before a worker started was drained, by a fast model,
        before the worker was ready and its CPU could be read)."""
        self.progress.status(f"producing {n} requests")
        requests = []
        for i in range(n):
            request_id = f"{s.kafka.topic_prefix}-{i}"
            requests.append((request_id.encode(), self._request(request_id, i, model)))
        failed = await asyncio.to_thread(_produce_all, s, s.topics.requests, requests)
        if failed:
            raise BenchError(f"{self.progress.title}: {len(failed)} requests were not written "
                             f"({failed[0]})")
        return int(time.time() * 1000)

    @asynccontextmanager
    async def _workers(self, s: Settings, env: dict[str, str],
                       count: int) -> AsyncIterator[list[WorkerProcess]]:
        """``count`` workers in one group, started together; all are ready when this yields."""
        self.progress.status(f"starting {count} worker{'s' if count > 1 else ''}")
        environment = {"STREAMSERVE_BROKER": s.bootstrap, "STREAMSERVE_REGISTRY": str(s.registry.root),
                       "STREAMSERVE_TOPIC_PREFIX": s.kafka.topic_prefix, "STREAMSERVE_APP_ID": s.kafka.app_id,
                       "STREAMSERVE_REQUEST_PARTITIONS": str(PARTITIONS), **env}
        logs = [self.logs / f"{s.kafka.topic_prefix}-worker{i}.log" for i in range(count)]
        started = await asyncio.gather(*(asyncio.to_thread(WorkerProcess.start, log, environment)
                                         for log in logs), return_exceptions=True)
        workers = [w for w in started if isinstance(w, WorkerProcess)]
        try:
            if failed := [e for e in started if isinstance(e, BaseException)]:
                first_line = str(failed[0]).splitlines()[0].removesuffix(" ends:")
                raise BenchError(f"{self.progress.title}: {first_line}") from failed[0]
            yield workers
        finally:
            for worker in workers:
                kill_peer(worker.process)

    async def _await_answers(self, s: Settings, n: int, processes: Sequence[Peer | WorkerProcess],
                             ) -> tuple[dict[TopicPartition, int], float | None]:
        """Wait until the output topics hold ``n`` records; their end offsets then, and the
        processes' CPU time per answer (µs) from their first answer to the last (None where
        the OS does not say: outside Linux), and for one process, that split by thread
        (``thread_cpu_seconds``)."""
        partitions = output_partitions(s)
        consumer = AIOKafkaConsumer(**connection(s), group_id=None)
        await consumer.start()
        pids = [p.process.pid for p in processes]
        try:
            count, changed, first, threads_first = 0, time.monotonic(), None, None
            while True:
                for p in processes:
                    if p.process.poll() is not None:
                        raise BenchError(f"{self.progress.title}: a process it started exited with code "
                                         f"{p.process.returncode}; see its log {p.log}")
                end = await consumer.end_offsets(partitions)
                answered = sum(end.values())
                if first is None and answered:
                    first = answered, cpu_seconds(pids)
                    threads_first = thread_cpu_seconds(pids[0]) if len(pids) == 1 else None
                if answered >= n:
                    per_request = _per_answer(first, answered, cpu_seconds(pids))
                    threads = thread_cpu_seconds(pids[0]) if threads_first else None
                    return end, per_request, _by_thread(threads_first, threads, per_request,
                                                        answered - first[0] if first else 0)
                if answered > count:
                    count, changed = answered, time.monotonic()
                elif time.monotonic() - changed > _STALL_SECONDS:
                    raise BenchError(f"{self.progress.title}: no answer for {_STALL_SECONDS:.0f} s after "
                                     f"{count}/{n}; see the logs in {self.logs}")
                self.progress.status(f"answered {count}/{n}")
                await asyncio.sleep(0.05)  # a short drain still spans several looks
        finally:
            await consumer.stop()

    async def _throughput(self, s: Settings, n: int,
                          drained: tuple[dict[TopicPartition, int], float | None, dict[str, float] | None],
                          workers: WorkerStats | None = None, since_ms: int | None = None) -> Case:
        """Read every answer back, match them to the requests and time the window they span."""
        self.progress.status("reading the answers back")
        end, cpu_us, by_thread = drained
        outputs = await read_outputs(s, end)
        stamps = sorted(t for _, t, _ in outputs)
        drain = [t for t in stamps if since_ms is None or t >= since_ms]
        # The drain of the backlog once it was written. A worker that kept up with the
        # producer leaves none to time (a fast model's --quick backlog: its last answers in
        # one millisecond); then every answer, at the producer's pace: a lower bound.
        if len(drain) >= 2 and drain[-1] > drain[0]:
            stamps = drain
        if len(stamps) < 2 or stamps[-1] == stamps[0]:
            raise BenchError(f"{self.progress.title}: too few answers ({len(stamps)}) to time")
        seconds = (stamps[-1] - stamps[0]) / 1000
        answers = match_answers(s, n, outputs)
        case = Case(self.progress.title, len(stamps) / seconds, seconds, answers, workers,
                    {"cpu_us_per_request": cpu_us, "cpu_us_by_thread": by_thread})
        self.progress.done(f"{case.throughput_rps:,.0f} req/s, {answers.answered_once}/{n} answered once")
        return case

    async def _latency_point(self, s: Settings, share: int, rate: float,
                             workers: Sequence[WorkerProcess], warm_up: bool = False,
                             floor: bool = False) -> LatencyPoint:
        """Send at ``rate`` on schedule, never waiting for answers; time each answer's
        arrival, and where its time went (``latency_legs``, and the ``workers``' mean queue
        wait and model call meanwhile). ``warm_up``: for a fifth of the time, not counted;
        ``floor``: answered by the latency floor's pass-through."""
        name = "warm-up" if warm_up else f"lat{share}"
        case = "6f latency floor" if floor else "6 latency"
        self.progress.start(f"{case} warm-up at {share} % (not counted)" if warm_up
                            else f"{case} at {share} %")
        count = max(1, int(rate * self.sizes.latency_seconds / (5 if warm_up else 1)))
        keys = [f"{s.kafka.topic_prefix}-{name}-{i}".encode() for i in range(count)]
        values = [self._request(key.decode(), i) for i, key in enumerate(keys)]
        sent: dict[bytes, float] = {}
        sent_epoch: dict[bytes, float] = {}
        sender = RequestSender(s)
        schedule = Schedule(rate, count)
        async with AnswerReader(s) as reader:
            received = reader.received
            before = worker_counters(workers)
            async for i in schedule:
                key = keys[i]
                sent[key], sent_epoch[key] = time.monotonic(), time.time()
                sender.send(s.topics.requests, key, values[i])
                if i % 500 == 0:
                    self.progress.status(f"{rate:,.0f} req/s: sent {i}/{count}, answered {len(received)}")
            if failed := await asyncio.to_thread(sender.flush, _STALL_SECONDS):
                raise BenchError(f"{self.progress.title}: {len(failed)} requests not written, "
                                 f"first: {failed[0]}")
            deadline = time.monotonic() + _STALL_SECONDS
            while len(received) < count and time.monotonic() < deadline:
                self.progress.status(f"{rate:,.0f} req/s: sent {count}, answered {len(received)}")
                await asyncio.sleep(0.1)
        ms = [1000 * (received[key].monotonic - t) for key, t in sent.items() if key in received]
        legs = latency_legs(sent_epoch, received) | worker_means(before, worker_counters(workers))
        return self._point(share, schedule, ms, legs)

    async def _client_point(self, s: Settings, share: int, rate: float) -> LatencyPoint:
        """``_latency_point``'s load through the client library: requests made, checked, sent
        and matched to their replies by ``StreamClient.stream``, each one's round trip as the
        client measured it."""
        self.progress.start(f"6 latency at {share} %, through the client")
        count = max(1, int(rate * self.sizes.latency_seconds))
        schedule = Schedule(rate, count)
        requests = (PredictRequest(self.model, self.rows[i % len(self.rows)]) async for i in schedule)
        ms = []
        async with StreamClient(s, timeout=_STALL_SECONDS,
                                id_prefix=f"{s.kafka.topic_prefix}-client") as client:
            async for outcome in client.stream(requests, max_in_flight=count):
                if outcome.ok:
                    ms.append(outcome.result().round_trip_ms)
                    if len(ms) % 500 == 0:
                        self.progress.status(f"{rate:,.0f} req/s: answered {len(ms)}/{count}")
        return self._point(share, schedule, ms)

    def _point(self, share: int, schedule: Schedule, ms: Sequence[float],
               legs: dict[str, float] | None = None) -> LatencyPoint:
        if not ms:
            raise BenchError(f"{self.progress.title}: no answer arrived; see the logs in {self.logs}")
        p50, p95, p99 = np.percentile(ms, [50, 95, 99]).tolist()
        self.progress.done(f"{schedule.rate:,.0f} req/s offered, {schedule.achieved_rps:,.0f} kept: "
                           f"p50 {p50:.1f} ms, p95 {p95:.1f} ms, p99 {p99:.1f} ms")
        return LatencyPoint(share, schedule.rate, schedule.achieved_rps, schedule.count, len(ms),
                            p50, p95, p99, legs or {})

    async def _delete_topics(self) -> None:
        async with admin_client(self.settings) as admin:
            if mine := [t for t in await admin.list_topics() if t.startswith(self.run_id)]:
                await admin.delete_topics(mine)


def _produce_all(s: Settings, topic: str, records: Sequence[tuple[bytes, bytes]]) -> list[str]:
    """Write ``records`` (key, value) to ``topic``; the errors of those not written."""
    sender = RequestSender(s)
    for key, value in records:
        sender.send(topic, key, value)
    return sender.flush(60)
