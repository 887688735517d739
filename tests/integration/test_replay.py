"""Stream replay on the real broker: capture a run, replay it against the same and another
version, diff, gate, and replay at twice the recorded pace.

One worker serves iris 1 (stable) and iris 2 (fallback: trained with another seed), so a
replay can pin either. The traffic holds iris rows chosen so that a few are answered
differently by the two versions (computed offline from the registered parameters), an
Open Inference Protocol request, and two that are refused (bytes that are not UTF-8, and
one without an id), so the diff's every part is exercised.
"""

from __future__ import annotations

import asyncio
import datetime
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from agents.ops.replay import load_side, read_recording
from models.architectures import architecture
from models.datasets import load as load_dataset
from models.train import train_and_register
from pipeline.quality import encode_label
from pipeline.registry import Registry
from pipeline.replay import INDEX_HEADER, REPLAY_HEADER
from tests.conftest import iris_registry, start_worker

pytestmark = pytest.mark.integration

IRIS = load_dataset("iris")
GAP_S = 0.05  # between the captured requests


@dataclass
class Sent:
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...]


@dataclass
class Fleet:
    worker: object
    registry: Path
    folder: Path

    @property
    def settings(self):
        return self.worker.settings

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "agents.cli.main", *args], env=self.worker.env,
                              capture_output=True, text=True, timeout=timeout, check=False)

    def ok(self, *args: str) -> str:
        result = self.cli(*args)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    def answered(self, run_id: str, timeout: float = 60):
        """The run's replies once every request has one."""
        deadline = time.monotonic() + timeout
        while True:
            side, features = asyncio.run(load_side(self.settings, run_id))
            if side.unanswered == 0 or time.monotonic() > deadline:
                return side, features
            time.sleep(0.5)


def margin_rows(params: list[dict]) -> tuple[np.ndarray, list[bool]]:
    """Iris rows (every fifth, and mixes of a versicolor and a virginica row) whose predicted
    class is clear-cut for both versions, and for each whether the versions disagree."""
    apply = architecture("mlp")
    versicolor, virginica = IRIS.X[IRIS.y == 1][3], IRIS.X[IRIS.y == 2][4]
    t = np.linspace(0.3, 0.7, 41)[:, None]
    candidates = np.vstack([IRIS.X[::5], versicolor * (1 - t) + virginica * t, IRIS.X[106:107]])
    probabilities = [np.asarray(apply(p, candidates)) for p in params]
    clear = np.ones(len(candidates), bool)
    for prob in probabilities:
        top2 = np.sort(prob, axis=1)[:, -2:]
        clear &= top2[:, 1] - top2[:, 0] > 0.05  # far from a tie: float noise cannot flip it
    labels = [prob.argmax(axis=1) for prob in probabilities]
    return candidates[clear], list((labels[0] != labels[1])[clear])


