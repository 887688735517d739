"""Drift math against independent implementations, on constructed cases (docs/design.md,
"Drift conventions")."""

import json
import math

import numpy as np
import pytest
import scipy.stats
from scipy.spatial.distance import jensenshannon

from pipeline.drift import (
    OTHER,
    ClosedWindow,
    Counts,
    DriftConfig,
    DriftError,
    DriftTracker,
    FeatureReference,
    MatrixCounter,
    MatrixCounts,
    PaneWindow,
    Verdict,
    compare,
    count,
    count_matrix,
    judge,
    pane_index,
    reference_for,
    reference_for_labels,
    references_for,
    report,
)


def direct_psi(ref_counts, cur_counts, floor=1e-4):
    """PSI written out from the convention, independent of pipeline.drift."""
    p = np.asarray(ref_counts, float) / np.sum(ref_counts)
    q = np.asarray(cur_counts, float) / np.sum(cur_counts)
    p = np.where(p < floor, floor, p)
    q = np.where(q < floor, floor, q)
    p, q = p / p.sum(), q / q.sum()
    return float(np.sum((q - p) * np.log(q / p)))


def smoothed(counts, floor=1e-4):
    p = np.maximum(np.asarray(counts, float) / np.sum(counts), floor)
    return p / p.sum()


def normal_reference(rng, n=20_000):
    return reference_for(rng.normal(size=n), "x")


# Reference statistics


def test_numeric_reference_has_decile_edges_open_outer_bins_and_searchsorted_counts():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, size=1001)
    ref = reference_for(x, "x")
    deciles = np.quantile(x, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9], method="linear")
    assert ref.kind == "numeric" and ref.n_bins == 10 and ref.n == 1001
    assert ref.edges[0] == -math.inf and ref.edges[-1] == math.inf
    np.testing.assert_array_equal(ref.edges[1:-1], deciles)
    np.testing.assert_array_equal(ref.counts, np.bincount(np.searchsorted(deciles, x, side="right"), minlength=10))
    assert (ref.minimum, ref.maximum) == (x.min(), x.max())


def test_a_value_on_an_edge_falls_in_the_bin_that_starts_there():
    ref = reference_for(np.arange(100.0), "x")
    edges = ref.edges
    for i in range(1, 10):  # bins are [e_i, e_i+1): e_i itself belongs to bin i
        assert count(ref, np.array([edges[i]])).bins.tolist() == [0] * i + [1] + [0] * (9 - i)
    assert count(ref, np.array([-1e300, 1e300])).bins.tolist() == [1] + [0] * 8 + [1]


def test_nan_is_masked_before_binning():
    rng = np.random.default_rng(1)
    x = rng.normal(size=500)
    with_nan = np.concatenate([x, [np.nan] * 50])
    ref = reference_for(with_nan, "x")
    assert ref == reference_for(x, "x")  # NaN plays no part in the edges or counts
    counts = count(ref, with_nan)
    assert counts.missing == 50 and counts.n == 500 and counts.total == 550
    assert counts.bins.tolist() == list(ref.counts)  # numpy alone would put the NaNs in the top bin
    assert np.searchsorted(ref.edges[1:-1], np.nan, side="right") == 9


def test_feature_with_at_most_20_distinct_values_is_categorical():
    rng = np.random.default_rng(2)
    twenty = rng.integers(0, 20, size=5000).astype(float)
    ref = reference_for(twenty, "k")
    assert ref.kind == "categorical" and ref.vocabulary == tuple(float(v) for v in range(20))
    assert ref.counts[-1] == 0 and ref.counts[:-1] == tuple(np.bincount(twenty.astype(int)).tolist())
    assert reference_for(rng.integers(0, 21, size=5000).astype(float), "k").kind == "numeric"


