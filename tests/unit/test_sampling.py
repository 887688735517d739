import math

import pytest

from pipeline.sampling import sampled

N = 100_000


def test_rate_zero_never_samples_and_rate_one_always_does():
    ids = [f"r-{i}" for i in range(10_000)] + ["", "\ud800", "é" * 256]
    assert not any(sampled(i, 0) for i in ids)
    assert all(sampled(i, 1) for i in ids)
    assert all(sampled(i, 1.0) for i in ids)


def test_choice_is_deterministic_by_id():
    first = [sampled(f"r-{i}", 0.3) for i in range(1_000)]
    assert first == [sampled(f"r-{i}", 0.3) for i in range(1_000)]


def test_a_higher_rate_keeps_every_id_a_lower_rate_chose():
    # One threshold on one hash: raising the rate only adds ids, so samples nest.
    for i in range(5_000):
        if sampled(f"r-{i}", 0.01):
            assert sampled(f"r-{i}", 0.3)


@pytest.mark.parametrize("rate", [-0.01, 1.01, float("nan"), float("inf"), -float("inf")])
def test_rates_outside_zero_to_one_are_refused(rate):
    with pytest.raises(ValueError, match="between 0 and 1"):
        sampled("r-1", rate)


@pytest.mark.parametrize("rate", [0.01, 0.3])
def test_observed_share_is_within_binomial_tolerance(rate):
    hits = sum(sampled(f"r-{i}", rate) for i in range(N))
    sd = math.sqrt(N * rate * (1 - rate))
    assert abs(hits - N * rate) < 4 * sd


def test_ids_differing_by_one_character_are_uncorrelated():
    rate = 0.3
    a = [sampled(f"a-{i}", rate) for i in range(N)]
    b = [sampled(f"b-{i}", rate) for i in range(N)]
    both = sum(x and y for x, y in zip(a, b))
    p = rate * rate
    assert abs(both - N * p) < 4 * math.sqrt(N * p * (1 - p))
