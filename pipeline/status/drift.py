"""Drift verdicts in ``streamserve status``: the latest verdict per model, version and
feature (folded from the drift topic's reports), summarized per model version."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.status.errors import StatusError
from pipeline.status.metrics import version_key

DRIFT_SEVERITY = {"insufficient": 0, "stable": 1, "drift": 2, "alert": 3}


@dataclass(frozen=True, slots=True)
class FeatureVerdict:
    """The verdict of one feature's latest closed drift window (a ``streamserve.drift`` report)."""

    model: str
    version: str
    feature: str
    status: str  # insufficient, stable, drift or alert
    psi: float | None
    window_end: float  # event time, seconds since the epoch
    event: bool  # this window raised a drift event (drifting windows in a row)

    @classmethod
    def from_report(cls, report: Mapping[str, Any]) -> FeatureVerdict:
        """Raise ``StatusError`` naming what is missing when ``report`` is not a drift report."""
        try:
            status = report["verdict"]["status"]
            psi = report.get("psi")
            return cls(str(report["model"]), str(report["version"]), str(report["feature"]),
                       str(status), None if psi is None else float(psi),
                       float(report["window_end"]), bool(report.get("event")))
        except (KeyError, TypeError, ValueError) as e:
            raise StatusError(f"not a drift report (from a worker of another release?): "
                              f"{type(e).__name__} {e}") from None


VerdictKey = tuple[str, str, str]  # model, version, feature


def fold_verdicts(latest: Mapping[VerdictKey, FeatureVerdict],
                  reports: Iterable[FeatureVerdict]) -> dict[VerdictKey, FeatureVerdict]:
    """``latest`` updated with ``reports`` (in topic order): the latest window per key wins,
    and of two reports of the same window the later one."""
    out = dict(latest)
    for verdict in reports:
        key = (verdict.model, verdict.version, verdict.feature)
        known = out.get(key)
        if known is None or verdict.window_end >= known.window_end:
            out[key] = verdict
    return out


@dataclass(frozen=True, slots=True)
class DriftSummary:
    """One model version's latest verdicts: how many features in each status, and the
    drifting ones (PSI highest first)."""

    model: str
    version: str
    window_end: float  # of the newest window among its features
    counts: tuple[tuple[str, int], ...]  # (status, features), most severe first
    drifting: tuple[FeatureVerdict, ...]
    events: tuple[str, ...]  # features whose latest window raised a drift event

    @property
    def worst(self) -> str:
        return self.counts[0][0] if self.counts else "insufficient"


def summarize_drift(verdicts: Iterable[FeatureVerdict]) -> list[DriftSummary]:
    """One summary per model version, by model then version (numeric versions in order)."""
    grouped: dict[tuple[str, str], list[FeatureVerdict]] = defaultdict(list)
    for v in verdicts:
        grouped[(v.model, v.version)].append(v)
    out = []
    for (model, version), features in sorted(grouped.items(),
                                             key=lambda kv: (kv[0][0], version_key(kv[0][1]))):
        by_status: dict[str, int] = defaultdict(int)
        for v in features:
            by_status[v.status] += 1
        counts = sorted(by_status.items(), key=lambda sn: -DRIFT_SEVERITY.get(sn[0], -1))
        drifting = sorted((v for v in features if v.status in ("drift", "alert")),
                          key=lambda v: (-(v.psi or 0.0), v.feature))
        out.append(DriftSummary(model, version, max(v.window_end for v in features),
                                tuple(counts), tuple(drifting),
                                tuple(sorted(v.feature for v in features if v.event))))
    return out
