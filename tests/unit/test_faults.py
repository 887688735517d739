import numpy as np
import pytest

from pipeline.config import ConfigError, Settings
from pipeline.faults import CrashCounter, FaultPlan, InjectedFault


def test_no_faults_by_default():
    plan = Settings().faults.plan
    assert not plan.active
    predict = np.asarray
    assert plan.model(predict) is predict


def test_a_crash_point_is_due_once_on_its_nth_arrival():
    crashes = CrashCounter(FaultPlan.parse("crash_at=after_produce:3"))
    assert [crashes.due("after_produce") for _ in range(5)] == [False, False, True, False, False]
    assert not crashes.due("before_produce")
    assert CrashCounter(FaultPlan.parse("crash_at=before_produce")).due("before_produce")


def test_the_faulty_model_raises_on_poison_and_serves_the_rest():
    model = FaultPlan.parse("poison=-999, slow_ms=1").model(lambda rows: rows * 2)
    assert model(np.array([[1.0, 2.0]], np.float32)).tolist() == [[2.0, 4.0]]
    with pytest.raises(InjectedFault, match="-999"):
        model(np.array([[1.0, 2.0], [-999.0, 0.0]], np.float32))


@pytest.mark.parametrize("spec, message", [
    ("crash_at=nowhere", "'nowhere' is not one of before_produce, after_produce, after_commit"),
    ("crash_at=after_produce:0", "N counts from 1"),
    ("poison=x", "'x' is not a number"),
    ("slow=5", "'slow' is not a fault"),
    ("poison=1,poison=2", "at most once"),
    ("poison", "at most once, comma-separated"),
])
def test_a_fault_spec_that_cannot_work_stops_the_start(spec, message):
    with pytest.raises(ConfigError, match="STREAMSERVE_FAULTS") as e:
        Settings.from_env({"STREAMSERVE_FAULTS": spec})
    assert message in str(e.value)


def test_delivery_mode_is_checked():
    assert Settings.from_env({"STREAMSERVE_DELIVERY": "exactly-once"}).exactly_once
    with pytest.raises(ConfigError, match="STREAMSERVE_DELIVERY must be one of at-least-once, exactly-once"):
        Settings.from_env({"STREAMSERVE_DELIVERY": "once"})
