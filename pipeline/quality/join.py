"""The join of labels with answers, one request id at a time, as a value a table keeps.

A worker keeps each answer it gives (``Kept``: the version that answered, its route, the
predicted class and probabilities or the value, or that the request was dead-lettered);
the labels arrive later, or sometimes first. ``Entry`` is what the join holds for one
request id, and everything reported is derived from the entries alone: their scores
(``Entry.scored``) and the outcomes of their labels (``Entry.counts``). So a join that
crashed and recovered its table reports what one that never stopped does: each event
changes an entry in one table write, and the entry remembers the last event it took
(``offset``), so an event read again after a crash changes nothing.

Its events return what became of a label (for counters and logs)::

    Entry.on_prediction(kept, offset)      -> [Judged]  a label waiting for it is judged now
    Entry.on_label(label, arrived, offset, source) -> [Judged]  scored, a correction...
    Entry.expire(now, horizon_s, wait_s)   -> (drop?, [Judged])  a label that waited too long

An answer served again (at-least-once) changes nothing, unless the first was a dead
letter and a retry with the same id was answered; the same label twice is a duplicate;
a different label for a labelled request replaces the earlier one (a correction).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import orjson

from pipeline.quality.labels import Label
from pipeline.quality.outcomes import Outcome

_SOURCES_KEPT = 8  # label positions an entry remembers (an id gets few labels)


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
    """One label's outcome; when scored, the answer and the truth it was judged on."""

    outcome: Outcome
    kept: Kept | None = None
    truth: str | float | None = None


@dataclass(slots=True)
class Entry:
    kept: Kept | None = None
    truth: str | float | None = None  # the label scored for it, once there is one
    delay_s: float | None = None  # from the answer to its first label's outcome
    waiting: Label | None = None  # a label that came before its answer
    since: float = 0.0  # when the last label arrived (epoch seconds)
    offset: int = -1  # the last join event this entry took: one read again is skipped
    counts: dict[str, int] = field(default_factory=dict)  # its labels' other outcomes
    # Where on the labels topic its latest labels were read: a label relayed again (the
    # relay crashed before its commit) is the same label, not a duplicate.
    sources: list[str] = field(default_factory=list)
    # The shadow versions that answered this request too (each has an entry of its own,
    # ``shadow_key``), so its labels judge them as well.
    shadows: list[str] = field(default_factory=list)

    @property
    def scored(self) -> bool:
        """Whether ``kept`` and ``truth`` count in the scores (with ``delay_s``)."""
        return self.kept is not None and self.truth is not None

    def take_truth(self, primary: Entry) -> None:
        """A shadow's entry, created after its request's label was scored: judged on it,
        and knowing where that label was read (one relayed again is no duplicate)."""
        if primary.truth is not None and self.truth is None and self.kept is not None \
                and self.kept.dead_letter is None \
                and isinstance(primary.truth, str) == (self.kept.probabilities is not None):
            self.truth, self.delay_s = primary.truth, primary.delay_s
            self.sources = list(primary.sources)

    def on_prediction(self, kept: Kept, offset: int) -> list[Judged]:
        if offset <= self.offset:
            return []
        self.offset = offset
        # Served again: the first answer is the one judged, unless it was a dead letter
        # and a retry with the same id (over its quota, say) was answered.
        if self.kept is not None and (self.kept.dead_letter is None or kept.dead_letter is not None):
            return []
        self.kept = kept
        if self.waiting is None:
            return []
        label, self.waiting = self.waiting, None
        return [self._judge(label, self.since)]

    def on_label(self, label: Label, arrived: float, offset: int, source: str = "") -> list[Judged]:
        if offset <= self.offset or (source and source in self.sources):
            return []
        self.offset = offset
        if source:
            self.sources = [*self.sources[-(_SOURCES_KEPT - 1):], source]
        if self.kept is None:
            earlier, self.waiting, self.since = self.waiting, label, arrived
            if earlier is None:
                return []
            return [self._count(Outcome.DUPLICATE if _truth(earlier) == _truth(label)
                                else Outcome.CORRECTION)]
        self.since = arrived
        return [self._judge(label, arrived)]

    def expire(self, now: float, horizon_s: float, wait_s: float) -> tuple[bool, list[Judged]]:
        """Whether the entry is done with (drop it), and a waiting label given up on. An
        entry is kept for the horizon after its answer (or its last label, without one):
        what it counted stays in the figures that long."""
        if self.waiting is not None and now - self.since > wait_s:
            self.waiting = None
            return False, [self._count(Outcome.UNKNOWN_ID)]
        return self.due(now, horizon_s, wait_s), []

    def due(self, now: float, horizon_s: float, wait_s: float) -> bool:
        """Whether ``expire`` would change the entry: a waiting label past its wait, or
        the entry past the horizon."""
        return now > self.next_due(horizon_s, wait_s)

    def next_due(self, horizon_s: float, wait_s: float) -> float:
        """When ``expire`` changes the entry next (epoch seconds): its waiting label's wait
        runs out, or its horizon, from its answer (or its last label, without one)."""
        if self.waiting is not None:
            return self.since + wait_s
        return (self.kept.time if self.kept is not None else self.since) + horizon_s

    def _judge(self, label: Label, arrived: float) -> Judged:
        kept = self.kept
        assert kept is not None
        truth = _truth(label)
        if kept.dead_letter is not None:
            return self._count(Outcome.DEAD_LETTERED)
        if isinstance(truth, str) != (kept.probabilities is not None):
            return self._count(Outcome.WRONG_TYPE)
        if self.truth is not None:
            if self.truth == truth:
                return self._count(Outcome.DUPLICATE)
            self.truth = truth
            return Judged(self._count(Outcome.CORRECTION).outcome, kept, truth)
        happened = label.time if label.time is not None else arrived
        self.truth, self.delay_s = truth, max(0.0, happened - kept.time)
        return Judged(Outcome.SCORED, kept, truth)

    def _count(self, outcome: Outcome) -> Judged:
        self.counts[outcome.value] = self.counts.get(outcome.value, 0) + 1
        return Judged(outcome, self.kept)

    def to_bytes(self) -> bytes:
        waiting = self.waiting
        return orjson.dumps([
            None if self.kept is None else self.kept.to_list(), self.truth, self.delay_s,
            None if waiting is None else [waiting.id, waiting.label, waiting.value, waiting.time],
            self.since, self.offset, self.counts, self.sources, self.shadows])

    @classmethod
    def from_bytes(cls, raw: bytes) -> Entry:
        kept, truth, delay_s, waiting, since, offset, counts, sources, shadows = orjson.loads(raw)
        return cls(None if kept is None else Kept.from_list(kept), truth, delay_s,
                   None if waiting is None else Label(*waiting), since, offset, counts, sources,
                   shadows)


