"""The gate verdict (``pipeline.replay.verdict``): a diff against the limits a CI job sets."""

from __future__ import annotations

import pytest

from agents.ops.replay_report import render_verdict
from pipeline.replay import Answer, GateLimits, ReplayError, accuracy, diff, gate, read_labels
from tests.unit.replay.samples import gate_report, p, side


def test_the_gate_passes_within_its_limits_and_fails_past_them():
    limits = GateLimits(max_disagreement=0.05, max_p99_ms=50)
    assert gate(gate_report(5, 20), limits).passed  # at the limit passes
    verdict = gate(gate_report(6, 20), limits)
    assert not verdict.passed
    assert [c.name for c in verdict.checks if not c.passed] == ["disagreement"]
    assert "6.00% of 100" in render_verdict(verdict)
    assert [c.name for c in gate(gate_report(0, 51), limits).checks if not c.passed] == ["candidate p99"]
    assert [c.name for c in gate(gate_report(0, 5, unanswered=3), limits).checks
            if not c.passed] == ["replies"]


def test_a_gate_with_nothing_to_compare_fails():
    report = diff(side("B", {}, 10), side("C", {}, 10))
    verdict = gate(report, GateLimits(0.1, 100))
    assert not verdict.passed and {c.name for c in verdict.checks if not c.passed} == {
        "replies", "disagreement", "candidate p99"}


@pytest.mark.parametrize("share, p99", [(-0.1, 10), (1.5, 10), (0.1, 0), (0.1, float("inf"))])
def test_gate_limits_are_checked(share, p99):
    with pytest.raises(ReplayError):
        GateLimits(share, p99)


def test_labels_judge_each_versions_accuracy_and_the_drop():
    base = {f"r-{i}": p("a") for i in range(100)}
    cand = {f"r-{i}": p("b" if i < 10 else "a") for i in range(95)}
    cand["r-95"] = Answer("r-95", "2", None, {}, "model_error", None)  # a dead letter: wrong
    truth = {f"r-{i}": "a" for i in range(96)} | {"not-recorded": "a"}
    accuracies = (accuracy(side("B", base), truth), accuracy(side("C", cand), truth))
    assert accuracies == ((96, 96), (85, 96))
    report = diff(side("B", base, 100), side("C", cand, 100))
    limits = GateLimits(1.0, 1000, min_accuracy=0.85, max_accuracy_drop=0.12)
    verdict = gate(report, limits, accuracies)
    assert {c.name: c.passed for c in verdict.checks if "acc" in c.name} == {
        "accuracy": True, "candidate acc.": True, "accuracy drop": True}
    tight = gate(report, GateLimits(1.0, 1000, min_accuracy=0.9, max_accuracy_drop=0.1), accuracies)
    assert [c.name for c in tight.checks if not c.passed] == ["replies", "candidate acc.", "accuracy drop"]
    assert "11.46% below the baseline (limit 10.00%)" in render_verdict(tight)
    nothing = gate(report, limits, ((0, 0), (0, 0)))
    assert [c.name for c in nothing.checks if not c.passed][-1] == "labels"


def test_a_labels_file_is_read_by_id_and_refused_with_its_line():
    truth = read_labels([b'{"id": "r-1", "label": "a"}\n', b"\n", b'{"id": "r-2", "label": "b"}',
                         b'{"id": "r-1", "label": "c"}'])
    assert truth == {"r-1": "c", "r-2": "b"}
    with pytest.raises(ReplayError, match="line 2: the label is not JSON"):
        read_labels([b'{"id": "r-1", "label": "a"}', b"{oops"])
    with pytest.raises(ReplayError, match="line 1: a value label"):
        read_labels([b'{"id": "r-1", "value": 2.5}'])
    with pytest.raises(ReplayError, match="holds no label"):
        read_labels([b"\n"])
    with pytest.raises(ReplayError, match="--max-accuracy-drop is a share"):
        GateLimits(0.1, 10, max_accuracy_drop=2)
