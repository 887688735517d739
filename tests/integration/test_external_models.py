"""Classifiers trained elsewhere, on the real broker: registered with `streamserve models
register` from their libraries' own files (XGBoost, LightGBM, a jax.export, ONNX) or with
`streamserve.register` (a scikit-learn pipeline), deployed, and every answer checked against
the library's own prediction; a canary from one format to another (XGBoost to ONNX)
judged and promoted by the canary analysis."""

from __future__ import annotations

import time

import jax
import lightgbm
import numpy as np
import onnxruntime
import pytest
import xgboost
from jax import export
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from agents.kafka.control import read_specs
from models.datasets import load as load_dataset
from pipeline.config import Settings
from streamserve import register
from tests.integration.clients import run
from tests.integration.external import (
    answers,
    cli,
    registry_env,
    serving,
    shadow_answers,
    tabular,
    wait_for_metric,
)

pytestmark = pytest.mark.integration

IRIS = load_dataset("iris")
LABELS = ("setosa", "versicolor", "virginica")


@pytest.fixture(scope="module")
def fleet(kafka_bootstrap, tmp_path_factory):
    """flowers 1 (XGBoost), 2 (LightGBM), 4 (a jax.export) and 5 (ONNX) registered from
    their files, 3 (a scikit-learn pipeline) from the fitted object; a worker serving
    them; the libraries' own models to check against."""
    folder = tmp_path_factory.mktemp("external")
    env = registry_env(folder)
    x, y = IRIS.X.astype(np.float32), IRIS.y
    library = {
        "1": xgboost.XGBClassifier(n_estimators=30, max_depth=3).fit(x, y),
        "2": lightgbm.LGBMClassifier(n_estimators=30, verbose=-1).fit(x, y),
        "3": make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x, y),
    }
    library["1"].get_booster().save_model(folder / "flowers.json")
    library["2"].booster_.save_model(folder / "flowers.txt")
    reference = folder / "flowers.csv"
    reference.write_text(",".join(IRIS.features) + "\n"
                         + "".join(",".join(map(str, row)) + "\n" for row in x))
    # The README's command for the first; the same code from Python for the others.
    result = cli(env, "models", "register", "flowers", str(folder / "flowers.json"), "--features",
                 ",".join(IRIS.features), "--labels", ",".join(LABELS), "--reference", str(reference))
    assert result.returncode == 0, result.stderr
    assert "signed by key" in result.stdout
    settings = Settings.from_env(env)
    register("flowers", folder / "flowers.txt", settings=settings, features=IRIS.features,
             labels=LABELS, reference=reference)
    register("flowers", library["3"], settings=settings, features=IRIS.features,
             labels=LABELS, reference=x)
    # 4: a JAX function, exported with its parameters apart (a Flax model arrives so)
    library["4"] = JaxModel(library["3"])
    (folder / "flowers.jax").write_bytes(library["4"].exported())
    np.savez(folder / "params.npz", **library["4"].params)
    register("flowers", folder / "flowers.jax", settings=settings, params=folder / "params.npz",
             features=IRIS.features, labels=LABELS)
    # 5: the same weights as an ONNX graph, run by onnxruntime
    library["5"] = OnnxModel(library["4"].params)
    (folder / "flowers.onnx").write_bytes(library["5"].model)
    register("flowers", folder / "flowers.onnx", settings=settings, features=IRIS.features,
             labels=LABELS, reference=reference)
    worker = serving(kafka_bootstrap, folder, env)
    try:
        yield worker, {**env, **worker.env}, library
    finally:
        worker.stop()


class JaxModel:
    """softmax(x @ w + b) in JAX, its weights those of a fitted scaled logistic regression."""

    def __init__(self, pipeline) -> None:
        scaler, logistic = pipeline[0], pipeline[-1]
        w = logistic.coef_.T / scaler.scale_[:, None]
        self.params = {"w": w.astype(np.float32),
                       "b": (logistic.intercept_ - scaler.mean_ @ w).astype(np.float32)}

    @staticmethod
    def apply(params, x):
        return jax.nn.softmax(x @ params["w"] + params["b"], axis=-1)

    def exported(self) -> bytes:
        specs = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in self.params.items()}
        x = jax.ShapeDtypeStruct((*export.symbolic_shape("b"), len(IRIS.features)), np.float32)
        return bytes(export.export(jax.jit(self.apply))(specs, x).serialize())

    def predict_proba(self, x):
        return np.asarray(self.apply(self.params, x))


