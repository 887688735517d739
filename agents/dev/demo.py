"""``streamserve demo``: broker, models, one worker and a few thousand requests, end to end.

Everything it starts it stops again, on success, on failure and on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import orjson

from agents.client.stream import StreamClient
from agents.dev.fleet import WorkerProcess
from agents.kafka.read import read_topic
from agents.kafka.topics import ensure_topics
from models.datasets import load as load_dataset
from models.train import servable_version
from pipeline.client import DeadLetterError, PredictionTimeout, PredictRequest
from pipeline.config import Settings
from pipeline.quality.book import TREND_WINDOWS
from pipeline.registry import Registry
from pipeline.signing import TrustedKeys

DEMO_MODELS = ("iris", "breast_cancer")
# Halfway through, this feature of breast_cancer's requests moves by half a standard
# deviation; short drift windows let the demo show it being caught in seconds.
SHIFTED_MODEL, SHIFTED_FEATURE, SHIFT_SD = "breast_cancer", "mean_texture", 0.5
DRIFT_ENV = {"STREAMSERVE_DRIFT_WINDOW_S": "2", "STREAMSERVE_DRIFT_HOP_S": "1",
             "STREAMSERVE_DRIFT_GRACE_S": "1"}
# The true class of every other answered request of each model goes back as a label, as a
# client that learns outcomes would: the summary reads live accuracy from the label join,
# on this run's windows of answer time (``_quality_env``). Answers are kept two minutes
# (not a week): the join state of repeated demo runs stays small, and a worker rebuilds
# its figures from that state when it starts. An earlier run's answers leave the join's
# totals while this run is joined, so only this run's windows tell what it joined.
LABELS_ENV = {"STREAMSERVE_LABELS": "on", "STREAMSERVE_QUALITY_REPORT_S": "1",
              "STREAMSERVE_LABEL_HORIZON": "120"}
LABEL_EVERY = 2
_QUALITY_WAIT_S = 30.0
_ANSWER_TIMEOUT = 60.0
WARM_UP_S = 1.0  # latency is reported apart for the requests sent in the first second


@dataclass(slots=True)
class Planned:
    """A request to send: ``request`` (a valid one), or ``raw`` bytes spoiled on purpose."""

    model: str
    true_label: str | None  # None for a deliberately invalid request
    expected_reason: str | None
    request: PredictRequest | None = None
    raw: bytes = b""


@dataclass
class DemoTally:
    """The demo's requests: when each was sent and answered, its label or dead-letter reason."""

    sent_at: dict[int, float] = field(default_factory=dict)
    answered_at: dict[int, float] = field(default_factory=dict)
    predicted: dict[int, str] = field(default_factory=dict)
    reasons: Counter = field(default_factory=Counter)
    wrong_reason: int = 0
    labels_sent: Counter = field(default_factory=Counter)  # by model


def run_demo(settings: Settings, requests: int, invalid_share: float, rate: float) -> int:
    from agents.dev.broker import LocalBroker

    started_broker = None
    if settings.kafka.uses_local_broker:
        broker = LocalBroker(settings.kafka.home, settings.kafka.local_broker_port)
        print(f"starting the local Kafka broker on {settings.bootstrap} ...", file=sys.stderr)
        if broker.start():
            started_broker = broker
    worker = None
    try:
        registry = Registry(settings.registry.root)
        for name in DEMO_MODELS:  # a signed version of each, trained when there is none
            servable_version(name, registry, settings.registry.signing_key,
                             TrustedKeys.load(settings.registry.trusted_keys))
        log = settings.kafka.home / "demo-worker.log"
        print(f"starting a worker (log: {log}) ...", file=sys.stderr)
        worker = WorkerProcess.start(log, {"STREAMSERVE_BROKER": settings.bootstrap, **DRIFT_ENV,
                                           **_quality_env(requests, rate)})
        run = f"demo-{int(time.time())}"
        plan = _plan(registry, run, requests, invalid_share, settings.admission.max_message_bytes)
        started = time.time()
        tally, elapsed = asyncio.run(_drive(settings, plan, rate))
        _print_summary(plan, tally, elapsed, rate)
        samples = asyncio.run(_count_samples(settings, run))
        print(f"  samples         {samples} on {settings.topics.samples} "
              f"({samples / max(1, len(tally.predicted)):.1%} of predictions, "
              f"STREAMSERVE_SAMPLE_RATE {settings.sampling.rate})")
        _print_drift(asyncio.run(_drift_events(settings, started)))
        _print_quality(worker.settings, started, tally.labels_sent)
        return 0 if len(tally.answered_at) == len(plan) and not tally.wrong_reason else 1
    finally:
        if worker is not None:
            worker.stop()
        if started_broker is not None:
            print("stopping the local broker ...", file=sys.stderr)
            started_broker.stop()