# The expiry index, in the table's own key space but never in its changelog: one key per
# entry, ``0xfe``, its due time in big-endian milliseconds, then the entry's key. So keys
# sort by due time, all after every request id (``0xfe`` never occurs in UTF-8) and before
# every shadow's key, and the entries due are found without reading the others.
EXPIRY_PREFIX = b"\xfe"
EXPIRY_END = b"\xff"  # the first key after the index
_LAST_MS = 2**64 - 1  # a horizon of ages is due at the end of the index


def expiry_key(due: float, key: bytes) -> bytes:
    """The index key of the entry of ``key``, due at ``due`` (epoch seconds); rounded up,
    so that the entry is due once its index key is."""
    return EXPIRY_PREFIX + min(math.ceil(due * 1000) + 1, _LAST_MS).to_bytes(8, "big") + key


def indexed_key(index_key: bytes) -> bytes:
    """The entry's key an ``expiry_key`` names."""
    return index_key[len(EXPIRY_PREFIX) + 8:]


def expiry_bound(now: float) -> bytes:
    """The first index key not due at ``now``: those below it are."""
    return EXPIRY_PREFIX + min(int(now * 1000) + 1, _LAST_MS).to_bytes(8, "big")


def shadow_key(request_id: str, version: str) -> bytes:
    """The table key of a shadow version's answer to a request: its own entry beside the
    request's (``0xff`` never occurs in UTF-8, so no request id can take it)."""
    return b"\xff%s\xff%s" % (version.encode(), request_id.encode())


def _truth(label: Label) -> str | float:
    return label.label if label.label is not None else label.value  # type: ignore[return-value]
