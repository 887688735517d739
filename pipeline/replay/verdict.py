"""The gate: a diff turned into a pass or a fail, check by check, against the limits a CI
job sets (how many requests may be answered otherwise, the candidate's p99 latency)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from pipeline.replay.comparison import DiffReport
from pipeline.replay.errors import ReplayError


@dataclass(frozen=True, slots=True)
class GateLimits:
    """``max_disagreement``: the share of requests (0 to 1) the candidate may answer
    otherwise than the baseline; ``max_p99_ms``: the candidate's p99 latency limit."""

    max_disagreement: float
    max_p99_ms: float

    def __post_init__(self) -> None:
        if not (isinstance(self.max_disagreement, int | float) and 0 <= self.max_disagreement <= 1):
            raise ReplayError(f"--max-disagreement is a share from 0 to 1 (0.02 allows 2% of "
                              f"requests answered otherwise), got {self.max_disagreement!r}")
        if not (isinstance(self.max_p99_ms, int | float) and 0 < self.max_p99_ms < math.inf):
            raise ReplayError(f"--max-p99-ms must be a number of milliseconds above 0, got "
                              f"{self.max_p99_ms!r}")


@dataclass(frozen=True, slots=True)
class GateCheck:
    name: str
    passed: bool
    detail: str


@dataclass(frozen=True, slots=True)
class GateVerdict:
    checks: tuple[GateCheck, ...]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)


def gate(report: DiffReport, limits: GateLimits) -> GateVerdict:
    """Pass when every request of both runs was answered, the candidate answers at most
    ``max_disagreement`` of them otherwise, and its p99 latency is within ``max_p99_ms``."""
    unanswered = {"baseline": report.baseline_unanswered or 0,
                  "candidate": report.candidate_unanswered or 0}
    missing = unanswered["baseline"] + unanswered["candidate"] + report.only_baseline + \
        report.only_candidate
    checks = [GateCheck("replies", missing == 0 and report.compared > 0,
                        "every request answered in both runs" if missing == 0 and report.compared
                        else "no request was answered by both runs" if not report.compared
                        else f"{unanswered['baseline']} baseline and {unanswered['candidate']} "
                             f"candidate requests unanswered, {report.only_baseline + report.only_candidate} "
                             "answered in one run only")]
    share = report.disagreement
    checks.append(GateCheck(
        "disagreement", share is not None and share <= limits.max_disagreement,
        "nothing to compare" if share is None else
        f"{share:.2%} of {report.compared} requests answered otherwise "
        f"(limit {limits.max_disagreement:.2%})"))
    latency = report.candidate_latency
    checks.append(GateCheck(
        "candidate p99", latency is not None and latency.p99 <= limits.max_p99_ms,
        "the candidate served no prediction" if latency is None else
        f"{latency.p99:.1f} ms (limit {limits.max_p99_ms:g} ms)"))
    return GateVerdict(tuple(checks))
