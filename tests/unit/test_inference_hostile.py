"""Hostile and unlucky cases of the inference step, each a finding of the December 2026
reliability review (its section named in each test): every request still gets exactly
one answer, and no client can open a breaker for others."""

import asyncio
import datetime
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import orjson

from agents.worker.deployment import Deployment
from agents.worker.inference import InferenceService
from agents.worker.metrics import Metrics
from models.architectures import init_mlp
from models.runtime import ServingModel
from pipeline.config import Settings
from pipeline.outputs import Incoming, Kind
from pipeline.registry import Manifest, lineage
from pipeline.routing import Canary, DeploymentSpec, route
from pipeline.schema import Feature, InputSchema, OutputSchema

FEATURES = {"a": 1.0, "b": 2.0}


def model(version: str, labels=("no", "yes"), seed: int = 0) -> ServingModel:
    X = np.zeros((50, 2), np.float32)
    manifest = Manifest(
        model="m", architecture="mlp", hyperparameters={}, metrics={}, reference={},
        inputs=InputSchema((Feature("a"), Feature("b"))), outputs=OutputSchema(labels),
        version=version, param_hashes={},
        lineage=lineage(X, np.zeros(50, np.int64), code_revision="a", created_by="x@y",
                        created_at=datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)))
    return ServingModel(manifest, init_mlp(seed, (2, 4, len(labels)), np.zeros(2), np.ones(2)),
                        (1, 2, 4, 8))


def service(models, spec, env=None) -> tuple[InferenceService, Metrics]:
    metrics = Metrics()
    s = InferenceService(Settings.from_env(env or {}), metrics, ThreadPoolExecutor(1))
    s.install(Deployment(models, {"m": spec}))
    return s, metrics


def record(offset: int, age_s: float = 0.005, **body) -> Incoming:
    """A request Kafka stamped ``age_s`` seconds ago."""
    return Incoming("streamserve.requests", 0, offset, time.time() - age_s,
                    orjson.dumps({"id": f"r-{offset}", "model": "m", "features": FEATURES} | body))


def fates(outgoing) -> dict[str, tuple[str, str | None]]:
    """Request id -> (kind, reason): exactly one answer each."""
    answers = [o for o in outgoing if o.kind in (Kind.PREDICTION, Kind.DEAD_LETTER)]
    by_id = {orjson.loads(o.value)["id"]: (str(o.kind), o.reason and str(o.reason))
             for o in answers}
    assert len(by_id) == len(answers)
    return by_id


def breaker(metrics: Metrics, version: str) -> float | None:
    return metrics.registry.get_sample_value("streamserve_breaker_state",
                                             {"model": "m", "version": version})


def test_short_deadlines_open_no_breaker_for_other_tenants():
    """Section 2: five requests with deadline_ms 1 opened the stable version's breaker, and
    every tenant's next request got circuit_open."""
    s, metrics = service({("m", "1"): model("1")}, DeploymentSpec("m", "1"))
    expired = fates(asyncio.run(s.handle(
        [record(i, age_s=0.5, deadline_ms=1) for i in range(5)])))
    assert set(expired.values()) == {("dead_letter", "arrived_late")}
    assert breaker(metrics, "1") in (None, 0)
    victim = fates(asyncio.run(s.handle([record(9, tenant="acme")])))
    assert victim == {"r-9": ("prediction", None)}


def test_a_canary_that_adds_a_class_is_judged_by_label_and_fails_no_batch():
    """Section 3: a canary or shadow with another label count made every batch holding
    the model fail (the batch dead-lettered, other models' requests included)."""
    spec = DeploymentSpec("m", "1", canary=Canary("2", 0.5), shadows=("3",), revision=2)
    models = {("m", "1"): model("1"), ("m", "2"): model("2", ("no", "yes", "maybe"), seed=1),
              ("m", "3"): model("3", ("maybe", "yes", "no"), seed=2)}
    s, _ = service(models, spec)
    ids = [f"r-{i}" for i in range(40)]
    assert {route(spec, i).route.value for i in ids} == {"stable", "canary"}
    out = asyncio.run(s.handle([record(i) for i in range(40)]))
    assert set(fates(out).values()) == {("prediction", None)} and len(fates(out)) == 40
    shadows = [orjson.loads(o.value) for o in out if o.kind is Kind.SHADOW]
    assert len(shadows) == 40 and all(isinstance(a.get("agree"), bool) for a in shadows)


