from collections import deque

import numpy as np
import pytest

from pipeline.adaptive import BatchPolicy, CostModel, Decision, padding_waste
from pipeline.batching import buckets_for

BUCKETS = buckets_for(64)
BUDGET = 0.010


def policy(per_row=2e-6, fixed=1e-4, max_padding=0.1):
    return BatchPolicy(BUCKETS, BUDGET, CostModel(prior_per_row=per_row, prior_fixed=fixed), max_padding)


def feed(cost, per_row, fixed, calls, rng, noise=0.05):
    for i in range(calls):
        n = BUCKETS[i % len(BUCKETS)]
        cost.observe(n, (per_row * n + fixed) * (1 + noise * rng.standard_normal()))


def test_cost_model_uses_the_prior_before_any_observation():
    cost = CostModel(prior_per_row=1e-5, prior_fixed=1e-3)
    assert cost.predict(64) == pytest.approx(1e-5 * 64 + 1e-3)


def test_cost_model_recovers_per_row_and_fixed_cost_from_noisy_observations():
    cost = CostModel(prior_per_row=1e-5, prior_fixed=1e-3)
    feed(cost, 2e-6, 1e-4, calls=500, rng=np.random.default_rng(0))
    assert cost.per_row == pytest.approx(2e-6, rel=0.1)
    assert cost.fixed == pytest.approx(1e-4, rel=0.1)


def test_cost_model_follows_a_change_in_cost():
    cost = CostModel(prior_per_row=1e-5, prior_fixed=1e-3)
    rng = np.random.default_rng(1)
    feed(cost, 2e-6, 1e-4, calls=500, rng=rng)
    feed(cost, 5e-6, 4e-4, calls=300, rng=rng)  # a slower device, say
    assert cost.per_row == pytest.approx(5e-6, rel=0.1)
    assert cost.fixed == pytest.approx(4e-4, rel=0.1)


def test_one_size_fits_the_level_and_keeps_the_slope():
    cost = CostModel(prior_per_row=2e-6, prior_fixed=1e-3)
    for _ in range(50):
        cost.observe(64, 3e-4)
    assert cost.per_row == 2e-6
    assert cost.predict(64) == pytest.approx(3e-4)


def test_a_negative_slope_is_clamped_to_zero():
    cost = CostModel(prior_per_row=2e-6, prior_fixed=1e-4, forgetting=1.0)
    cost.observe(1, 2e-3)
    cost.observe(64, 1e-3)  # bigger and faster: noise, not physics
    assert cost.per_row == 0.0
    assert cost.fixed == pytest.approx(1.5e-3)


def test_a_negative_intercept_is_clamped_to_zero():
    cost = CostModel(prior_per_row=2e-6, prior_fixed=1e-4, forgetting=1.0)
    cost.observe(1, 1e-6)
    cost.observe(64, 1e-3)
    assert cost.fixed == 0.0
    assert cost.per_row == pytest.approx((1e-6 + 64e-3) / (1 + 64 * 64))


@pytest.mark.parametrize(("n", "seconds"), [(0, 1e-3), (4, -1e-3), (4, float("nan")), (4, float("inf"))])
def test_cost_model_refuses_impossible_observations(n, seconds):
    with pytest.raises(ValueError, match="observation"):
        CostModel(prior_per_row=1e-6, prior_fixed=1e-4).observe(n, seconds)


@pytest.mark.parametrize(
    ("per_row", "fixed", "forgetting"), [(0, 0, 0.98), (-1e-6, 1e-4, 0.98), (1e-6, 1e-4, 0), (1e-6, 1e-4, 1.5)]
)
def test_cost_model_refuses_a_bad_prior_or_forgetting(per_row, fixed, forgetting):
    with pytest.raises(ValueError):
        CostModel(prior_per_row=per_row, prior_fixed=fixed, forgetting=forgetting)


def test_heavy_traffic_runs_the_largest_bucket_at_once():
    assert policy().decide(queued=64, oldest_arrival=5.0, now=5.0) == Decision(take=64, wait=0.0, bucket=64)
    assert policy().decide(queued=300, oldest_arrival=5.0, now=5.0) == Decision(take=64, wait=0.0, bucket=64)


def test_light_traffic_waits_then_serves_when_the_budget_is_reached():
    p = policy()
    serve_at = 1.0 + BUDGET - p.cost.predict(64)
    first = p.decide(queued=4, oldest_arrival=1.0, now=1.002)
    assert first.take == 0 and first.bucket == 0
    assert first.wait == pytest.approx(serve_at - 1.002)
    assert p.decide(queued=4, oldest_arrival=1.0, now=1.002 + first.wait) == Decision(take=4, wait=0.0, bucket=4)
    assert p.decide(queued=4, oldest_arrival=1.0, now=1.0 + BUDGET + 1.0).take == 4  # long overdue


