"""Models from XGBoost, LightGBM and scikit-learn, converted to streamserve's architectures
(``models.formats``) and registered (``models.external``): the converted model answers as
the library does, and every file or object it cannot serve is refused before anything is
written, with the reason and the fix."""

import json

import jax
import joblib
import lightgbm
import numpy as np
import pytest
import xgboost
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris
from sklearn.decomposition import PCA
from sklearn.ensemble import (
    ExtraTreesClassifier,
    ExtraTreesRegressor,
    GradientBoostingClassifier,
    GradientBoostingRegressor,
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MinMaxScaler, StandardScaler
from sklearn.svm import SVC, SVR
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

from models.architectures import architecture
from models.external import TOLERANCE, register_model
from models.formats import ConversionError, MissingExtraError, convert_file, convert_object
from models.formats import errors as format_errors
from models.formats.tree_table import Tree, table
from models.runtime import ServingModel
from pipeline.registry import Registry

IRIS = load_iris()
CANCER = load_breast_cancer()
IRIS_NAMES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def data(which):
    return which.data.astype(np.float32), which.target


def served(converted, x):
    return np.asarray(jax.jit(architecture(converted.architecture))(converted.params, x))


MODELS = {
    "xgboost (softprob, or logistic for two classes)": lambda: xgboost.XGBClassifier(
        n_estimators=15, max_depth=3),
    "xgboost multi:softmax": lambda: xgboost.XGBClassifier(n_estimators=15, objective="multi:softmax"),
    "lightgbm multiclass": lambda: lightgbm.LGBMClassifier(n_estimators=15, verbose=-1),
    "logistic regression after scalers": lambda: make_pipeline(
        MinMaxScaler(), StandardScaler(), LogisticRegression(max_iter=1000)),
    "decision tree": lambda: DecisionTreeClassifier(max_depth=4),
    "random forest after a scaler": lambda: make_pipeline(
        StandardScaler(), RandomForestClassifier(n_estimators=8, random_state=0)),
    "extra trees": lambda: ExtraTreesClassifier(n_estimators=8, random_state=0),
    "gradient boosting": lambda: GradientBoostingClassifier(n_estimators=10),
    "hist gradient boosting": lambda: HistGradientBoostingClassifier(max_iter=10),
}


CASES = [pytest.param(name, dataset, id=f"{name}, {kind}") for name in MODELS
         for dataset, kind in ((IRIS, "multi-class"), (CANCER, "binary"))
         if not (kind == "binary" and "softmax" in name)]  # XGBoost: softmax needs 3 classes


@pytest.mark.parametrize("name, dataset", CASES)
def test_a_converted_model_answers_as_its_library_does(name, dataset):
    x, y = data(dataset)
    model = MODELS[name]().fit(x, y)
    converted = convert_object(model)
    assert np.abs(served(converted, x) - converted.predict(x)).max() <= TOLERANCE
    assert converted.width == len(np.unique(y)) and converted.n_features == x.shape[1]
    assert converted.kind == "classifier"


DIABETES = load_diabetes()
REGRESSORS = {
    "xgboost squared error": lambda: xgboost.XGBRegressor(n_estimators=15, max_depth=3),
    "xgboost poisson": lambda: xgboost.XGBRegressor(n_estimators=15, objective="count:poisson"),
    "xgboost two targets": lambda: xgboost.XGBRegressor(n_estimators=10, max_depth=3),
    "lightgbm regression": lambda: lightgbm.LGBMRegressor(n_estimators=15, verbose=-1),
    "lightgbm poisson": lambda: lightgbm.LGBMRegressor(n_estimators=15, objective="poisson",
                                                       verbose=-1),
    "linear regression after scalers": lambda: make_pipeline(MinMaxScaler(), StandardScaler(),
                                                             LinearRegression()),
    "ridge, two targets": lambda: Ridge(alpha=0.5),
    "decision tree": lambda: DecisionTreeRegressor(max_depth=5),
    "decision tree grown to its leaves": lambda: DecisionTreeRegressor(random_state=0),
    "random forest after a scaler, two targets": lambda: make_pipeline(
        StandardScaler(), RandomForestRegressor(n_estimators=8, random_state=0)),
    "extra trees": lambda: ExtraTreesRegressor(n_estimators=8, random_state=0),
    "gradient boosting": lambda: GradientBoostingRegressor(n_estimators=20),
    "hist gradient boosting": lambda: HistGradientBoostingRegressor(max_iter=20),
    "hist gradient boosting, poisson": lambda: HistGradientBoostingRegressor(max_iter=20,
                                                                             loss="poisson"),
}


@pytest.mark.parametrize("name", REGRESSORS)
def test_a_converted_regressor_answers_as_its_library_does(name):
    x = DIABETES.data.astype(np.float32)
    y = DIABETES.target if "two targets" not in name else np.c_[DIABETES.target, x[:, 2] * 100]
    converted = convert_object(REGRESSORS[name]().fit(x, y))
    theirs = converted.predict(x)
    relative = np.abs(served(converted, x) - theirs) / np.maximum(np.abs(theirs), 1)
    assert relative.max() <= TOLERANCE
    assert converted.kind == "regressor" and converted.width == (2 if "two" in name else 1)


def test_an_xgboost_quantile_regressor_answers_one_target_per_quantile_and_vector_leaves_are_refused():
    x, y = DIABETES.data.astype(np.float32), DIABETES.target
    quantiles = xgboost.XGBRegressor(n_estimators=5, objective="reg:quantileerror",
                                     quantile_alpha=np.array([0.2, 0.8])).fit(x, y)
    converted = convert_object(quantiles)
    theirs = converted.predict(x)
    assert converted.width == 2 and theirs.shape == (len(x), 2)
    assert (np.abs(served(converted, x) - theirs) / np.maximum(np.abs(theirs), 1)).max() <= TOLERANCE
    vector = xgboost.XGBRegressor(n_estimators=3, tree_method="hist",
                                  multi_strategy="multi_output_tree").fit(x, np.c_[y, y / 2])
    with pytest.raises(ConversionError, match="vector leaves .* multi_strategy='one_output_per_tree'"):
        convert_object(vector)


def test_missing_values_go_where_the_library_sends_them():
    x, y = data(CANCER)
    holes = x.copy()
    holes[::5, 3] = np.nan
    for model in (xgboost.XGBClassifier(n_estimators=10), lightgbm.LGBMClassifier(n_estimators=10, verbose=-1),
                  HistGradientBoostingClassifier(max_iter=10)):
        converted = convert_object(model.fit(holes, y))
        assert np.abs(served(converted, holes) - converted.predict(holes)).max() <= TOLERANCE


def test_a_row_on_a_threshold_takes_the_librarys_branch():
    """XGBoost goes left on x < t, the others on x <= t: the same float32 input must go the
    library's way at the threshold itself."""
    tree = Tree(feature=np.array([0, 0, 0]), threshold=np.array([1.5, 0, 0]),
                left=np.array([1, -1, -1]), right=np.array([2, -1, -1]),
                missing_left=np.zeros(3, bool), leaf=np.array([[0.0], [1.0], [2.0]]))
    at = np.array([[1.5]], np.float32)
    for strict, leaf in ((False, 1.0), (True, 2.0)):
        params = table([tree], 1, strict=strict)
        assert float(architecture("trees:none")(params, at)[0, 0]) == leaf


def test_files_of_each_format_register_as_signed_versions_that_serve_the_same_answers(tmp_path):
    x, y = data(IRIS)
    xgboost.XGBClassifier(n_estimators=10).fit(x, y).get_booster().save_model(tmp_path / "m.ubj")
    lightgbm.LGBMClassifier(n_estimators=10, verbose=-1).fit(x, y).booster_.save_model(tmp_path / "m.txt")
    joblib.dump(RandomForestClassifier(n_estimators=5).fit(x, y), tmp_path / "m.joblib")
    reference = tmp_path / "reference.csv"
    _write_csv(reference, ["extra", *IRIS_NAMES], np.c_[np.zeros(len(x)), x])
    registry = Registry(tmp_path / "registry")
    for file in ("m.ubj", "m.txt", "m.joblib"):
        manifest = register_model(registry, "flowers", tmp_path / file, features=IRIS_NAMES,
                                  labels=["setosa", "versicolor", "virginica"],
                                  reference=reference, signing_key=tmp_path / "key")
        model = ServingModel.load(registry, "flowers", manifest.version, [1, 8, 64])
        library = convert_file(tmp_path / file).predict(x)
        assert np.abs(model.predict(x) - library).max() <= TOLERANCE
        assert manifest.lineage["check"]["max_difference"] <= TOLERANCE
        assert manifest.reference["prediction"] and len(manifest.reference["features"]) == 4
        assert manifest.inputs.features[2].maximum == 6.9  # ranges from the reference
    assert registry.versions("flowers") == ["1", "2", "3"]
    assert [registry.manifest("flowers", v).hyperparameters["format"] for v in "123"] == [
        "xgboost", "lightgbm", "sklearn"]
    assert (registry.folder("flowers", "3") / "signature.json").exists()


def _write_csv(path, header, rows):
    path.write_text(",".join(header) + "\n" + "\n".join(",".join(map(str, r)) for r in rows) + "\n")


@pytest.mark.parametrize("model, error", [
    (lambda: SVC(), "SVC is not served as the estimator: LogisticRegression"),
    (lambda: SVR(), "SVR is not served as the estimator: .*HistGradientBoostingRegressor are"),
    (lambda: make_pipeline(PCA(2), LogisticRegression()), "PCA is not served before the estimator"),
    (lambda: make_pipeline(MinMaxScaler(clip=True), LogisticRegression()), "clip=False"),
    (lambda: lightgbm.LGBMClassifier(boosting_type="rf", bagging_freq=1, bagging_fraction=0.5,
                                     n_estimators=3, verbose=-1), "boosting='rf'"),
    (lambda: xgboost.XGBClassifier(n_estimators=3, objective="multi:softmax", booster="gblinear"),
     "booster 'gblinear' is not served"),
])
def test_what_cannot_be_served_is_refused_with_the_reason(model, error):
    x, y = data(IRIS)
    with pytest.raises(ConversionError, match=error):
        convert_object(model().fit(x, y))


def test_an_unfitted_model_and_a_foreign_object_are_refused():
    with pytest.raises(ConversionError, match="not fitted: fit it before"):
        convert_object(LogisticRegression())
    with pytest.raises(ConversionError, match="a dict .* is not a model streamserve registers"):
        convert_object({})


def test_categorical_splits_are_refused():
    x, y = data(IRIS)
    # The class itself as a category: the first split isolates class 1 by category.
    booster = xgboost.train({"max_depth": 2, "objective": "binary:logistic"}, xgboost.DMatrix(
        np.c_[x[:, :3], y], label=y == 1, enable_categorical=True,
        feature_types=["q", "q", "q", "c"]), num_boost_round=3)
    with pytest.raises(ConversionError, match="categorical splits"):
        convert_object(booster)


@pytest.mark.parametrize("file, format, error", [
    ("m.json", None, "is not an XGBoost model"),
    ("m.txt", None, "is not a LightGBM model"),
    ("m.joblib", None, "is not a scikit-learn model joblib can load"),
    ("m.onnx", None, "is not an ONNX model onnx .* accepts"),
    ("m.pt", None, "cannot tell the format of m.pt"),
    ("m.bin", "caffe", "unknown model format 'caffe'"),
])
def test_a_corrupt_or_unknown_file_is_refused(tmp_path, file, format, error):
    (tmp_path / file).write_bytes(b"\x00not a model")
    with pytest.raises(ConversionError, match=error):
        convert_file(tmp_path / file, format)


def test_a_missing_library_names_the_command_that_installs_it(monkeypatch):
    def missing(name):
        raise ImportError(name)
    monkeypatch.setattr(format_errors.importlib, "import_module", missing)
    with pytest.raises(MissingExtraError, match=r"pip install -e '\.\[models\]'"):
        format_errors.need("xgboost")


def test_names_and_labels_must_fit_the_model_and_nothing_is_written_when_they_do_not(tmp_path):
    x, y = data(IRIS)
    named = xgboost.XGBClassifier(n_estimators=3).fit(x, y)
    named.get_booster().feature_names = IRIS_NAMES
    registry = Registry(tmp_path)
    cases = [
        (dict(source=named, features=["a", "b", "c", "d"]), "differ from the names the model holds"),
        (dict(source=RandomForestClassifier(2).fit(x, y)), "does not name its 4 features"),
        (dict(source=RandomForestClassifier(2).fit(x, y), features=["a"]), "reads 4 features, but 1"),
        (dict(source=named, labels=["a", "b"]), "names 2 classes .* but the model has 3"),
        (dict(source=named, labels=["a", "a", "b"]), "names a class twice"),
        (dict(source=named, reference=np.zeros((3, 2))), r"rows of 4 features, shape \(n, 4\)"),
    ]
    for arguments, error in cases:
        with pytest.raises(ConversionError, match=error):
            register_model(registry, "m", **arguments)
    bad_csv = tmp_path / "ref.csv"
    _write_csv(bad_csv, IRIS_NAMES[:3], x[:, :3])
    with pytest.raises(ConversionError, match="header lacks petal_width"):
        register_model(registry, "m", named, reference=bad_csv)
    assert registry.models() == []


def test_a_conversion_that_differs_from_the_library_is_not_registered(tmp_path, monkeypatch):
    x, y = data(IRIS)
    model = GradientBoostingClassifier(n_estimators=3).fit(x, y)
    from models.formats import from_sklearn

    real = from_sklearn.convert

    def off_by_a_little(estimator):
        converted = real(estimator)
        converted.params["base"] = converted.params["base"] + [1e-3, 0, 0]  # one class moved
        return converted
    monkeypatch.setattr(from_sklearn, "convert", off_by_a_little)
    registry = Registry(tmp_path)
    with pytest.raises(ConversionError, match=r"differs from scikit-learn .* in the probability of"):
        register_model(registry, "m", model, features=IRIS_NAMES)
    assert registry.models() == []


def test_the_manifest_records_format_library_and_check(tmp_path):
    x, y = data(CANCER)
    manifest = register_model(Registry(tmp_path), "m", LogisticRegression(max_iter=3000).fit(x, y),
                              features=[f"f{i}" for i in range(30)], sensitive=["f3"])
    assert manifest.architecture == "linear:sigmoid"
    assert manifest.hyperparameters["format"] == "sklearn"
    assert manifest.hyperparameters["library"].startswith("scikit-learn ")
    assert manifest.outputs.labels == ("0", "1") and manifest.inputs.sensitive == ("f3",)
    assert json.loads(json.dumps(manifest.lineage["check"]))["rows"] == 512
    assert manifest.reference == {}  # no reference: drift is off


def test_a_regressor_registers_with_a_value_output_and_a_value_drift_reference(tmp_path):
    x, y = DIABETES.data.astype(np.float32), DIABETES.target
    registry = Registry(tmp_path / "registry")
    names = list(DIABETES.feature_names)
    manifest = register_model(registry, "price", GradientBoostingRegressor(n_estimators=10).fit(x, y),
                              features=names, reference=x)
    assert manifest.outputs.is_regressor and manifest.outputs.targets == 1
    assert manifest.reference["prediction"]["name"] == "value"
    assert manifest.reference["prediction"]["kind"] == "numeric"
    model = ServingModel.load(registry, "price", manifest.version, [1, 8, 64])
    assert model.predict(x[:5]).shape == (5, 1)
    again = registry.manifest("price", manifest.version)  # the manifest reads back alike
    assert again.outputs == manifest.outputs and again.outputs.to_json() == {"targets": 1}
    linear = _onnx_linear(np.ones((10, 1), np.float32))
    cases = [
        (dict(source=LinearRegression().fit(x, y), labels=["a", "b"]), "the model is a regressor"),
        (dict(source=LinearRegression().fit(x, y), kind="classifier"),
         "--kind classifier, but the sklearn model is a regressor"),
        (dict(source=linear), "gives 1 column per row, .* register it with --kind regressor"),
        (dict(source=linear, kind="ranker"), "--kind 'ranker' is not a kind of model"),
    ]
    for arguments, error in cases:
        with pytest.raises(ConversionError, match=error):
            register_model(registry, "other", features=names, **arguments)
    assert registry.models() == ["price"]
    onnx = register_model(registry, "other", linear, features=names, kind="regressor")
    assert onnx.outputs.targets == 1 and onnx.architecture == "onnx"


def _onnx_linear(weights):
    """x @ w as an ONNX graph with skl2onnx's output name for a regressor, ``variable``."""
    from onnx import TensorProto, helper, numpy_helper
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["variable"])], "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", weights.shape[0]])],
        [helper.make_tensor_value_info("variable", TensorProto.FLOAT, ["N", weights.shape[1]])],
        [numpy_helper.from_array(weights, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _export(f, *specs):
    from jax import export
    return export.export(jax.jit(f))(*specs).serialize()


def _mlp(params, x):
    return jax.nn.softmax(jax.nn.relu(x @ params["w0"] + params["b0"]) @ params["w1"] + params["b1"])


def _mlp_params(seed=0):
    rng = np.random.default_rng(seed)
    return {"w0": rng.normal(size=(4, 8)).astype(np.float32), "b0": np.zeros(8, np.float32),
            "w1": rng.normal(size=(8, 3)).astype(np.float32), "b1": np.zeros(3, np.float32)}


def _specs(params, features=4, batch="b"):
    from jax import export
    shape = (*export.symbolic_shape(batch), features) if isinstance(batch, str) else (batch, features)
    return ({k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in params.items()},
            jax.ShapeDtypeStruct(shape, np.float32))


def test_a_jax_export_is_served_as_the_function_it_is(tmp_path):
    """How Flax, Equinox or plain JAX models arrive: jax.export of f(params, x), or of f(x)
    with the parameters baked in; the worker never imports the user's code."""
    x, _ = data(IRIS)
    params = _mlp_params()
    (tmp_path / "f.bin").write_bytes(_export(_mlp, *_specs(params)))
    np.savez(tmp_path / "params.npz", **params)
    baked = {k: jax.numpy.asarray(v) for k, v in params.items()}
    (tmp_path / "g.bin").write_bytes(_export(lambda x: _mlp(baked, x), _specs(params)[1]))
    registry = Registry(tmp_path / "registry")
    for file, arrays in (("f.bin", tmp_path / "params.npz"), ("g.bin", None)):
        manifest = register_model(registry, "mlp", tmp_path / file, format="jax", params=arrays,
                                  features=IRIS_NAMES, signing_key=tmp_path / "key")
        assert manifest.architecture == "exported"
        model = ServingModel.load(registry, "mlp", manifest.version, [1, 8, 64])
        assert np.abs(model.predict(x) - np.asarray(_mlp(params, x))).max() <= 1e-6


def test_a_jax_function_is_exported_at_registration_with_its_row_shape(tmp_path):
    """The Python API takes the function itself (a Flax module's apply, say) with its
    params and the shape of one row; it is exported there, never imported by a worker."""
    x, _ = data(IRIS)
    params = _mlp_params()
    registry = Registry(tmp_path / "registry")
    manifest = register_model(registry, "mlp", _mlp, params=params, input_shape=(4,),
                              features=IRIS_NAMES)
    assert manifest.architecture == "exported" and manifest.hyperparameters["format"] == "jax"
    model = ServingModel.load(registry, "mlp", manifest.version, [1, 8, 64])
    assert np.abs(model.predict(x) - np.asarray(_mlp(params, x))).max() <= 1e-6
    with pytest.raises(ConversionError, match=r"cannot be exported for float32 rows of shape \[5\]"):
        register_model(registry, "mlp", _mlp, params=params, input_shape=(5,), features=IRIS_NAMES)
    with pytest.raises(ConversionError, match="input_shape is for a JAX function"):
        register_model(registry, "mlp", LogisticRegression().fit(x, IRIS.target), input_shape=(4,))
    assert registry.versions("mlp") == ["1"]


@pytest.mark.parametrize("case, error", [
    ("fixed batch", "symbolic batch and a fixed row shape"),
    ("int rows", "takes x as int32: export it for float32 rows"),
    ("no params file", "takes 4 parameter arrays, and --params holds 0"),
    ("other shapes", r"--params w0 is float32\[5, 8\], but the exported function takes float32\[4, 8\]"),
    ("two outputs", r"must return one float32 array, shape \(b, classes\)"),
    ("not an export", "is not a function jax.export can read"),
])
def test_an_export_streamserve_cannot_serve_is_refused(tmp_path, case, error):
    params = _mlp_params()
    np.savez(tmp_path / "params.npz", **params)
    function, specs, arrays = _mlp, _specs(params), tmp_path / "params.npz"
    if case == "fixed batch":
        specs = _specs(params, batch=8)
    elif case == "int rows":
        specs = (specs[0], jax.ShapeDtypeStruct(specs[1].shape, np.int32))
    elif case == "no params file":
        arrays = None
    elif case == "other shapes":
        np.savez(tmp_path / "params.npz", **{**params, "w0": np.zeros((5, 8), np.float32)})
    elif case == "two outputs":
        function = lambda p, x: (_mlp(p, x), x)  # noqa: E731
    (tmp_path / "f.bin").write_bytes(b"junk" if case == "not an export"
                                     else _export(function, *specs))
    registry = Registry(tmp_path / "registry")
    with pytest.raises(ConversionError, match=error):
        register_model(registry, "m", tmp_path / "f.bin", format="jax", params=arrays,
                       features=IRIS_NAMES)
    assert registry.models() == []


def _onnx_logistic(weights, bias, *, output="probabilities", batch="N", features=4):
    """softmax(x @ w + b) as an ONNX graph, as an exporter writes it."""
    from onnx import TensorProto, helper, numpy_helper
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["z"]),
         helper.make_node("Softmax", ["z"], [output], axis=1)], "logistic",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, features])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, [batch, weights.shape[1]])],
        [numpy_helper.from_array(weights, "w"), numpy_helper.from_array(bias, "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_an_onnx_model_is_served_by_onnxruntime_as_it_is(tmp_path):
    x, y = data(IRIS)
    logistic = LogisticRegression(max_iter=1000).fit(x, y)
    proto = _onnx_logistic(logistic.coef_.T.astype(np.float32), logistic.intercept_.astype(np.float32))
    (tmp_path / "m.onnx").write_bytes(proto.SerializeToString())
    registry = Registry(tmp_path / "registry")
    for source in (tmp_path / "m.onnx", proto):
        manifest = register_model(registry, "flowers", source, features=IRIS_NAMES,
                                  labels=["setosa", "versicolor", "virginica"])
        assert manifest.architecture == "onnx"
        assert manifest.hyperparameters["library"].startswith("onnxruntime ")
        model = ServingModel.load(registry, "flowers", manifest.version, [1, 8, 64])
        assert model.compiles == 0
        assert np.abs(model.predict(x) - logistic.predict_proba(x)).max() <= 1e-5


@pytest.mark.parametrize("proto, error", [
    (lambda: _onnx_logistic(np.zeros((4, 3), np.float32), np.zeros(3, np.float32), output="y",
                            features=4).SerializeToString()[:40], "is not an ONNX model"),
    (lambda: _onnx_logistic(np.zeros((4, 3), np.float32), np.zeros(3, np.float32),
                            batch=8).SerializeToString(), "export it with a dynamic batch"),
])
def test_an_onnx_model_streamserve_cannot_serve_is_refused(tmp_path, proto, error):
    (tmp_path / "m.onnx").write_bytes(proto())
    registry = Registry(tmp_path / "registry")
    with pytest.raises(ConversionError, match=error):
        register_model(registry, "m", tmp_path / "m.onnx", features=IRIS_NAMES)
    assert registry.models() == []