def test_feature_with_tied_decile_edges_is_categorical_with_top_n_and_other():
    rng = np.random.default_rng(3)
    # 60 % zeros: the first six deciles are all 0, though there are thousands of distinct values.
    x = np.concatenate([np.zeros(6000), rng.normal(5, 1, size=4000)])
    ref = reference_for(x, "x", top_n=5)
    assert ref.kind == "categorical"
    assert ref.vocabulary[0] == 0.0 and len(ref.vocabulary) == 5
    assert ref.counts[0] == 6000 and ref.counts[-1] == 10000 - 6000 - 4  # the rest are __OTHER__
    assert ref.to_json()["vocabulary"][-1] == OTHER


def test_top_n_keeps_the_most_frequent_values_ties_to_the_smaller():
    x = np.array([7.0] * 5 + [3.0] * 4 + [9.0] * 4 + [1.0] * 4 + [2.0])
    ref = reference_for(x, "k", top_n=3)
    assert ref.vocabulary == (1.0, 3.0, 7.0)  # 7 (5), then 1 and 3 beat 9 on value; kept in value order
    assert ref.counts == (4, 4, 5, 5)


def test_reference_for_labels_covers_every_class():
    ref = reference_for_labels(np.array([0, 0, 2, 2, 2]), n_classes=4)
    assert ref.kind == "categorical" and ref.name == "label"
    assert ref.vocabulary == (0.0, 1.0, 2.0, 3.0) and ref.counts == (2, 0, 3, 0, 0)
    counts = count(ref, np.array([1, 3, 5]))
    assert counts.bins.tolist() == [0, 1, 0, 1, 1] and counts.unseen == 1 and counts.out_of_range == 1
    with pytest.raises(DriftError, match="0..3"):
        reference_for_labels(np.array([0, 4]), n_classes=4)


@pytest.mark.parametrize("ref", [
    reference_for(np.random.default_rng(4).normal(size=300), "numeric"),
    reference_for(np.random.default_rng(4).integers(0, 6, size=300), "categorical"),
    reference_for_labels(np.array([0, 1, 1, 2]), n_classes=3),
], ids=lambda r: r.name)
def test_reference_json_round_trip_is_strict_json(ref):
    text = json.dumps(ref.to_json(), allow_nan=False)
    back = FeatureReference.from_json(json.loads(text))
    assert back == ref and back.edges == ref.edges
    assert json.loads(text)["n"] == ref.n


def test_reference_json_is_checked():
    d = reference_for(np.arange(100.0), "x").to_json()
    with pytest.raises(DriftError, match="disagrees"):
        FeatureReference.from_json({**d, "n": 5})
    with pytest.raises(DriftError, match="'-inf'"):
        FeatureReference.from_json({**d, "edges": d["edges"][1:]})
    with pytest.raises(DriftError, match="strictly increasing"):
        FeatureReference.from_json({**d, "edges": ["-inf", 2.0, 1.0, "inf"], "counts": [1, 1, 1], "n": 3})


# Counting


def test_unseen_category_lands_in_other():
    ref = reference_for(np.array([1.0, 2.0, 3.0] * 100), "k")
    counts = count(ref, np.array([1.0, 2.0, 2.0, 4.0, 2.5, np.nan]))
    assert counts.bins.tolist() == [1, 2, 0, 2] and counts.unseen == 2 and counts.missing == 1
    assert counts.out_of_range == 1  # 4.0 lies above the maximum 3.0; 2.5 does not
    r = report(ref, counts)
    assert r.unseen_share == 2 / 5 and r.window_size == 5 and r.missing_rate == 1 / 6


def test_out_of_range_and_non_finite_values():
    ref = reference_for(np.linspace(0.0, 1.0, 101), "x")
    counts = count(ref, np.array([-0.5, 0.0, 0.5, 1.0, 2.0, np.inf, -np.inf, np.nan]))
    assert counts.out_of_range == 2  # -0.5 and 2.0: the range is inclusive
    assert counts.non_finite == 2 and counts.missing == 1 and counts.n == 5 and counts.total == 8
    assert counts.bins[0] == 2 and counts.bins[-1] == 2  # out of range still counts, in the open outer bins
    r = report(ref, counts)
    assert r.out_of_range_share == 2 / 5 and r.non_finite == 2 and r.missing_rate == 1 / 8