def test_a_spec_change_while_a_batch_runs_answers_every_request_of_it():
    """Section 4: a rollback installed while a batch's first group ran made the next
    group's lookups fail: the whole batch became id-less model_error dead letters."""
    spec = DeploymentSpec("m", "1", canary=Canary("2", 0.5), revision=2)
    m1, m2 = model("1"), model("2", seed=1)
    s, _ = service({("m", "1"): m1, ("m", "2"): m2}, spec)
    stable = next(i for i in range(99) if route(spec, f"r-{i}").route.value == "stable")
    canary = next(i for i in range(99) if route(spec, f"r-{i}").route.value == "canary")
    real = s._predict

    async def racing(served, rows):  # the control follower installs a rollback meanwhile
        s.install(Deployment({("m", "1"): m1}, {"m": DeploymentSpec("m", "1", revision=3)}))
        return await real(served, rows)

    s._predict = racing
    answered = fates(asyncio.run(s.handle([record(stable), record(canary)])))
    assert answered == {f"r-{stable}": ("prediction", None), f"r-{canary}": ("prediction", None)}


def test_a_failed_batch_keeps_each_requests_id_and_lets_it_be_sent_again():
    """Section 5: a batch dead-lettered whole lost its ids (clients timed out) and kept
    them in the dedupe window (their retries were refused as duplicate_request)."""
    s, _ = service({("m", "1"): model("1")}, DeploymentSpec("m", "1"))
    batch = [record(0), record(1), Incoming("streamserve.requests", 0, 2, time.time(), b"{")]
    asyncio.run(s.handle(batch[:2]))  # served once: the ids are in the dedupe window
    failed = s.fail_batch(batch, RuntimeError("boom"))
    assert [o.key for o in failed] == [b"r-0", b"r-1", b"streamserve.requests:0:2"]
    assert {orjson.loads(o.value)["id"] for o in failed} == {"r-0", "r-1", None}
    assert all(orjson.loads(o.value)["reason"] == "model_error" for o in failed)
    retried = fates(asyncio.run(s.handle([record(3, id="r-0")])))
    assert retried == {"r-0": ("prediction", None)}


def test_a_dead_letter_of_a_model_not_served_here_follows_that_models_rules(tmp_path):
    """Section 6: the rules of a model this worker does not serve (refused, not deployed
    yet) were not applied to its dead letters: its fields went out in clear."""
    rules = tmp_path / "models.toml"
    rules.write_text('[models.credit]\nredact = {income = "drop"}\n')
    s, _ = service({("m", "1"): model("1")}, DeploymentSpec("m", "1"),
                   {"STREAMSERVE_MODELS_FILE": str(rules)})
    body = {"id": "g1", "model": "credit", "features": {"income": 98765}}
    [dead] = asyncio.run(s.handle([Incoming("streamserve.requests", 0, 0, time.time(),
                                            orjson.dumps(body))]))
    letter = orjson.loads(dead.value)
    assert letter["reason"] == "unknown_model" and b"98765" not in dead.value
    assert "income" not in orjson.loads(letter["original"])["features"]


def test_outputs_stay_under_the_limits_the_broker_has():
    """Issue 16: outputs that grow are bounded by the limit read from the broker at start
    (a topic may take less than Kafka's default 1 MiB)."""
    from agents.worker.inference import OutputLimits

    s = InferenceService(Settings.from_env({}), Metrics(), ThreadPoolExecutor(1),
                         limits=OutputLimits(dead_letter=7 * 400, drift_rows=1 << 20))
    s.install(Deployment({("m", "1"): model("1")}, {"m": DeploymentSpec("m", "1")}))
    body = orjson.dumps({"id": "w", "model": "other", "features": FEATURES, "pad": "x" * 500})
    [dead] = asyncio.run(s.handle([Incoming("streamserve.requests", 0, 0, time.time(), body)]))
    letter = orjson.loads(dead.value)
    assert letter["reason"] == "unknown_model" and letter["original_bytes"] == len(body)
    assert letter["original_encoding"] == "withheld"
