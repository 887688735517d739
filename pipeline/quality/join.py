"""The join of labels with predictions, one request id at a time, as a value a table keeps.

A worker keeps each answer it gives (``Kept``: the version that answered, its route, the
predicted class and probabilities or the value, or that the request was dead-lettered);
the labels arrive later, or sometimes first. ``Entry`` is what the join holds for one
request id; its two events return what to count::

    Entry.on_prediction(kept, now) -> [Judged]      a label waiting for it is scored now
    Entry.on_label(label, now)     -> [Judged]      scored, a correction, a duplicate, or waiting
    Entry.expire(now, horizon_s, wait_s) -> [Judged] a label that waited too long: unknown_id

Counted once: a prediction served again (at-least-once, after a crash) finds its entry
already holding one and changes nothing; a label sent twice is a duplicate; a different
label for a labelled request replaces the earlier one (``Judged.replaces`` takes the
earlier one's scores back out).
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from pipeline.quality.labels import Label
from pipeline.quality.outcomes import Outcome


@dataclass(frozen=True, slots=True)
class Kept:
    """What a worker answered for one request, as the join keeps it."""

    model: str
    version: str
    route: str
    time: float  # when the request was answered (epoch seconds)
    predicted: int | None = None  # a classifier's class index
    probabilities: tuple[float, ...] | None = None
    value: float | None = None  # a regressor's (first) value
    dead_letter: str | None = None  # the reason, when the request was dead-lettered

    def to_list(self) -> list:
        return [self.model, self.version, self.route, self.time, self.predicted,
                self.probabilities, self.value, self.dead_letter]

    @classmethod
    def from_list(cls, fields: list) -> Kept:
        model, version, route, time, predicted, probabilities, value, dead_letter = fields
        return cls(model, version, route, time, predicted,
                   None if probabilities is None else tuple(probabilities), value, dead_letter)


@dataclass(frozen=True, slots=True)
class Judged:
    """One label's outcome; when scored, the prediction and the truth to score it on."""

    outcome: Outcome
    kept: Kept | None = None
    truth: str | float | None = None
    delay_s: float | None = None  # label time minus answer time (first label only)
    replaces: str | float | None = None  # a correction: the truth scored before, taken back


@dataclass(slots=True)
class Entry:
    kept: Kept | None = None
    truth: str | float | None = None  # the label scored for it, once there is one
    waiting: Label | None = None  # a label that came before its prediction
    since: float = 0.0  # when the waiting label arrived (epoch seconds)

    def on_prediction(self, kept: Kept, now: float) -> list[Judged]:
        if self.kept is not None:  # served again: the first answer is the one judged
            return []
        self.kept = kept
        if self.waiting is None:
            return []
        label, self.waiting = self.waiting, None
        return [self._judge(label, self.since)]

    def on_label(self, label: Label, now: float) -> list[Judged]:
        if self.kept is None:
            if self.waiting is not None:
                earlier, self.waiting = self.waiting, label
                self.since = now
                return [Judged(Outcome.DUPLICATE if _truth(earlier) == _truth(label)
                               else Outcome.CORRECTION)]
            self.waiting, self.since = label, now
            return []
        return [self._judge(label, now)]

    def expire(self, now: float, horizon_s: float, wait_s: float) -> tuple[bool, list[Judged]]:
        """Whether the entry is done with (drop it), and a waiting label given up on."""
        if self.waiting is not None and now - self.since > wait_s:
            self.waiting = None
            return self.kept is None, [Judged(Outcome.UNKNOWN_ID)]
        return (self.kept is not None and now - self.kept.time > horizon_s
                and self.waiting is None), []

    def _judge(self, label: Label, arrived: float) -> Judged:
        kept = self.kept
        assert kept is not None
        truth = _truth(label)
        if kept.dead_letter is not None:
            return Judged(Outcome.DEAD_LETTERED, kept)
        if isinstance(truth, str) != (kept.probabilities is not None):
            return Judged(Outcome.WRONG_TYPE, kept)
        if self.truth is not None:
            if self.truth == truth:
                return Judged(Outcome.DUPLICATE, kept)
            earlier, self.truth = self.truth, truth
            return Judged(Outcome.CORRECTION, kept, truth, replaces=earlier)
        self.truth = truth
        happened = label.time if label.time is not None else arrived
        return Judged(Outcome.SCORED, kept, truth, delay_s=max(0.0, happened - kept.time))

    def to_bytes(self) -> bytes:
        waiting = self.waiting
        return orjson.dumps([
            None if self.kept is None else self.kept.to_list(), self.truth,
            None if waiting is None else [waiting.id, waiting.label, waiting.value, waiting.time],
            self.since])

    @classmethod
    def from_bytes(cls, raw: bytes) -> Entry:
        kept, truth, waiting, since = orjson.loads(raw)
        return cls(None if kept is None else Kept.from_list(kept), truth,
                   None if waiting is None else Label(*waiting), since)


def _truth(label: Label) -> str | float:
    return label.label if label.label is not None else label.value  # type: ignore[return-value]
