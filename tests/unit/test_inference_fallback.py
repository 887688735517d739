"""A row a version fails on gets a second opinion from the fallback: served there, it is
answered from there and the failure is the version's; failing there too, the input is at
fault: a dead letter, and neither breaker counts it. So no client can open a breaker for
others by sending inputs no version can serve."""

import asyncio
import datetime
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
from pipeline.outputs import Incoming, Kind
from pipeline.registry import Manifest, lineage
from pipeline.routing import DeploymentSpec
from pipeline.schema import Feature, InputSchema, OutputSchema

NORMAL, FRAGILE_ONLY, HOPELESS = 1.0, 1e9, 3e38  # feature values


def version(name: str, seed: int, output_scale: float = 1.0) -> ServingModel:
    """An MLP; ``output_scale`` multiplies its output layer: the same answers on normal
    inputs, but features near 1e9 overflow it (every version overflows at 3e38)."""
    X = np.random.default_rng(0).normal(size=(50, 2)).astype(np.float32)
    manifest = Manifest(
        model="m", architecture="mlp", hyperparameters={},
        inputs=InputSchema((Feature("a"), Feature("b"))), outputs=OutputSchema(("no", "yes")),
        metrics={}, reference={}, version=name, param_hashes={},
        lineage=lineage(X, np.zeros(50, np.int64), code_revision="abc", created_by="ada@lab",
                        created_at=datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)))
    params = init_mlp(seed, (2, 4, 2), X.mean(axis=0), X.std(axis=0))
    params = {k: v * output_scale if k in ("w1", "b1") else v for k, v in params.items()}
    return ServingModel(manifest, params, (1, 2, 4, 8))


@pytest.fixture(scope="module")
def versions() -> dict[tuple[str, str], ServingModel]:
    return {("m", "1"): version("1", seed=0, output_scale=1e30), ("m", "2"): version("2", seed=1)}


def service(versions, fallback: str | None) -> tuple[InferenceService, Metrics]:
    metrics = Metrics()
    inference = InferenceService(Settings.from_env({}), metrics, ThreadPoolExecutor(1))
    inference.install(Deployment(versions, {"m": DeploymentSpec("m", "1", fallback=fallback)}))
    return inference, metrics


def batch(prefix: str, values: list[float]) -> list[Incoming]:
    return [Incoming("streamserve.requests", 0, i, 1.7e9, orjson.dumps(
        {"id": f"{prefix}{i}", "model": "m", "features": {"a": value, "b": value}}))
        for i, value in enumerate(values)]


def fates(outgoing) -> list[dict]:
    """Each request's one answer, in request order."""
    answers = [orjson.loads(o.value) for o in outgoing
               if o.kind in (Kind.PREDICTION, Kind.DEAD_LETTER)]
    return sorted(answers, key=lambda a: int(a["id"].split("-")[1]))


def breaker(metrics: Metrics, name: str) -> float:
    return metrics.registry.get_sample_value("streamserve_breaker_state",
                                             {"model": "m", "version": name})


def test_the_fallback_answers_the_rows_the_version_fails_on(versions):
    inference, metrics = service(versions, fallback="2")
    out = fates(asyncio.run(inference.handle(batch("r-", [NORMAL, FRAGILE_ONLY, HOPELESS] * 2))))
    assert [(a.get("model_version"), a.get("parameters", {}).get("route"), a.get("reason"))
            for a in out] == [("1", "stable", None), ("2", "fallback", None),
                              (None, None, "model_error")] * 2
    assert "versions 1 and 2 of m both failed on this request, so its inputs are at fault" \
        in out[2]["error"]


def test_inputs_no_version_serves_open_no_breaker(versions):
    inference, metrics = service(versions, fallback="2")
    for i in range(5):
        asyncio.run(inference.handle(batch(f"h{i}-", [HOPELESS] * 10)))
    assert breaker(metrics, "1") == breaker(metrics, "2") == 0
    served = fates(asyncio.run(inference.handle(batch("n-", [NORMAL] * 4))))
    assert {(a["model_version"], a["parameters"]["route"]) for a in served} == {("1", "stable")}


def test_failures_the_fallback_serves_open_the_versions_breaker(versions):
    inference, metrics = service(versions, fallback="2")
    answered = fates(asyncio.run(inference.handle(batch("f-", [FRAGILE_ONLY] * 5))))
    assert {(a["model_version"], a["parameters"]["route"]) for a in answered} == {("2", "fallback")}
    assert (breaker(metrics, "1"), breaker(metrics, "2")) == (2, 0)  # open; closed
    rerouted = fates(asyncio.run(inference.handle(batch("n-", [NORMAL] * 3))))
    assert {(a["model_version"], a["parameters"]["route"]) for a in rerouted} == {("2", "fallback")}


def test_while_the_version_is_open_the_fallbacks_failures_get_the_versions_opinion(versions):
    inference, metrics = service(versions, fallback="2")
    asyncio.run(inference.handle(batch("f-", [FRAGILE_ONLY] * 5)))  # opens 1's breaker
    out = fates(asyncio.run(inference.handle(batch("h-", [HOPELESS] * 10))))
    assert {a["reason"] for a in out} == {"model_error"}
    assert breaker(metrics, "2") == 0  # served by the fallback, failed by both: not its fault


def test_without_a_fallback_a_version_is_charged_for_every_failure(versions):
    inference, metrics = service(versions, fallback=None)
    out = fates(asyncio.run(inference.handle(batch("h-", [HOPELESS] * 5))))
    assert {a["reason"] for a in out} == {"model_error"}
    assert breaker(metrics, "1") == 2
    refused = fates(asyncio.run(inference.handle(batch("n-", [NORMAL]))))
    assert refused[0]["reason"] == "circuit_open"
    assert "set a fallback with `streamserve fallback m VERSION`" in refused[0]["error"]


def test_with_labels_on_each_answer_is_kept_by_the_version_and_route_that_gave_it(versions):
    from pipeline.quality.wire import read_kept

    inference = InferenceService(Settings.from_env({"STREAMSERVE_LABELS": "on"}), Metrics(),
                                 ThreadPoolExecutor(1))
    inference.install(Deployment(versions, {"m": DeploymentSpec("m", "1", fallback="2")}))
    asyncio.run(inference.handle(batch("r-", [NORMAL, FRAGILE_ONLY, HOPELESS])))
    kept = {request_id: k for out in inference.flush_rows() if out.kind is Kind.KEPT
            for request_id, k in read_kept(out.value)}
    assert {i: (k.version, k.route, k.dead_letter) for i, k in kept.items()} == {
        "r-0": ("1", "stable", None), "r-1": ("2", "fallback", None),
        "r-2": ("1", "stable", "model_error")}  # both failed: the dead letter is the version's
    assert kept["r-1"].predicted in (0, 1) and len(kept["r-1"].probabilities) == 2
    assert not [o for o in inference.flush_rows() if o.kind is Kind.KEPT]  # taken once