def test_float32_values_of_the_reference_are_not_out_of_range_or_unseen():
    x = np.array([0.1, 0.2, 0.7, 0.3] * 10)
    ref = reference_for(x, "k")
    assert ref.kind == "categorical"
    c32 = count(ref, x.astype(np.float32))
    assert c32 == count(ref, x) and c32.out_of_range == 0 and c32.unseen == 0
    numeric = reference_for(np.linspace(0.1, 0.7, 50), "x")
    assert count(numeric, np.float32([0.1, 0.7])).out_of_range == 0


def test_vocabulary_values_that_collide_in_float32_share_one_bin():
    a, b = 0.1, float(np.nextafter(0.1, 1.0))  # distinct in float64, one value in float32
    ref = FeatureReference("k", "categorical", (5, 5, 0), a, b, vocabulary=(a, b))
    batch = np.float32([a, b, 3.0])
    counts = count(ref, batch)
    assert counts.bins.tolist() == [2, 0, 1] and counts.unseen == 1 and counts.out_of_range == 1
    assert MatrixCounter([ref])(batch[:, None]).feature(0) == counts
    assert count(ref, np.array([a, b, 3.0])).bins.tolist() == [1, 1, 1]


def test_counts_add_and_round_trip():
    a = Counts(np.array([1, 2, 3]), missing=1, non_finite=2, out_of_range=3, unseen=4)
    b = Counts(np.array([10, 0, 5]), missing=1)
    assert a + b == Counts(np.array([11, 2, 8]), 2, 2, 3, 4)
    assert Counts.from_json(json.loads(json.dumps(a.to_json()))) == a
    assert a + Counts.zeros(3) == a
    with pytest.raises(DriftError, match="different references"):
        a + Counts.zeros(4)


def tricky_batch(rng, refs, n, dtype):
    """Values on edges, at the range's ends, -0.0, NaN, +-inf, unseen categories."""
    x = rng.normal(size=(n, len(refs)))
    for j, r in enumerate(refs):
        if r.kind == "categorical":
            x[:, j] = rng.choice([*r.vocabulary, 99.0, -1.5], size=n)
        else:
            x[: len(r.edges) - 2, j] = r.edges[1:-1][:n]
        x[-3:, j] = [r.minimum, r.maximum, -0.0][-n:]
    x[rng.random(x.shape) < 0.05] = np.nan
    x[rng.random(x.shape) < 0.03] = np.inf
    x[rng.random(x.shape) < 0.03] = -np.inf
    return x.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matrix_counter_agrees_exactly_with_count(dtype):
    rng = np.random.default_rng(5)
    train = rng.normal(size=(3000, 6))
    train[:, 1] = rng.integers(0, 4, size=3000)
    train[:, 4] = np.where(rng.random(3000) < 0.7, 0.0, train[:, 4])  # tied edges
    train[:, 5] = np.round(train[:, 5], 1)
    refs = references_for(train, list("abcdef"))
    refs[2] = reference_for(train[:, 2], "c", n_bins=5)
    assert [r.kind for r in refs] == ["numeric", "categorical", "numeric", "numeric", "categorical", "numeric"]
    counter = MatrixCounter(refs)
    for n in (1, 64, 500):
        batch = tricky_batch(rng, refs, n, dtype)
        by_matrix = counter(batch)
        assert by_matrix.rows == n
        assert by_matrix.features() == [count(r, batch[:, j]) for j, r in enumerate(refs)]
    clean = rng.normal(size=(64, 6)).astype(dtype)
    assert counter(clean).features() == [count(r, clean[:, j]) for j, r in enumerate(refs)]
    assert count_matrix(refs, clean) == counter(clean).features()


