"""Models that read one tensor per row (an 8x8 image): the schema, the request form (Open
Inference Protocol only, its shape checked), the client's encoding, and ONNX graphs and
JAX exports registered and served as their libraries run them."""

import re

import jax
import numpy as np
import orjson
import pytest
from jax import export
from sklearn.datasets import load_digits

from models.external import register_model
from models.formats import ConversionError
from models.runtime import ServingModel
from pipeline.catalog import Catalog
from pipeline.client import PredictRequest
from pipeline.decode import Request, decode
from pipeline.registry import Registry
from pipeline.rejections import Reason, Rejection
from pipeline.routing import DeploymentSpec
from pipeline.schema import Feature, InputSchema, SchemaError

PIXELS = InputSchema((Feature("pixels", shape=(8, 8)),))
CATALOG = Catalog({"digits": {"1": PIXELS}}, {"digits": DeploymentSpec("digits", "1")})
DIGITS = load_digits()  # 8x8 images scikit-learn ships
IMAGES = (DIGITS.images / 16).astype(np.float32)


def oip(shape, data, **extra):
    return orjson.dumps({"id": "r-1", "model_name": "digits", "inputs": [
        {"name": "pixels", "shape": shape, "datatype": "FP32", "data": data}], **extra})


def test_a_tensor_schema_is_one_feature_with_a_shape_kept_in_the_manifest():
    assert len(PIXELS) == 64 and PIXELS.shape == (8, 8) and PIXELS.tensor.name == "pixels"
    assert PIXELS.describe() == "one tensor 'pixels' of shape [8, 8]"
    assert InputSchema.from_json(PIXELS.to_json()) == PIXELS
    assert Feature("x").to_json() == {"name": "x", "dtype": "float32", "minimum": None,
                                      "maximum": None}  # named numbers keep their bytes
    assert PIXELS.fields([0.5] * 64) == {"pixels": [0.5] * 64}
    with pytest.raises(SchemaError, match="one tensor or named numbers, not both"):
        InputSchema((Feature("pixels", shape=(8, 8)), Feature("age")))
    with pytest.raises(SchemaError, match="whole numbers of at least 1"):
        Feature("pixels", shape=(0, 8))


def test_a_tensor_request_is_its_numbers_flat_and_every_other_form_is_refused():
    image = IMAGES[0].reshape(-1).tolist()
    assert decode(oip([1, 8, 8], image), CATALOG, 65536) == Request("r-1", "digits", "1", image)
    cases = [
        (orjson.dumps({"id": "r-1", "model": "digits", "features": {"pixels": 1.0}}),
         Reason.SCHEMA_MISMATCH, 'send the Open Inference Protocol form .*"shape": \\[1, 8, 8\\]'),
        (oip([1, 64], image), Reason.SCHEMA_MISMATCH, r"must have shape \[1, 8, 8\] with 64 numbers"),
        (oip([1, 8, 8], image[:63]), Reason.SCHEMA_MISMATCH, "got shape \\[1, 8, 8\\] with 63"),
        (oip([1, 8, 8], [image]), Reason.SCHEMA_MISMATCH, "with 64 numbers flat"),
        (oip([1, 8, 8], [*image[:63], "x"]), Reason.SCHEMA_MISMATCH, "must be a number"),
        (oip([1, 8, 8], [*image[:63], 1e39]), Reason.NON_FINITE, "not a finite float32"),
        (oip("big", image), Reason.SCHEMA_MISMATCH, "got shape the string 'big'"),
        (orjson.dumps({"id": "r-1", "model_name": "digits", "inputs": [
            {"name": "a", "shape": [1, 8, 8], "datatype": "FP32", "data": image}] * 2}),
         Reason.SCHEMA_MISMATCH, "reads one tensor, 'pixels'; the request has 2 inputs"),
    ]
    bounded = decode(oip([1, 8, 8], image), CATALOG, 65536, max_features=10)
    assert bounded.reason is Reason.TOO_MANY_FEATURES and "must raise" in bounded.error
    for raw, reason, error in cases:
        result = decode(raw, CATALOG, 65536)
        assert isinstance(result, Rejection) and result.reason is reason, (raw[:80], result)
        assert re.search(error, result.error), result.error


def test_the_client_sends_a_tensor_in_the_open_inference_protocol_form():
    request = PredictRequest("digits", {"pixels": IMAGES[0]}, version="1", id="r-1")
    body = orjson.loads(request.encode())
    assert body["model_name"] == "digits" and body["model_version"] == "1"
    assert body["inputs"][0]["shape"] == [1, 8, 8] and len(body["inputs"][0]["data"]) == 64
    decoded = decode(request.encode(), CATALOG, 65536)
    assert isinstance(decoded, Request) and np.allclose(decoded.row, IMAGES[0].reshape(-1))
    with pytest.raises(ValueError, match="one tensor or named numbers, not both"):
        PredictRequest("digits", {"pixels": IMAGES[0], "age": 3.0})
    with pytest.raises(ValueError, match="finite numbers"):
        PredictRequest("digits", {"pixels": np.full((8, 8), np.nan)})


def onnx_digits(weights):
    """softmax(reshape(x, (N, 64)) @ w) as an ONNX graph of input (N, 8, 8)."""
    from onnx import TensorProto, helper, numpy_helper
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["image", "flat_shape"], ["flat"]),
         helper.make_node("MatMul", ["flat", "w"], ["z"]),
         helper.make_node("Softmax", ["z"], ["probabilities"], axis=1)], "digits",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 8, 8])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(weights, "w"),
         numpy_helper.from_array(np.array([-1, 64], np.int64), "flat_shape")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def jax_digits(weights) -> bytes:
    def f(params, x):
        return jax.nn.softmax(x.reshape(x.shape[0], 64) @ params["w"], axis=-1)
    x = jax.ShapeDtypeStruct((*export.symbolic_shape("b"), 8, 8), np.float32)
    params = {"w": jax.ShapeDtypeStruct(weights.shape, weights.dtype)}
    return bytes(export.export(jax.jit(f))(params, x).serialize())


def test_onnx_and_jax_tensor_models_register_and_serve_as_their_libraries_do(tmp_path):
    weights = np.random.default_rng(0).normal(0, 0.1, (64, 10)).astype(np.float32)
    expected = np.asarray(jax.nn.softmax(IMAGES.reshape(-1, 64) @ weights, axis=-1))
    registry = Registry(tmp_path / "registry")
    onnx = register_model(registry, "digits", onnx_digits(weights), features=["pixels"])
    (tmp_path / "f.jax").write_bytes(jax_digits(weights))
    np.savez(tmp_path / "params.npz", w=weights)
    exported = register_model(registry, "digits", tmp_path / "f.jax", format="jax",
                              params=tmp_path / "params.npz", features=["pixels"])
    for manifest in (onnx, exported):
        assert manifest.inputs == PIXELS and manifest.reference == {}  # drift is off
        model = ServingModel.load(registry, "digits", manifest.version, [1, 8, 64])
        assert np.abs(model.predict(IMAGES.reshape(-1, 64)) - expected).max() <= 1e-5
    named = register_model(registry, "digits", onnx_digits(weights))
    assert named.inputs.tensor.name == "image"  # the graph's own input name
    cases = [
        (dict(features=["a", "b"]), "give --features one name for it"),
        (dict(reference=np.zeros((3, 64))), "--reference .* does not apply"),
    ]
    for arguments, error in cases:
        with pytest.raises(ConversionError, match=error):
            register_model(registry, "other", onnx_digits(weights), **arguments)
    assert registry.models() == ["digits"]
