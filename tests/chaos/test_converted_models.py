"""Models trained elsewhere under hostile input, in both delivery modes: an XGBoost
classifier serves, a logistic regression (converted from scikit-learn) shadows it, and
likewise an XGBoost regressor shadowed by a linear regression; the requests, to either,
mix normal rows with rows at float32's edge (which overflow the linear models' margins
and values into non-finite outputs), poison values and ambiguous JSON (a key twice).
A third model reads an 8x8 image (an ONNX graph of one tensor per row): its requests
come with the shape and data the graph takes, or hostile ones (another shape, nested or
short data, the tabular form, a value past float32). Every request must get exactly one
answer carrying its id (the ledger), every valid one a prediction from the trees or the
graph, the shadows' failures must reach no client and open no breaker, and the worker must
stop on SIGTERM by itself."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orjson
import pytest
import xgboost
from sklearn.linear_model import LinearRegression, LogisticRegression

from models.external import register_model
from pipeline.registry import Registry
from tests.chaos.harness import IRIS, Fleet, at_once, fleets
from tests.chaos.test_crashes import assert_ledger, report_line
from tests.conftest import iris_registry
from tests.unit.test_tensor_inputs import onnx_digits

pytestmark = pytest.mark.integration

EDGE = 3e38  # a valid float32: a finite request the linear model overflows on


@pytest.fixture(scope="module")
def converted(registry_dir, tmp_path_factory):
    """The session's registry with flowers 1 (XGBoost trees) and 2 (a logistic regression),
    and size 1 (XGBoost regression trees) and 2 (a linear regression) of the sum of the
    sepal and petal lengths (weights 1 and 1: float32's edge overflows it), converted and
    signed with the session's key."""
    root, keys = iris_registry(registry_dir, tmp_path_factory.mktemp("converted"))
    key = Path(keys["STREAMSERVE_SIGNING_KEY"])
    x, y = IRIS.X.astype(np.float32), IRIS.y
    for model in (xgboost.XGBClassifier(n_estimators=20, max_depth=3),
                  LogisticRegression(max_iter=1000)):
        register_model(Registry(root), "flowers", model.fit(x, y), features=IRIS.features,
                       labels=IRIS.labels, reference=x, signing_key=key)
    for model in (xgboost.XGBRegressor(n_estimators=20, max_depth=3), LinearRegression()):
        register_model(Registry(root), "size", model.fit(x, x[:, 0] + x[:, 2]),
                       features=IRIS.features, reference=x, signing_key=key)
    weights = np.random.default_rng(0).normal(0, 0.3, (64, 10)).astype(np.float32)
    register_model(Registry(root), "digits", onnx_digits(weights), features=["pixels"],
                   signing_key=key)
    return root


@pytest.fixture
def converted_fleets(kafka_bootstrap, converted, tmp_path):
    yield from fleets(kafka_bootstrap, converted, tmp_path)


def test_converted_models_serve_hostile_input_and_a_failing_shadow_reaches_no_client(
        converted_fleets):
    at_once(converted_fleets, _hostile)


def _requests(run_id: str, n: int) -> tuple[list[bytes], int]:
    """Valid requests, to flowers, size and digits in turn (every fifth at float32's edge,
    every seventh with a poison value; a digit's hostile in one of five ways), and every
    eleventh naming a key twice; and how many must be dead letters."""
    out, malformed = [], 0
    for i in range(n):
        if i % 11 == 10:  # one key twice: parsers disagree on which value counts
            out.append(b'{"id": "%s-%d", "model": "flowers", "model": "iris", "features": {}}'
                       % (run_id.encode(), i))
            malformed += 1
            continue
        if i % 3 == 2:
            image, hostile = _image(f"{run_id}-{i}", i)
            out.append(image)
            malformed += hostile
            continue
        row = IRIS.X[i % len(IRIS.X)].tolist()
        if i % 5 == 4:
            row = [EDGE, -EDGE, EDGE, -EDGE]
        elif i % 7 == 6:
            row[0] = -999.0
        out.append(orjson.dumps({"id": f"{run_id}-{i}", "model": ("flowers", "size")[i % 3],
                                 "features": dict(zip(IRIS.features, row, strict=True))}))
    return out, malformed


def _image(request_id: str, i: int) -> tuple[bytes, bool]:
    """A digits request, and whether it is hostile: every other one is, each way in turn."""
    data = np.random.default_rng(i).uniform(0, 1, 64).tolist()
    tensor = {"name": "pixels", "shape": [1, 8, 8], "datatype": "FP32", "data": data}
    hostile = (i // 3) % 2 == 1
    if hostile:
        tensor = [{**tensor, "shape": [1, 64]},  # another shape
                  {**tensor, "data": [data]},  # nested
                  {**tensor, "data": data[:10]},  # short
                  {**tensor, "data": [*data[:63], 1e39]},  # past float32
                  None][(i // 6) % 5]
        if tensor is None:  # the tabular form
            return orjson.dumps({"id": request_id, "model": "digits",
                                 "features": {"pixels": 1.0}}), True
    return orjson.dumps({"id": request_id, "model_name": "digits", "inputs": [tensor]}), hostile


def _hostile(fleet: Fleet) -> None:
    worker = fleet.start()
    for command in (("deploy", "flowers", "1"), ("shadow", "flowers", "2"),
                    ("deploy", "size", "1"), ("shadow", "size", "2"), ("deploy", "digits", "1")):
        done = subprocess.run([sys.executable, "-m", "agents.cli.main", *command], env=worker.env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
    shadows = [f'streamserve_model_loaded{{model="{m}",role="shadow",version="2"}} 1.0'
               for m in ("flowers", "size")]
    shadows.append('streamserve_model_loaded{model="digits",role="stable",version="1"} 1.0')
    deadline = time.monotonic() + 60
    while not all(s in worker.metrics() for s in shadows):  # specs apply within seconds
        assert time.monotonic() < deadline, "the worker did not apply the spec in 60 s"
        time.sleep(0.2)
    n = 400
    values, malformed = _requests(fleet.run_id, n)
    try:
        fleet.send(values, rate=400)
        report, recovery_s = fleet.settle(n)
        metrics = worker.metrics()
    finally:
        stopped = worker.stop()
    report_line("converted models, hostile input", fleet, n, report, recovery_s)
    assert_ledger(fleet, report)
    assert not report.misnamed, report
    assert report.predictions == n - malformed and report.dead_letters == malformed, report
    assert 'reason="model_error"' not in metrics  # the clients' answers came from the trees
    assert 'streamserve_breaker_state{model="flowers",version="1"} 1.0' not in metrics
    assert 'streamserve_breaker_state{model="size",version="1"} 1.0' not in metrics
    failed = 'streamserve_shadow_agreement_total{agree="unknown",model="size",version="2"}'
    assert failed in metrics, "the linear regression's overflows were not seen"
    assert stopped != -signal.SIGKILL, "the worker did not stop on SIGTERM within 30 s"
