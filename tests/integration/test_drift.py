"""Drift on the real broker: counts from the serving path, windows in the Faust table."""

from __future__ import annotations

import time

import numpy as np
import orjson
import pytest

from models.datasets import load as load_dataset
from tests.conftest import start_worker
from tests.integration.clients import collect, produce, run

pytestmark = pytest.mark.integration

CANCER = load_dataset("breast_cancer")
SHIFTED = "mean_texture"
# Event time is the requests' Kafka timestamps: set, a few minutes back, on whole seconds.
# Not further back: the broker's retention would delete them before a restarted worker
# reads them again.
BASE_MS = (int(time.time()) - 600) * 1000
WINDOWS = {"STREAMSERVE_DRIFT_WINDOW_S": "2", "STREAMSERVE_DRIFT_HOP_S": "1",
           "STREAMSERVE_DRIFT_GRACE_S": "1"}

def requests(second: int, n: int, rng: np.random.Generator, shift: float) -> list[bytes]:
    column = CANCER.features.index(SHIFTED)
    sd = float(CANCER.X[:, column].std())
    rows = CANCER.X[rng.integers(0, len(CANCER.X), n)].copy()
    rows[:, column] += shift * sd
    return [orjson.dumps({"id": f"d{second}-{i}", "model": "breast_cancer",
                          "features": dict(zip(CANCER.features, row.tolist(), strict=True))})
            for i, row in enumerate(rows)]


@pytest.fixture(scope="module")
def drift_worker(kafka_bootstrap, registry_dir, tmp_path_factory):
    # The short windows are breast_cancer's own (per-model settings), over the defaults.
    folder = tmp_path_factory.mktemp("drift")
    (folder / "models.toml").write_text(
        "[models.breast_cancer]\ndrift_window_s = 2\ndrift_hop_s = 1\ndrift_grace_s = 1\n")
    worker = start_worker(kafka_bootstrap, registry_dir, folder / "worker.log",
                          STREAMSERVE_MODELS_FILE=str(folder / "models.toml"))
    yield worker
    worker.stop()