def test_little_padding_is_accepted():
    assert policy().decide(queued=30, oldest_arrival=0.0, now=BUDGET) == Decision(take=30, wait=0.0, bucket=32)


def test_much_padding_takes_the_bucket_below_and_leaves_the_rest():
    p = policy()
    serve_at = BUDGET - p.cost.predict(64)
    assert p.decide(queued=20, oldest_arrival=0.0, now=serve_at) == Decision(take=16, wait=0.0, bucket=16)


def test_leaving_the_rest_would_break_the_budget_so_everything_is_padded():
    p = policy()
    late = BUDGET - p.cost.predict(16) / 2  # the rest would start after oldest_arrival + BUDGET
    assert p.decide(queued=20, oldest_arrival=0.0, now=late) == Decision(take=20, wait=0.0, bucket=32)


def test_fewer_rows_than_the_smallest_bucket_are_padded_to_it():
    p = BatchPolicy((8, 16), BUDGET, CostModel(prior_per_row=2e-6, prior_fixed=1e-4))
    assert p.decide(queued=3, oldest_arrival=0.0, now=BUDGET) == Decision(take=3, wait=0.0, bucket=8)


def test_max_padding_zero_never_pads_when_the_rest_can_wait():
    p = policy(max_padding=0.0)
    assert p.decide(queued=31, oldest_arrival=0.0, now=BUDGET - p.cost.predict(64)).take == 16


@pytest.mark.parametrize(
    ("buckets", "budget", "max_padding"),
    [((), BUDGET, 0.1), ((4, 2), BUDGET, 0.1), ((0, 2), BUDGET, 0.1), (BUCKETS, 0.0, 0.1), (BUCKETS, BUDGET, 1.0)],
)
def test_policy_refuses_bad_settings(buckets, budget, max_padding):
    with pytest.raises(ValueError):
        BatchPolicy(buckets, budget, CostModel(prior_per_row=1e-6, prior_fixed=1e-4), max_padding)


def test_an_empty_queue_has_nothing_to_decide():
    with pytest.raises(ValueError, match="at least one queued row"):
        policy().decide(queued=0, oldest_arrival=0.0, now=0.0)


def test_padding_waste_is_the_padded_fraction():
    assert padding_waste(32, 32) == 0.0
    assert padding_waste(24, 32) == 0.25
    for rows, bucket in [(0, 4), (5, 4)]:
        with pytest.raises(ValueError):
            padding_waste(rows, bucket)


# A single worker serving a stream: the true cost is a·n + b with ±5% noise, unknown to the
# policy, whose cost model starts from a pessimistic prior and learns from every call.
TRUE_PER_ROW, TRUE_FIXED = 5e-5, 1e-3  # 4.2 ms at 64 rows: service time is a large part of the budget
CAPACITY = 64 / (TRUE_PER_ROW * 64 + TRUE_FIXED)  # rows/s at full batches, about 15,000


def simulate(rate, seconds=5.0, seed=0):
    """Queue waits and (rows, padded rows) per call for Poisson arrivals at ``rate`` rows/s."""
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1 / rate, int(rate * seconds)))
    p = BatchPolicy(BUCKETS, BUDGET, CostModel(prior_per_row=1e-4, prior_fixed=2e-3))
    queue, waits, calls = deque(), [], []
    now, i = 0.0, 0
    while i < len(arrivals) or queue:
        while i < len(arrivals) and arrivals[i] <= now:
            queue.append(arrivals[i])
            i += 1
        if not queue:
            now = arrivals[i]
            continue
        d = p.decide(len(queue), queue[0], now)
        if d.take == 0:  # woken by the timer or the next arrival, whichever is first
            now = min(now + d.wait, arrivals[i]) if i < len(arrivals) else now + d.wait
            continue
        waits.extend(now - queue.popleft() for _ in range(d.take))
        calls.append((d.take, d.bucket))
        service = (TRUE_PER_ROW * d.bucket + TRUE_FIXED) * (1 + 0.05 * rng.uniform(-1, 1))
        p.cost.observe(d.bucket, service)
        now += service
    return np.array(waits), np.array(calls)


@pytest.mark.parametrize("load", [0.001, 0.01, 0.1, 0.3, 0.6, 0.8])
def test_no_request_waits_longer_than_the_budget_and_one_call(load):
    waits, calls = simulate(load * CAPACITY)
    assert calls[:, 0].sum() == len(waits)  # every request served exactly once
    one_call = (TRUE_PER_ROW * 64 + TRUE_FIXED) * 1.05
    assert waits.max() <= BUDGET + one_call


def test_padding_waste_is_small_at_a_saturating_rate():
    _, calls = simulate(0.8 * CAPACITY)
    rows, padded = calls.sum(axis=0)
    assert 1 - rows / padded <= 0.10
