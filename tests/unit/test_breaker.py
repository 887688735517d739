import pytest

from pipeline.breaker import BreakerConfig, BreakerState, CircuitBreaker, Transition

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


def opened(config: BreakerConfig | None = None, at: float = 0.0) -> CircuitBreaker:
    config = config or BreakerConfig()
    breaker = CircuitBreaker(config)
    breaker.record(0, config.consecutive_failures, at)
    assert breaker.state is OPEN
    return breaker


def test_a_new_breaker_is_closed_and_allows():
    breaker = CircuitBreaker()
    assert breaker.state is CLOSED and breaker.allow(0.0)
    assert breaker.transitions == 0 and breaker.last_transition is None


def test_consecutive_failures_trip_it():
    breaker = CircuitBreaker(BreakerConfig(consecutive_failures=5))
    for t in range(4):
        assert breaker.record(0, 1, float(t)) is None
    transition = breaker.record(0, 1, 4.0)
    assert transition == Transition(CLOSED, OPEN, 4.0, "5 failures in a row; open for 5 s")
    assert breaker.state is OPEN and breaker.transitions == 1
    assert breaker.last_transition == transition
    assert not breaker.allow(4.0)


def test_failures_in_a_row_may_span_batches():
    breaker = CircuitBreaker(BreakerConfig(consecutive_failures=5))
    breaker.record(0, 3, 0.0)
    assert breaker.record(0, 2, 1.0) is not None


def test_a_success_ends_the_run():
    breaker = CircuitBreaker(BreakerConfig(consecutive_failures=5, min_requests=100))
    for t in range(10):
        breaker.record(0, 4, float(t))
        breaker.record(1, 0, float(t))
    assert breaker.state is CLOSED


def test_a_mixed_batch_ends_the_run():
    breaker = CircuitBreaker(BreakerConfig(consecutive_failures=5, min_requests=100))
    breaker.record(0, 4, 0.0)
    breaker.record(60, 4, 1.0)  # 4 bad rows in a batch that otherwise served
    breaker.record(0, 4, 2.0)
    assert breaker.state is CLOSED


def test_failure_share_over_the_window_trips_it():
    config = BreakerConfig(consecutive_failures=1000, failure_rate=0.5, min_requests=20, window=100)
    breaker = CircuitBreaker(config)
    breaker.record(9, 9, 0.0)  # 50%, but only 18 outcomes: too few to judge
    assert breaker.state is CLOSED
    transition = breaker.record(1, 1, 1.0)  # 10 of 20
    assert transition is not None and transition.after is OPEN
    assert "10 of the last 20 requests failed (50% >= 50%)" in transition.reason


def test_a_share_below_the_rate_keeps_it_closed():
    breaker = CircuitBreaker(BreakerConfig(consecutive_failures=1000, failure_rate=0.5))
    for t in range(50):
        breaker.record(11, 9, float(t))  # 45%
    assert breaker.state is CLOSED


def test_the_window_forgets_old_failures():
    config = BreakerConfig(consecutive_failures=1000, failure_rate=0.5, min_requests=20, window=100)
    breaker = CircuitBreaker(config)
    breaker.record(55, 45, 0.0)  # 45% of the window
    breaker.record(100, 0, 1.0)  # pushes all of them out
    breaker.record(49, 51, 2.0)  # 51%, alone in the window
    assert breaker.state is OPEN


def test_a_batch_larger_than_the_window_keeps_its_share():
    config = BreakerConfig(consecutive_failures=10_000, failure_rate=0.5, window=100)
    low = CircuitBreaker(config)
    low.record(700, 300, 0.0)
    assert low.state is CLOSED
    high = CircuitBreaker(config)
    high.record(400, 600, 0.0)
    assert high.state is OPEN and "60 of the last 100" in high.last_transition.reason


def test_it_stays_open_for_open_seconds_then_half_opens():
    breaker = opened(BreakerConfig(open_seconds=5.0), at=100.0)
    assert not breaker.allow(100.0)
    assert not breaker.allow(104.99)
    assert breaker.state is OPEN and breaker.transitions == 1
    assert breaker.allow(105.0)
    assert breaker.state is HALF_OPEN and breaker.transitions == 2
    assert breaker.last_transition.before is OPEN and breaker.last_transition.after is HALF_OPEN
    assert breaker.allow(105.1)  # probes keep flowing


def test_outcomes_recorded_while_open_are_ignored():
    breaker = opened(at=0.0)
    assert breaker.record(100, 0, 1.0) is None
    assert breaker.state is OPEN


def test_a_failed_probe_reopens_it_for_another_open_seconds():
    breaker = opened(BreakerConfig(open_seconds=5.0), at=0.0)
    assert breaker.allow(5.0)
    breaker.record(3, 0, 5.5)
    transition = breaker.record(2, 1, 6.0)
    assert transition == Transition(HALF_OPEN, OPEN, 6.0, "1 of 3 probes failed")
    assert not breaker.allow(10.9)
    assert breaker.allow(11.0) and breaker.state is HALF_OPEN


def test_probe_successes_close_it_and_clear_the_window():
    config = BreakerConfig(consecutive_failures=5, half_open_probes=10, min_requests=20)
    breaker = CircuitBreaker(config)
    breaker.record(10, 9, 0.0)  # 19 outcomes, nearly half failed
    breaker.record(0, 5, 0.0)
    assert breaker.state is OPEN
    assert breaker.allow(5.0)
    assert breaker.record(6, 0, 5.1) is None
    transition = breaker.record(4, 0, 5.2)
    assert transition == Transition(HALF_OPEN, CLOSED, 5.2, "10 probes succeeded")
    assert breaker.transitions == 3
    # The old failures are gone: a fresh 1-in-2 share needs min_requests outcomes again.
    breaker.record(9, 9, 6.0)
    assert breaker.state is CLOSED


def test_the_transition_counter_lets_a_caller_spot_changes():
    breaker = CircuitBreaker(BreakerConfig(open_seconds=1.0, half_open_probes=1))
    seen = breaker.transitions
    states = []
    for t, (ok, bad) in enumerate([(5, 0), (0, 5), (0, 0), (1, 0), (1, 0)]):
        if breaker.allow(float(t)):
            breaker.record(ok, bad, float(t))
        if breaker.transitions != seen:
            seen = breaker.transitions
            states.append(breaker.state)
    assert states == [OPEN, HALF_OPEN, CLOSED]


def test_empty_batches_change_nothing():
    breaker = CircuitBreaker()
    assert breaker.record(0, 0, 0.0) is None
    assert breaker.state is CLOSED


def test_negative_counts_are_refused():
    with pytest.raises(ValueError, match="must not be negative"):
        CircuitBreaker().record(-1, 0, 0.0)


@pytest.mark.parametrize("kwargs", [
    {"consecutive_failures": 0}, {"half_open_probes": 0}, {"failure_rate": 0},
    {"failure_rate": 1.5}, {"failure_rate": float("nan")}, {"min_requests": 0},
    {"min_requests": 200, "window": 100}, {"open_seconds": -1}, {"open_seconds": float("inf")},
])
def test_invalid_configs_are_refused(kwargs):
    with pytest.raises(ValueError):
        BreakerConfig(**kwargs)
