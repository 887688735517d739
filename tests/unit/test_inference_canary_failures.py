"""Groups that fail before any answer, during a canary: too slow for their deadlines, or
refused by an open breaker. Their failures reach the canary's judge (review: a group too
slow for its deadlines made the worker fail its whole batch as model_error)."""

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import orjson

from agents.worker.deployment import Deployment
from agents.worker.inference import InferenceService
from agents.worker.metrics import Metrics
from pipeline.config import Settings
from pipeline.outputs import Incoming, Kind
from pipeline.routing import DeploymentSpec, start_canary
from tests.unit.test_inference_fallback import HOPELESS, NORMAL, fates, version


def test_a_group_too_slow_for_its_deadlines_or_refused_by_its_breaker_is_judged_as_failed():
    versions = {("m", "1"): version("1", seed=0, output_scale=1e30), ("m", "2"): version("2", seed=1)}
    spec = start_canary(DeploymentSpec("m", "2"), "1", 0.99)  # nearly every request to 1
    inference = InferenceService(Settings.from_env({}), Metrics(), ThreadPoolExecutor(1))
    inference.install(Deployment(versions, {"m": spec}))
    now = time.time()

    def batch(prefix, value, deadline_ms=None):
        extra = {} if deadline_ms is None else {"deadline_ms": deadline_ms}
        return [Incoming("streamserve.requests", 0, i, now, orjson.dumps(
            {"id": f"{prefix}-{i}", "model": "m", "features": {"a": value, "b": value}, **extra}))
            for i in range(5)]

    slow = asyncio.run(inference.handle(batch("s", NORMAL, deadline_ms=10**9), expected_seconds=10**7))
    assert {a["reason"] for a in fates(slow)} == {"deadline_exceeded"}
    hopeless = asyncio.run(inference.handle(batch("h", HOPELESS)))  # opens the canary's breaker
    normal = asyncio.run(inference.handle(batch("n", NORMAL)))
    assert "circuit_open" in {a.get("reason") for a in fates(normal)}
    assert not [o for o in (*slow, *hopeless, *normal)
                if o.kind is Kind.DEAD_LETTER and b"failed to serve" in o.value]
