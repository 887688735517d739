"""Where the inference step runs a model call: on the event loop when the version's last
call, scaled up by the rows when this one has more, took less than ``INLINE_CALL_SECONDS``
(the hop to the model thread costs more than such a call); else, and for a version's first
call when it was not warmed by the inference step, in the model thread."""

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

from agents.worker import inference
from agents.worker.deployment import Deployment
from agents.worker.inference import InferenceService
from agents.worker.metrics import Metrics
from pipeline.config import Settings
from pipeline.isolation import serve_isolated
from pipeline.outputs import Kind
from pipeline.routing import DeploymentSpec
from tests.unit.test_inference_hostile import model, record


def threads_of_calls(sizes: list[int], env: dict[str, str] | None = None,
                     warmed: bool = False) -> list[bool]:
    """For batches of ``sizes`` requests: whether each model call ran on the event loop's
    thread; every request is answered with a prediction. ``warmed``: the version is warmed
    by the inference step first, as a worker's deployer does."""
    served = model("1")
    served.warm()
    on_loop: list[bool] = []
    predict = served.predict

    def watched(rows):
        on_loop.append(threading.get_ident() == loop_thread)
        return predict(rows)

    served.predict = watched
    service = InferenceService(Settings.from_env(env or {}), Metrics(), ThreadPoolExecutor(1))
    service.install(Deployment({("m", "1"): served}, {"m": DeploymentSpec("m", "1")}))
    loop_thread = threading.get_ident()  # asyncio.run runs the loop on this thread

    async def serve() -> None:
        if warmed:
            await service.warm([served])
            on_loop.clear()
        for b, size in enumerate(sizes):
            outgoing = await service.handle([record(100 * b + i) for i in range(size)])
            assert [o.kind for o in outgoing if o.kind is not Kind.SAMPLE] == [Kind.PREDICTION] * size
    asyncio.run(serve())
    return on_loop


def timed_per_row(monkeypatch, seconds: float) -> None:
    """Every call takes ``seconds`` a row, as the inference step measures it."""
    monkeypatch.setattr(inference, "_timed_serve",
                        lambda predict, rows: (serve_isolated(predict, rows), seconds * len(rows)))


def test_a_quick_versions_calls_run_on_the_loop_after_its_first(monkeypatch):
    timed_per_row(monkeypatch, 1e-5)
    assert threads_of_calls([1, 1, 4, 4]) == [False, True, True, True]


def test_a_call_with_more_rows_than_the_last_goes_to_the_thread_when_it_would_be_long(monkeypatch):
    timed_per_row(monkeypatch, 0.3 * inference.INLINE_CALL_SECONDS)
    # 1 row: 0.3 of the bound; 8 rows expected at 2.4 of it, and measured so.
    assert threads_of_calls([1, 1, 8, 8, 2]) == [False, True, False, False, False]


def test_a_quick_version_warmed_by_the_inference_step_runs_on_the_loop_from_its_first_call(monkeypatch):
    # A canary's calls timed in the thread beside its stable's on the loop were judged apart.
    timed_per_row(monkeypatch, 1e-5)
    assert threads_of_calls([1, 4, 1], warmed=True) == [True, True, True]


def test_a_slow_versions_calls_stay_in_the_model_thread():
    slow_ms = 2000 * inference.INLINE_CALL_SECONDS  # every call sleeps twice the bound
    assert threads_of_calls([1, 1, 1], {"STREAMSERVE_FAULTS": f"slow_ms={slow_ms:g}"}) == [False] * 3
    assert threads_of_calls([1, 1], {"STREAMSERVE_FAULTS": f"slow_ms={slow_ms:g}"},
                            warmed=True) == [False] * 2  # its warm-up was timed slow too
