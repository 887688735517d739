import math
from datetime import UTC, datetime

import numpy as np
import orjson
import pytest
from sklearn.metrics import brier_score_loss, log_loss, mean_absolute_error, precision_score, recall_score

from pipeline.quality import (
    Book,
    Entry,
    Kept,
    Label,
    LabelRefusal,
    Outcome,
    Scores,
    below_training,
    canary_worse,
    decode_label,
    encode_label,
    merge_reports,
)
from pipeline.quality.join import expiry_bound, expiry_key, indexed_key, shadow_key

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


# The join of one request id. Offsets are the join topic's: each event a later one.

def test_a_label_after_its_prediction_is_scored_with_its_delay():
    entry = Entry()
    assert entry.on_prediction(kept(time=100.0), offset=1) == []
    [judged] = entry.on_label(label(), arrived=160.0, offset=2)
    assert judged.outcome is Outcome.SCORED and judged.truth == "setosa"
    assert entry.scored and entry.delay_s == 60.0


def test_the_labels_own_time_dates_the_outcome():
    entry = Entry(kept=kept(time=100.0))
    entry.on_label(label(time=130.0), arrived=500.0, offset=1)
    assert entry.delay_s == 30.0


def test_a_label_before_its_prediction_waits_and_is_scored_when_it_comes():
    entry = Entry()
    assert entry.on_label(label("virginica"), arrived=150.0, offset=1) == []
    assert not entry.scored
    [judged] = entry.on_prediction(kept(time=100.0), offset=2)
    assert (judged.outcome, judged.truth, entry.delay_s) == (Outcome.SCORED, "virginica", 50.0)


def test_an_event_read_again_changes_nothing():
    entry = Entry()
    entry.on_prediction(kept(), offset=5)
    entry.on_label(label(), arrived=200.0, offset=6)
    before = Entry.from_bytes(entry.to_bytes())
    assert entry.on_label(label(), arrived=300.0, offset=6) == []
    assert entry.on_label(label("virginica"), arrived=300.0, offset=2) == []
    assert entry.on_prediction(kept(predicted=2), offset=5) == []
    assert entry == before


def test_a_label_relayed_again_is_the_same_label_not_a_duplicate():
    entry = Entry(kept=kept())
    entry.on_label(label(), arrived=1.0, offset=1, source="0:7")
    assert entry.on_label(label(), arrived=2.0, offset=2, source="0:7") == []
    assert entry.on_label(label(), arrived=3.0, offset=3, source="0:8")[0].outcome is Outcome.DUPLICATE
    for i in range(20):  # it remembers a few sources, not every one
        entry.on_label(label(), arrived=4.0, offset=4 + i, source=f"1:{i}")
    assert len(entry.sources) == 8 and entry.counts == {"duplicate": 21}


def test_a_prediction_served_again_changes_nothing():
    entry = Entry(kept=kept(predicted=0))
    entry.on_label(label(), arrived=200.0, offset=1)
    assert entry.on_prediction(kept(predicted=2), offset=2) == []
    assert entry.kept.predicted == 0


def test_a_retry_answered_after_a_dead_letter_is_the_one_judged():
    entry = Entry(kept=kept(dead_letter="quota_exceeded"))
    entry.on_prediction(kept(predicted=2), offset=1)
    assert entry.kept.predicted == 2 and entry.kept.dead_letter is None
    assert entry.on_prediction(kept(dead_letter="duplicate_request"), offset=2) == []
    assert entry.kept.dead_letter is None


def test_the_same_label_twice_is_a_duplicate_and_a_different_one_a_correction():
    entry = Entry(kept=kept())
    entry.on_label(label("setosa"), arrived=200.0, offset=1)
    [again] = entry.on_label(label("setosa"), arrived=210.0, offset=2)
    assert again.outcome is Outcome.DUPLICATE and again.truth is None
    [corrected] = entry.on_label(label("virginica"), arrived=220.0, offset=3)
    assert (corrected.outcome, corrected.truth, entry.truth) == (Outcome.CORRECTION, "virginica", "virginica")
    assert entry.delay_s == 100.0  # the first label's
    assert entry.counts == {"duplicate": 1, "correction": 1}
    waiting = Entry()
    waiting.on_label(label("setosa"), arrived=1.0, offset=1)
    assert waiting.on_label(label("setosa"), arrived=2.0, offset=2)[0].outcome is Outcome.DUPLICATE


