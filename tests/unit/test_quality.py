import math
from datetime import UTC, datetime

import numpy as np
import orjson
import pytest
from sklearn.metrics import brier_score_loss, log_loss, mean_absolute_error, precision_score, recall_score

from pipeline.quality import (
    Entry,
    Kept,
    Label,
    LabelRefusal,
    Outcome,
    Scores,
    below_training,
    canary_worse,
    decode_label,
)

CLASSES = ("setosa", "versicolor", "virginica")


def kept(predicted=0, probabilities=(0.8, 0.15, 0.05), time=100.0, route="stable", dead_letter=None):
    return Kept("iris", "1", route, time, predicted, probabilities, dead_letter=dead_letter)


def label(truth="setosa", time=None, id_="r-1"):
    return Label(id_, truth, None, time) if isinstance(truth, str) else Label(id_, None, truth, time)


# The label message.

def test_a_class_label_a_value_label_and_a_time_decode():
    assert decode_label(b"r-1", b'{"id": "r-1", "label": "setosa"}') == Label("r-1", "setosa", None, None)
    assert decode_label(None, b'{"id": "r-1", "value": 12}') == Label("r-1", None, 12.0, None)
    dated = decode_label(None, b'{"id": "r-1", "label": "x", "time": "2026-12-07T08:00:00+01:00"}')
    assert dated.time == datetime(2026, 12, 7, 7, tzinfo=UTC).timestamp()
    assert decode_label(None, b'{"id": "r-1", "value": 1, "time": "2026-12-07T08:00:00"}').time == \
        datetime(2026, 12, 7, 8, tzinfo=UTC).timestamp()


def test_the_key_names_the_request_when_the_body_does_not():
    assert decode_label(b"r-9", b'{"label": "setosa"}') == Label("r-9", "setosa", None, None)


@pytest.mark.parametrize(("key", "raw", "outcome", "says"), [
    (None, b"", Outcome.MALFORMED, "empty"),
    (None, b"x" * 5000, Outcome.MALFORMED, "over the 4096"),
    (None, b"{nope", Outcome.MALFORMED, "not JSON"),
    (None, b"[1, 2]", Outcome.MALFORMED, "JSON list"),
    (None, b'{"label": "setosa"}', Outcome.MISSING_ID, "names no request"),
    (None, b'{"id": 7, "label": "setosa"}', Outcome.MALFORMED, "names no request"),
    (b"r-2", b'{"id": "r-1", "label": "setosa"}', Outcome.MALFORMED, "differ"),
    (None, b'{"id": "r-1", "label": "a", "value": 1}', Outcome.MALFORMED, "not both"),
    (None, b'{"id": "r-1"}', Outcome.MALFORMED, "not neither"),
    (None, b'{"id": "r-1", "label": 3}', Outcome.MALFORMED, "class name"),
    (None, b'{"id": "r-1", "value": "3"}', Outcome.MALFORMED, "finite number"),
    (None, b'{"id": "r-1", "value": true}', Outcome.MALFORMED, "finite number"),
    (None, b'{"id": "r-1", "value": 1e999}', Outcome.MALFORMED, "not JSON"),
    (None, b'{"id": "r-1", "label": "a", "time": "yesterday"}', Outcome.MALFORMED, "ISO 8601"),
    (None, b'{"id": "r-1", "label": "a", "time": 5}', Outcome.MALFORMED, "ISO 8601"),
    (None, b'{"id": "r-1", "label": "a", "email": "x@y"}', Outcome.MALFORMED, "may hold only"),
])
def test_a_label_that_cannot_be_read_says_what_to_fix(key, raw, outcome, says):
    refusal = decode_label(key, raw)
    assert isinstance(refusal, LabelRefusal)
    assert refusal.outcome is outcome
    assert says in refusal.error


# The join of one request id.

def test_a_label_after_its_prediction_is_scored_with_its_delay():
    entry = Entry()
    assert entry.on_prediction(kept(time=100.0), now=100.0) == []
    [judged] = entry.on_label(label(), now=160.0)
    assert judged.outcome is Outcome.SCORED and judged.truth == "setosa"
    assert judged.delay_s == 60.0


def test_the_labels_own_time_dates_the_outcome():
    entry = Entry(kept=kept(time=100.0))
    [judged] = entry.on_label(label(time=130.0), now=500.0)
    assert judged.delay_s == 30.0


