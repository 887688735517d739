"""Ground truth on the real broker: answers joined with labels sent later (and some sent
first), with a known share wrong, so the accuracy every reader shows is exact: the
`quality report --json` command, the worker's metrics and the quality topic. Duplicates,
a correction, a label of the wrong type, a label for a dead-lettered request, labels for
ids never served, and a label that is no label are each counted by what became of them."""

from __future__ import annotations

import time

import orjson
import pytest

from models.datasets import load as load_dataset
from pipeline.quality import encode_label
from tests.conftest import start_worker
from tests.integration.clients import collect, produce, run
from tests.integration.external import cli

pytestmark = pytest.mark.integration

IRIS = load_dataset("iris")
N, WRONG, EARLY = 300, 60, 20  # answers labelled, of them labelled wrong, labels sent first


@pytest.fixture(scope="module")
def worker(kafka_bootstrap, registry_dir, tmp_path_factory):
    worker = start_worker(kafka_bootstrap, registry_dir, tmp_path_factory.mktemp("quality") / "worker.log",
                          STREAMSERVE_LABELS="on", STREAMSERVE_QUALITY_REPORT_S="1",
                          STREAMSERVE_LABEL_WAIT_S="8")
    yield worker
    worker.stop()


def request(request_id: str, i: int) -> bytes:
    return orjson.dumps({"id": request_id, "model": "iris",
                         "features": dict(zip(IRIS.features, IRIS.X[i % len(IRIS.X)].tolist(), strict=True))})


def other(label: str) -> str:
    return next(name for name in ("setosa", "versicolor", "virginica") if name != label)


def quality(worker) -> list[dict]:
    result = cli(worker.env, "quality", "report", "iris", "--json")
    assert result.returncode == 0, result.stderr
    return [orjson.loads(line) for line in result.stdout.splitlines()]


def test_labels_joined_with_answers_give_the_exact_accuracy_everywhere(worker):
    s, t = worker.settings, worker.settings.topics
    # Labels for the first EARLY requests go out before the requests: they wait.
    truth = {f"g-{i}": IRIS.labels[IRIS.y[i % len(IRIS.X)]] for i in range(N)}
    run(produce(s.bootstrap, t.labels, [encode_label(f"g-{i}", truth[f"g-{i}"]) for i in range(EARLY)]))
    bad_request = orjson.dumps({"id": "bad-1", "model": "iris", "features": {"nope": 1.0}})
    run(produce(s.bootstrap, t.requests, [request(f"g-{i}", i) for i in range(N)] + [bad_request]))
    answers = run(collect(s.bootstrap, [t.predictions, t.deadletter], expected=N + 1, timeout=60))
    predicted = {r.value["id"]: r.value["outputs"][1]["data"][0] for r in answers if r.topic == t.predictions}
    assert len(predicted) == N
    # The labels: the model's own class for all but WRONG of them (whatever its accuracy),
    # so the accuracy on labels is exactly (N - WRONG) / N.
    wrong = {f"g-{i}" for i in range(EARLY, EARLY + WRONG)}
    labels = [encode_label(i, other(predicted[i]) if i in wrong else predicted[i]) for i in
              (f"g-{n}" for n in range(EARLY, N))]
    early_wrong = sum(predicted[f"g-{i}"] != truth[f"g-{i}"] for i in range(EARLY))
    corrected = "g-250"  # labelled wrong first, then right: a correction
    labels[230:230] = [encode_label(corrected, other(predicted[corrected]))]
    duplicates = [encode_label(f"g-{i}", predicted[f"g-{i}"]) for i in range(100, 110)]
    odd = [encode_label("g-120", 2.5),  # a number for a classifier
           encode_label("bad-1", "setosa"),  # its request was dead-lettered
           *(encode_label(f"never-{i}", "setosa") for i in range(3)),  # no such request
           b"{not a label"]
    run(produce(s.bootstrap, t.labels, labels + duplicates + odd))

    expected_accuracy = (N - WRONG - early_wrong) / N
    deadline = time.monotonic() + 90
    while True:
        # Requests after the labels' wait make every partition look for expired labels.
        run(produce(s.bootstrap, t.requests, [request(f"h-{i}-{time.monotonic()}", i) for i in range(40)]))
        reports = quality(worker)
        version = reports[0] if reports else {}
        if (version.get("labelled") == N and version.get("unmatched_labels") == 3
                and sum(version["outcomes"].values()) == 12 and version["refused_labels"] == 1):
            break
        assert time.monotonic() < deadline, (orjson.dumps(reports).decode()[:3000], worker.log_tail())
        time.sleep(1)
    assert (version["model"], version["version"], version["kind"]) == ("iris", "1", "classifier")
    assert version["accuracy"] == pytest.approx(expected_accuracy, abs=1e-12)
    assert version["outcomes"] == {"duplicate": 10, "correction": 1, "wrong_type": 1}
    assert version["answers"] >= N and version["routes"]["stable"]["labelled"] == N
    assert version["training"]["test_accuracy"] > 0.8 and 0 <= version["log_loss"]
    assert 0 <= version["expected_calibration_error"] <= 1 and version["label_delay_p50_s"] > 0

    metrics = worker.metrics()
    assert 'streamserve_quality_labelled{model="iris",route="stable",version="1"} 300.0' in metrics
    assert f'streamserve_quality_correct{{model="iris",route="stable",version="1"}} ' \
           f'{float(N - WRONG - early_wrong)}' in metrics
    assert 'streamserve_labels_total{model="",outcome="malformed"} 1.0' in metrics

    reports = run(collect(s.bootstrap, [t.quality], expected=10**9, timeout=3))
    latest = {}
    for record in reports:
        report = record.value
        assert record.key == f"{report['model']}:{report['version']}".encode()
        if (report["model"], report["version"]) == ("iris", "1"):
            latest[report["partition"]] = report
    assert sum(r["routes"]["stable"]["total"]["labelled"] for r in latest.values()) == N

    text = cli(worker.env, "quality", "report", "iris").stdout
    assert "version 1 (classifier)" in text and f"{expected_accuracy:.4f}" in text