def test_matrix_counts_merge_and_round_trip():
    rng = np.random.default_rng(6)
    refs = references_for(rng.normal(size=(1000, 3)), ["a", "b", "c"])
    counter = MatrixCounter(refs)
    a, b = rng.normal(size=(40, 3)), rng.normal(size=(24, 3))
    merged = counter(a) + counter(b)
    assert merged == counter(np.vstack([a, b])) and merged.total == 64
    assert MatrixCounts.from_json(json.loads(json.dumps(merged.to_json()))) == merged
    with pytest.raises(DriftError, match=r"shape \(n, 3\)"):
        counter(a[:, :2])


# Comparing


def test_compare_is_the_function_on_the_package_and_in_its_module():
    import importlib

    import pipeline.drift

    assert pipeline.drift.compare is compare
    assert importlib.import_module("pipeline.drift.compare").compare is compare
    assert compare([1, 1], [1, 1]).psi == 0.0


def test_reference_against_its_own_training_data_is_exactly_zero():
    rng = np.random.default_rng(7)
    x = rng.normal(size=5000)
    ref = reference_for(x, "x")
    c = report(ref, count(ref, x)).comparison
    assert c.psi == 0.0 and c.kl_ref_cur == 0.0 and c.kl_cur_ref == 0.0 and c.js_distance == 0.0
    assert compare([3, 0, 7], [3, 0, 7]).psi == 0.0


@pytest.mark.parametrize("seed", range(5))
def test_divergences_match_independent_implementations(seed):
    rng = np.random.default_rng(seed)
    ref = rng.integers(0, 500, size=10).tolist()
    cur = rng.integers(0, 500, size=10).tolist()
    cur[seed] = 0  # an empty bin on one side
    c = compare(ref, cur)
    p, q = smoothed(ref), smoothed(cur)
    assert c.psi == pytest.approx(direct_psi(ref, cur), rel=1e-12)
    assert c.kl_ref_cur == pytest.approx(scipy.stats.entropy(p, q), rel=1e-12)
    assert c.kl_cur_ref == pytest.approx(scipy.stats.entropy(q, p), rel=1e-12)
    assert c.psi == pytest.approx(c.kl_ref_cur + c.kl_cur_ref, rel=1e-12)
    assert c.js_distance == pytest.approx(jensenshannon(ref, cur, base=2), rel=1e-12)
    assert sum(c.psi_by_bin) == pytest.approx(c.psi, rel=1e-12)


def test_empty_bins_are_floored_then_renormalised():
    c = compare([100, 100], [200, 0])
    # q = [1, 1e-4] / 1.0001, p = [0.5, 0.5]: finite, although the current bin is empty.
    q = np.array([1.0, 1e-4]) / 1.0001
    assert c.psi == pytest.approx(float(np.sum((q - 0.5) * np.log(q / 0.5))), rel=1e-12)
    assert c.js_distance == pytest.approx(jensenshannon([1, 0], [0.5, 0.5], base=2), rel=1e-12)  # unsmoothed


def test_compare_refuses_what_cannot_be_compared():
    with pytest.raises(DriftError, match="same FeatureReference"):
        compare([1, 2, 3], [1, 2])
    with pytest.raises(DriftError, match="all zero"):
        compare([1, 2], [0, 0])
    with pytest.raises(DriftError, match="non-negative"):
        compare([1, -2], [1, 2])


def test_mean_shift_of_half_a_standard_deviation_drifts_at_large_m():
    rng = np.random.default_rng(8)
    ref = normal_reference(rng)
    shifted = report(ref, count(ref, rng.normal(0.5, 1.0, size=20_000)))
    assert shifted.comparison.psi > 0.2  # about 0.25, the continuous value of a 0.5 sd shift
    assert judge(shifted, n_features=4).status == "drift"
    same = report(ref, count(ref, rng.normal(size=20_000)))
    assert same.comparison.psi < 0.01 and judge(same, n_features=4).status == "stable"