def test_a_shifted_feature_is_detected_and_no_other(drift_worker):
    s = drift_worker.settings
    rng = np.random.default_rng(0)
    # Seconds 0-5 in distribution, 6-11 with one feature shifted by half a standard
    # deviation, then one request in second 15 to close the last windows.
    for second in range(12):
        shift = 0.5 if second >= 6 else 0.0
        run(produce(s.bootstrap, s.topics.requests, requests(second, 1500, rng, shift),
                    timestamp_ms=BASE_MS + second * 1000 + 500))
    run(produce(s.bootstrap, s.topics.requests, requests(15, 1, rng, 0.0),
                timestamp_ms=BASE_MS + 15 * 1000))
    features = len(CANCER.features) + 1  # and the predicted label
    received = run(collect(s.bootstrap, [s.topics.drift], expected=13 * features, timeout=120))
    reports = [r.value for r in received]
    assert {r["feature"] for r in reports} == {*CANCER.features, "label"}
    before = [r for r in reports if r["window_end"] <= BASE_MS // 1000 + 6]
    after = [r for r in reports if r["window_start"] >= BASE_MS // 1000 + 6]
    assert before and after
    assert not [r for r in before if r["event"]], "no drift event before the shift"
    inputs_with_events = {r["feature"] for r in after if r["event"] and r["feature"] != "label"}
    assert inputs_with_events == {SHIFTED}
    first_event = min(r["window_end"] for r in after if r["event"] and r["feature"] == SHIFTED)
    assert first_event <= BASE_MS // 1000 + 6 + 2 + 1  # within two windows of the shift
    shifted = [r for r in after if r["feature"] == SHIFTED]
    assert all(r["psi"] > 0.1 and r["verdict"]["status"] in ("drift", "alert") for r in shifted)
    assert all(r["kl_ref_cur"] + r["kl_cur_ref"] == pytest.approx(r["psi"]) for r in shifted)
    assert "streamserve_drift_psi{" in drift_worker.metrics()


def test_drift_report_shows_the_shifted_feature(drift_worker):
    """Runs after the detection test in this module, on its reports."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "agents.cli.main", "drift", "report",
                             "breast_cancer"], env=drift_worker.env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines()[2:]}
    assert "EVENT" in lines[SHIFTED] and "EVENT" not in lines["mean_radius"]
    assert len(lines) == len(CANCER.features) + 1


def test_drift_state_recovers_from_the_table_changelog_after_a_restart(
        kafka_bootstrap, registry_dir, tmp_path):
    from agents.dev.fleet import WorkerProcess

    first = start_worker(kafka_bootstrap, registry_dir, tmp_path / "first.log", **WINDOWS)
    s = first.settings
    rng = np.random.default_rng(1)
    for second in range(4):
        run(produce(s.bootstrap, s.topics.requests, requests(second, 400, rng, 0.0),
                    timestamp_ms=BASE_MS + second * 1000 + 500))
    before = run(collect(s.bootstrap, [s.topics.drift], expected=2 * 31, timeout=60))
    assert len(before) >= 2 * 31  # windows closed before the restart
    first.stop()
    second = WorkerProcess.start(tmp_path / "second.log", first.env)
    try:
        for second_ in range(4, 8):
            run(produce(s.bootstrap, s.topics.requests, requests(second_, 400, rng, 0.0),
                        timestamp_ms=BASE_MS + second_ * 1000 + 500))
        after = run(collect(s.bootstrap, [s.topics.drift], expected=6 * 31,  # windows ending 1..6
                            timeout=90))
    finally:
        second.stop()
    assert "Error in recovery" not in second.log_tail(10**7)
    ends = {r.value["window_end"] for r in after}
    # Windows that span the restart were reported: their panes survived in the table.
    assert BASE_MS // 1000 + 5 in ends and BASE_MS // 1000 + 6 in ends
    spanning = [r.value for r in after if r.value["window_end"] == BASE_MS // 1000 + 5
                and r.value["feature"] == SHIFTED]
    assert spanning and spanning[0]["window_size"] == 800  # 400 rows from each side


def wait_until_answered(worker, n: int, timeout: float = 120) -> None:
    """Until ``n`` distinct requests have an answer (a crash may have answered some twice)."""
    t, deadline = worker.settings.topics, time.monotonic() + timeout
    while time.monotonic() < deadline:
        answers = run(collect(worker.settings.bootstrap, [t.predictions, t.deadletter],
                              expected=n, timeout=10))
        if len({r.key for r in answers}) >= n:
            return
    raise AssertionError(f"fewer than {n} requests answered in {timeout:.0f} s")


def test_a_worker_killed_mid_window_counts_each_request_once(kafka_bootstrap, registry_dir, tmp_path):
    """Two runs of the same traffic: one worker left alone, one killed with SIGKILL while
    serving and restarted. Every window's counts (hence every report) must be equal."""
    from agents.dev.fleet import WorkerProcess

    # After the restart, partitions' backlogs are read side by side, a few seconds of
    # event time apart: the grace keeps the windows open for the rows behind.
    env = {**WINDOWS, "STREAMSERVE_DRIFT_GRACE_S": "4"}
    calm = start_worker(kafka_bootstrap, registry_dir, tmp_path / "calm.log", **env)
    crashed = start_worker(kafka_bootstrap, registry_dir, tmp_path / "crashed.log", **env)
    rng = np.random.default_rng(2)
    traffic = [(second, requests(second, 1500, rng, 0.5 if second >= 3 else 0.0))
               for second in range(6)]
    restarted = None
    try:
        for second, values in traffic:
            for worker in (calm, crashed):
                run(produce(worker.settings.bootstrap, worker.settings.topics.requests, values,
                            timestamp_ms=BASE_MS + second * 1000 + 500))
            if second == 3:  # mid-window: its pane is half counted, its rows half served
                time.sleep(0.5)
                crashed.kill()
                restarted = WorkerProcess.start(tmp_path / "restarted.log", crashed.env)
        closer = requests(12, 1, rng, 0.0)
        for worker in (calm, crashed):
            # Once the backlog is served (the grace covers the disorder within it), one
            # request far later in event time closes the last windows.
            wait_until_answered(worker, len(traffic) * 1500)
            run(produce(worker.settings.bootstrap, worker.settings.topics.requests, closer,
                        timestamp_ms=BASE_MS + 12 * 1000))
        features = len(CANCER.features) + 1
        windows = 7 * features  # windows ending in seconds 1..7 hold rows
        reports = {name: {(r.value["window_end"], r.value["feature"]):
                          (r.value["window_size"], r.value["psi"], r.value["verdict"]["status"])
                          for r in run(collect(w.settings.bootstrap, [w.settings.topics.drift],
                                               expected=windows, timeout=120))}
                   for name, w in (("calm", calm), ("crashed", crashed))}
    finally:
        for worker in (calm, crashed, restarted):
            if worker is not None:
                worker.stop()
    assert len(reports["calm"]) == windows
    assert reports["crashed"] == reports["calm"]
    sizes = {end - BASE_MS // 1000: size for (end, feature), (size, _, _) in reports["calm"].items()
             if feature == SHIFTED}
    assert sizes == {1: 1500, 2: 3000, 3: 3000, 4: 3000, 5: 3000, 6: 3000, 7: 1500}


def test_replayed_requests_are_kept_out_of_the_drift_counts(drift_worker):
    """Requests with the replay header are served but never coded for drift."""
    from aiokafka import AIOKafkaProducer

    from agents.kafka.read import read_topic
    from pipeline.drift import CodedRows
    from pipeline.replay import REPLAY_HEADER

    s = drift_worker.settings
    rng = np.random.default_rng(3)
    live, replayed = requests(20, 40, rng, 0.0), requests(21, 40, rng, 0.0)
    replayed = [v.replace(b'"id":"d21-', b'"id":"replayed-') for v in replayed]

    async def send() -> dict[int, set[int]]:
        producer = AIOKafkaProducer(bootstrap_servers=s.bootstrap)
        await producer.start()
        sent: dict[int, set[int]] = {}
        try:
            for values, headers in ((live, []), (replayed, [(REPLAY_HEADER, b"r1")])):
                for value in values:
                    meta = await (await producer.send(s.topics.requests, value, headers=headers))
                    if headers:
                        sent.setdefault(meta.partition, set()).add(meta.offset)
        finally:
            await producer.stop()
        return sent

    replay_positions = run(send())
    answered = run(collect(s.bootstrap, [s.topics.predictions], expected=80, timeout=30,
                           where=lambda r: r.value["id"].startswith(("d20-", "replayed-"))))
    assert len(answered) == 80  # both are served
    time.sleep(1.5)  # the next flush ships the codes

    async def coded() -> dict[int, set[int]]:
        positions: dict[int, set[int]] = {}
        async for record in read_topic(s, s.topics.drift_rows, from_beginning=True, to_end=True):
            rows = CodedRows.from_bytes(record.value)
            for partition, offset in zip(rows.partitions.tolist(), rows.offsets.tolist(), strict=True):
                positions.setdefault(partition, set()).add(offset)
        return positions

    counted = run(coded())
    assert sum(len(o) for o in counted.values()) >= 40  # the live requests were coded
    assert not any(replay_positions[p] & counted.get(p, set()) for p in replay_positions)


def test_drift_state_of_another_release_is_counted_afresh_not_crashed_on(
        kafka_bootstrap, registry_dir, tmp_path):
    """A table value the agent cannot read (an older release's format) is logged and the
    windows start afresh: the agent does not crash into the same value again and again."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    prefix = f"o{int(time.time() * 1000) % 10**9}"
    changelog = f"{prefix}.faust-drift-windows-changelog"

    async def plant() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(changelog, 4, 1,
                                                topic_configs={"cleanup.policy": "compact"})])
        finally:
            await admin.close()
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            for partition in range(4):
                await producer.send_and_wait(changelog, b'{"panes": []}', key=b"breast_cancer:1",
                                             partition=partition)
        finally:
            await producer.stop()

    run(plant())
    worker = start_worker(kafka_bootstrap, registry_dir, tmp_path / "worker.log",
                          STREAMSERVE_TOPIC_PREFIX=prefix, STREAMSERVE_APP_ID=prefix, **WINDOWS)
    try:
        s = worker.settings
        rng = np.random.default_rng(5)
        for second in range(4):
            run(produce(s.bootstrap, s.topics.requests, requests(second, 400, rng, 0.0),
                        timestamp_ms=BASE_MS + second * 1000 + 500))
        run(produce(s.bootstrap, s.topics.requests, requests(8, 1, rng, 0.0),
                    timestamp_ms=BASE_MS + 8 * 1000))
        reports = run(collect(s.bootstrap, [s.topics.drift], expected=1, timeout=60))
        log = worker.log_tail(10**7)
    finally:
        worker.stop()
    assert reports, "no drift report after the unreadable state"
    assert "drift state of breast_cancer:1 unreadable (KeyError" in log
    assert "Crashed reason" not in log
