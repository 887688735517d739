"""One run's answers (``pipeline.replay.answers``) and the diff of two runs
(``pipeline.replay.comparison``)."""

from __future__ import annotations

import pytest

from agents.ops.replay_report import render_text
from pipeline.replay import Answer, answer_of, diff, key_replies
from tests.unit.replay.samples import dead_letter, p, prediction, side, tabular


def test_replies_are_read_as_answers_with_the_run_prefix_stripped():
    value = prediction("run/r-1", "setosa", [0.9, 0.1], latency=4.5, version="2")
    for dead_letter_topic in (False, None):
        reply = answer_of(value, "run", dead_letter=dead_letter_topic)
        assert reply == Answer("r-1", "2", "setosa", {"probabilities": (0.9, 0.1)}, None, 4.5)
        assert reply.outcome == "setosa"
    for dead_letter_topic in (True, None):
        dead = answer_of(dead_letter("run/r-2", "schema_mismatch"), "run", dead_letter=dead_letter_topic)
        assert dead.request_id == "r-2" and dead.outcome == "dead letter: schema_mismatch"
    assert answer_of(dead_letter(None, "malformed_json"), "run", dead_letter=True).request_id is None
    assert answer_of(tabular("r-1"), "run", dead_letter=None) is None
    assert answer_of(b"junk", None, dead_letter=False) is None
    assert answer_of(None, None, dead_letter=True) is None


def test_replies_are_keyed_once_per_request():
    a1 = Answer("r-1", label="x")
    a1_again = Answer("r-1", label="x")
    b1 = Answer("r-1", reason="duplicate_request")
    anonymous = Answer(None, reason="malformed_json")
    keyed = key_replies([(("t", 0, 7), b1, "#7"), (("t", 0, 3), a1, "#3"), (("t", 0, 3), a1_again, "#3"),
                         (("t", 1, 0), anonymous, "#9")])
    assert keyed == {"r-1": a1, "r-1~2": b1, "#9": anonymous}


def test_diff_counts_agreement_scores_dead_letters_and_latency():
    base = {f"r-{i}": p("a", (0.9, 0.1), latency=float(i)) for i in range(100)}
    cand = {f"r-{i}": p("a", (0.8, 0.2), latency=float(2 * i)) for i in range(100)}
    cand["r-5"] = p("b", (0.3, 0.7))
    base["r-6"] = Answer("r-6", reason="schema_mismatch")
    cand["r-6"] = Answer("r-6", reason="schema_mismatch")
    cand["r-7"] = Answer("r-7", reason="model_error")
    base["only-base"] = p("a")
    features = {"r-5": {"f": 1.5}, "r-7": {"f": 2.5}}
    report = diff(side("B", base, 101), side("C", cand, 100), features)
    assert report.compared == 100 and report.only_baseline == 1 and report.only_candidate == 0
    assert report.baseline_unanswered == 0 and report.candidate_unanswered == 0
    assert report.agreeing == 98 and report.disagreement == pytest.approx(0.02)
    assert report.both_predicted == 98 and report.same_label == 97
    assert report.score_max == pytest.approx(0.6)
    assert 0.1 <= report.score_p99 <= 0.6
    assert [(d.reason, d.baseline, d.candidate) for d in report.dead_letters] == [
        ("model_error", 0, 1), ("schema_mismatch", 1, 1)]
    # outcome changes first, then the largest score differences
    assert [(d.key, d.candidate, d.features) for d in report.differences[:2]] == [
        ("r-5", "b", {"f": 1.5}), ("r-7", "dead letter: model_error", {"f": 2.5})]
    assert report.differences[0].max_abs_difference == pytest.approx(0.6)
    assert report.differences[2].baseline == report.differences[2].candidate == "a"
    assert report.baseline_latency.p50 == pytest.approx(50, abs=1)
    assert report.candidate_latency.p99 > report.baseline_latency.p99
    assert ("a", "b", 1) in report.outcome_pairs and report.outcome_pairs[0] == ("a", "a", 97)


def test_identical_runs_agree_fully():
    replies = {f"r-{i}": p("a", (0.25, 0.75)) for i in range(10)}
    report = diff(side("B", replies, 10), side("C", dict(replies), 10))
    assert report.agreement == 1 and report.score_max == 0 and report.differences == ()


def test_an_empty_diff_has_no_shares():
    report = diff(side("B", {}), side("C", {}))
    assert report.agreement is None and report.score_max is None and report.candidate_latency is None
    assert "n/a" in render_text(report)


def test_regressors_agree_when_their_values_do():
    def value(key, v):
        return Answer(key, "1", None, {"value": (v,)})
    base = {f"r-{i}": value(f"r-{i}", 100.0) for i in range(10)}
    cand = {f"r-{i}": value(f"r-{i}", 100.5) for i in range(10)}  # within 1%
    cand["r-3"] = value("r-3", 103.0)  # 3% off
    report = diff(side("B", base, 10), side("C", cand, 10))
    assert base["r-0"].outcome == "value"
    assert report.agreeing == 9 and report.disagreement == pytest.approx(0.1)
    assert max(report.score_differences) == pytest.approx(3.0)
