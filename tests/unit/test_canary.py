import numpy as np
import pytest

from pipeline.canary import CanaryJudge, CanaryPolicy, CanaryVerdict
from pipeline.routing import Route

STABLE, CANARY = Route.STABLE, Route.CANARY


def feed(judge: CanaryJudge, route: Route, n: int, *, error_rate: float = 0.0, latency_ms: float = 10.0,
         class_p: tuple[float, ...] = (0.5, 0.3, 0.2), seed: int = 0, batch: int = 50) -> None:
    """``n`` requests in batches, with the given error rate, latencies around ``latency_ms``
    and predicted classes drawn with probabilities ``class_p``."""
    rng = np.random.default_rng(seed)
    for start in range(0, n, batch):
        size = min(batch, n - start)
        errors = int(rng.binomial(size, error_rate))
        ok = size - errors
        latencies = rng.uniform(0.8, 1.2, ok) * latency_ms / 1000
        classes = rng.choice(len(class_p), ok, p=class_p)
        judge.observe(route, errors, latencies.tolist(), classes.tolist())


def healthy_pair(policy: CanaryPolicy, n: int = 1000) -> CanaryJudge:
    judge = CanaryJudge(policy, n_classes=3)
    feed(judge, STABLE, n, error_rate=0.01, seed=1)
    feed(judge, CANARY, n, error_rate=0.01, seed=2)
    return judge


def test_below_min_requests_it_waits():
    judge = CanaryJudge(CanaryPolicy(min_requests=200), n_classes=3)
    assert judge.verdict() == CanaryVerdict("wait", "waiting for 200 requests per arm: canary has 0, stable 0")
    feed(judge, STABLE, 1000)
    feed(judge, CANARY, 150, error_rate=0.5)  # bad, but too few to judge
    verdict = judge.verdict()
    assert verdict.action == "wait" and "canary has 150, stable 1000" in verdict.reason


def test_a_healthy_canary_is_healthy():
    verdict = healthy_pair(CanaryPolicy()).verdict()
    assert verdict.action == "healthy"
    assert "over the last 1000 canary and 1000 stable requests" in verdict.reason
    assert "p99" in verdict.reason and "output PSI" in verdict.reason


def test_a_healthy_canary_is_promoted_after_n_requests():
    judge = CanaryJudge(CanaryPolicy(promote_after=3000), n_classes=3)
    feed(judge, STABLE, 1000, seed=1)
    feed(judge, CANARY, 2000, seed=2)
    assert judge.verdict().action == "healthy"
    feed(judge, CANARY, 1000, seed=3)
    verdict = judge.verdict()
    assert verdict.action == "promote"
    assert verdict.reason.startswith("canary served 3000 requests (>= 3000) with no breach")
    assert judge.requests(CANARY) == 3000 and judge.requests(STABLE) == 1000


def test_an_error_rate_breach_rolls_back_with_the_figures():
    judge = CanaryJudge(CanaryPolicy(), n_classes=3)
    for _ in range(20):
        judge.observe(STABLE, 1, [0.01] * 49, [0] * 49)
        judge.observe(CANARY, 5, [0.01] * 45, [0] * 45)
    verdict = judge.verdict()
    assert verdict.action == "rollback"
    assert verdict.reason == ("canary error rate 10.0% (100 of 1000) exceeds stable's 2.0% (20 of 1000) "
                              "by 8.0 points > 5 allowed")


def test_an_error_rate_within_the_allowance_is_healthy():
    judge = CanaryJudge(CanaryPolicy(), n_classes=3)
    for _ in range(20):
        judge.observe(STABLE, 1, [0.01] * 49, [0] * 49)
        judge.observe(CANARY, 3, [0.01] * 47, [0] * 47)  # 6% vs 2%
    assert judge.verdict().action == "healthy"