def _plan(registry: Registry, run: str, n: int, invalid_share: float,
          max_bytes: int) -> list[Planned]:
    """Requests drawn from the models' own data sets, with true labels; some deliberately bad."""
    rng = np.random.default_rng(7)
    data = {name: load_dataset(name) for name in DEMO_MODELS}
    shifted = data[SHIFTED_MODEL].features.index(SHIFTED_FEATURE)
    shift = SHIFT_SD * float(data[SHIFTED_MODEL].X[:, shifted].std())
    plan = []
    for i in range(n):
        model = DEMO_MODELS[i % len(DEMO_MODELS)]
        ds = data[model]
        row = int(rng.integers(len(ds.X)))
        values = ds.X[row].copy()
        if model == SHIFTED_MODEL and i >= n // 2:
            values[shifted] += shift
        request = PredictRequest(model, dict(zip(ds.features, values.tolist(), strict=True)),
                                 id=f"{run}-{i}")
        if rng.random() < invalid_share:
            value, reason = _spoil(orjson.loads(request.encode()), i, max_bytes)
            plan.append(Planned(model, None, reason, raw=value))
        else:
            plan.append(Planned(model, ds.labels[int(ds.y[row])], None, request=request))
    return plan


def _spoil(request: dict, i: int, max_bytes: int) -> tuple[bytes, str]:
    """One of the ways a real client gets a request wrong, and the reason it earns."""
    first = next(iter(request["features"]))
    spoiled = [
        (orjson.dumps(request)[:-3], "malformed_json"),
        (b'{"id": "' + request["id"].encode() + b'\xff"}', "invalid_utf8"),
        (orjson.dumps({**request, "model": "no-such-model"}), "unknown_model"),
        (orjson.dumps({**request, "features": {k: v for k, v in request["features"].items()
                                               if k != first}}), "schema_mismatch"),
        (orjson.dumps({**request, "features": {**request["features"], first: "high"}}),
         "schema_mismatch"),
        (orjson.dumps(request).replace(b'"features":{', b'"features":{"x":1,'), "schema_mismatch"),
        (orjson.dumps(request).replace(orjson.dumps(request["features"][first]), b"NaN", 1),
         "non_finite"),
        (orjson.dumps({k: v for k, v in request.items() if k != "id"}), "missing_id"),
        (orjson.dumps({**request, "pad": "x" * max_bytes}), "too_large"),
    ]
    return spoiled[i % len(spoiled)]


async def _drive(settings: Settings, plan: list[Planned], rate: float) -> tuple[DemoTally, float]:
    """Send on an open-loop schedule of ``rate`` requests/s (0: as fast as possible), each
    awaiting its own answer through one client (broken requests sent raw)."""
    await ensure_topics(settings)
    tally = DemoTally()
    async with StreamClient(settings, timeout=_ANSWER_TIMEOUT) as client:
        started = time.time()
        answers = set()
        for i, planned in enumerate(plan):
            if rate:
                await asyncio.sleep(max(0.0, started + i / rate - time.time()))
            tally.sent_at[i] = time.time()
            answers.add(asyncio.create_task(_answer(client, i, planned, tally)))
            if i % 100 == 0:
                _progress(i + 1, len(tally.answered_at), len(plan))
        while answers:
            _progress(len(plan), len(tally.answered_at), len(plan))
            _, answers = await asyncio.wait(answers, timeout=0.2)
        _progress(len(plan), len(tally.answered_at), len(plan))
        print(file=sys.stderr)
    last = max(tally.answered_at.values(), default=started)
    return tally, last - started


async def _answer(client: StreamClient, index: int, planned: Planned, tally: DemoTally) -> None:
    try:
        if planned.request is not None:
            prediction = await client.predict_request(planned.request)
        else:
            prediction = await client.send_raw(planned.raw)
    except DeadLetterError as e:
        tally.reasons[e.reason] += 1
        if e.reason != planned.expected_reason:
            tally.wrong_reason += 1
    except PredictionTimeout:
        return  # unanswered
    else:
        if planned.expected_reason is not None:  # a broken request was served
            tally.wrong_reason += 1
        else:
            tally.predicted[index] = prediction.label
    tally.answered_at[index] = time.time()
    if index in tally.predicted and index // len(DEMO_MODELS) % LABEL_EVERY == 0:
        assert planned.request is not None and planned.true_label is not None
        await client.send_label(planned.request.id, planned.true_label)
        tally.labels_sent[planned.model] += 1


def _progress(sent: int, answered: int, total: int) -> None:
    width = 30
    done = int(width * answered / total)
    print(f"\r[{'#' * done}{'.' * (width - done)}] sent {sent}/{total}  answered {answered}/{total}",
          end="", file=sys.stderr, flush=True)


