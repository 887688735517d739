import numpy as np
import pytest

from pipeline.batching import PaddingBuffers, buckets_for, choose_bucket, chunks, padded_size


@pytest.mark.parametrize(
    ("max_batch", "expected"),
    [(1, (1,)), (2, (1, 2)), (64, (1, 2, 4, 8, 16, 32, 64)), (100, (1, 2, 4, 8, 16, 32, 64, 100))],
)
def test_buckets_are_powers_of_two_then_max_batch(max_batch, expected):
    assert buckets_for(max_batch) == expected


def test_buckets_need_a_positive_max_batch():
    with pytest.raises(ValueError, match="at least 1"):
        buckets_for(0)


def test_choose_bucket_picks_the_smallest_that_fits():
    buckets = buckets_for(100)
    assert [choose_bucket(n, buckets) for n in (1, 2, 3, 4, 5, 64, 65, 100)] == [1, 2, 4, 4, 8, 64, 100, 100]


@pytest.mark.parametrize("n", [0, 101])
def test_choose_bucket_refuses_what_no_bucket_holds(n):
    with pytest.raises(ValueError):
        choose_bucket(n, buckets_for(100))


def test_chunks_cover_every_row_once():
    assert chunks(0, 64) == []
    assert chunks(64, 64) == [(0, 64)]
    assert chunks(150, 64) == [(0, 64), (64, 128), (128, 150)]
    with pytest.raises(ValueError):
        chunks(10, 0)


def test_fill_pads_with_zeros_and_reuses_the_buffer():
    buffers = PaddingBuffers(buckets_for(8), n_features=3)
    first = buffers.fill(np.full((7, 3), 9.0))
    assert first.shape == (8, 3) and first.dtype == np.float32
    rows = np.arange(15, dtype=np.float64).reshape(5, 3)
    second = buffers.fill(rows)
    assert second is first  # no allocation on the hot path
    np.testing.assert_array_equal(second[:5], rows)
    np.testing.assert_array_equal(second[5:], 0.0)  # the earlier batch's rows are gone
    assert buffers.fill(rows[:1]).shape == (1, 3)


def test_fill_checks_the_row_shape():
    buffers = PaddingBuffers((1, 2), n_features=3)
    with pytest.raises(ValueError, match=r"\(n, 3\)"):
        buffers.fill(np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="chunks"):
        buffers.fill(np.zeros((3, 3), np.float32))


def test_buffers_need_sorted_distinct_buckets():
    with pytest.raises(ValueError, match="ascending"):
        PaddingBuffers((4, 2), n_features=1)


def test_padded_size_counts_the_rows_computed():
    buckets = buckets_for(64)
    assert padded_size(1, buckets) == 1
    assert padded_size(5, buckets) == 8
    assert padded_size(64, buckets) == 64
    assert padded_size(70, buckets) == 64 + 8  # a full chunk, then 6 rows padded to 8