def test_a_worker_killed_mid_stream_reports_what_one_that_never_stopped_would(
        kafka_bootstrap, registry_dir, tmp_path):
    """Requests and labels (some labels first, some twice) flow while the worker is
    killed with SIGKILL and restarted: the figures are exactly those the answers and
    labels give, each label counted once (a label read again or relayed again is no
    duplicate, an answer served again no second answer)."""
    from agents.dev.fleet import WorkerProcess

    worker = start_worker(kafka_bootstrap, registry_dir, tmp_path / "killed.log",
                          STREAMSERVE_LABELS="on", STREAMSERVE_QUALITY_REPORT_S="1")
    restarted = None
    s, t = worker.settings, worker.settings.topics
    rounds, per = 6, 300
    truth = {f"k{r}-{i}": IRIS.labels[IRIS.y[(r + i) % len(IRIS.X)]] for r in range(rounds) for i in range(per)}

    def labels(r: int, early: bool) -> list[bytes]:
        return [encode_label(f"k{r}-{i}", truth[f"k{r}-{i}"]) for i in range(per) if (i % 5 == 0) == early]

    try:
        for r in range(rounds):
            run(produce(s.bootstrap, t.labels, labels(r, early=True)))
            run(produce(s.bootstrap, t.requests, [request(f"k{r}-{i}", r + i) for i in range(per)]))
            if r:
                run(produce(s.bootstrap, t.labels, labels(r - 1, early=False)))
            if r == 3:  # mid-stream: labels of round 2 and requests of round 3 in flight
                time.sleep(0.3)
                worker.kill()
                restarted = WorkerProcess.start(tmp_path / "restarted.log", worker.env)
        run(produce(s.bootstrap, t.labels, labels(rounds - 1, early=False)
                    + [encode_label(f"k0-{i}", truth[f"k0-{i}"]) for i in range(10)]))  # sent twice
        answers = run(collect(s.bootstrap, [t.predictions], expected=rounds * per, timeout=120))
        predicted = {r.value["id"]: r.value["outputs"][1]["data"][0] for r in answers}
        assert len(predicted) == rounds * per
        correct = sum(predicted[i] == truth[i] for i in truth)
        deadline = time.monotonic() + 90
        while True:
            reports = quality(restarted)
            version = reports[0] if reports else {}
            if version.get("labelled") == rounds * per and sum(version["outcomes"].values()) >= 10:
                break
            assert time.monotonic() < deadline, (reports, restarted.log_tail())
            time.sleep(1)
        time.sleep(2)  # a second report of every partition: nothing more comes
        version = quality(restarted)[0]
    finally:
        for w in (worker, restarted):
            if w is not None:
                w.stop()
    assert version["labelled"] == version["answers"] == rounds * per
    assert version["accuracy"] == pytest.approx(correct / (rounds * per), abs=1e-12)
    assert version["outcomes"] == {"duplicate": 10} and version["unmatched_labels"] == 0
