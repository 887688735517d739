"""Features a model's schema marks sensitive leave the inference step on no path in clear:
samples, dead letters (originals and error sentences), shadow outputs, drift rows."""

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import orjson
import pytest

from agents.worker.deployment import Deployment
from agents.worker.inference import InferenceService
from agents.worker.metrics import Metrics
from models.architectures import init_mlp
from models.runtime import ServingModel
from pipeline.config import Settings
from pipeline.drift import reference_for_labels, references_for
from pipeline.outputs import Incoming, Kind
from pipeline.redaction import MASKED, Redactor
from pipeline.registry import Manifest
from pipeline.rejections import REDACTED_VALUE
from pipeline.routing import DeploymentSpec
from pipeline.schema import Feature, InputSchema, OutputSchema
from tests.unit.test_registry import LINEAGE

NAMES = ("age", "income", "ssn", "score")
KEY = "unit-redaction-key"
# Planted values: ssn is marked by the stable version, income by the shadow only; score
# is marked by neither and is the control that shows the scan can find a value.
SSN, INCOME, SCORE = 4.735193719, 7.135792468, 3.246813579
SECRETS = (b"4.735193719", b"7.135792468")


def version(number: str, sensitive: tuple[str, ...]) -> ServingModel:
    rng = np.random.default_rng(int(number))
    X = rng.normal(5, 2, (300, len(NAMES))).astype(np.float32)
    params = init_mlp(int(number), (len(NAMES), 8, 2), X.mean(axis=0), X.std(axis=0))
    reference = {"features": [r.to_json() for r in references_for(X, NAMES)],
                 "prediction": reference_for_labels(rng.integers(0, 2, 300), 2).to_json()}
    manifest = Manifest(model="loan", architecture="mlp", hyperparameters={},
                        inputs=InputSchema(tuple(Feature(n, minimum=-1.0, maximum=11.0)
                                                 for n in NAMES)).marked(sensitive),
                        outputs=OutputSchema(("no", "yes")), metrics={}, lineage=LINEAGE,
                        reference=reference, version=number, param_hashes={})
    return ServingModel(manifest, params, (1, 2, 4))


@pytest.fixture(scope="module")
def versions():
    return version("1", ("ssn",)), version("2", ("income",))


def features(**changes):
    return dict(zip(NAMES, (30.0, INCOME, SSN, SCORE), strict=True)) | changes


def tabular(i, **changes):
    return {"id": f"r-{i}", "model": "loan", "features": features(**changes)}


# Every path a request can take, each carrying the planted values.
REQUESTS = [
    orjson.dumps(tabular(0)),
    orjson.dumps(tabular(1, ssn=SSN + 90)),  # out of the training range: still served
    orjson.dumps({"id": "r-2", "model_name": "loan", "inputs": [
        {"name": n, "shape": [1], "datatype": "FP64", "data": [v]} for n, v in features().items()]}),
    orjson.dumps({"id": "r-3", "model_name": "loan", "inputs": [
        {"name": "x", "shape": [1, 4], "datatype": "FP64", "data": list(features().values())}]}),
    orjson.dumps(tabular(4, ssn=f"{SSN}-x")),  # schema_mismatch quoting the value
    orjson.dumps(tabular(5, income=f"{INCOME}-x")),
    orjson.dumps(tabular(6, ssn=0.125)).replace(b"0.125", str(SSN).encode() + b"e39"),  # non_finite
    orjson.dumps({"id": "r-7", "model_name": "loan", "inputs": [
        {"name": n, "shape": [1], "datatype": "FP64", "data": [f"{v}-x"]}
        for n, v in features().items()]}),
    orjson.dumps(tabular(8) | {"model": "nope"}),  # unknown_model
    orjson.dumps(tabular(9) | {"version": "9"}),  # unknown_version
    orjson.dumps(tabular(10))[:-2],  # malformed: the original cannot be parsed
    orjson.dumps(f"ssn {SSN}"),  # not an object: neither can this one's, and the error quotes it
]
SERVED = {"r-0", "r-1", "r-2", "r-3"}


