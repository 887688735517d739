"""Why a request was not served: a stable reason code and a sentence a person can act on.

A ``Rejection`` is a value, not an exception: decoding returns it, the shell turns it
into a dead letter. Reason codes are a contract; dashboards and alerts key on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Reason(StrEnum):
    EMPTY_REQUEST = "empty_request"
    TOO_LARGE = "too_large"
    INVALID_UTF8 = "invalid_utf8"
    MALFORMED_JSON = "malformed_json"
    # A JSON object holds one key twice: parsers disagree on which value counts.
    DUPLICATE_KEY = "duplicate_key"
    MISSING_ID = "missing_id"
    INVALID_ID = "invalid_id"
    MISSING_MODEL = "missing_model"
    UNKNOWN_MODEL = "unknown_model"
    UNKNOWN_VERSION = "unknown_version"
    SCHEMA_MISMATCH = "schema_mismatch"
    NON_FINITE = "non_finite"
    # The request id was already served within the worker's dedupe window (pipeline.dedupe).
    DUPLICATE_REQUEST = "duplicate_request"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    MODEL_ERROR = "model_error"
    CIRCUIT_OPEN = "circuit_open"

    @property
    def is_client_error(self) -> bool:
        """True when the sender must fix the request; False when the server failed it."""
        return self not in (Reason.DEADLINE_EXCEEDED, Reason.MODEL_ERROR, Reason.CIRCUIT_OPEN)


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: Reason
    error: str
    id: str | None = None
    model: str | None = None