def test_a_latency_breach_rolls_back_with_the_figures():
    judge = CanaryJudge(CanaryPolicy(), n_classes=3)
    for _ in range(10):
        judge.observe(STABLE, 0, [0.012] * 100, [0] * 100)
        judge.observe(CANARY, 0, [0.0412] * 100, [0] * 100)
    verdict = judge.verdict()
    assert verdict.action == "rollback"
    assert verdict.reason == ("canary p99 41.2 ms > 2 x stable p99 12.0 ms + 5 ms, in 10 of its model "
                              "calls over the last 1000 canary and 1000 stable requests")


def one_paused_call(policy: CanaryPolicy) -> CanaryJudge:
    """Stable at 0.3 ms; the canary too, but for one call paused for 6.3 ms: every request
    of a batch takes its call's time, so it carries a fifth of the canary's requests, and
    its p99, past 2 x 0.3 + 5 ms."""
    judge = CanaryJudge(policy, n_classes=3)
    for _ in range(10):
        judge.observe(STABLE, 0, [0.0003] * 20, [0] * 20)
    for latency in [0.0003] * 4 + [0.0063]:
        judge.observe(CANARY, 0, [latency] * 40, [0] * 40)
    return judge


def test_one_slow_call_is_one_event_however_many_requests_it_carried():
    judge = one_paused_call(CanaryPolicy())
    verdict = judge.verdict()
    assert verdict.action == "healthy" and "p99 6.3 ms vs 0.3 ms" in verdict.reason
    judge.observe(CANARY, 0, [0.0063], [0])
    assert judge.verdict().action == "healthy"  # two slow calls
    judge.observe(CANARY, 0, [0.0003] * 5 + [0.0063], [0] * 6)  # a third
    verdict = judge.verdict()
    assert verdict.action == "rollback" and "in 3 of its model calls" in verdict.reason
    assert one_paused_call(CanaryPolicy(min_slow_calls=1)).verdict().action == "rollback"


def test_latency_within_ratio_and_slack_is_healthy():
    judge = CanaryJudge(CanaryPolicy(), n_classes=3)
    for _ in range(10):
        judge.observe(STABLE, 0, [0.012] * 100, [0] * 100)
        judge.observe(CANARY, 0, [0.028] * 100, [0] * 100)  # 28 < 2 x 12 + 5
    assert judge.verdict().action == "healthy"


def test_p99_looks_at_the_tail():
    judge = CanaryJudge(CanaryPolicy(), n_classes=3)
    feed(judge, STABLE, 1000, latency_ms=10)
    # 5% of canary requests take 200 ms: the median is fine, the p99 is not.
    for _ in range(10):
        judge.observe(CANARY, 0, [0.010] * 95 + [0.200] * 5, [0] * 100)
    verdict = judge.verdict()
    assert verdict.action == "rollback" and "canary p99 200.0 ms" in verdict.reason


def test_an_output_distribution_breach_rolls_back_with_the_figures():
    judge = CanaryJudge(CanaryPolicy(), n_classes=3)
    feed(judge, STABLE, 1000, class_p=(0.5, 0.3, 0.2), seed=1)
    feed(judge, CANARY, 1000, class_p=(0.1, 0.3, 0.6), seed=2)
    verdict = judge.verdict()
    assert verdict.action == "rollback"
    assert "predicted-class distribution differs from stable's: PSI" in verdict.reason
    assert "> 0.25 over the last 1000 canary and 1000 stable requests" in verdict.reason
    psi = float(verdict.reason.split("PSI ")[1].split(" ")[0])
    assert psi > 0.25


def test_a_rollback_verdict_is_sticky():
    judge = CanaryJudge(CanaryPolicy(window=200, min_requests=200), n_classes=3)
    feed(judge, STABLE, 200)
    judge.observe(CANARY, 200, [], [])
    first = judge.verdict()
    assert first.action == "rollback"
    feed(judge, CANARY, 1000)  # the window is healthy again
    assert judge.verdict() == first


def test_memory_is_bounded_by_the_window():
    judge = CanaryJudge(CanaryPolicy(window=300, min_requests=200), n_classes=3)
    feed(judge, STABLE, 300)
    judge.observe(CANARY, 300, [], [])  # a bad start...
    feed(judge, CANARY, 5000, batch=700)  # ...long gone, even through batches larger than the window
    assert judge._arms[CANARY].latency.size == 300
    assert judge.requests(CANARY) == 5300


