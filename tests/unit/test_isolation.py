import numpy as np

from pipeline.isolation import RowFailure, serve_isolated


def doubling_model_failing_on(bad_values):
    calls = []

    def predict(rows):
        calls.append(len(rows))
        if np.isin(rows[:, 0], bad_values).any():
            raise ValueError("boom")
        return rows * 2
    return predict, calls


def test_healthy_batch_is_one_call():
    predict, calls = doubling_model_failing_on([])
    rows = np.arange(8, dtype=np.float32).reshape(8, 1)
    results = serve_isolated(predict, rows)
    assert calls == [8]
    assert [float(r[0]) for r in results] == [2.0 * i for i in range(8)]


def test_failing_rows_are_isolated_and_the_rest_served():
    predict, calls = doubling_model_failing_on([3, 6])
    rows = np.arange(16, dtype=np.float32).reshape(16, 1)
    results = serve_isolated(predict, rows)
    failed = [i for i, r in enumerate(results) if isinstance(r, RowFailure)]
    assert failed == [3, 6]
    assert "ValueError: boom" in results[3].error
    assert all(float(results[i][0]) == 2.0 * i for i in range(16) if i not in failed)
    assert len(calls) < 16  # bisection, not one call per row


def test_non_finite_outputs_fail_only_their_row():
    def predict(rows):
        out = rows.copy()
        out[1] = np.nan
        return out
    results = serve_isolated(predict, np.ones((3, 2), dtype=np.float32))
    assert isinstance(results[1], RowFailure) and "non-finite" in results[1].error
    assert not isinstance(results[0], RowFailure) and not isinstance(results[2], RowFailure)


def test_wrong_row_count_is_a_failure():
    results = serve_isolated(lambda rows: rows[:1], np.ones((1, 2)))
    assert len(results) == 1 and not isinstance(results[0], RowFailure)
    results = serve_isolated(lambda rows: np.ones((0, 2)), np.ones((2, 2)))
    assert all(isinstance(r, RowFailure) and "0 rows for 1 inputs" in r.error for r in results)
