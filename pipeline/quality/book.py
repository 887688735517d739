"""The figures of one join partition, derived from its entries and kept up as they change.

Everything is a sum over entries (``Scores``, outcome counts), so an entry's change is
its old contribution taken out and its new one added (``Book.change``), a book is
rebuilt from a recovered table by adding every entry, and the books of every partition
add up to the fleet's figures (``merge_reports``).

Scores are kept per model, version, route and window of answer time
(STREAMSERVE_QUALITY_WINDOW_S): a report carries the total and the latest
``TREND_WINDOWS`` windows, each as sums.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from typing import Any, Iterator

from pipeline.quality.join import Entry
from pipeline.quality.scores import Scores

TREND_WINDOWS = 24
# The outcomes of labels whose request no worker answered: no model or version to file them under.
UNANSWERED = ("", "", "")

ClassesOf = Callable[[str, str], tuple[str, ...] | None]  # (model, version) -> class names, or None


class Book:
    def __init__(self, window_s: int, classes_of: ClassesOf) -> None:
        self._window_s = window_s
        self._classes_of = classes_of
        self.scores: dict[tuple[str, str, str, int], Scores] = {}  # (model, version, route, window)
        self.counts: dict[tuple[str, str, str], Counter[str]] = {}  # (model, version, route)
        self.answers: Counter[tuple[str, str, str]] = Counter()  # answers kept, not dead letters
        self.unanswered = 0  # entries of labels no answer came for (waiting, or unknown_id)

    def add(self, entry: Entry, weight: int = 1) -> None:
        kept = entry.kept
        if kept is not None and kept.dead_letter is None:
            self.answers[(kept.model, kept.version, kept.route)] += weight
        elif kept is None and (entry.waiting is not None or entry.counts):
            self.unanswered += weight
        if entry.counts:
            who = (kept.model, kept.version, kept.route) if kept is not None else UNANSWERED
            counts = self.counts.setdefault(who, Counter())
            for outcome, n in entry.counts.items():
                counts[outcome] += weight * n
        if not entry.scored:
            return
        assert kept is not None and entry.truth is not None
        classes = self._classes_of(kept.model, kept.version) if kept.probabilities is not None else None
        if kept.probabilities is not None and classes is None:
            return  # a version whose manifest cannot be read: nothing to score it with
        window = int(kept.time // self._window_s) * self._window_s
        key = (kept.model, kept.version, kept.route, window)
        self.scores.setdefault(key, Scores()).add(kept, entry.truth, classes, entry.delay_s, weight)

    @contextmanager
    def change(self, entry: Entry) -> Iterator[Entry]:
        """Change ``entry`` within the block: its contribution follows."""
        self.add(entry, -1)
        try:
            yield entry
        finally:
            self.add(entry)

    def reports(self) -> list[dict[str, Any]]:
        """One report per model version: per route, the answers kept, the total scores and
        those of the latest windows, and the outcomes of its labels, all as sums; labels
        of unanswered requests under model and version ""."""
        versions: dict[tuple[str, str], dict[str, Any]] = {}

        def report(model: str, version: str) -> dict[str, Any]:
            return versions.setdefault((model, version), {"model": model, "version": version,
                                                          "routes": {}, "outcomes": {}})

        def route_of(model: str, version: str, route: str) -> dict[str, Any]:
            return report(model, version)["routes"].setdefault(
                route, {"answers": 0, "total": Scores(), "windows": {}})

        for (model, version, route), n in sorted(self.answers.items()):
            if n:
                route_of(model, version, route)["answers"] = n
        for (model, version, route, window), scores in sorted(self.scores.items()):
            entry = route_of(model, version, route)
            entry["total"].merge(scores)
            entry["windows"][window] = scores
        for (model, version, route), counts in sorted(self.counts.items()):
            outcomes = report(model, version)["outcomes"]
            for outcome, n in counts.items():
                if n:
                    outcomes[outcome] = outcomes.get(outcome, 0) + n
        for r in versions.values():
            for route in r["routes"].values():
                route["total"] = route["total"].to_dict()
                latest = sorted(route["windows"])[-TREND_WINDOWS:]
                route["windows"] = {str(w): route["windows"][w].to_dict() for w in latest}
        return list(versions.values())


def merge_reports(reports: Iterable[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """The reports of several partitions (of one model version or more) added up, per
    model version: per route a total ``Scores`` and windows of ``Scores``, and outcomes."""
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for report in reports:
        into = merged.setdefault((report["model"], report["version"]), {
            "model": report["model"], "version": report["version"], "routes": {}, "outcomes": Counter()})
        into["outcomes"].update(report["outcomes"])
        for route, part in report["routes"].items():
            mine = into["routes"].setdefault(route, {"answers": 0, "total": Scores(), "windows": {}})
            mine["answers"] += part["answers"]
            mine["total"].merge(Scores.from_dict(part["total"]))
            for window, scores in part["windows"].items():
                mine["windows"].setdefault(int(window), Scores()).merge(Scores.from_dict(scores))
    return merged