def _print_summary(plan: list[Planned], tally: DemoTally, elapsed: float, rate: float) -> None:
    # The first second's requests meet a cold worker and client (connections, the JIT of
    # the first batches' paths): their latency is told apart.
    start = min(tally.sent_at.values(), default=0.0)
    warm = [i for i in tally.predicted if tally.sent_at[i] >= start + WARM_UP_S]
    cold = [i for i in tally.predicted if tally.sent_at[i] < start + WARM_UP_S]
    lost = len(plan) - len(tally.answered_at)
    print("\nstreamserve demo summary")
    print(f"  requests        {len(plan)}")
    print(f"  predictions     {len(tally.predicted)}")
    print(f"  dead letters    {sum(tally.reasons.values())}"
          + "".join(f"\n    {reason:<16}{count}" for reason, count in sorted(tally.reasons.items())))
    if tally.wrong_reason:
        print(f"  WRONG REASONS   {tally.wrong_reason}")
    print(f"  unanswered      {lost}")
    offered = f"offered {rate:.0f}/s" if rate else "sent as fast as possible"
    print(f"  throughput      {len(tally.answered_at) / max(elapsed, 1e-9):.0f} requests/s "
          f"({elapsed:.2f} s, {offered})")
    for title, indices, when in (("latency e2e", warm, ", after the first second"),
                                 (f"  first {WARM_UP_S:g} s", cold, "")):
        if indices:
            ms = np.array([tally.answered_at[i] - tally.sent_at[i] for i in indices]) * 1000
            print(f"  {title:<16}p50 {np.percentile(ms, 50):.1f} ms   p99 {np.percentile(ms, 99):.1f} ms"
                  f"   ({len(ms)} predictions{when})")
    for model in DEMO_MODELS:
        scored = [i for i in tally.predicted if plan[i].model == model]
        right = sum(tally.predicted[i] == plan[i].true_label for i in scored)
        if scored:
            print(f"  accuracy {model:<15}{right / len(scored):.4f} ({right}/{len(scored)})")


def _quality_env(requests: int, rate: float) -> dict[str, str]:
    """The label join's settings: windows of answer time narrow enough to tell this run's
    answers from an earlier run's, and few enough that the reports keep them all (as
    fast as possible: taken to be 2,000 requests a second, slower than the demo sends)."""
    seconds = requests / (rate or 2000)
    window = max(1, math.ceil(seconds / (TREND_WINDOWS - 2)))
    return {**LABELS_ENV, "STREAMSERVE_QUALITY_WINDOW_S": str(window)}


def _this_run(settings: Settings, since: float) -> dict[str, list[dict]]:
    """Each model's figures per version on the answers of the windows from ``since`` on."""
    from agents.ops.quality_report import read_quality, summarize

    window = settings.quality.window_s
    first = since // window * window  # the window this run's first answer falls in
    return {model: summarize(settings, model, asyncio.run(read_quality(settings, model)), since=first)
            for model in DEMO_MODELS}


def _print_quality(settings: Settings, since: float, sent: Counter) -> None:
    """Live accuracy per model from the label join on this run's answers, once it has
    joined this run's labels (or after ``_QUALITY_WAIT_S``)."""
    deadline = time.monotonic() + _QUALITY_WAIT_S
    figures = _this_run(settings, since)
    while any(sum(v["labelled"] for v in figures[m]) < sent[m] for m in DEMO_MODELS):
        if time.monotonic() > deadline:
            print(f"  live accuracy: not every label was joined within {_QUALITY_WAIT_S:.0f} s")
            break
        time.sleep(0.5)
        figures = _this_run(settings, since)
    print(f"  live accuracy on this run's labels (one answer in {LABEL_EVERY} labelled; "
          "all kept answers': `streamserve quality report`)")
    for model, versions in figures.items():
        for v in versions:
            training = v["training"].get("test_accuracy")
            print(f"    {model}:{v['version']:<12}{_share(v['accuracy'])} on {v['labelled']} labels "
                  f"of {sent[model]} sent; training {_share(training)}")


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


async def _count_samples(settings: Settings, run: str) -> int:
    """This run's sampled requests (ids start with the run's name)."""
    prefix = f"{run}-".encode()
    return sum([record.key.startswith(prefix) async for record in read_topic(
        settings, settings.topics.samples, from_beginning=True, idle_timeout=2.0)])


async def _drift_events(settings: Settings, since: float) -> dict[tuple[str, str], dict]:
    """The first drift event per model and feature in this run's windows."""
    await asyncio.sleep(2)  # the drift agent reports shortly after the last counts
    events: dict[tuple[str, str], dict] = {}
    async for record in read_topic(settings, settings.topics.drift, from_beginning=True,
                                   idle_timeout=2.0):
        report = orjson.loads(record.value)
        if report["event"] and report["window_start"] >= since - 1:
            events.setdefault((report["model"], report["feature"]), report)
    return events


def _print_drift(events: dict[tuple[str, str], dict]) -> None:
    print(f"  drift           {SHIFTED_MODEL}.{SHIFTED_FEATURE} shifted by {SHIFT_SD} sd halfway "
          f"(windows of {DRIFT_ENV['STREAMSERVE_DRIFT_WINDOW_S']} s)")
    if not events:
        print("    no drift event")
    for (model, feature), report in sorted(events.items()):
        print(f"    {model}.{feature:<22} {report['event']['status']}  PSI {report['psi']:.3f}  "
              f"(threshold {report['verdict']['threshold']:.3f}, M {report['window_size']})")
    print(f"    see: streamserve drift report {SHIFTED_MODEL}")
