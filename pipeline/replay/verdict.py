"""The gate: a diff turned into a pass or a fail, check by check, against the limits a CI
job sets (how many requests may be answered otherwise, the candidate's p99 latency, and
with labels of the recorded requests, each version's accuracy and the drop between them)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from pipeline.quality.labels import LabelRefusal, decode_label
from pipeline.replay.answers import Side
from pipeline.replay.comparison import DiffReport
from pipeline.replay.errors import ReplayError


@dataclass(frozen=True, slots=True)
class GateLimits:
    """``max_disagreement``: the share of requests (0 to 1) the candidate may answer
    otherwise than the baseline; ``max_p99_ms``: the candidate's p99 latency limit."""

    max_disagreement: float
    max_p99_ms: float
    # With labels: the candidate's least accuracy, and how far below the baseline's it may be.
    min_accuracy: float | None = None
    max_accuracy_drop: float | None = None

    def __post_init__(self) -> None:
        for name, value in (("--min-accuracy", self.min_accuracy),
                            ("--max-accuracy-drop", self.max_accuracy_drop)):
            if value is not None and not (isinstance(value, int | float) and 0 <= value <= 1):
                raise ReplayError(f"{name} is a share from 0 to 1 (0.9 is 90%), got {value!r}")
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


def read_labels(lines: Iterable[bytes]) -> dict[str, str]:
    """The labels of recorded requests, one JSON object per line as on the labels topic
    (``{"id": "r-1", "label": "setosa"}``), by request id: classes only (the gate judges a
    classifier's accuracy). The same id twice: the later line wins."""
    truth: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        label = decode_label(None, line.strip())
        if isinstance(label, LabelRefusal):
            raise ReplayError(f"labels file, line {number}: {label.error}")
        if label.label is None:
            raise ReplayError(f"labels file, line {number}: a value label ({label.value:g}); the gate "
                              "judges a classifier's accuracy on class labels")
        truth[label.id] = label.label
    if not truth:
        raise ReplayError("the labels file holds no label; write one JSON object per line, e.g. "
                          '{"id": "r-1", "label": "setosa"}')
    return truth


def accuracy(side: Side, truth: Mapping[str, str]) -> tuple[int, int]:
    """(correct, labelled) of one run's answers: a labelled request that was dead-lettered
    is a wrong answer."""
    judged = [(answer.reason is None and answer.label == truth[key])
              for key, answer in side.replies.items() if key in truth]
    return sum(judged), len(judged)


def gate(report: DiffReport, limits: GateLimits,
         accuracies: tuple[tuple[int, int], tuple[int, int]] | None = None) -> GateVerdict:
    """Pass when every request of both runs was answered, the candidate answers at most
    ``max_disagreement`` of them otherwise, and its p99 latency is within ``max_p99_ms``;
    with ``accuracies`` (the baseline's and the candidate's (correct, labelled)), when the
    candidate's accuracy is at least ``min_accuracy`` and at most ``max_accuracy_drop``
    below the baseline's."""
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
    if accuracies is not None:
        checks += _accuracy_checks(accuracies, limits)
    return GateVerdict(tuple(checks))


def _accuracy_checks(accuracies: tuple[tuple[int, int], tuple[int, int]],
                     limits: GateLimits) -> list[GateCheck]:
    (b_hit, b_n), (c_hit, c_n) = accuracies
    if not (b_n and c_n):
        return [GateCheck("labels", False, f"no answered request of the {'baseline' if not b_n else 'candidate'} "
                          "run has a label: do the file's ids match the recording's?")]
    b_acc, c_acc = b_hit / b_n, c_hit / c_n
    checks = [GateCheck("accuracy", True, f"baseline {b_acc:.2%} on {b_n} labels, candidate "
                        f"{c_acc:.2%} on {c_n}")]
    if limits.min_accuracy is not None:
        checks.append(GateCheck("candidate acc.", c_acc >= limits.min_accuracy,
                                f"{c_acc:.2%} (limit at least {limits.min_accuracy:.2%})"))
    if limits.max_accuracy_drop is not None:
        drop = b_acc - c_acc
        checks.append(GateCheck("accuracy drop", drop <= limits.max_accuracy_drop,
                                f"{drop:.2%} below the baseline (limit {limits.max_accuracy_drop:.2%})"))
    return checks