def test_variance_change_drifts():
    rng = np.random.default_rng(9)
    ref = normal_reference(rng)
    wider = report(ref, count(ref, rng.normal(0.0, 1.5, size=20_000)))
    assert wider.comparison.psi > 0.1 and judge(wider, n_features=4).drifting
    # The mass moves to the outer bins and out of the middle ones.
    by_bin = wider.comparison.psi_by_bin
    assert by_bin[0] > by_bin[4] and by_bin[9] > by_bin[5]


def test_float32_inputs_match_float64_within_1e_6():
    rng = np.random.default_rng(10)
    train = rng.normal(size=20_000)
    current = rng.normal(0.3, 1.2, size=3000)
    for ref in (reference_for(train, "x"), reference_for(train.astype(np.float32), "x")):
        r64 = report(ref, count(ref, current)).comparison
        r32 = report(ref, count(ref, current.astype(np.float32))).comparison
        for name in ("psi", "kl_ref_cur", "kl_cur_ref", "js_distance"):
            assert abs(getattr(r64, name) - getattr(r32, name)) < 1e-6
    ref64, ref32 = reference_for(train, "x"), reference_for(train.astype(np.float32), "x")
    np.testing.assert_allclose(ref32.edges[1:-1], ref64.edges[1:-1], rtol=1e-6)


def test_psi_of_merged_panes_is_not_the_mean_of_pane_psis():
    reference = [50, 50]
    window = PaneWindow(size_s=20, hop_s=10)
    assert window.on_counts(0, Counts(np.array([90, 10]))) == []
    window.on_counts(1, Counts(np.array([10, 90])))
    [full, _] = window.on_counts(3, Counts(np.array([1, 1])))
    assert (full.start_s, full.end_s) == (0, 20)
    merged = full.counts  # panes 0 and 1
    assert merged.bins.tolist() == [100, 100]
    assert compare(reference, merged.bins.tolist()).psi == 0.0
    pane_psis = [compare(reference, [90, 10]).psi, compare(reference, [10, 90]).psi]
    assert np.mean(pane_psis) == pytest.approx(0.4 * math.log(1.8) + 0.4 * math.log(5), rel=1e-3)
    assert np.mean(pane_psis) > 0.8  # averaging would call drift where the window has none


# Windows


def test_pane_index_is_floor_of_time_over_hop():
    assert pane_index(1_700_000_009.9, 10) == 170_000_000
    assert pane_index(1_700_000_010.0, 10) == 170_000_001
    assert pane_index(-0.5, 10) == -1


def test_window_closes_by_event_time_and_sums_its_panes():
    w = PaneWindow(size_s=30, hop_s=10)
    one = Counts(np.array([1, 0]))
    t0 = 1_700_000_000
    assert w.on_counts(w.pane_of(t0 + 1), one) == []
    assert w.on_counts(w.pane_of(t0 + 9), one) == []  # same pane: nothing closes
    closed = w.on_counts(w.pane_of(t0 + 12), one)
    assert closed == [ClosedWindow(t0 - 20, t0 + 10, Counts(np.array([2, 0])))]
    assert w.on_counts(w.pane_of(t0 + 25), Counts(np.array([0, 5]))) == [
        ClosedWindow(t0 - 10, t0 + 20, Counts(np.array([3, 0])))]
    closed = w.on_counts(w.pane_of(t0 + 31), one)
    assert closed == [ClosedWindow(t0, t0 + 30, Counts(np.array([3, 5])))]  # the full window: panes 0, 1, 2


def test_a_gap_closes_only_windows_holding_counts_and_late_counts_are_dropped():
    w = PaneWindow(size_s=30, hop_s=10)
    w.on_counts(0, Counts(np.array([1])))
    closed = w.on_counts(1000, Counts(np.array([2])))
    assert [(c.start_s, c.end_s, c.counts.bins.tolist()) for c in closed] == [
        (-20, 10, [1]), (-10, 20, [1]), (0, 30, [1])]
    assert w.on_counts(997, Counts(np.array([7]))) == [] and w.late_rows == 7  # every window with 997 closed
    assert w.on_counts(998, Counts(np.array([4]))) == []  # window 998..1000 is still open
    assert w.on_eof()[0] == ClosedWindow(9980, 10010, Counts(np.array([6])))
    assert w.on_eof() == []