def test_a_label_before_its_prediction_waits_and_is_scored_when_it_comes():
    entry = Entry()
    assert entry.on_label(label("virginica"), now=50.0) == []
    [judged] = entry.on_prediction(kept(time=100.0), now=100.0)
    assert (judged.outcome, judged.truth) == (Outcome.SCORED, "virginica")


def test_a_prediction_served_again_changes_nothing():
    entry = Entry(kept=kept(predicted=0))
    entry.on_label(label(), now=200.0)
    assert entry.on_prediction(kept(predicted=2), now=300.0) == []
    assert entry.kept.predicted == 0


def test_the_same_label_twice_is_a_duplicate_and_a_different_one_a_correction():
    entry = Entry(kept=kept())
    entry.on_label(label("setosa"), now=200.0)
    [again] = entry.on_label(label("setosa"), now=210.0)
    assert again.outcome is Outcome.DUPLICATE and again.truth is None
    [corrected] = entry.on_label(label("virginica"), now=220.0)
    assert (corrected.outcome, corrected.truth, corrected.replaces) == \
        (Outcome.CORRECTION, "virginica", "setosa")
    assert corrected.outcome.scored and not again.outcome.scored


def test_labels_that_cannot_judge_their_prediction_are_counted_by_reason():
    assert Entry(kept=kept()).on_label(label(3.5), now=1.0)[0].outcome is Outcome.WRONG_TYPE
    regression = Kept("m", "1", "stable", 0.0, value=2.0)
    assert Entry(kept=regression).on_label(label("a"), now=1.0)[0].outcome is Outcome.WRONG_TYPE
    dead = Entry(kept=kept(dead_letter="schema_mismatch"))
    assert dead.on_label(label(), now=1.0)[0].outcome is Outcome.DEAD_LETTERED


def test_a_label_waits_no_longer_than_its_wait_and_a_prediction_no_longer_than_the_horizon():
    entry = Entry()
    entry.on_label(label(), now=0.0)
    assert entry.expire(now=10.0, horizon_s=1000, wait_s=60) == (False, [])
    drop, [judged] = entry.expire(now=61.0, horizon_s=1000, wait_s=60)
    assert drop and judged.outcome is Outcome.UNKNOWN_ID
    answered = Entry(kept=kept(time=0.0))
    assert answered.expire(now=999.0, horizon_s=1000, wait_s=60) == (False, [])
    assert answered.expire(now=1001.0, horizon_s=1000, wait_s=60) == (True, [])


def test_an_entry_survives_its_table_round_trip():
    entry = Entry()
    entry.on_label(Label("r-1", None, 2.5, 10.0), now=5.0)
    assert Entry.from_bytes(entry.to_bytes()) == entry
    entry = Entry(kept=kept(), truth="setosa")
    assert Entry.from_bytes(entry.to_bytes()) == entry


# Scores, checked against scikit-learn's figures.

def test_classifier_figures_equal_scikit_learns():
    rng = np.random.default_rng(7)
    probabilities = rng.dirichlet(np.ones(3), size=400)
    truth = rng.integers(0, 3, size=400)
    scores = Scores()
    for p, t in zip(probabilities, truth, strict=True):
        scores.add(kept(int(np.argmax(p)), tuple(map(float, p))), CLASSES[t], CLASSES, delay_s=1.0)
    figures = scores.report(regressor=False)
    predicted = probabilities.argmax(axis=1)
    assert figures["labelled"] == 400
    assert figures["accuracy"] == pytest.approx((predicted == truth).mean())
    assert figures["log_loss"] == pytest.approx(log_loss(truth, probabilities, labels=[0, 1, 2]))
    one_hot = np.eye(3)[truth]
    assert figures["brier"] == pytest.approx(((probabilities - one_hot) ** 2).sum(axis=1).mean())
    for i, name in enumerate(CLASSES):
        assert figures["classes"][name]["precision"] == pytest.approx(
            precision_score(truth, predicted, labels=[i], average="macro"))
        assert figures["classes"][name]["recall"] == pytest.approx(
            recall_score(truth, predicted, labels=[i], average="macro"))
    top = probabilities.max(axis=1)
    bins = np.minimum((top * 10).astype(int), 9)
    ece = sum(abs((predicted == truth)[bins == b].sum() - top[bins == b].sum()) for b in range(10)) / 400
    assert figures["expected_calibration_error"] == pytest.approx(ece)


