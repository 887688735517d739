"""Models trained elsewhere, on the real broker: registered with `streamserve models
register` from their libraries' own files (XGBoost, LightGBM, a jax.export, ONNX) or with
`streamserve.register` (a scikit-learn pipeline), deployed, and every answer checked against
the library's own prediction; a canary from one format to another (XGBoost to ONNX)
judged and promoted by the canary analysis. The same for regressors (``price``: XGBoost,
LightGBM, scikit-learn and ONNX), whose answers are a ``value``; a classifier is refused
beside them."""

from __future__ import annotations

import subprocess
import sys
import time

import jax
import lightgbm
import numpy as np
import onnxruntime
import orjson
import pytest
import xgboost
from jax import export
from sklearn.datasets import load_diabetes
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from agents.kafka.control import read_specs
from models.datasets import load as load_dataset
from pipeline.config import Settings
from streamserve import register
from tests.conftest import registry_keys, start_worker
from tests.integration.clients import collect, produce, run

pytestmark = pytest.mark.integration

IRIS = load_dataset("iris")
LABELS = ("setosa", "versicolor", "virginica")
DIABETES = load_diabetes()  # a regression data set scikit-learn ships
PRICE_FEATURES = list(DIABETES.feature_names)


@pytest.fixture(scope="module")
def fleet(kafka_bootstrap, tmp_path_factory):
    """flowers 1 (XGBoost), 2 (LightGBM), 4 (a jax.export) and 5 (ONNX) registered from
    their files, 3 (a scikit-learn pipeline) from the fitted object; a worker serving
    them; the libraries' own models to check against."""
    folder = tmp_path_factory.mktemp("external")
    root = folder / "registry"
    keys = registry_keys(root)
    env = {"STREAMSERVE_REGISTRY": str(root), **keys}
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
    library |= regressors(folder, env, settings)
    # The canary analysis judges errors and the output distribution here, with bounds
    # that a few hundred requests split by id hash stay within (a regressor's PSI over
    # quartiles at 50 requests an arm: 0.74 at its 99.9th percentile, 2.1 at most in
    # 20,000 draws); its sensitivity, and latency on two loaded cores, are left to the
    # unit tests.
    worker = start_worker(kafka_bootstrap, root, folder / "worker.log", **keys,
                          STREAMSERVE_SAMPLE_RATE="0", STREAMSERVE_CANARY_MIN_REQUESTS="50",
                          STREAMSERVE_CANARY_PROMOTE_AFTER="100",
                          STREAMSERVE_CANARY_MAX_OUTPUT_PSI="3",
                          STREAMSERVE_CANARY_MAX_P99_RATIO="1000")
    try:
        yield worker, {**env, **worker.env}, library
    finally:
        worker.stop()


def regressors(folder, env, settings) -> dict[str, object]:
    """price 1 (XGBoost, from its file with the README's command), 2 (LightGBM's file), 3 (a
    scikit-learn pipeline, from Python) and 4 (ONNX, the kind told), fitted on the diabetes
    data; 5, a classifier of the same features."""
    x, y = DIABETES.data.astype(np.float32), DIABETES.target
    library = {
        "price 1": xgboost.XGBRegressor(n_estimators=30, max_depth=3).fit(x, y),
        "price 2": lightgbm.LGBMRegressor(n_estimators=30, verbose=-1).fit(x, y),
        "price 3": make_pipeline(StandardScaler(), HistGradientBoostingRegressor(max_iter=30))
        .fit(x, y),
        "price 4": OnnxRegressor(LinearRegression().fit(x, y)),
    }
    library["price 1"].get_booster().save_model(folder / "price.ubj")
    library["price 2"].booster_.save_model(folder / "price.txt")
    reference = folder / "price.csv"
    reference.write_text(",".join(PRICE_FEATURES) + "\n"
                         + "".join(",".join(map(str, row)) + "\n" for row in x))
    result = cli(env, "models", "register", "price", str(folder / "price.ubj"), "--features",
                 ",".join(PRICE_FEATURES), "--reference", str(reference))
    assert result.returncode == 0, result.stderr
    assert "a regressor answering value (1 target)" in result.stdout, result.stdout
    register("price", folder / "price.txt", settings=settings, features=PRICE_FEATURES,
             reference=reference)
    register("price", library["price 3"], settings=settings, features=PRICE_FEATURES, reference=x)
    (folder / "price.onnx").write_bytes(library["price 4"].model)
    refused = cli(env, "models", "register", "price", str(folder / "price.onnx"), "--features",
                  ",".join(PRICE_FEATURES))
    assert refused.returncode != 0 and "register it with --kind regressor" in refused.stderr
    register("price", folder / "price.onnx", settings=settings, kind="regressor",
             features=PRICE_FEATURES)
    register("price", LogisticRegression(max_iter=1000).fit(x, y > 140), settings=settings,
             features=PRICE_FEATURES)  # 5: a classifier, never served beside the others
    return library


class OnnxRegressor:
    """x @ w + b as an ONNX graph whose output is skl2onnx's ``variable``."""

    def __init__(self, linear) -> None:
        from onnx import TensorProto, helper, numpy_helper
        w = linear.coef_.astype(np.float32)[:, None]
        b = np.asarray([linear.intercept_], np.float32)
        graph = helper.make_graph(
            [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["variable"])],
            "price", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", len(w)])],
            [helper.make_tensor_value_info("variable", TensorProto.FLOAT, ["N", 1])],
            [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
        self.model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]) \
            .SerializeToString()
        self._session = onnxruntime.InferenceSession(self.model, providers=["CPUExecutionProvider"])

    def predict(self, x):
        return self._session.run(["variable"], {"x": x})[0][:, 0]


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


