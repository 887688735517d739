from dataclasses import replace

import jax.monitoring
import numpy as np
import pytest

from models import (
    ServingModel,
    UnknownArchitectureError,
    UnknownDatasetError,
    UnknownModelError,
    architecture,
    load,
    mlp,
    train_and_register,
)
from models.train import train
from pipeline.batching import buckets_for
from pipeline.registry import Registry
from pipeline.schema import OutputSchema

BUCKETS = buckets_for(64)


@pytest.fixture(scope="module")
def iris():
    return train("iris", seed=0)


@pytest.fixture(scope="module")
def breast_cancer():
    return train("breast_cancer", seed=0)


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    return Registry(tmp_path_factory.mktemp("registry"))


@pytest.fixture(scope="module")
def served(registry):
    manifest = train_and_register("iris", registry, seed=0)
    return ServingModel.load(registry, "iris", manifest.version, BUCKETS)


def rows(n):
    x = load("iris").X
    return np.resize(x, (n, x.shape[1])) + np.float32(0.01) * np.arange(n, dtype=np.float32)[:, None]


def test_iris_is_accurate_and_keeps_the_documented_names(iris):
    assert iris.draft.metrics["test_accuracy"] >= 0.9
    assert iris.draft.inputs.names == ("sepal_length", "sepal_width", "petal_length", "petal_width")
    assert iris.draft.outputs.labels == ("setosa", "versicolor", "virginica")
    sepal_length = iris.draft.inputs.features[0]
    assert 4.0 <= sepal_length.minimum < sepal_length.maximum <= 8.0


def test_breast_cancer_is_accurate(breast_cancer):
    assert breast_cancer.draft.metrics["test_accuracy"] >= 0.93
    assert len(breast_cancer.draft.inputs) == 30
    assert breast_cancer.draft.inputs.names[0] == "mean_radius"
    assert breast_cancer.draft.outputs.labels == ("malignant", "benign")


def test_the_same_seed_gives_the_same_model(iris, registry, served):
    stored = registry.load_params("iris", served.version)
    assert stored.keys() == iris.params.keys()
    for name, array in iris.params.items():
        np.testing.assert_array_equal(stored[name], array)
    assert served.manifest.metrics == iris.draft.metrics
    assert served.manifest.lineage["data_fingerprint"] == iris.draft.lineage["data_fingerprint"]


def test_another_seed_gives_another_model(iris):
    other = train("iris", seed=1)
    assert not np.array_equal(other.params["w0"], iris.params["w0"])
    assert other.draft.lineage["seed"] == 1


def test_registry_round_trip_of_a_trained_model(iris, registry, served):
    manifest = registry.manifest("iris", served.version)
    assert manifest == served.manifest
    assert manifest.architecture == "mlp"
    assert manifest.inputs == iris.draft.inputs
    assert manifest.hyperparameters["hidden"] == [16]
    assert set(manifest.lineage) >= {"data_fingerprint", "seed", "code_revision", "created_at", "created_by"}


@pytest.mark.parametrize("n", [1, 3, 64, 100])
def test_predict_equals_apply(served, iris, n):
    x = rows(n)
    probabilities = served.predict(x)
    assert probabilities.shape == (n, 3) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities, np.asarray(mlp(iris.params, x)), rtol=0, atol=1e-6)


def test_serving_never_compiles(served):
    assert served.compiles == len(BUCKETS)
    compiled = []

    def listen(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiled.append(event)

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        for n in (1, 2, 5, 17, 64, 65, 130):
            served.predict(rows(n))
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    assert compiled == []
    assert served.compiles == len(BUCKETS)


def test_the_watched_prediction_is_the_most_probable_class(served):
    x = load("iris").X[[0, 60, 140]]
    outputs = served.manifest.outputs
    assert [outputs.labels[i] for i in outputs.watched(served.predict(x))] == \
        ["setosa", "versicolor", "virginica"]


def test_predict_checks_the_feature_count(served):
    with pytest.raises(ValueError, match=r"rows of 4 features"):
        served.predict(np.zeros((2, 5), np.float32))


def test_parameters_that_do_not_fit_the_manifest_are_refused(served, iris, breast_cancer):
    with pytest.raises(ValueError, match="do not fit architecture 'mlp' with 4 input features"):
        ServingModel(served.manifest, breast_cancer.params, BUCKETS)
    two_labels = replace(served.manifest, outputs=OutputSchema(("a", "b")))
    with pytest.raises(ValueError, match=r"outputs float32\[1, 3\] .* lists 2 labels"):
        ServingModel(two_labels, iris.params, BUCKETS)


def test_unknown_names_list_the_known_ones():
    with pytest.raises(UnknownModelError, match="iris, breast_cancer, synthetic32"):
        train("mnist")
    with pytest.raises(UnknownArchitectureError, match="known: mlp"):
        architecture("resnet")
    with pytest.raises(UnknownDatasetError, match="iris"):
        load("mnist")


def test_training_stores_drift_reference_statistics(breast_cancer, registry, served):
    from pipeline.drift import FeatureReference, compare, count

    reference = breast_cancer.draft.reference
    features = [FeatureReference.from_json(r) for r in reference["features"]]
    assert [f.name for f in features] == list(breast_cancer.draft.inputs.names)
    n_train = breast_cancer.draft.lineage["n_train"]
    assert all(f.n == n_train for f in features)
    prediction = FeatureReference.from_json(reference["prediction"])
    assert prediction.n == n_train and prediction.vocabulary == (0.0, 1.0)  # class indices
    # The training data scores as no drift at all against its own reference.
    data = load("breast_cancer")
    mean_radius = count(features[0], data.X[:, 0])
    assert compare(features[0].counts, mean_radius.bins).psi < 0.05
    # And the statistics survive registration.
    stored = registry.manifest("iris", served.version).reference
    assert len(stored["features"]) == 4 and stored["prediction"]["name"] == "label"
