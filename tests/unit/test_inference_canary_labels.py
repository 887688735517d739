"""A canary judged on labels: less accurate than stable, on enough labels, is rolled back
once; a canary as accurate, or judged on too few labels, is left alone."""

from concurrent.futures import ThreadPoolExecutor

from agents.worker.deployment import Deployment
from agents.worker.inference import InferenceService
from agents.worker.metrics import Metrics
from pipeline.config import Settings
from pipeline.routing import DeploymentSpec, start_canary
from tests.unit.test_inference_fallback import version


def service(verdicts):
    versions = {("m", "1"): version("1", seed=0), ("m", "2"): version("2", seed=1)}
    inference = InferenceService(Settings.from_env({"STREAMSERVE_CANARY_MIN_LABELS": "50"}), Metrics(),
                                 ThreadPoolExecutor(1), lambda *verdict: verdicts.append(verdict))
    inference.install(Deployment(versions, {"m": start_canary(DeploymentSpec("m", "1"), "2", 0.5)}))
    return inference


def test_a_canary_less_accurate_on_labels_is_rolled_back_once():
    verdicts = []
    inference = service(verdicts)
    inference.judge_canary_on_labels("m", canary=(30, 40), stable=(190, 200))  # too few labels
    inference.judge_canary_on_labels("m", canary=(180, 200), stable=(185, 200))  # as accurate
    assert verdicts == []
    inference.judge_canary_on_labels("m", canary=(140, 200), stable=(190, 200))
    inference.judge_canary_on_labels("m", canary=(100, 200), stable=(190, 200))  # judged already
    [(model, revision, verdict)] = verdicts
    assert (model, verdict.action) == ("m", "rollback")
    assert verdict.reason.startswith("less accurate than stable on labels: canary accuracy 0.7000")


def test_without_a_canary_labels_judge_nothing():
    verdicts = []
    inference = InferenceService(Settings.from_env({}), Metrics(), ThreadPoolExecutor(1),
                                 lambda *verdict: verdicts.append(verdict))
    inference.install(Deployment({("m", "1"): version("1", seed=0)}, {"m": DeploymentSpec("m", "1")}))
    inference.judge_canary_on_labels("m", canary=(0, 500), stable=(500, 500))
    inference.judge_canary_on_labels("other", canary=(0, 500), stable=(500, 500))
    assert verdicts == []