def serve(env, versions):
    stable, shadow = versions
    settings = Settings.from_env({"STREAMSERVE_SAMPLE_RATE": "1", **env})
    service = InferenceService(settings, Metrics(), ThreadPoolExecutor(1))
    service.install(Deployment({("loan", "1"): stable, ("loan", "2"): shadow},
                               {"loan": DeploymentSpec("loan", "1", shadows=("2",))}))
    batch = [Incoming(settings.topics.requests, 0, offset, 1.7e9, raw)
             for offset, raw in enumerate(REQUESTS)]
    outgoing = asyncio.run(service.handle(batch))
    return outgoing + service.flush_rows()


def leaked(out):
    seen = b"".join([out.key, out.value, *(v for _, v in out.headers)])
    return [s for s in SECRETS if s in seen]


HASHED = Redactor({}, KEY.encode()).hash


@pytest.mark.parametrize("env, ssn, income", [
    ({"STREAMSERVE_REDACTION_KEY": KEY}, HASHED, HASHED),
    ({}, lambda v: MASKED, lambda v: MASKED),  # no key: a mark masks
    ({"STREAMSERVE_REDACTION_KEY": KEY, "STREAMSERVE_REDACT": "ssn=drop"},  # a stricter rule
     lambda v: None, HASHED),
])
def test_no_path_carries_a_marked_value_and_serving_is_unchanged(versions, env, ssn, income):
    """``ssn``/``income``: what a sample holds in place of a value of the field."""
    outgoing = serve(env, versions)
    assert not {out.kind: leaked(out) for out in outgoing if leaked(out)}
    by_kind = {kind: [out for out in outgoing if out.kind is kind] for kind in Kind}
    # The ledger: one prediction or one dead letter per request.
    fates = [out.key for out in by_kind[Kind.PREDICTION] + by_kind[Kind.DEAD_LETTER]]
    assert len(fates) == len(REQUESTS) == len(set(fates))
    assert {out.key.decode() for out in by_kind[Kind.PREDICTION]} == SERVED
    assert len(by_kind[Kind.SHADOW]) == len(SERVED) and by_kind[Kind.DRIFT_ROWS]

    rows = {key: features(ssn=SSN + 90) if key == "r-1" else features() for key in SERVED}
    for out in by_kind[Kind.PREDICTION]:
        row = rows[out.key.decode()]
        expected = versions[0].predict(np.array([list(row.values())], np.float32))[0]
        assert orjson.loads(out.value)["outputs"][0]["data"] == pytest.approx(expected.tolist())
    assert {out.key.decode() for out in by_kind[Kind.SAMPLE]} == SERVED
    for out in by_kind[Kind.SAMPLE]:
        sample, row = orjson.loads(out.value)["features"], rows[out.key.decode()]
        assert sample.get("ssn") == ssn(row["ssn"]) and sample["income"] == income(row["income"])
        assert sample["score"] == SCORE  # the control: unmarked values are there to be found
        assert b"3.246813579" in out.value

    dead = {out.key.decode(): orjson.loads(out.value) for out in by_kind[Kind.DEAD_LETTER]}
    assert dead["r-4"]["error"] == f"feature 'ssn' must be a number, got {REDACTED_VALUE}"
    assert dead["r-5"]["error"] == f"feature 'income' must be a number, got {REDACTED_VALUE}"
    assert dead["r-6"]["error"].startswith(f"feature 'ssn' is {REDACTED_VALUE}, not a finite")
    assert dead["r-8"]["reason"] == "unknown_model" and dead["r-9"]["reason"] == "unknown_version"
    assert orjson.loads(dead["r-8"]["original"])["features"]["score"] == SCORE
    malformed = [d for key, d in dead.items() if key.startswith("streamserve.requests:")]
    assert [d["original_encoding"] for d in malformed] == ["withheld", "withheld"]
    assert malformed[1]["error"] == f"the request must be a JSON object, got {REDACTED_VALUE}"


def test_without_marks_the_same_scan_finds_the_values(versions):
    """The scan can fail: versions that mark nothing let the planted values through."""
    plain = version("1", ()), version("2", ())
    outgoing = serve({}, plain)
    assert {out.kind for out in outgoing if leaked(out)} == {Kind.SAMPLE, Kind.DEAD_LETTER}
    dead = {out.key: orjson.loads(out.value) for out in outgoing if out.kind is Kind.DEAD_LETTER}
    assert str(SSN) in dead[b"r-4"]["error"] and str(SSN) in dead[b"r-6"]["error"]
