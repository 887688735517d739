"""What became of each label: a stable code, counted per code (a contract, like
``pipeline.rejections.Reason``: metrics, reports and alerts key on it)."""

from __future__ import annotations

from enum import StrEnum


class Outcome(StrEnum):
    # Joined with its prediction and scored.
    SCORED = "scored"
    # A different label for a request already labelled: the later one replaces it.
    CORRECTION = "correction"
    # The same label again for a request: counted once.
    DUPLICATE = "duplicate"
    # Not a label at all (not JSON, not an object, a field of the wrong form).
    MALFORMED = "malformed"
    # Neither the body nor the record's key names a request.
    MISSING_ID = "missing_id"
    # A class for a regressor, or a number for a classifier.
    WRONG_TYPE = "wrong_type"
    # No prediction for the id within the label's wait: never served, or expired.
    UNKNOWN_ID = "unknown_id"
    # The request was dead-lettered: there is no prediction to judge.
    DEAD_LETTERED = "dead_lettered"
    # A label for an id with no answer, when its partition already keeps as many such
    # labels as STREAMSERVE_LABEL_MAX_UNANSWERED allows: not kept, counted in metrics only.
    DROPPED = "dropped"

    @property
    def scored(self) -> bool:
        return self in (Outcome.SCORED, Outcome.CORRECTION)
