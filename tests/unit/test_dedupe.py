import pytest

from pipeline.dedupe import RecentIds
from pipeline.rejections import Reason


def test_first_sighting_is_new_and_a_repeat_is_seen():
    recent = RecentIds(max_ids=10)
    assert not recent.seen_before("r-1", now=0.0)
    assert recent.seen_before("r-1", now=1.0)
    assert recent.seen_before("r-1", now=2.0)
    assert not recent.seen_before("r-2", now=3.0)


def test_a_repeat_within_the_time_window_is_seen_and_after_it_is_new():
    recent = RecentIds(max_ids=100, window_s=60)
    assert not recent.seen_before("r-1", now=1000.0)
    assert recent.seen_before("r-1", now=1059.9)
    assert not recent.seen_before("r-1", now=1060.0)  # exactly the window later: forgotten
    assert recent.seen_before("r-1", now=1061.0)  # ... and remembered anew from 1060


def test_a_repeat_does_not_renew_the_window():
    recent = RecentIds(max_ids=100, window_s=10)
    recent.seen_before("r-1", now=0.0)
    for now in (5.0, 9.0):
        assert recent.seen_before("r-1", now)
    assert not recent.seen_before("r-1", now=10.0)


def test_expired_ids_are_dropped_so_memory_follows_the_time_window():
    recent = RecentIds(max_ids=1_000_000, window_s=10)
    for i in range(1000):
        recent.seen_before(f"r-{i}", now=float(i))
    assert len(recent) == 10  # ids first seen at 990..999


def test_memory_is_bounded_by_count_and_the_oldest_is_forgotten_first():
    recent = RecentIds(max_ids=3)
    for request_id in ("a", "b", "c", "d"):
        assert not recent.seen_before(request_id, now=0.0)
    assert len(recent) == 3
    assert recent.seen_before("d", 0.0) and recent.seen_before("b", 0.0)
    assert not recent.seen_before("a", 0.0)  # forgotten: served again
    for i in range(10_000):
        recent.seen_before(f"x-{i}", now=0.0)
    assert len(recent) == 3


def test_a_redelivery_of_the_same_record_is_not_a_repeat():
    recent = RecentIds(max_ids=10)
    first = ("streamserve.requests", 0, 41)
    assert not recent.seen_before("r-1", 0.0, first)
    assert not recent.seen_before("r-1", 1.0, first)  # the same record again
    assert recent.seen_before("r-1", 2.0, ("streamserve.requests", 0, 42))
    assert recent.seen_before("r-1", 3.0)  # no position: a repeat


def test_forget_lets_a_failed_request_be_retried_with_its_id():
    recent = RecentIds(max_ids=10)
    recent.seen_before("r-1", 0.0)
    recent.forget("r-1")
    recent.forget("never-seen")
    assert not recent.seen_before("r-1", 1.0)
    assert recent.seen_before("r-1", 2.0)


def test_a_clock_stepping_back_never_forgets_early():
    recent = RecentIds(max_ids=10, window_s=10)
    recent.seen_before("r-1", now=100.0)
    assert recent.seen_before("r-1", now=50.0)
    assert recent.seen_before("r-1", now=109.0)


def test_rejection_names_the_id_the_window_and_how_to_retry():
    rejection = RecentIds(max_ids=5000, window_s=300).rejection("r-7", model="iris")
    assert rejection.reason is Reason.DUPLICATE_REQUEST and rejection.reason.is_client_error
    assert (rejection.id, rejection.model) == ("r-7", "iris")
    assert rejection.error == (
        "request id 'r-7' was already served within the last 300 s (and the last 5000 ids "
        "this worker read), so this repeat gets no second prediction; to send a request "
        "again on purpose, give it a new id")
    assert "within the last 5000 ids this worker read," in RecentIds(5000).rejection("r").error


@pytest.mark.parametrize("max_ids,window_s,says", [
    (0, None, "max_ids must be a whole number of at least 1, got 0"),
    (1.5, None, "max_ids must be a whole number of at least 1, got 1.5"),
    (True, None, "max_ids must be"),
    (10, 0, "window_s must be a positive number of seconds or None, got 0"),
    (10, float("nan"), "window_s must be a positive number"),
])
def test_invalid_settings_say_what_to_use(max_ids, window_s, says):
    with pytest.raises(ValueError, match=says.replace("(", r"\(")):
        RecentIds(max_ids, window_s)
