"""One run's answers, as the diff compares them: each reply (read by ``pipeline.replies``)
reduced to its outcome, scores and latency, keyed by request id with the run prefix
stripped, each request once."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from pipeline.messages import values_agree
from pipeline.replay.runs import strip_run
from pipeline.replies import DeadLetter, MalformedReply, Reply, SourcePosition, parse_reply


@dataclass(frozen=True, slots=True)
class Answer:
    """What a reply (``pipeline.replies``) told the client, as the diff compares it."""

    request_id: str | None
    """The id the reply names, with its run prefix stripped (None for an unreadable request)."""
    version: str | None = None
    label: str | None = None
    scores: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    reason: str | None = None
    latency_ms: float | None = None

    @property
    def outcome(self) -> str:
        """What the client got: the label (``value`` for a regressor's answer), or
        ``dead letter: <reason>``."""
        if self.reason is not None:
            return f"dead letter: {self.reason}"
        return "value" if self.label is None and "value" in self.scores else str(self.label)

    def agrees(self, other: Answer) -> bool:
        """The same outcome; for two regressors' answers, values that agree
        (``pipeline.messages.values_agree``)."""
        if self.outcome != other.outcome:
            return False
        if self.outcome == "value":
            return values_agree(self.scores["value"], other.scores["value"])
        return True

    @classmethod
    def of(cls, reply: Reply, run_id: str | None) -> Answer:
        """A prediction's version, label (its ``BYTES`` or ``label`` output), scores (its
        numeric outputs) and latency, or a dead letter's reason."""
        request_id = strip_run(reply.id, run_id) if reply.id is not None else None
        if isinstance(reply, DeadLetter):
            return cls(request_id, reason=reply.reason)
        label, scores = None, {}
        for output in reply.outputs:
            if output.datatype == "BYTES" or output.name == "label":
                label = str(output.data[0]) if output.data else None
            elif all(isinstance(x, int | float) and not isinstance(x, bool) for x in output.data):
                scores[output.name] = tuple(float(x) for x in output.data)
        latency = None if math.isnan(reply.latency_ms) else reply.latency_ms
        return cls(request_id, reply.version, label, scores, latency_ms=latency)


def answer_of(value: bytes | None, run_id: str | None, *,
              dead_letter: bool | None) -> Answer | None:
    """The answer of a predictions (``dead_letter`` False) or dead-letter record (True;
    None: told by its body), ``run_id`` stripped from its id; None for a record that is no
    reply (``pipeline.replies.MalformedReply``)."""
    try:
        return Answer.of(parse_reply(value, dead_letter=dead_letter), run_id)
    except MalformedReply:
        return None


def key_replies(entries: Iterable[tuple[SourcePosition, Answer, str]]) -> dict[str, Answer]:
    """Answers keyed for the diff. ``entries``: (the position of the request answered,
    its answer, a key for an answer without an id). A repeat for the same position
    (at-least-once delivery) is dropped; requests sharing an id are told apart in order
    of position: ``id``, ``id~2``, ``id~3``."""
    by_position: dict[SourcePosition, tuple[Answer, str]] = {}
    for position, reply, fallback in entries:
        by_position.setdefault(position, (reply, fallback))
    keyed: dict[str, Answer] = {}
    seen: Counter[str] = Counter()
    for position in sorted(by_position):
        reply, fallback = by_position[position]
        base = reply.request_id if reply.request_id is not None else fallback
        seen[base] += 1
        keyed[base if seen[base] == 1 else f"{base}~{seen[base]}"] = reply
    return keyed


@dataclass(frozen=True, slots=True)
class Side:
    """One run's answers, keyed (``key_replies``). ``requests``: how many requests the run
    sent (None: unknown)."""

    name: str
    replies: Mapping[str, Answer]
    requests: int | None = None

    @property
    def unanswered(self) -> int | None:
        return None if self.requests is None else max(0, self.requests - len(self.replies))
