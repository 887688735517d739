"""Tenant quotas in the inference step: excess is one quota_exceeded dead letter per request
(never a silent drop), in-flight slots are freed when answers are delivered, and the
rejections are counted by tenant quota."""

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
from pipeline.rejections import REDACTED_VALUE
from pipeline.routing import DeploymentSpec
from pipeline.schema import Feature, InputSchema, OutputSchema

NAMES = ("a", "b")
QUOTAS = "acme:rate=1,burst=2; beta:inflight=2; default:rate=1,burst=1"


@pytest.fixture(scope="module")
def served() -> ServingModel:
    X = np.random.default_rng(0).normal(size=(50, 2)).astype(np.float32)
    manifest = Manifest(
        model="m", architecture="mlp", hyperparameters={},
        inputs=InputSchema(tuple(Feature(n) for n in NAMES)), outputs=OutputSchema(("no", "yes")),
        metrics={}, reference={}, version="1", param_hashes={},
        lineage=lineage(X, np.zeros(50, np.int64), code_revision="abc", created_by="ada@lab",
                        created_at=datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)))
    return ServingModel(manifest, init_mlp(0, (2, 4, 2), X.mean(axis=0), X.std(axis=0)), (1, 2, 4, 8))


def service(served, **env) -> tuple[InferenceService, Metrics]:
    metrics = Metrics()
    s = Settings.from_env({"STREAMSERVE_TENANT_QUOTAS": QUOTAS, **env})
    inference = InferenceService(s, metrics, ThreadPoolExecutor(1))
    inference.install(Deployment({("m", "1"): served}, {"m": DeploymentSpec("m", "1")}))
    return inference, metrics


def batch(requests, first_offset=0) -> list[Incoming]:
    """``requests``: (id, tenant or None) pairs."""
    return [Incoming("streamserve.requests", 0, first_offset + i, 1.7e9, orjson.dumps(
        {"id": rid, "model": "m", "features": {"a": 1.0, "b": 2.0}}
        | ({"tenant": tenant} if tenant else {})))
        for i, (rid, tenant) in enumerate(requests)]


def answers(outgoing) -> dict[str, dict]:
    """Request id -> its one answer (asserting there is exactly one per request)."""
    fates = [o for o in outgoing if o.kind in (Kind.PREDICTION, Kind.DEAD_LETTER)]
    by_id = {o.key.decode(): o for o in fates}
    assert len(by_id) == len(fates)
    return {k: {"kind": o.kind} | orjson.loads(o.value) for k, o in by_id.items()}


REQUESTS = [("a-0", "acme"), ("a-1", "acme"), ("a-2", "acme"), ("a-3", "acme"),
            ("b-0", "beta"), ("b-1", "beta"), ("b-2", "beta"),
            ("n-0", None), ("n-1", None), ("z-0", "zed")]


def test_excess_is_dead_lettered_per_tenant_and_counted(served):
    inference, metrics = service(served)
    outgoing = asyncio.run(inference.handle(batch(REQUESTS)))
    fates = answers(outgoing)
    assert set(fates) == {rid for rid, _ in REQUESTS}  # the ledger: one fate each
    refused = {rid for rid, a in fates.items() if a["kind"] is Kind.DEAD_LETTER}
    assert refused == {"a-2", "a-3", "b-2", "n-1", "z-0"}
    assert all(fates[rid]["reason"] == "quota_exceeded" for rid in refused)
    assert fates["b-2"]["error"].startswith("tenant 'beta': already 2 requests in flight")
    assert fates["z-0"]["error"].startswith("tenant 'zed' (under the shared default quota): "
                                            "over the rate quota")

    def count(tenant, limit):
        return metrics.registry.get_sample_value("streamserve_quota_rejections_total",
                                                 {"tenant": tenant, "limit": limit})
    assert (count("acme", "rate"), count("beta", "inflight"), count("default", "rate")) == (2, 1, 2)


def test_a_delivered_answer_frees_its_slot_and_a_refused_id_may_be_sent_again(served):
    inference, _ = service(served)
    first = asyncio.run(inference.handle(batch(REQUESTS[4:7])))
    assert answers(first)["b-2"]["reason"] == "quota_exceeded"
    # Answers not yet delivered still hold their slots.
    again = asyncio.run(inference.handle(batch([("b-2", "beta")], first_offset=10)))
    assert answers(again)["b-2"]["reason"] == "quota_exceeded"
    inference.delivered(first + again)
    resent = asyncio.run(inference.handle(batch([("b-2", "beta")], first_offset=11)))
    assert answers(resent)["b-2"]["kind"] is Kind.PREDICTION  # not a duplicate_request


def test_slots_are_freed_when_answers_will_never_be_sent(served, monkeypatch):
    inference, _ = service(served)
    asyncio.run(inference.handle(batch(REQUESTS[4:6])))
    inference.abandoned()  # an aborted transaction: its requests are read again
    assert answers(asyncio.run(inference.handle(batch(REQUESTS[4:6]))))["b-1"]["kind"] \
        is Kind.PREDICTION

    async def failing(*args):
        raise RuntimeError("boom")
    inference.abandoned()
    monkeypatch.setattr(inference, "_serve_group", failing)
    with pytest.raises(RuntimeError):
        asyncio.run(inference.handle(batch(REQUESTS[4:6])))
    monkeypatch.undo()
    assert all(a["kind"] is Kind.PREDICTION
               for a in answers(asyncio.run(inference.handle(batch(REQUESTS[4:6])))).values())


def test_a_redacted_tenant_is_not_named_in_the_dead_letter(served):
    inference, _ = service(served, STREAMSERVE_REDACT="tenant=mask")
    fates = answers(asyncio.run(inference.handle(batch(REQUESTS[:3]))))
    assert fates["a-2"]["error"].startswith(f"tenant {REDACTED_VALUE}: over the rate quota")
    assert "acme" not in fates["a-2"]["error"]