def test_binary_brier_is_twice_scikit_learns_one_class_form():
    rng = np.random.default_rng(3)
    p1 = rng.uniform(size=200)
    truth = rng.integers(0, 2, size=200)
    scores = Scores()
    for p, t in zip(p1, truth, strict=True):
        scores.add(kept(int(p > 0.5), (1 - p, p)), ("no", "yes")[t], ("no", "yes"))
    assert scores.report(regressor=False)["brier"] == pytest.approx(2 * brier_score_loss(truth, p1))


def test_regressor_figures_and_a_class_the_model_never_knew():
    scores = Scores()
    values, truths = [1.0, 2.0, 4.0], [1.5, 2.0, 3.0]
    for v, t in zip(values, truths, strict=True):
        scores.add(Kept("m", "1", "stable", 0.0, value=v), t, None)
    figures = scores.report(regressor=True)
    assert figures["mae"] == pytest.approx(mean_absolute_error(truths, values))
    assert figures["rmse"] == pytest.approx(math.sqrt((0.25 + 0 + 1) / 3))
    assert figures["bias"] == pytest.approx((-0.5 + 0 + 1) / 3)
    unknown = Scores()
    unknown.add(kept(), "a new class", CLASSES)
    assert unknown.report(regressor=False)["log_loss"] == pytest.approx(-math.log(1e-15))
    assert unknown.report(regressor=False)["accuracy"] == 0


def test_a_correction_takes_the_earlier_score_back_out():
    corrected, direct = Scores(), Scores()
    corrected.add(kept(), "setosa", CLASSES, delay_s=5.0)
    corrected.add(kept(), "setosa", CLASSES, weight=-1)
    corrected.add(kept(), "virginica", CLASSES)
    direct.add(kept(), "virginica", CLASSES)
    mine, theirs = corrected.report(regressor=False), direct.report(regressor=False)
    assert (mine.pop("label_delay_p50_s"), mine.pop("label_delay_p95_s")) == (5.0, 5.0)
    theirs.pop("label_delay_p50_s"), theirs.pop("label_delay_p95_s")
    assert mine.pop("classes")["virginica"] == theirs.pop("classes")["virginica"]
    assert mine == pytest.approx(theirs)


def test_scores_add_up_and_survive_json():
    a, b, both = Scores(), Scores(), Scores()
    for i, truth in enumerate(["setosa", "versicolor", "setosa", "virginica"]):
        (a if i % 2 else b).add(kept(time=float(i)), truth, CLASSES, delay_s=10.0 * i)
        both.add(kept(time=float(i)), truth, CLASSES, delay_s=10.0 * i)
    a.merge(b)
    assert a == both
    assert Scores.from_dict(orjson.loads(orjson.dumps(a.to_dict()))) == a


def test_label_delay_quantiles_are_bucket_bounds():
    scores = Scores()
    for delay in [0.05] * 50 + [20.0] * 45 + [7200.0] * 5:
        scores.add(kept(), "setosa", CLASSES, delay_s=delay)
    figures = scores.report(regressor=False)
    assert (figures["label_delay_p50_s"], figures["label_delay_p95_s"]) == (0.1, 30)
    scores.add(kept(), "setosa", CLASSES, delay_s=1e9)  # a label dated far ahead: last bucket
    assert scores.delays[-1] == 1


# The verdicts.

def test_the_binomial_test_needs_labels_and_a_real_drop():
    assert below_training(50, 99, 0.95, 0.02, alpha=0.01, min_labelled=100).p_value is None
    assert not below_training(91, 100, 0.95, 0.02, alpha=0.01, min_labelled=100).worse  # a few unlucky
    finding = below_training(800, 1000, 0.95, 0.02, alpha=0.01, min_labelled=100)
    assert finding.worse and finding.p_value < 1e-10 and "floor of 0.9300" in finding.detail


def test_the_canary_test_compares_both_arms_on_their_labels():
    assert canary_worse((10, 20), (190, 200), alpha=0.01, min_labelled=50).p_value is None
    assert not canary_worse((180, 200), (185, 200), alpha=0.01, min_labelled=50).worse
    finding = canary_worse((140, 200), (190, 200), alpha=0.01, min_labelled=50)
    assert finding.worse and "canary accuracy 0.7000" in finding.detail