def test_labels_that_cannot_judge_their_prediction_are_counted_by_reason():
    classifier = Entry(kept=kept())
    assert classifier.on_label(label(3.5), arrived=1.0, offset=1)[0].outcome is Outcome.WRONG_TYPE
    regression = Entry(kept=Kept("m", "1", "stable", 0.0, value=2.0))
    assert regression.on_label(label("a"), arrived=1.0, offset=1)[0].outcome is Outcome.WRONG_TYPE
    dead = Entry(kept=kept(dead_letter="schema_mismatch"))
    assert dead.on_label(label(), arrived=1.0, offset=1)[0].outcome is Outcome.DEAD_LETTERED
    assert not (classifier.scored or regression.scored or dead.scored)
    assert dead.counts == {"dead_lettered": 1}


def test_a_label_waits_no_longer_than_its_wait_and_an_entry_lives_for_the_horizon():
    entry = Entry()
    entry.on_label(label(), arrived=0.0, offset=1)
    assert entry.expire(now=10.0, horizon_s=1000, wait_s=60) == (False, [])
    drop, [judged] = entry.expire(now=61.0, horizon_s=1000, wait_s=60)
    assert not drop and judged.outcome is Outcome.UNKNOWN_ID and entry.counts == {"unknown_id": 1}
    assert entry.expire(now=1001.0, horizon_s=1000, wait_s=60) == (True, [])
    answered = Entry(kept=kept(time=0.0))
    assert answered.expire(now=999.0, horizon_s=1000, wait_s=60) == (False, [])
    assert answered.expire(now=1001.0, horizon_s=1000, wait_s=60) == (True, [])


def test_an_entry_is_next_due_when_its_wait_or_its_horizon_runs_out():
    waiting = Entry()
    waiting.on_label(label(), arrived=50.0, offset=1)
    assert waiting.next_due(horizon_s=1000, wait_s=60) == 110.0  # its label's wait
    waiting.expire(now=111.0, horizon_s=1000, wait_s=60)
    assert waiting.next_due(horizon_s=1000, wait_s=60) == 1050.0  # then the horizon, from the label
    answered = Entry(kept=kept(time=100.0))
    assert answered.next_due(horizon_s=1000, wait_s=60) == 1100.0
    for now in (1099.0, 1100.0, 1100.5):
        assert answered.due(now, 1000, 60) == (now > 1100.0)


def test_the_expiry_index_orders_entries_by_due_time_apart_from_every_entry_key():
    ids = [b"r-1", "r-\u00e9".encode(), "\U0010ffff".encode()]  # the last: UTF-8's greatest
    shadows = [shadow_key("r-1", "2"), shadow_key("", "")]
    index = sorted(expiry_key(due, key) for due, key in [(2.5, ids[0]), (1.0, shadows[0]), (1e12, ids[1])])
    assert [indexed_key(k) for k in index] == [shadows[0], ids[0], ids[1]]
    assert max(ids) < min(index) and max(index) < min(shadows)  # its own range of the table
    assert expiry_key(1e30, b"r-1") > expiry_key(1e12, b"r-1")  # a horizon of ages still fits


@pytest.mark.parametrize("due", [100.0, 100.0004, 100.0005, 100.9999])
def test_an_index_key_is_below_the_bound_only_once_its_entry_is_due(due):
    key = expiry_key(due, b"r-1")
    for now in (due - 0.001, due, due + 0.0005):
        assert not key < expiry_bound(now)
    assert key < expiry_bound(due + 0.003)


def test_an_entry_survives_its_table_round_trip():
    entry = Entry()
    entry.on_label(Label("r-1", None, 2.5, 10.0), arrived=5.0, offset=3)
    assert Entry.from_bytes(entry.to_bytes()) == entry
    entry = Entry(kept=kept(), truth="setosa", delay_s=4.0, offset=9, counts={"duplicate": 2},
                  sources=["0:1", "3:9"], shadows=["2"])
    assert Entry.from_bytes(entry.to_bytes()) == entry