def test_the_window_keeps_the_latest_outcomes_across_wraparound():
    judge = CanaryJudge(CanaryPolicy(window=250, min_requests=200), n_classes=3)
    for _ in range(7):
        judge.observe(STABLE, 0, [0.01] * 90, [1] * 90)
        judge.observe(CANARY, 0, [0.01] * 90, [1] * 90)
    judge.observe(CANARY, 10, [0.01] * 80, [1] * 80)
    # 10 errors among the last 250 canary outcomes: 4%, within 5 points.
    assert judge.verdict().action == "healthy"
    judge.observe(CANARY, 5, [], [])
    verdict = judge.verdict()
    assert verdict.action == "rollback" and "(15 of 250)" in verdict.reason


def test_all_errors_on_stable_still_compares_error_rates():
    judge = CanaryJudge(CanaryPolicy(), n_classes=3)
    judge.observe(STABLE, 1000, [], [])
    feed(judge, CANARY, 1000)
    verdict = judge.verdict()
    assert verdict.action == "healthy" and "p99 " in verdict.reason and "n/a" in verdict.reason


@pytest.mark.parametrize("args, match", [
    ((Route.SHADOW, 0, [], []), "stable and canary routes"),
    ((STABLE, -1, [], []), "must not be negative"),
    ((STABLE, 0, [0.1], []), "one latency per prediction"),
    ((STABLE, 0, [float("nan")], [0]), "finite"),
    ((STABLE, 0, [-0.1], [0]), "finite"),
    ((STABLE, 0, [0.1], [3]), r"integers in 0\.\.2"),
    ((STABLE, 0, [0.1], [0.5]), "integers"),
])
def test_bad_observations_are_refused(args, match):
    with pytest.raises(ValueError, match=match):
        CanaryJudge(CanaryPolicy(), n_classes=3).observe(*args)


@pytest.mark.parametrize("kwargs", [
    {"min_requests": 0}, {"min_requests": 2000}, {"max_error_rate_increase": -0.1},
    {"max_p99_ratio": 0.5}, {"p99_slack_ms": -1}, {"max_output_psi": 0},
    {"promote_after": 10}, {"min_slow_calls": 0},
])
def test_invalid_policies_are_refused(kwargs):
    with pytest.raises(ValueError):
        CanaryPolicy(**kwargs)


def test_n_classes_must_be_positive():
    with pytest.raises(ValueError, match="n_classes"):
        CanaryJudge(CanaryPolicy(), n_classes=0)


def feed_values(judge: CanaryJudge, route: Route, n: int, *, mean: float, seed: int) -> None:
    """``n`` regressor answers around ``mean``, in batches of 50."""
    rng = np.random.default_rng(seed)
    for _ in range(n // 50):
        judge.observe(route, 0, [0.01] * 50, rng.normal(mean, 10.0, 50))


def test_a_regressor_canary_is_judged_on_its_values_binned_at_stables_quartiles():
    judge = CanaryJudge(CanaryPolicy(), n_classes=None)
    feed_values(judge, STABLE, 1000, mean=100.0, seed=1)
    feed_values(judge, CANARY, 1000, mean=100.0, seed=2)
    assert judge.verdict().action == "healthy"

    shifted = CanaryJudge(CanaryPolicy(), n_classes=None)
    feed_values(shifted, STABLE, 1000, mean=100.0, seed=1)
    feed_values(shifted, CANARY, 1000, mean=110.0, seed=2)  # one standard deviation higher
    verdict = shifted.verdict()
    assert verdict.action == "rollback"
    assert verdict.reason.startswith("canary value (binned at stable's quartiles) distribution "
                                     "differs from stable's: PSI"), verdict.reason


def test_a_regressors_observations_must_be_finite_numbers():
    judge = CanaryJudge(CanaryPolicy(), n_classes=None)
    with pytest.raises(ValueError, match="finite numbers"):
        judge.observe(STABLE, 0, [0.1], [float("nan")])

