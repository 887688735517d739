"""Models of one tensor per row trained elsewhere, on the real broker (``digits``, the 8x8
images scikit-learn ships: an ONNX graph and a JAX export of the same weights), sent the
Open Inference Protocol form by the client library; what else is sent is a dead letter
that says what to send."""

from __future__ import annotations

import jax
import numpy as np
import onnxruntime
import orjson
import pytest
from sklearn.datasets import load_digits

from pipeline.client import PredictRequest
from tests.integration.external import (
    cli,
    outputs,
    registry_env,
    serving,
    shadow_answers,
    wait_for_metric,
)
from tests.unit.test_tensor_inputs import jax_digits, onnx_digits

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fleet(kafka_bootstrap, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tensors")
    env = registry_env(folder)
    library = tensor_models(folder, env)
    worker = serving(kafka_bootstrap, folder, env)
    try:
        yield worker, {**env, **worker.env}, library
    finally:
        worker.stop()


def tensor_models(folder, env) -> dict[str, object]:
    """digits 1 (an ONNX graph of input (N, 8, 8), registered with the README's command)
    and 2 (the same weights as a JAX export of x (b, 8, 8))."""
    weights = np.random.default_rng(0).normal(0, 0.3, (64, 10)).astype(np.float32)
    (folder / "digits.onnx").write_bytes(onnx_digits(weights).SerializeToString())
    (folder / "digits.jax").write_bytes(jax_digits(weights))
    np.savez(folder / "digits.npz", w=weights)
    for args in (("digits.onnx",), ("digits.jax", "--format", "jax", "--params",
                                    str(folder / "digits.npz"))):
        result = cli(env, "models", "register", "digits", str(folder / args[0]), *args[1:],
                     "--features", "pixels")
        assert result.returncode == 0, result.stderr
        assert "one tensor 'pixels' of shape [8, 8]" in result.stdout, result.stdout
    session = onnxruntime.InferenceSession(folder.joinpath("digits.onnx").read_bytes(),
                                           providers=["CPUExecutionProvider"])
    return {"digits 1": lambda x: session.run(["probabilities"], {"image": x})[0],
            "digits 2": lambda x: np.asarray(jax.nn.softmax(x.reshape(len(x), 64) @ weights))}


def test_tensor_models_answer_the_open_inference_protocol_form_as_their_libraries_do(fleet):
    """digits 1 (ONNX) stable and 2 (a JAX export) its shadow, sent 8x8 images by the client
    library's encoding; the tabular form and a wrong shape are dead letters that say what
    to send."""
    worker, env, library = fleet
    for command in (("deploy", "digits", "1"), ("shadow", "digits", "2")):
        result = cli(env, *command)
        assert result.returncode == 0, result.stderr
    wait_for_metric(worker, 'streamserve_model_loaded{model="digits",role="shadow",version="2"} 1.0',
                    "apply the spec")
    images = (load_digits().images[:100] / 16).astype(np.float32)
    s = worker.settings
    bad = [orjson.dumps({"id": "d-bad-tabular", "model": "digits", "features": {"pixels": 1.0}}),
           orjson.dumps({"id": "d-bad-shape", "model_name": "digits", "inputs": [
               {"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]})]
    got = outputs(worker, "d-", [PredictRequest("digits", {"pixels": image}, id=f"d-{i}").encode()
                                 for i, image in enumerate(images)] + bad)
    dead = {r.value["id"]: r.value for r in got if r.topic == s.topics.deadletter}
    assert set(dead) == {"d-bad-tabular", "d-bad-shape"}
    assert all(d["reason"] == "schema_mismatch" for d in dead.values())
    assert "send the Open Inference Protocol form" in dead["d-bad-tabular"]["error"]
    by_id = {r.value["id"]: r.value for r in got if r.topic == s.topics.predictions}
    shadowed = shadow_answers(worker, "d-", 100, "2")["2"]
    for answers_ in (by_id, shadowed):
        for i, image in enumerate(images):
            answer = answers_[f"d-{i}"]
            expected = library[f"digits {answer['model_version']}"](image[None])[0]
            assert np.abs(np.array(answer["outputs"][0]["data"]) - expected).max() <= 1e-5