def test_window_state_survives_a_snapshot_and_restore():
    rng = np.random.default_rng(11)
    refs = references_for(rng.normal(size=(500, 2)), ["a", "b"])
    counter = MatrixCounter(refs)
    events = [(int(t), counter(rng.normal(size=(8, 2)))) for t in np.sort(rng.integers(0, 200, 40))]

    def run(window, part):
        return [(c.start_s, c.end_s, c.counts) for t, m in part for c in window.on_counts(window.pane_of(t), m)]

    straight = PaneWindow(60, 20)
    expected = run(straight, events) + [(c.start_s, c.end_s, c.counts) for c in straight.on_eof()]
    first = PaneWindow(60, 20)
    got = run(first, events[:17])
    state = json.loads(json.dumps(first.snapshot(), allow_nan=False))
    resumed = PaneWindow.restore(state, MatrixCounts.from_json)
    got += run(resumed, events[17:]) + [(c.start_s, c.end_s, c.counts) for c in resumed.on_eof()]
    assert got == expected and len(expected) > 5


def test_window_sizes_must_be_whole_multiples_of_the_hop():
    for size, hop in ((30, 20), (10, 0), (10.0, 5), (5, 10)):
        with pytest.raises(ValueError, match="whole seconds"):
            PaneWindow(size, hop)


# Verdict


def test_no_verdict_below_the_minimum_window():
    config = DriftConfig()
    assert config.min_window_size(10) == 200 and config.min_window_size(15) == 300
    ref = reference_for(np.random.default_rng(12).normal(size=5000), "x")
    far = np.full(199, 100.0)
    assert judge(report(ref, count(ref, far)), n_features=1) == Verdict("x", "insufficient", None, None, 199, 200)
    v = judge(report(ref, count(ref, np.full(200, 100.0))), n_features=1)
    assert v.status == "alert" and v.window_size == 200
    nans_only = report(ref, count(ref, np.full(500, np.nan)))
    assert nans_only.comparison is None and judge(nans_only, 1).status == "insufficient"


def test_bonferroni_threshold_matches_a_hand_computation():
    config = DriftConfig(alpha=0.05)
    # F = 5: alpha/F = 0.01, and a chi-square table gives chi2_9 at 0.99 = 21.666.
    assert config.psi_threshold(n_bins=10, n_features=5, n_reference=200, window_size=200) == pytest.approx(
        21.666 * (1 / 200 + 1 / 200), rel=1e-4)
    assert config.psi_threshold(10, 5, 1000, 500) == 0.1  # 21.666 * 0.003 = 0.065: the floor wins
    # F = 1: chi2_9 at 0.95 = 16.919.
    assert config.psi_threshold(10, 1, 100, 300) == pytest.approx(16.919 * (1 / 100 + 1 / 300), rel=1e-4)
    assert DriftConfig(psi_floor=0.0).psi_threshold(10, 5, 1000, 500) == pytest.approx(21.666 * 0.003, rel=1e-4)


def test_tiers_use_the_threshold_and_the_alert_level():
    def verdict(psi, n_reference=100_000, m=100_000, k=10):
        from pipeline.drift import Comparison, FeatureReport
        c = Comparison(psi, psi / 2, psi / 2, 0.0, ())
        return judge(FeatureReport("x", "numeric", c, n_reference, k, m, m, 0.0, 0, 0.0, 0.0), n_features=4)

    assert verdict(0.099).status == "stable"
    assert verdict(0.1).status == "drift" and verdict(0.249).status == "drift"
    assert verdict(0.25).status == "alert"
    # Small samples raise the threshold above the floor (and above 0.25 for the alert tier).
    small = verdict(0.3, n_reference=100, m=200)  # threshold 21.03 * (1/100 + 1/200) = 0.32
    assert small.threshold > 0.3 and small.status == "stable"
    middle = verdict(0.2, n_reference=300, m=300)  # threshold 21.03 * 2/300 = 0.14
    assert 0.1 < middle.threshold < 0.2 and middle.status == "drift"


