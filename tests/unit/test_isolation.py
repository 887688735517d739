import numpy as np

from pipeline.isolation import serve_isolated


def doubling_model_failing_on(bad_values):
    calls = []

    def predict(rows):
        calls.append(len(rows))
        if np.isin(rows[:, 0], bad_values).any():
            raise ValueError("boom")
        return rows * 2
    return predict, calls


def test_healthy_batch_is_one_call_and_its_output_unchanged():
    predict, calls = doubling_model_failing_on([])
    rows = np.arange(8, dtype=np.float32).reshape(8, 1)
    answers = serve_isolated(predict, rows)
    assert calls == [8] and not answers.failures
    assert answers.values[:, 0].tolist() == [2.0 * i for i in range(8)]
    assert answers.answered(range(8)) == list(range(8))


def test_failing_rows_are_isolated_and_the_rest_served():
    predict, calls = doubling_model_failing_on([3, 6])
    rows = np.arange(16, dtype=np.float32).reshape(16, 1)
    answers = serve_isolated(predict, rows)
    assert sorted(answers.failures) == [3, 6]
    assert "ValueError: boom" in answers.failures[3].error
    assert answers.answered(range(16)) == [i for i in range(16) if i not in (3, 6)]
    assert all(float(answers.values[i, 0]) == 2.0 * i for i in answers.answered(range(16)))
    assert answers.of(3) is answers.failures[3] and float(answers.of(4)[0]) == 8.0
    assert len(calls) < 16  # bisection, not one call per row


def test_non_finite_outputs_fail_only_their_row():
    def predict(rows):
        out = rows.copy()
        out[1] = np.nan
        return out
    answers = serve_isolated(predict, np.ones((3, 2), dtype=np.float32))
    assert list(answers.failures) == [1] and "non-finite" in answers.failures[1].error
    assert answers.answered([0, 1, 2]) == [0, 2]


def test_wrong_row_count_is_a_failure():
    answers = serve_isolated(lambda rows: rows[:1], np.ones((1, 2)))
    assert len(answers) == 1 and not answers.failures
    answers = serve_isolated(lambda rows: np.ones((0, 2)), np.ones((2, 2)))
    assert sorted(answers.failures) == [0, 1]
    assert all("0 rows for 1 inputs" in f.error for f in answers.failures.values())


def test_rows_answered_in_different_shapes_fail_apart_from_the_first_shape():
    def predict(rows):  # a model whose output width depends on its input: a broken one
        if len(rows) > 1:
            raise ValueError("one at a time")
        return np.ones((1, 2 if rows[0, 0] < 2 else 3))
    answers = serve_isolated(predict, np.arange(4, dtype=np.float32).reshape(4, 1))
    assert answers.values.shape == (4, 2) and answers.answered(range(4)) == [0, 1]
    assert "shape (3,) here and (2,)" in answers.failures[2].error
