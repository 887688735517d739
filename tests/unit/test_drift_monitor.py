import numpy as np

from pipeline.drift import DriftMonitor, reference_for_labels, references_for

NAMES = ("a", "b", "c")


def monitor(window_s=2, hop_s=1):
    rng = np.random.default_rng(0)
    train = rng.normal(size=(5000, 3)).astype(np.float32)
    references = [*references_for(train, NAMES), reference_for_labels(rng.integers(0, 2, 5000), 2)]
    return DriftMonitor(references, window_s, hop_s)


def stream(m, seconds, shift=0.0, seed=1, per_second=2000, rng=None):
    rng = rng or np.random.default_rng(seed)
    reports = []
    for second in seconds:
        rows = rng.normal(size=(per_second, 3)).astype(np.float32)
        rows[:, 1] += shift
        counts = m.count(rows, rng.integers(0, 2, per_second))
        reports += m.on_counts(second + 0.5, counts)
    return reports


def events(reports):
    return [(r.start_s, f.event.feature) for r in reports for f in r.features if f.event]


def test_in_distribution_traffic_raises_no_event():
    reports = stream(monitor(), range(100, 110))
    assert reports and not events(reports)
    assert all(f.verdict.status == "stable" for r in reports for f in r.features)


def test_a_shifted_feature_raises_one_event_for_it_alone_within_two_windows():
    m = monitor()
    stream(m, range(100, 104))
    found = events(stream(m, range(104, 108), shift=0.5, seed=2))
    assert found and {feature for _, feature in found} == {"b"}
    assert found[0][0] <= 104 + 2  # the second window wholly after the shift


def test_a_restored_monitor_continues_exactly():
    def psis(reports):
        return [(r.end_s, f.report.feature, f.report.comparison.psi, f.verdict.status)
                for r in reports for f in r.features]
    whole = monitor()
    expected = stream(whole, range(100, 108), shift=0.5, rng=np.random.default_rng(3))
    rng = np.random.default_rng(3)
    split = monitor()
    first = stream(split, range(100, 104), shift=0.5, rng=rng)
    restored = monitor()
    restored.restore(split.snapshot())
    rest = stream(restored, range(104, 108), shift=0.5, rng=rng)
    assert psis(first + rest) == psis(expected) and len(expected) == 7
    assert events(first + rest) == events(expected) != []
