import pytest

from agents.dev.demo import LABELS_ENV, _quality_env
from pipeline.config import Settings
from pipeline.quality.book import TREND_WINDOWS


@pytest.mark.parametrize(("requests", "rate"), [(5000, 500), (300, 50), (200_000, 500), (50_000, 0)])
def test_the_demo_joins_labels_in_windows_that_tell_its_run_apart_and_are_all_reported(requests, rate):
    env = _quality_env(requests, rate)
    window = Settings.from_env(env).quality.window_s  # a valid setting
    assert env.items() >= LABELS_ENV.items()
    # The run's answers fit in the windows a report keeps (the latest TREND_WINDOWS), with
    # one to spare at each end for the windows it starts and ends in.
    assert requests / (rate or 2000) / window <= TREND_WINDOWS - 2


def test_the_default_demo_counts_labels_in_one_second_windows():
    # An earlier run's answers are seconds older than this run's first: a window of one
    # second holds no answer of both.
    assert _quality_env(5000, 500)["STREAMSERVE_QUALITY_WINDOW_S"] == "1"