def cli(env, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agents.cli.main", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def requests(prefix: str, n: int, model: str = "flowers") -> list[bytes]:
    """``n`` requests to ``model`` (flowers: the iris rows; price: the diabetes rows)."""
    data, names = (IRIS.X, IRIS.features) if model == "flowers" else (DIABETES.data, PRICE_FEATURES)
    rows = data.astype(np.float32)
    return [orjson.dumps({"id": f"{prefix}{i}", "model": model, "features": dict(zip(
        names, rows[i % len(rows)].tolist(), strict=True))}) for i in range(n)]


def answers(worker, prefix: str, n: int, model: str = "flowers") -> dict[str, dict]:
    """The predictions of ``n`` requests to ``model``, by id; no dead letter."""
    s = worker.settings
    run(produce(s.bootstrap, s.topics.requests, requests(prefix, n, model)))
    got = run(collect(s.bootstrap, [s.topics.predictions, s.topics.deadletter], expected=n,
                      timeout=90, where=lambda r: r.key is not None and r.key.startswith(prefix.encode())))
    assert all(r.topic == s.topics.predictions for r in got), [r.value for r in got]
    return {r.value["id"]: r.value for r in got}


def shadow_answers(worker, prefix: str, n: int, versions: str) -> dict[str, dict[str, dict]]:
    """Each shadow version's answers to the ``n`` requests of ``prefix``, by id; none failed."""
    s = worker.settings
    shadowed = run(collect(s.bootstrap, [s.topics.shadow], expected=len(versions) * n, timeout=90,
                           where=lambda r: r.key is not None and r.key.startswith(prefix.encode())))
    by_version = {}
    for version in versions:
        by_id = {r.value["id"]: r.value for r in shadowed if r.value["model_version"] == version}
        assert len(by_id) == n and not any("error" in a for a in by_id.values()), version
        by_version[version] = by_id
    return by_version


def wait_for_metric(worker, line: str, what: str, timeout: float = 60) -> None:
    """Until the worker's metrics hold ``line`` (a spec applies within seconds)."""
    deadline = time.monotonic() + timeout
    while line not in worker.metrics():
        assert time.monotonic() < deadline, f"the worker did not {what} in {timeout:.0f} s"
        time.sleep(0.2)


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
        if answers(worker, probe, 1)[f"{probe}0"]["model_version"] == version:
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
    by_id = answers(worker, "f-", 150)  # the whole data set
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
        rounds.append(answers(worker, f"k{round_}-", 150))
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


def assert_values_as_the_library(library, by_id: dict[str, dict], prefix: str) -> None:
    rows = DIABETES.data.astype(np.float32)
    for i in range(len(by_id)):
        answer = by_id[f"{prefix}{i}"]
        expected = float(library[f"price {answer['model_version']}"].predict(rows[i % len(rows)][None])[0])
        [value] = answer["outputs"]
        assert (value["name"], value["shape"], value["datatype"]) == ("value", [1], "FP32")
        assert abs(value["data"][0] - expected) <= 1e-5 * max(1.0, abs(expected)), (answer, expected)


def test_regressors_answer_with_their_librarys_values_and_a_classifier_is_refused_beside_them(fleet):
    """XGBoost stable, LightGBM, scikit-learn and ONNX its shadows: each answer is a value,
    its library's; a classifier version of the same model is refused and serving goes on;
    a canary of regressors is judged and promoted."""
    worker, env, library = fleet
    for command in [("deploy", "price", "1")] + [("shadow", "price", v) for v in "234"]:
        result = cli(env, *command)
        assert result.returncode == 0, result.stderr
    wait_for_metric(worker, 'streamserve_model_loaded{model="price",role="shadow",version="4"} 1.0',
                    "apply the spec")
    by_id = answers(worker, "p-", 150, "price")
    assert {a["model_version"] for a in by_id.values()} == {"1"}
    assert_values_as_the_library(library, by_id, "p-")
    for by_id in shadow_answers(worker, "p-", 150, "234").values():
        assert_values_as_the_library(library, by_id, "p-")
        assert all(isinstance(a["agree"], bool) and a["max_abs_difference"] >= 0
                   for a in by_id.values())

    result = cli(env, "shadow", "price", "5")  # a classifier: no request can go to both
    assert result.returncode == 0, result.stderr
    wait_for_metric(worker, 'streamserve_model_refusals_total{model="price",reason="ValueError",'
                            'version="5"} 1.0', "refuse the classifier")
    assert "price:5 is a classifier, but stable version 1 is a regressor" in worker.log_tail(10**6)
    assert {a["model_version"] for a in answers(worker, "q-", 20, "price").values()} == {"1"}

    # A canary of regressors is judged on their values (binned at stable's quartiles).
    for command in [("shadow", "price", v, "--off") for v in "2345"] + [
            ("canary", "price", "2", "--weight", "0.5")]:
        result = cli(env, *command)
        assert result.returncode == 0, result.stderr
    for round_ in range(10):
        assert_values_as_the_library(library, answers(worker, f"r{round_}-", 150, "price"),
                                     f"r{round_}-")
        spec = run(read_specs(worker.settings))["price"]
        if spec.stable == "2" and spec.canary is None:
            break
    assert (spec.stable, spec.canary) == ("2", None), cli(env, "audit", "--model", "price").stdout