class OnnxModel:
    """softmax(x @ w + b) as an ONNX graph, and onnxruntime's own answers to check with."""

    def __init__(self, params) -> None:
        from onnx import TensorProto, helper, numpy_helper
        graph = helper.make_graph(
            [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["z"]),
             helper.make_node("Softmax", ["z"], ["probabilities"], axis=1)], "flowers",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", len(IRIS.features)])],
            [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", len(LABELS)])],
            [numpy_helper.from_array(params["w"], "w"), numpy_helper.from_array(params["b"], "b")])
        self.model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]) \
            .SerializeToString()
        self._session = onnxruntime.InferenceSession(self.model, providers=["CPUExecutionProvider"])

    def predict_proba(self, x):
        return self._session.run(["probabilities"], {"x": x})[0]


def requests(prefix: str, n: int) -> list[bytes]:
    return tabular(prefix, n, "flowers", IRIS.features, IRIS.X.astype(np.float32))


def assert_as_the_library(library, by_id: dict[str, dict], prefix: str) -> None:
    rows = IRIS.X.astype(np.float32)
    for i in range(len(by_id)):
        answer = by_id[f"{prefix}{i}"]
        expected = library[answer["model_version"]].predict_proba(rows[i % len(rows)][None])[0]
        served = np.array(answer["outputs"][0]["data"])
        assert np.abs(served - expected).max() <= 1e-5, (answer, expected)
        assert answer["outputs"][1]["data"] == [LABELS[int(expected.argmax())]]


def wait_until_served(worker, version: str, prefix: str, timeout: float = 60) -> None:
    """Send a probe until the worker answers from ``version`` (a spec applies in seconds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        probe = f"{prefix}probe{int(time.monotonic() * 1000)}-"
        if answers(worker, probe, requests(probe, 1))[f"{probe}0"]["model_version"] == version:
            return
    raise AssertionError(f"the worker did not serve flowers {version} within {timeout:.0f} s")


def test_each_format_deployed_answers_as_its_library_does(fleet):
    """XGBoost stable, the other four formats its shadows: one pass of the data set, and
    every answer, the client's and each shadow's, is its own library's."""
    worker, env, library = fleet
    commands = [("deploy", "flowers", "1")] + [("shadow", "flowers", v) for v in "2345"]
    for command in commands:
        result = cli(env, *command)
        assert result.returncode == 0, result.stderr
    wait_for_metric(worker, 'streamserve_model_loaded{model="flowers",role="shadow",version="5"} 1.0',
                    "apply the spec")
    by_id = answers(worker, "f-", requests("f-", 150))  # the whole data set
    assert {a["model_version"] for a in by_id.values()} == {"1"}
    assert_as_the_library(library, by_id, "f-")
    for by_id in shadow_answers(worker, "f-", 150, "2345").values():
        assert_as_the_library(library, by_id, "f-")


def test_a_canary_from_xgboost_to_onnx_is_judged_and_promoted(fleet):
    worker, env, library = fleet
    for command in (("deploy", "flowers", "1"), ("shadow", "flowers", "5", "--off")):
        result = cli(env, *command)
        assert result.returncode == 0, result.stderr
    wait_until_served(worker, "1", "c-")
    result = cli(env, "canary", "flowers", "5", "--weight", "0.5")
    assert result.returncode == 0, result.stderr
    rounds = []
    for round_ in range(10):  # traffic until the analysis promotes the canary
        rounds.append(answers(worker, f"k{round_}-", requests(f"k{round_}-", 150)))
        spec = run(read_specs(worker.settings))["flowers"]
        if spec.stable == "5" and spec.canary is None:
            break
    assert (spec.stable, spec.canary) == ("5", None), spec
    routes = {(a["model_version"], a["parameters"]["route"]) for r in rounds for a in r.values()}
    assert ("5", "canary") in routes and ("1", "stable") in routes
    for round_, by_id in enumerate(rounds):
        assert_as_the_library(library, by_id, f"k{round_}-")
    deadline = time.monotonic() + 30  # the worker audits its promotion after writing it
    while "auto_promote" not in (audit := cli(env, "audit", "--model", "flowers").stdout):
        assert time.monotonic() < deadline, audit
        time.sleep(0.5)
