import numpy as np
import pytest

from pipeline.drift import (
    CodedRows,
    DriftError,
    DriftMonitor,
    ServedRows,
    reference_for_labels,
    references_for,
    watched_columns,
)

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
        reports += m.on_rows(coded(m, rows, rng.integers(0, 2, per_second), second))
    return reports


def coded(m, rows, classes, second, partition=0, first_offset=None):
    n = len(rows)
    first = second * n if first_offset is None else first_offset
    return CodedRows(m.counter.codes(watched_columns(rows, classes)), np.full(n, partition, np.int32),
                     np.arange(first, first + n, dtype=np.int64),
                     np.full(n, second * 1000 + 500, np.int64))


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


def window_sizes(reports):
    return [(r.end_s, f.report.feature, f.report.window_size, f.report.comparison.psi)
            for r in reports for f in r.features]


def test_rows_served_again_after_a_crash_are_counted_once():
    rng = np.random.default_rng(4)
    rows = rng.normal(size=(3000, 3)).astype(np.float32)
    classes = rng.integers(0, 2, 3000)
    batches = [coded(m := monitor(), rows[i:i + 1000], classes[i:i + 1000], 100 + i // 1000,
                     first_offset=i) for i in range(0, 3000, 1000)]
    closer = coded(m, rows[:1], classes[:1], 110, first_offset=3000)
    once = monitor()
    expected = [r for b in (*batches, closer) for r in once.on_rows(b)]
    replayed = monitor()
    got = replayed.on_rows(batches[0]) + replayed.on_rows(batches[1])
    # The worker crashed before committing: it serves from the first batch again, in
    # batches cut differently, and the window owner sees every row a second time.
    again = CodedRows.concatenate(batches[:2])
    got += replayed.on_rows(again.select(np.arange(len(again)) < 1500))
    got += replayed.on_rows(CodedRows.concatenate([again.select(np.arange(len(again)) >= 1500),
                                                   batches[2]]))
    got += replayed.on_rows(closer)
    assert window_sizes(got) == window_sizes(expected) != []


def test_each_partition_has_its_own_watermark():
    m = monitor()
    rng = np.random.default_rng(5)
    rows, classes = rng.normal(size=(10, 3)).astype(np.float32), rng.integers(0, 2, 10)
    m.on_rows(coded(m, rows, classes, 100, partition=0, first_offset=50))
    m.on_rows(coded(m, rows, classes, 100, partition=1, first_offset=0))  # lower offsets, new partition
    m.on_rows(coded(m, rows, classes, 100, partition=0, first_offset=55))  # half of them repeats
    assert m.window.panes[100].rows == 25
    restored = monitor()
    restored.restore(m.snapshot())
    restored.on_rows(coded(m, rows, classes, 100, partition=1, first_offset=5))
    assert restored.window.panes[100].rows == 30


def test_coded_rows_survive_the_wire():
    m = monitor()
    rows = np.array([[0.1, np.nan, np.inf], [9.0, -1.0, 0.0]], np.float32)
    sent = coded(m, rows, np.array([0, 1]), 100, partition=3, first_offset=7)
    received = CodedRows.from_bytes(sent.to_bytes())
    for name in ("codes", "partitions", "offsets", "timestamps_ms"):
        assert np.array_equal(getattr(received, name), getattr(sent, name))
    assert m.counter.tally(received.codes) == m.counter(np.column_stack([rows, [0, 1]]).astype(np.float32))


def test_rows_coded_at_the_flush_equal_the_batches_coded_one_by_one():
    m, rng = monitor(), np.random.default_rng(3)
    batches = [(rng.normal(size=(n, 3)).astype(np.float32), rng.integers(0, 2, n), second)
               for second, n in enumerate((1, 5, 40))]
    served = ServedRows(m.counter)
    for rows, classes, second in batches:
        one = coded(m, rows, classes, second, partition=second)
        served.add(watched_columns(rows, classes), one.partitions, one.offsets, one.timestamps_ms)
    whole = CodedRows.concatenate([coded(m, *batch, partition=batch[2]) for batch in batches])
    flushed = served.coded()
    for name in ("codes", "partitions", "offsets", "timestamps_ms"):
        assert np.array_equal(getattr(flushed, name), getattr(whole, name))


def test_truncated_coded_rows_are_refused_with_the_reason():
    m = monitor()
    data = coded(m, np.zeros((2, 3), np.float32), np.array([0, 1]), 100).to_bytes()
    with pytest.raises(DriftError, match="cannot be 54 bytes"):
        CodedRows.from_bytes(data[:-1])
    with pytest.raises(DriftError, match="shorter than their header"):
        CodedRows.from_bytes(b"\x01")
    with pytest.raises(DriftError, match="run one streamserve version"):
        CodedRows.from_bytes(b"\x02" + data[1:])


def test_delivery_runs_find_a_keys_messages_the_stream_skipped():
    from pipeline.drift import DeliveryRuns

    runs = DeliveryRuns()
    # Offsets 0-2 handed over before the seek, then 11: 8-10 never were.
    assert [runs.deliver(2, o, last_counted=7) for o in (0, 1, 2)] == [range(0)] * 3
    assert runs.deliver(2, 11, last_counted=7) == range(8, 11)
    # Consecutive offsets after a counted message miss nothing; nor does a fresh key.
    assert runs.deliver(2, 12, last_counted=11) == range(0)
    assert runs.deliver(2, 13, last_counted=None) == range(0)
    # Partitions are separate; a cleared run starts again at the next offset handed over.
    assert runs.deliver(0, 5, last_counted=4) == range(0)
    runs.clear()
    assert runs.deliver(2, 20, last_counted=13) == range(14, 20)
