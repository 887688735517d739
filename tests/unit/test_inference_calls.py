"""Where the inference step runs a model call: a version whose calls are short runs on the
event loop (the hop to the model thread costs more than the call); its first call, and any
version whose last call took longer than ``INLINE_CALL_SECONDS``, runs in the model thread."""

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

from agents.worker.deployment import Deployment
from agents.worker import inference
from agents.worker.inference import InferenceService
from agents.worker.metrics import Metrics
from pipeline.config import Settings
from pipeline.outputs import Kind
from pipeline.routing import DeploymentSpec
from tests.unit.test_inference_hostile import model, record


def threads_of_calls(env: dict[str, str], batches: int) -> list[bool]:
    """For each of ``batches`` one-request batches: whether its model call ran on the
    event loop's thread; every request is answered with a prediction."""
    served = model("1")
    on_loop: list[bool] = []
    predict = served.predict

    def watched(rows):
        on_loop.append(threading.get_ident() == loop_thread)
        return predict(rows)

    served.predict = watched
    service = InferenceService(Settings.from_env(env), Metrics(), ThreadPoolExecutor(1))
    service.install(Deployment({("m", "1"): served}, {"m": DeploymentSpec("m", "1")}))
    served.warm()
    loop_thread = threading.get_ident()  # asyncio.run runs the loop on this thread

    async def serve() -> None:
        for i in range(batches):
            outgoing = await service.handle([record(i)])
            assert [o.kind for o in outgoing] == [Kind.PREDICTION]
    asyncio.run(serve())
    return on_loop


def test_a_quick_versions_calls_run_on_the_loop_after_its_first(monkeypatch):
    # A bound no call misses, on a machine however busy.
    monkeypatch.setattr(inference, "INLINE_CALL_SECONDS", 60.0)
    assert threads_of_calls({}, 4) == [False, True, True, True]


def test_a_slow_versions_calls_stay_in_the_model_thread():
    slow_ms = 2000 * inference.INLINE_CALL_SECONDS  # every call sleeps twice the bound
    assert threads_of_calls({"STREAMSERVE_FAULTS": f"slow_ms={slow_ms:g}"}, 3) == [False, False, False]
