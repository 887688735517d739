"""Regressors trained elsewhere, on the real broker (``price``, on the diabetes data
scikit-learn ships: XGBoost, LightGBM, scikit-learn and ONNX): every answer is a
``value``, its library's; a classifier is refused beside them; a canary of regressors is
judged on their values and promoted."""

from __future__ import annotations

import lightgbm
import numpy as np
import onnxruntime
import pytest
import xgboost
from sklearn.datasets import load_diabetes
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from agents.kafka.control import read_specs
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

DIABETES = load_diabetes()
PRICE_FEATURES = list(DIABETES.feature_names)


@pytest.fixture(scope="module")
def fleet(kafka_bootstrap, tmp_path_factory):
    folder = tmp_path_factory.mktemp("regressors")
    env = registry_env(folder)
    library = regressors(folder, env, Settings.from_env(env))
    worker = serving(kafka_bootstrap, folder, env)
    try:
        yield worker, {**env, **worker.env}, library
    finally:
        worker.stop()


def requests(prefix: str, n: int) -> list[bytes]:
    return tabular(prefix, n, "price", PRICE_FEATURES, DIABETES.data.astype(np.float32))


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
    by_id = answers(worker, "p-", requests("p-", 150))
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
    assert {a["model_version"] for a in answers(worker, "q-", requests("q-", 20)).values()} == {"1"}

    # A canary of regressors is judged on their values (binned at stable's quartiles).
    for command in [("shadow", "price", v, "--off") for v in "2345"] + [
            ("canary", "price", "2", "--weight", "0.5")]:
        result = cli(env, *command)
        assert result.returncode == 0, result.stderr
    for round_ in range(10):
        assert_values_as_the_library(library, answers(worker, f"r{round_}-", requests(f"r{round_}-", 150)),
                                     f"r{round_}-")
        spec = run(read_specs(worker.settings))["price"]
        if spec.stable == "2" and spec.canary is None:
            break
    assert (spec.stable, spec.canary) == ("2", None), cli(env, "audit", "--model", "price").stdout