def test_a_shadows_entry_takes_the_truth_its_request_was_scored_on():
    primary = Entry(kept=kept(time=10.0))
    primary.on_label(label("virginica"), arrived=40.0, offset=1, source="2:7")
    shadow = Entry()
    shadow.on_prediction(kept(predicted=2, route="shadow"), offset=2)
    shadow.take_truth(primary)
    assert (shadow.truth, shadow.delay_s, shadow.scored) == ("virginica", 30.0, True)
    # The same label relayed again (the relay crashed before its commit) is no duplicate.
    assert shadow.on_label(label("virginica"), arrived=50.0, offset=9, source="2:7") == []
    regressor = Entry(kept=Kept("m", "2", "shadow", 0.0, value=1.0))
    regressor.take_truth(primary)  # a class cannot judge a value
    assert regressor.truth is None
    assert shadow_key("r-1", "2") == b"\xff2\xffr-1" and shadow_key("r-1", "2") != "r-1".encode()


# The book: figures derived from entries.

def classes_of(model, version):
    return CLASSES


def test_a_book_follows_its_entries_and_a_rebuilt_one_equals_it():
    book, entries = Book(3600, classes_of), {}
    events = [("r-1", kept(time=10.0)), ("r-2", label("virginica", id_="r-2")), ("r-1", label("setosa")),
              ("r-2", kept(predicted=2, time=20.0)), ("r-1", label("versicolor")),
              ("r-3", kept(dead_letter="schema_mismatch")), ("r-3", label("setosa", id_="r-3")),
              ("r-4", label("setosa", id_="r-4"))]
    for offset, (request_id, event) in enumerate(events):
        with book.change(entries.setdefault(request_id, Entry())) as entry:
            if isinstance(event, Kept):
                entry.on_prediction(event, offset)
            else:
                entry.on_label(event, arrived=100.0, offset=offset)
    rebuilt = Book(3600, classes_of)
    for entry in entries.values():
        rebuilt.add(entry)
    [report] = book.reports()  # r-4's label still waits: counted nowhere yet
    assert book.unanswered == rebuilt.unanswered == 1
    assert [report] == rebuilt.reports()
    stable = report["routes"]["stable"]
    assert stable["answers"] == 2 and stable["total"]["labelled"] == 2
    assert Scores.from_dict(stable["total"]).report(regressor=False)["accuracy"] == 0.5  # r-1 corrected
    assert report["outcomes"] == {"correction": 1, "dead_lettered": 1}
    entries["r-4"].expire(now=1e9, horizon_s=1e10, wait_s=60)
    rebuilt.add(entries["r-4"])
    unanswered = next(r for r in rebuilt.reports() if r["model"] == "")
    assert unanswered["outcomes"] == {"unknown_id": 1} and unanswered["routes"] == {}

    assert list(stable["windows"]) == ["0"]


def test_reports_of_partitions_add_up():
    books = [Book(3600, classes_of) for _ in range(2)]
    for i, truth in enumerate(["setosa", "virginica", "setosa"]):
        entry = Entry(kept=kept(time=4000.0 * i))
        entry.on_label(label(truth), arrived=5000.0 * i, offset=1)
        books[i % 2].add(entry)
    [merged] = merge_reports(r for book in books for r in book.reports()).values()
    stable = merged["routes"]["stable"]
    assert stable["answers"] == 3 and stable["total"].labelled == 3 and stable["total"].correct == 2
    assert sorted(stable["windows"]) == [0, 3600, 7200]


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


def test_a_label_the_client_encodes_is_the_one_decoded():
    assert decode_label(b"r-1", encode_label("r-1", "setosa")) == Label("r-1", "setosa", None, None)
    assert decode_label(b"r-1", encode_label("r-1", 3, time=1e9)) == Label("r-1", None, 3.0, 1e9)
    for bad in (True, None, float("nan"), ""):
        with pytest.raises(ValueError):
            encode_label("r-1", bad)
