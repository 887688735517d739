"""The gate verdict (``pipeline.replay.verdict``): a diff against the limits a CI job sets."""

from __future__ import annotations

import pytest

from agents.ops.replay_report import render_verdict
from pipeline.replay import GateLimits, ReplayError, diff, gate
from tests.unit.replay.samples import gate_report, side


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