@pytest.fixture(scope="module")
def fleet(kafka_bootstrap, registry_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("replay")
    root, keys = iris_registry(registry_dir, folder)
    train_and_register("iris", Registry(root), seed=1,
                       signing_key=Path(keys["STREAMSERVE_SIGNING_KEY"]))
    worker = start_worker(kafka_bootstrap, root, folder / "worker.log", **keys,
                          STREAMSERVE_SAMPLE_RATE="0")
    try:
        f = Fleet(worker, root, folder)
        f.ok("deploy", "iris", "1")
        f.ok("fallback", "iris", "2")
        line = 'streamserve_model_loaded{model="iris",role="fallback",version="2"} 1.0'
        deadline = time.monotonic() + 90
        while line not in worker.metrics():
            assert time.monotonic() < deadline, "iris 2 never loaded as the fallback"
            time.sleep(0.3)
        yield f
    finally:
        worker.stop()


@dataclass
class Captured:
    path: Path
    sent: list[Sent]
    ids: list[str | None]
    disagreeing: set[str]
    labels: Path  # each request's class as iris 1 answers it: 1 is right on all, 2 not


async def _produce_paced(bootstrap: str, topic: str,
                         messages: list[tuple[bytes | None, bytes, tuple]]) -> list[Sent]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        futures, stamps = [], []
        started = time.monotonic()
        for i, (key, value, headers) in enumerate(messages):
            await asyncio.sleep(max(0.0, started + i * GAP_S - time.monotonic()))
            stamp = time.time_ns() // 1_000_000
            stamps.append(stamp)
            futures.append(await producer.send(topic, value=value, key=key, headers=list(headers),
                                               timestamp_ms=stamp))
        landed = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return [Sent(m.partition, m.offset, stamp, key, value, tuple(headers))
            for m, stamp, (key, value, headers) in zip(landed, stamps, messages, strict=True)]


@pytest.fixture(scope="module")
def captured(fleet) -> Captured:
    """A run of requests, paced GAP_S apart, captured into a zstd recording."""
    registry = Registry(fleet.registry)
    rows, differs = margin_rows([registry.load_params("iris", v) for v in ("1", "2")])
    assert any(differs), "the two iris versions agree on every row; pick other rows"
    run = f"cap{uuid.uuid4().hex[:6]}"
    messages, ids, disagreeing = [], [], set()
    for i, row in enumerate(rows):
        request_id = f"{run}-{i}"
        features = dict(zip(IRIS.features, row.tolist(), strict=True))
        if i == 3:  # the Open Inference Protocol form
            value = orjson.dumps({"id": request_id, "model_name": "iris", "inputs": [
                {"name": k, "shape": [1], "datatype": "FP64", "data": [v]} for k, v in features.items()]})
        else:
            value = orjson.dumps({"id": request_id, "model": "iris", "features": features})
        messages.append((request_id.encode(), value, (("trace", f"t-{i}".encode()), ("raw", b"\xff\x00"))))
        ids.append(request_id)
        if differs[i]:
            disagreeing.add(request_id)
    classes = registry.manifest("iris", "1").outputs.labels
    answered = np.asarray(architecture("mlp")(registry.load_params("iris", "1"), rows)).argmax(axis=1)
    labels = fleet.folder / "labels.jsonl"
    labels.write_bytes(b"\n".join(encode_label(f"{run}-{i}", classes[c]) for i, c in enumerate(answered)))
    messages.insert(5, (None, b'{"id": "' + run.encode() + b'-bad", "model": "iris\xff"}', ()))
    ids.insert(5, f"{run}-bad")
    messages.insert(9, (None, b"not json", ()))
    ids.insert(9, None)
    s = fleet.settings
    before = datetime.datetime.now(datetime.UTC)
    sent = asyncio.run(_produce_paced(s.bootstrap, s.topics.requests, messages))
    after = datetime.datetime.now(datetime.UTC) + datetime.timedelta(milliseconds=1)
    path = fleet.folder / "traffic.jsonl.zst"
    out = fleet.ok("replay", "capture", "--from", before.isoformat(), "--to", after.isoformat(),
                   "--out", str(path))
    assert f"recorded {len(sent)} records" in out
    return Captured(path, sent, ids, disagreeing, labels)


def test_capture_records_keys_values_headers_and_timestamps_exactly(captured):
    header, records = read_recording(captured.path)
    assert captured.path.read_bytes()[:4] == b"\x28\xb5\x2f\xfd"  # zstd
    assert header.records == len(records) == len(captured.sent)
    got = sorted((r.partition, r.offset, r.timestamp_ms, r.key, r.value, r.headers) for r in records)
    want = sorted((s.partition, s.offset, s.timestamp_ms, s.key, s.value, s.headers)
                   for s in captured.sent)
    assert got == want
    assert [r.timestamp_ms for r in records] == sorted(r.timestamp_ms for r in records)


def test_capture_by_offsets_takes_the_same_records(fleet, captured, tmp_path):
    partitions: dict[int, list[int]] = {}
    for s in captured.sent:
        partitions.setdefault(s.partition, []).append(s.offset)
    start = ",".join(f"{p}:{min(o)}" for p, o in partitions.items())
    stop = ",".join(f"{p}:{max(o) + 1}" for p, o in partitions.items())
    path = tmp_path / "by-offset.jsonl"
    fleet.ok("replay", "capture", "--from", start, "--to", stop, "--out", str(path))
    assert read_recording(path)[1] == read_recording(captured.path)[1]


def test_a_replay_against_the_same_version_agrees_fully(fleet, captured):
    s = fleet.settings
    token = uuid.uuid4().hex[:4]
    runs = [f"same{token}-{n}" for n in ("a", "b")]
    for run_id in runs:
        out = fleet.ok("replay", "run", str(captured.path), "--max", "--version", "1",
                       "--run-id", run_id)
        assert f"run {run_id}: {len(captured.sent)} records to {s.topics.requests}" in out
        assert "records/s (as fast as possible)" in out
    sides = [fleet.answered(run_id)[0] for run_id in runs]
    for side in sides:
        assert side.unanswered == 0
        assert {r.version for r in side.replies.values() if r.reason is None} == {"1"}
    html = fleet.folder / "same.html"
    result = fleet.cli("replay", "diff", *runs, "--html", str(html))
    assert result.returncode == 0, result.stderr
    print(result.stdout)
    assert "100.00%" in result.stdout.split("agreement")[1].splitlines()[0]
    assert "dead letters" in result.stdout and "invalid_utf8" in result.stdout
    assert "malformed_json" in result.stdout
    assert html.read_text().count("data:image/png;base64,") >= 2
    # a run's replies captured to a file compare alike (those to requests without an id
    # cannot be told by id, so a capture leaves them out)
    replies = fleet.folder / "same-a.jsonl"
    fleet.ok("replay", "capture", "--topic", s.topics.predictions, "--topic", s.topics.deadletter,
             "--run-id", runs[0], "--out", str(replies))
    result = fleet.cli("replay", "diff", str(replies), runs[1])
    assert result.returncode == 0, result.stderr
    assert "agreement           100.00%  (70 same outcome" in result.stdout
    assert "only in candidate 2" in result.stdout
    # the requests went out rewritten and tagged
    requests = asyncio.run(_run_requests(s, runs[0]))
    assert len(requests) == len(captured.sent)
    bodies = [orjson.loads(r.value) for r in requests if r.value.startswith(b'{"id":"same')]
    assert bodies and all(b["id"].startswith(f"{runs[0]}/") and b.get("version", b.get("model_version")) == "1"
                          for b in bodies)


async def _run_requests(settings, run_id: str):
    from agents.kafka.read import read_topic

    return [r async for r in read_topic(settings, settings.topics.requests, from_beginning=True,
                                        to_end=True)
            if dict(r.headers).get(REPLAY_HEADER) == run_id.encode()]


def test_a_replay_against_a_version_trained_differently_shows_the_disagreement(fleet, captured):
    token = uuid.uuid4().hex[:4]
    runs = [f"ver{token}-{v}" for v in ("1", "2")]
    for run_id, version in zip(runs, ("1", "2"), strict=True):
        fleet.ok("replay", "run", str(captured.path), "--max", "--version", version,
                 "--run-id", run_id)
    base, features = fleet.answered(runs[0])
    cand, _ = fleet.answered(runs[1])
    assert base.unanswered == cand.unanswered == 0
    result = fleet.cli("replay", "diff", *runs, "--top", "50")
    assert result.returncode == 0, result.stderr
    print(result.stdout)
    differing = {line.split()[0] for line in result.stdout.split("most different requests")[1]
                 .splitlines()[2:] if line.strip()}
    changed = {k for k in base.replies if base.replies[k].outcome != cand.replies[k].outcome}
    assert changed == captured.disagreeing
    assert captured.disagreeing <= differing
    agreement = (len(base.replies) - len(changed)) / len(base.replies)
    assert f"agreement           {agreement:.2%}" in result.stdout
    assert "sepal_length=" in result.stdout  # the features, from the requests topic
    assert set(features) >= captured.disagreeing


def test_the_gate_passes_a_candidate_within_its_limits(fleet, captured):
    html = fleet.folder / "gate.html"
    result = fleet.cli("replay", "gate", "--file", str(captured.path), "--baseline", "1",
                       "--candidate", "2", "--max-disagreement", "0.5", "--max-p99-ms", "60000",
                       "--max", "--html", str(html), "--labels", str(captured.labels),
                       "--min-accuracy", "0.5", "--max-accuracy-drop", "0.5")
    print(result.stdout, result.stderr)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "gate                PASS" in result.stdout
    labelled = sum(1 for line in captured.labels.read_bytes().splitlines() if line)
    candidate = 1 - len(captured.disagreeing) / labelled
    assert (f"ok    accuracy        baseline 100.00% on {labelled} labels, candidate "
            f"{candidate:.2%} on {labelled}") in result.stdout
    assert "gate PASS" in html.read_text()


def test_the_gate_fails_a_candidate_past_its_limits(fleet, captured):
    result = fleet.cli("replay", "gate", "--file", str(captured.path), "--baseline", "1",
                       "--candidate", "2", "--max-disagreement", "0", "--max-p99-ms", "0.001",
                       "--speed", "4", "--labels", str(captured.labels), "--max-accuracy-drop", "0")
    print(result.stdout)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "gate                FAIL" in result.stdout
    assert "FAIL  disagreement" in result.stdout and "FAIL  candidate p99" in result.stdout
    assert "FAIL  accuracy drop" in result.stdout  # labels say iris 2 is wrong where it differs
    assert "ok    replies" in result.stdout


def test_the_gate_refuses_accuracy_limits_without_labels_and_a_labels_file_it_cannot_read(fleet, captured):
    alone = fleet.cli("replay", "gate", "--file", str(captured.path), "--baseline", "1", "--candidate",
                      "2", "--max-disagreement", "0.1", "--max-p99-ms", "100", "--min-accuracy", "0.9")
    assert alone.returncode == 2 and "give the recorded requests' labels with --labels" in alone.stderr
    broken = fleet.folder / "broken.jsonl"
    broken.write_text('{"id": "r-1", "label": "setosa"}\n{"id": "r-2"}\n')
    refused = fleet.cli("replay", "gate", "--file", str(captured.path), "--baseline", "1", "--candidate",
                        "2", "--max-disagreement", "0.1", "--max-p99-ms", "100", "--labels", str(broken))
    assert refused.returncode == 2 and "labels file, line 2" in refused.stderr, refused.stderr


def test_the_gate_refuses_a_version_the_workers_would_not_serve(fleet, captured):
    result = fleet.cli("replay", "gate", "--file", str(captured.path), "--baseline", "1",
                       "--candidate", "7", "--max-disagreement", "0.1", "--max-p99-ms", "100")
    assert result.returncode == 2
    assert "iris version 7 is not served" in result.stderr and "fallback iris 7" in result.stderr


def test_speed_2_halves_the_recorded_inter_arrival_times(fleet, captured):
    run_id = f"fast{uuid.uuid4().hex[:4]}"
    out = fleet.ok("replay", "run", str(captured.path), "--speed", "2", "--version", "1",
                   "--run-id", run_id)
    assert "x 2)" in out
    _, recorded = read_recording(captured.path)
    replayed = sorted(asyncio.run(_run_requests(fleet.settings, run_id)),
                      key=lambda r: int(dict(r.headers)[INDEX_HEADER]))
    assert len(replayed) == len(recorded)
    want = np.diff([r.timestamp_ms for r in recorded]) / 2
    got = np.diff([r.timestamp for r in replayed])
    assert abs(got.sum() - want.sum()) <= 0.1 * want.sum() + 20, (got.sum(), want.sum())
    assert np.median(np.abs(got - want)) <= 8, list(zip(got, want, strict=True))