def test_a_drift_event_needs_two_consecutive_drifting_windows():
    def v(status, psi=0.3):
        return Verdict("x", status, psi, 0.1, 1000, 200)

    tracker = DriftTracker()
    assert tracker.on_verdict(v("drift")) is None
    assert tracker.on_verdict(v("stable", 0.01)) is None  # the run is broken
    assert tracker.on_verdict(v("drift")) is None
    assert tracker.on_verdict(v("insufficient", None)) is None  # so is it by a window without a verdict
    assert tracker.on_verdict(v("drift")) is None
    event = tracker.on_verdict(v("alert", 0.4))
    assert event is not None and (event.feature, event.status, event.psi, event.windows) == ("x", "alert", 0.4, 2)
    assert tracker.drifting and tracker.on_verdict(v("drift")) is None  # once per run
    restored = DriftTracker.restore(json.loads(json.dumps(tracker.snapshot())))
    assert restored.drifting and restored.on_verdict(v("drift")) is None
    assert restored.on_verdict(v("stable")) is None and not restored.drifting


def test_three_window_rule_when_configured():
    tracker = DriftTracker(DriftConfig(consecutive=3))
    events = [tracker.on_verdict(Verdict("x", "drift", 0.2, 0.1, 500, 200)) for _ in range(4)]
    assert [e is not None for e in events] == [False, False, True, False]


def test_config_is_validated():
    with pytest.raises(ValueError, match="alpha"):
        DriftConfig(alpha=0.0)
    with pytest.raises(ValueError, match="psi_floor"):
        DriftConfig(psi_floor=0.3, alert_psi=0.25)


def test_end_to_end_windows_of_a_shifted_stream_raise_one_event():
    rng = np.random.default_rng(13)
    names = ["a", "b", "c"]
    refs = references_for(rng.normal(size=(10_000, 3)), names)
    counter, window = MatrixCounter(refs), PaneWindow(size_s=60, hop_s=30)
    trackers = {n: DriftTracker() for n in names}
    events = []
    for second in range(0, 600, 2):
        batch = rng.normal(size=(16, 3))
        if second >= 300:
            batch[:, 1] += 1.0  # feature b shifts half way through
        for closed in window.on_counts(window.pane_of(second), counter(batch)):
            for ref, counts in zip(refs, closed.counts.features()):
                verdict = judge(report(ref, counts), n_features=len(refs))
                if (event := trackers[ref.name].on_verdict(verdict)) is not None:
                    events.append((closed.end_s, event.feature, event.status))
    assert events == [(360, "b", "alert")]


def test_a_grace_period_keeps_windows_open_for_rows_out_of_order():
    w = PaneWindow(size_s=20, hop_s=10, grace_s=10)
    one = Counts(np.array([1]))
    assert w.on_counts(0, one) == []
    assert w.on_counts(1, one) == []  # stream time passed pane 0's window, but not its grace
    assert w.on_counts(0, one) == []  # a row behind another partition's: still counted
    closed = w.on_counts(2, one)
    assert [(c.start_s, c.end_s, int(c.counts.bins[0])) for c in closed] == [(-10, 10, 2)]
    assert w.on_counts(0, one) == [] and w.late_rows == 0  # window 0..1 is open until pane 3
    assert w.on_counts(4, one)[0] == ClosedWindow(0, 20, Counts(np.array([4])))
    assert w.on_counts(1, one) == [] and w.late_rows == 1  # beyond the grace: dropped, tallied
    restored = PaneWindow.restore(w.snapshot(), Counts.from_json)
    assert restored.grace_s == 10 and [c.end_s for c in restored.on_eof()] == [40, 50, 60]


def test_grace_must_be_whole_hops():
    with pytest.raises(ValueError, match="grace multiples of the hop"):
        PaneWindow(size_s=20, hop_s=10, grace_s=5)
